"""The conformance matrix: every path that trains a model, against one float64 reference.

A *path* is a way a user reaches the training program (an engine of `fit`,
`sweep`, several devices, the estimator). A *setting* is one of fit's
promises (a loss, a penalty, a schedule, averaging, weights, ...). Each cell
of paths x settings must either give the params of `reference`, a plain
float64 NumPy loop over the same rows in the same order from the same start,
or be refused with an error that names the setting. Which cells a path
refuses is declared here, in `REFUSED`, so that neither a silently ignored
setting nor an unexpected refusal passes.

This module is imported by the tests, and run as a script (in a process with
8 simulated devices) by the test of the several-devices path.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable

import numpy as np

# A fold size no other test uses, and a batch that does not divide it: the
# last batch of every epoch is short.
N, D, BATCH, EPOCHS = 53, 3, 8, 3


def data(seed: int = 7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)) * np.array([1.0, 2.0, 0.5]) + np.array([0.5, -1.0, 0.0])
    y = X @ np.array([1.5, -0.7, 2.0]) + 3.0 + 0.3 * rng.normal(size=N)
    weight = rng.uniform(0.2, 2.0, size=N)
    X_val = rng.normal(size=(17, D))
    y_val = X_val @ np.array([1.5, -0.7, 2.0]) + 3.0
    return X.astype(np.float32), y.astype(np.float32), weight.astype(np.float32), X_val, y_val


def log_cosh(yhat, y):
    import jax.numpy as jnp

    return jnp.log(jnp.cosh(yhat - y))


def decaying(t):
    """An optax-style schedule of the step count (from 0)."""
    return 0.03 * 0.97**t


BASE: dict[str, Any] = dict(lr=0.02, batch_size=BATCH, epochs=EPOCHS, shuffle=False)

# name -> fit's settings on top of BASE. Strings stand for objects built where
# they are needed ("optax.sgd" and "optax.adam"): a cell's name must be printable.
SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "huber": dict(loss="huber", epsilon=0.5),
    "epsilon_insensitive": dict(loss="epsilon_insensitive", epsilon=0.1, lr=0.05),
    "squared_epsilon_insensitive": dict(loss="squared_epsilon_insensitive", epsilon=0.2),
    "custom_loss": dict(loss="log_cosh", lr=0.1),
    "l2": dict(penalty="l2", alpha=0.5),
    "l1": dict(penalty="l1", alpha=0.05),
    "elasticnet": dict(penalty="elasticnet", alpha=0.05, l1_ratio=0.3),
    "optimal": dict(schedule="optimal", alpha=50.0),
    "invscaling": dict(schedule="invscaling", lr=0.05, power_t=0.3),
    "optax_schedule": dict(schedule="decaying"),
    "average": dict(average=True),
    "average_from_10": dict(average=10),
    "sample_weight": dict(sample_weight=True),
    "shuffle": dict(shuffle=True),
    "no_intercept": dict(fit_intercept=False),
    "record_steps_off": dict(record_steps=False),
    # An epoch loss that goes up and down: a rate near the edge of stability,
    # cut by the adaptive schedule when the rule sees no progress.
    "tol_adaptive": dict(schedule="adaptive", lr=0.09, tol=0.0, n_iter_no_change=1, epochs=8),
    "tol_patience": dict(tol=0.5, n_iter_no_change=2, epochs=8),
    # Shuffled epochs near the noise floor: the epoch loss goes up and down, so
    # "no better than the best" and "no better than the last" stop at different epochs.
    "tol_up_and_down": dict(lr=0.05, tol=0.0, n_iter_no_change=2, epochs=30, shuffle=True),
    "validation": dict(validation=True, tol=0.01, n_iter_no_change=1, epochs=8),
    "momentum": dict(optimizer="momentum", lr=0.005),
    "nesterov": dict(optimizer="nesterov", lr=0.005),
    "adam": dict(optimizer="adam", lr=0.05),
    "optax_sgd": dict(optimizer="optax.sgd"),
    "optax_with_l1": dict(optimizer="optax.sgd", penalty="l1", alpha=0.05),
    "optax_with_schedule": dict(optimizer="optax.sgd", schedule="invscaling"),
}

PATHS = ("loop", "fused", "scan", "streamed", "sweep", "estimator", "devices")


def _refused_by_scan(s) -> str | None:
    if s.get("loss", "squared") != "squared":
        return "loss"
    if s.get("penalty") in ("l1", "elasticnet"):
        return "penalty"
    if s.get("optimizer") in ("adam", "optax.sgd"):
        return "optimizer"
    return None


def _refused_by_sweep(s) -> str | None:
    for name in ("optimizer", "tol", "validation", "record_steps"):
        if name in s:
            return name
    if s.get("schedule") in ("optimal", "decaying"):  # their rates ignore `lr`, which a sweep varies
        return "schedule"
    return None


# path -> (settings -> the name of the setting it refuses, or None).
REFUSED: dict[str, Callable[[dict], str | None]] = {
    "loop": lambda s: None,
    "fused": lambda s: None,
    "scan": _refused_by_scan,
    "streamed": lambda s: "sample_weight" if "sample_weight" in s else None,
    "sweep": _refused_by_sweep,
    "devices": lambda s: None,
}
# Every path refuses an optax optimizer with an L1 penalty (it keeps its rate to itself).
ALWAYS_REFUSED = {"optax_with_l1": "penalty", "optax_with_schedule": "schedule"}

# Cells that are not comparable with the reference by design, and why.
NOT_APPLICABLE = {
    ("streamed", "shuffle"): "a stream shuffles chunk by chunk, not one permutation of all rows",
    ("streamed", "tol_up_and_down"): "a stream shuffles chunk by chunk, not one permutation of all rows",
}


# ------------------------------------------------------------------ the reference


def _dloss(name, r, eps):
    """d loss / d yhat at residual r = yhat - y."""
    if name == "squared":
        return 2 * r
    if name == "huber":
        return np.where(np.abs(r) <= eps, 2 * r, 2 * eps * np.sign(r))
    if name == "epsilon_insensitive":
        return np.where(np.abs(r) > eps, np.sign(r), 0.0)
    if name == "squared_epsilon_insensitive":
        return 2 * np.maximum(0.0, np.abs(r) - eps) * np.sign(r)
    if name == "log_cosh":
        return np.tanh(r)
    raise KeyError(name)


def _loss(name, r, eps):
    a = np.abs(r)
    return {
        "squared": r**2,
        "huber": np.where(a <= eps, r**2, 2 * eps * a - eps**2),
        "epsilon_insensitive": np.maximum(0.0, a - eps),
        "squared_epsilon_insensitive": np.maximum(0.0, a - eps) ** 2,
        "log_cosh": np.log(np.cosh(r)),
    }[name]


def orders(key_seed: int, epochs: int, shuffle: bool):
    """Each epoch's row order as `fit` draws it for ``jax.random.key(key_seed)``."""
    if not shuffle:
        return [np.arange(N)] * epochs
    import jax

    from jaxlr import shuffle as shuffle_lib

    shuffle_key = jax.random.split(jax.random.key(key_seed))[1]
    words = np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(shuffle_key, e))) for e in range(epochs)])
    return list(shuffle_lib.permutations(words, N))


def reference(X, y, w0, b0, settings: dict, weight=None, validation=None, key_seed: int = 1) -> tuple:
    """fit's promise, written out in float64: returns (w, b) of shape (D,) and ()."""
    s = {**BASE, **settings}
    X, y, w, b = (np.asarray(a, np.float64) for a in (X, y, w0, b0))
    lr0, B = s["lr"], s["batch_size"]
    loss = s.get("loss", "squared")
    eps = s.get("epsilon", 0.1)
    alpha, ratio = s.get("alpha", 1e-4), {None: 0, "l2": 0, "l1": 1, "elasticnet": s.get("l1_ratio", 0.15)}[
        s.get("penalty")
    ]
    l2, l1 = (0.0, 0.0) if s.get("penalty") is None else ((1 - ratio) * alpha, ratio * alpha)
    schedule, power_t = s.get("schedule", "constant"), s.get("power_t", 0.25)
    t0 = 1.0 / (math.sqrt(1.0 / math.sqrt(alpha)) * alpha)
    rule = s.get("optimizer", "sgd")
    fit_b = s.get("fit_intercept", True)
    average = s.get("average", False)
    start = None if average is False else (1 if average is True else int(average))
    tol, patience = s.get("tol"), s.get("n_iter_no_change", 5)
    weight = np.ones(N) if weight is None else np.asarray(weight, np.float64)

    def rate(t, drops):
        if schedule == "optimal":
            return 1.0 / (alpha * (t0 + t - 1))
        if schedule == "invscaling":
            return lr0 / t**power_t
        if schedule == "adaptive":
            return lr0 * 0.2**drops
        if schedule == "decaying":
            return decaying(t - 1)
        return lr0

    vel = [np.zeros_like(w), np.zeros_like(b)]
    m2 = [np.zeros_like(w), np.zeros_like(b)]
    owed, applied = 0.0, np.zeros_like(w)
    avg_w, avg_b = w.copy(), b.copy()
    t, drops, best, stalled = 0, 0, -math.inf, 0
    for order in orders(key_seed, s["epochs"], s.get("shuffle", False)):
        objectives = []
        for first in range(0, N, B):
            rows = order[first : first + B]
            Xb, yb, sw = X[rows], y[rows], weight[rows]
            count = len(rows)
            r = Xb @ w + b - yb
            objectives.append(np.mean(_loss(loss, r, eps)) + l2 / 2 * w @ w + l1 * np.abs(w).sum())
            g = sw * _dloss(loss, r, eps) / count
            gw, gb = Xb.T @ g + l2 * w, g.sum() if fit_b else 0.0
            t += 1
            lr = rate(t, drops)
            if rule in ("momentum", "nesterov"):
                vel = [gw + 0.9 * vel[0], gb + 0.9 * vel[1]]
                gw, gb = (gw + 0.9 * vel[0], gb + 0.9 * vel[1]) if rule == "nesterov" else vel
            elif rule == "adam":
                vel = [0.9 * vel[0] + 0.1 * gw, 0.9 * vel[1] + 0.1 * gb]
                m2 = [0.999 * m2[0] + 0.001 * gw**2, 0.999 * m2[1] + 0.001 * gb**2]
                c1, c2 = 1 - 0.9**t, 1 - 0.999**t
                gw = vel[0] / c1 / (np.sqrt(m2[0] / c2) + 1e-8)
                gb = vel[1] / c1 / (np.sqrt(m2[1] / c2) + 1e-8)
            w, b = w - lr * gw, b - lr * gb
            if l1:
                owed += lr * l1
                new = np.where(w > 0, np.maximum(0, w - (owed + applied)),
                               np.where(w < 0, np.minimum(0, w + (owed - applied)), w))  # fmt: skip
                applied, w = applied + (new - w), new
            if start is not None and t >= start:
                avg_w += (w - avg_w) / (t - start + 1)
                avg_b += (b - avg_b) / (t - start + 1)
        if tol is not None:
            if validation is not None:
                X_val, y_val = validation
                residual = X_val @ w + b - y_val
                score = 1 - residual @ residual / np.sum((y_val - y_val.mean()) ** 2)
            else:
                score = -np.mean(objectives)
            stalled = stalled + 1 if score < best + tol else 0
            best = max(best, score)
            if stalled >= patience:
                if schedule == "adaptive" and rate(t + 1, drops) > 1e-6:
                    drops, stalled = drops + 1, 0
                else:
                    break
    if start is not None and t >= start:
        return avg_w, float(avg_b)
    return w, float(b)


# ------------------------------------------------------------------ the paths


def fit_settings(name: str) -> dict:
    """A cell's settings as `fit` takes them (objects built, data attached)."""
    import optax

    settings = {**BASE, **SETTINGS[name]}
    if settings.get("schedule") in ("optimal", "decaying") or settings.get("optimizer") == "optax.sgd":
        del settings["lr"]  # their rates come from elsewhere: `fit` refuses an `lr` that would set none
    X, y, weight, X_val, y_val = data()
    if settings.get("loss") == "log_cosh":
        settings["loss"] = log_cosh
    if settings.get("schedule") == "decaying":
        settings["schedule"] = decaying
    if settings.get("optimizer") == "optax.sgd":
        settings["optimizer"] = optax.sgd(0.02)
    if settings.pop("sample_weight", False):
        settings["sample_weight"] = weight
    if settings.pop("validation", False):
        settings["validation"] = (X_val.astype(np.float32), y_val.astype(np.float32))
    return settings


def start_params():
    import jaxlr

    return jaxlr.Params(np.array([[0.1], [-0.2], [0.05]], np.float32), np.array([0.3], np.float32))


def run_path(path: str, name: str, tmp_dir=None):
    """The params `path` learns for the cell, as (w of shape (D,), b)."""
    import jax

    import jaxlr

    X, y, *_ = data()
    settings = fit_settings(name)
    key = jax.random.key(1)
    init = start_params()
    if path in ("loop", "fused", "scan"):
        result = jaxlr.fit(X, y, key=key, init=init, engine=path, **settings)
    elif path == "devices":
        result = jaxlr.fit(X, y, key=key, init=init, devices=8, engine="fused", **settings)
    elif path == "streamed":
        from pathlib import Path

        file = Path(tmp_dir) / "X.npy"
        np.save(file, X)
        stream = jaxlr.NpyStream(file, y=y, chunk_bytes=16 * 4 * D)  # several chunks, batches not straddling
        result = jaxlr.fit(stream, key=key, init=init, **settings)
    elif path == "sweep":
        lr = settings.pop("lr", BASE["lr"])
        for fixed in ("batch_size", "epochs"):
            settings.pop(fixed)
        got = jaxlr.sweep(X, y, key=key, lrs=[lr], init=init, batch_size=BATCH, epochs=EPOCHS, **settings)
        return np.asarray(got.params.w[0]).ravel(), float(np.asarray(got.params.b[0])[0])
    else:
        raise KeyError(path)
    return np.asarray(result.params.w).ravel(), float(np.asarray(result.params.b)[0])


def expected(name: str):
    X, y, weight, X_val, y_val = data()
    init = start_params()
    s = SETTINGS[name]
    return reference(X, y, np.asarray(init.w).ravel(), np.asarray(init.b)[0], s,
                     weight=weight if s.get("sample_weight") else None,
                     validation=(X_val, y_val) if s.get("validation") else None)  # fmt: skip


if __name__ == "__main__":
    # Run as a script: the devices path for every cell, as JSON on stdout.
    out = {}
    for cell in SETTINGS:
        try:
            w, b = run_path("devices", cell)
            out[cell] = {"w": [float(v) for v in w], "b": b}
        except (ValueError, TypeError) as err:
            out[cell] = {"error": f"{type(err).__name__}: {err}"}
    json.dump(out, sys.stdout)
