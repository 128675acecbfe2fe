"""The scan engine against a float64 sequential oracle, and against the other engines.

The oracle walks the rows in their stored order (``shuffle=False``), one step
at a time, in float64: the squared loss's gradient of a batch
``sum_i w_i (x_i W - y_i)^2 / (rows * outputs)``, plus ``alpha * w``, moved
by plain SGD, or optax's momentum / Nesterov trace, with the schedule's rate
for update t. The scan engine must land on the same params to
``1e-5 * max(1, |params|)``.
"""

import math

import jax
import numpy as np
import pytest

import jaxlr
from jaxlr.engines import auto, scan


def oracle(X, y, w0, b0, *, epochs, lr, batch_size, rule="sgd", momentum=0.9, alpha=0.0, weight=None,
           schedule="constant", power_t=0.25, fit_intercept=True, average=None):  # fmt: skip
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64).reshape(len(X), -1)
    n, k = y.shape
    w, b = np.array(w0, np.float64).reshape(-1, k), np.array(b0, np.float64).reshape(k)
    v_w, v_b = np.zeros_like(w), np.zeros_like(b)
    weight = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    mean_w, mean_b, t = w.copy(), b.copy(), 0
    for _ in range(epochs):
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            t += 1
            rate = lr if schedule == "constant" else lr / t**power_t
            r = X[rows] @ w + b - y[rows]
            scale = 2 * weight[rows][:, None] / (r.shape[0] * k)
            g_w, g_b = X[rows].T @ (scale * r) + alpha * w, np.sum(scale * r, 0)
            if not fit_intercept:
                g_b = 0 * g_b
            if rule == "sgd":
                # L2 as scikit-learn's shrink, which stops at zero; then the loss's step.
                w, b = max(0.0, 1.0 - rate * alpha) * w - rate * (g_w - alpha * w), b - rate * g_b
            else:
                v_w, v_b = g_w + momentum * v_w, g_b + momentum * v_b
                if rule == "nesterov":
                    w, b = w - rate * (g_w + momentum * v_w), b - rate * (g_b + momentum * v_b)
                else:
                    w, b = w - rate * v_w, b - rate * v_b
            if average is not None and t >= average:
                count = t - average + 1
                mean_w, mean_b = mean_w + (w - mean_w) / count, mean_b + (b - mean_b) / count
    if average is not None:
        return mean_w, mean_b
    return w, b


def problem(seed, n, d, k=1, offset=2.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=(d, k)) + offset + 0.1 * rng.normal(size=(n, k))).astype(np.float32)
    w0 = (0.01 * rng.normal(size=(d, k))).astype(np.float32)
    return X, y, w0, np.zeros(k, np.float32)


def stable_rate(X, batch_size, fraction):
    """`fraction` of a rate at which no step expands: lr times the largest
    curvature of a batch's mean loss (about x̃ᵀx̃ / batch for a single row's
    share, about λmax(X̃ᵀX̃ / n) for a large batch) below 1."""
    X = np.column_stack([X.astype(np.float64), np.ones(len(X))])
    largest = max(np.max(np.sum(X**2, 1)) / batch_size, np.linalg.eigvalsh(X.T @ X / len(X))[-1])
    return float(fraction / largest)


def within(result, expected):
    got = np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in result])
    want = np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in expected])
    return np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))


# d from 1 to 128, batch 1 to 4096, up to 10^4 steps; both exact forms (chunked
# residuals for small batches, composed maps for large ones) are reached.
CASES = [
    # (d, n, batch, epochs, rule, fraction of the largest stable rate)
    (1, 10_000, 1, 1, "sgd", 0.3),
    (7, 3_001, 3, 2, "nesterov", 0.1),
    (64, 2_000, 1, 1, "momentum", 0.05),
    (128, 1_000, 2, 2, "sgd", 0.3),
    (5, 8_192, 4096, 20, "sgd", 0.5),
    (20, 4_000, 500, 10, "momentum", 0.1),
    (128, 6_000, 300, 2, "nesterov", 0.1),
]


@pytest.mark.parametrize("d, n, batch_size, epochs, rule, fraction", CASES)
def test_the_scan_engine_matches_a_float64_sequential_oracle(d, n, batch_size, epochs, rule, fraction):
    X, y, w0, b0 = problem(d * 1000 + batch_size, n, d)
    lr = stable_rate(X, batch_size, fraction)
    result = jaxlr.fit(X, y, key=jax.random.key(0), init=jaxlr.Params(w0, b0), epochs=epochs, lr=lr, batch_size=batch_size,
                       optimizer=rule, shuffle=False, engine="scan")  # fmt: skip
    expected = oracle(X, y, w0, b0, epochs=epochs, lr=lr, batch_size=batch_size, rule=rule)
    assert within(result.params, expected) < 1e-5
    form = "maps" if scan.uses_maps(batch_size, d) else "chunks"
    assert form == ("maps" if batch_size >= 2 * (d + 1) else "chunks")


SETTINGS = {
    "l2": dict(alpha=0.01),
    "invscaling": dict(schedule="invscaling", power_t=0.3),
    "average": dict(average=7),
    "no-intercept": dict(fit_intercept=False, alpha=0.05),
    "weights+momentum": dict(weighted=True, rule="momentum"),
    "nesterov+l2+average": dict(rule="nesterov", alpha=0.01, average=1),
    "weights+invscaling+l2": dict(weighted=True, schedule="invscaling", alpha=0.01),
    "l2-past-zero": dict(alpha=150.0),  # lr * alpha = 1.5: the shrink stops at zero
}


@pytest.mark.parametrize(
    "batch_size, settings",
    [(3, settings) for settings in SETTINGS.values()]  # chunked residuals
    + [(64, SETTINGS["nesterov+l2+average"]), (64, SETTINGS["weights+invscaling+l2"]),
       (64, SETTINGS["l2-past-zero"])],  # composed maps
    ids=[f"chunks-{name}" for name in SETTINGS]
    + ["maps-nesterov+l2+average", "maps-weights+invscaling+l2", "maps-l2-past-zero"],
)
def test_penalty_schedule_weights_and_averaging_match_the_oracle(batch_size, settings):
    settings = dict(settings)
    X, y, w0, b0 = problem(batch_size, 600, 3, k=2)
    weight = None
    if settings.pop("weighted", False):
        weight = np.random.default_rng(1).uniform(0, 2, 600).astype(np.float32)
    rule = settings.pop("rule", "sgd")
    fit_settings = dict(settings)
    if "alpha" in fit_settings:
        fit_settings["penalty"] = "l2"
    if "average" in fit_settings and fit_settings["average"] == 1:
        fit_settings["average"] = True
    result = jaxlr.fit(X, y, key=jax.random.key(0), init=jaxlr.Params(w0, b0), epochs=2, lr=0.01, batch_size=batch_size,
                       optimizer=rule, shuffle=False, engine="scan", sample_weight=weight, **fit_settings)  # fmt: skip
    expected = oracle(X, y, w0, b0, epochs=2, lr=0.01, batch_size=batch_size, rule=rule, weight=weight, **settings)
    assert within(result.params, expected) < 1e-5


@pytest.mark.parametrize("batch_size, rule", [(1, "sgd"), (6, "momentum"), (50, "nesterov")])
def test_loop_fused_and_scan_agree_on_shuffled_epochs(batch_size, rule):
    X, y, _, _ = problem(3, 301, 4)  # 301 rows: a last batch that is short
    runs = {
        engine: jaxlr.fit(X, y, key=jax.random.key(5), epochs=3, lr=0.005, batch_size=batch_size, optimizer=rule,
                          engine=engine)  # fmt: skip
        for engine in ("loop", "fused", "scan")
    }
    for engine in ("loop", "scan"):
        assert within(runs[engine].params, runs["fused"].params) < 1e-5
        np.testing.assert_allclose(runs[engine].losses, runs["fused"].losses, rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(runs[engine].moving_losses, runs["fused"].moving_losses, rtol=2e-4, atol=1e-6)
    assert runs["scan"].losses.shape == runs["fused"].losses.shape == (3 * math.ceil(301 / batch_size),)


def test_the_stopping_rule_and_validation_run_as_in_the_fused_engine():
    X, y, _, _ = problem(4, 500, 3)
    settings = dict(key=jax.random.key(1), epochs=40, lr=0.002, batch_size=4, tol=1e-3, n_iter_no_change=3,
                    penalty="l2", alpha=1e-3, validation=(X[:100], y[:100]))  # fmt: skip
    fused = jaxlr.fit(X, y, engine="fused", **settings)
    scanned = jaxlr.fit(X, y, engine="scan", **settings)
    assert len(scanned.epoch_losses) == len(fused.epoch_losses) < 40
    assert within(scanned.params, fused.params) < 1e-5


def test_adaptive_schedule_runs_exactly():
    # Its rate changes only between epochs, when the stopping rule cuts it.
    X, y, w0, b0 = problem(6, 400, 2)
    settings = dict(key=jax.random.key(2), init=jaxlr.Params(w0, b0), epochs=30, lr=0.05, batch_size=2, schedule="adaptive",
                    tol=1e-2, n_iter_no_change=2)  # fmt: skip
    fused = jaxlr.fit(X, y, engine="fused", **settings)
    scanned = jaxlr.fit(X, y, engine="scan", **settings)
    assert int(fused.state.stop.drops) > 0
    assert int(scanned.state.stop.drops) == int(fused.state.stop.drops)
    assert within(scanned.params, fused.params) < 1e-5


@pytest.mark.parametrize("batch_size", [1, 200])
def test_an_expanding_step_is_caught_as_divergence(batch_size):
    # lr above 2 / (2 |x̃|²): each step overshoots more than it corrects, and
    # the residuals grow until they overflow. The guarded replay (sequential)
    # names the step and keeps the last finite params, as for the other engines.
    X, y, _, _ = problem(7, 400, 3)
    outcome = {}
    for engine in ("fused", "scan"):
        with pytest.raises(jaxlr.TrainingDiverged) as caught:
            jaxlr.fit(X, y, key=jax.random.key(0), epochs=20, lr=5.0, batch_size=batch_size, engine=engine)
        outcome[engine] = caught.value
    assert (outcome["scan"].epoch, outcome["scan"].batch) == (outcome["fused"].epoch, outcome["fused"].batch)
    assert np.all(np.isfinite(np.asarray(outcome["scan"].params.w)))
    np.testing.assert_array_equal(np.asarray(outcome["scan"].params.w), np.asarray(outcome["fused"].params.w))


@pytest.mark.parametrize(
    "settings, named",
    [
        (dict(loss="huber"), "`loss` (='huber')"),
        (dict(optimizer="adam"), "`optimizer` (='adam')"),
        (dict(penalty="l1", alpha=0.1), "L1 `penalty`"),
        (dict(penalty="elasticnet", alpha=0.1), "L1 `penalty`"),
        (dict(max_slope=10.0, optimizer="momentum"), "max_slope"),
    ],
)
def test_what_is_not_affine_is_refused_with_the_reason(settings, named):
    X, y, _, _ = problem(8, 50, 2)
    with pytest.raises(ValueError, match="engine") as caught:
        jaxlr.fit(X, y, key=jax.random.key(0), engine="scan", **settings)
    assert named in str(caught.value)


@pytest.mark.parametrize("batch_size", [1, 64])  # chunked residuals, composed maps
@pytest.mark.parametrize("max_slope", [1e12, 0.5])  # never reached; reached, so run in sequence
def test_a_slope_cap_runs_exactly_with_plain_sgd(batch_size, max_slope):
    X, y, w0, b0 = problem(9, 500, 3)
    settings = dict(key=jax.random.key(2), init=jaxlr.Params(w0, b0), epochs=2, lr=0.01, batch_size=batch_size,
                    penalty="l2", alpha=0.01, max_slope=max_slope)  # fmt: skip
    fused = jaxlr.fit(X, y, engine="fused", **settings)
    scanned = jaxlr.fit(X, y, engine="scan", **settings)
    assert within(scanned.params, fused.params) < 1e-5
    np.testing.assert_allclose(scanned.losses, fused.losses, rtol=1e-4, atol=1e-5 * np.max(fused.losses))


def test_the_small_inverse_is_the_inverse():
    rng = np.random.default_rng(0)
    for block, R in [(1, 32), (2, 16), (4, 4), (3, 24)]:
        lower = np.tril(rng.normal(size=(5, R, R)), -1) * 0.3
        for i in range(0, R, block):  # identity blocks on the diagonal
            lower[:, i : i + block, i : i + block] = 0
        A = np.eye(R) + lower
        inverse = np.asarray(jax.jit(scan._unit_lower_inverse, static_argnums=1)(A.astype(np.float32), block))
        np.testing.assert_allclose(inverse @ A, np.broadcast_to(np.eye(R), A.shape), atol=1e-4)


def test_a_stream_from_disk_trains_with_the_scan_engine_as_with_the_fused(tmp_path):
    X, y, _, _ = problem(9, 700, 3)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    runs = {
        engine: jaxlr.fit(jaxlr.NpyStream.from_memmap(mapped, y, chunk_bytes=4_000), None, key=jax.random.key(3),
                          epochs=2, lr=0.005, batch_size=2, engine=engine)  # fmt: skip
        for engine in ("fused", "scan")
    }
    assert within(runs["scan"].params, runs["fused"].params) < 1e-5
    np.testing.assert_allclose(runs["scan"].moving_losses, runs["fused"].moving_losses, rtol=2e-4)


def test_auto_follows_its_table_and_says_why(capsys):
    X, y, _, _ = problem(10, 64, 2)
    result = jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, engine="auto", verbose=True)
    chosen, reason = auto.choose(jax.default_backend(), 2, 4, supported=None)
    assert f"engine: {chosen} ({reason})" in capsys.readouterr().out
    assert np.all(np.isfinite(np.asarray(result.params.w)))
    # Settings the scan engine cannot run go to the fused engine, saying so.
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, engine="auto", loss="huber", verbose=True)
    assert "engine: fused (the scan engine does not apply (`loss` (='huber')" in capsys.readouterr().out
    # The table: scan where it was measured faster on a CPU, fused elsewhere; scan on accelerators.
    for loops_as_kernels, wins in auto.CPU_SCAN_WINS.items():
        for features, batch in wins:
            assert auto.choose("cpu", features, batch, supported=None, loops_as_kernels=loops_as_kernels)[0] == "scan"
    assert auto.choose("cpu", 10_000, 10_000, supported=None)[0] == "fused"
    assert auto.choose("gpu", 100, 4096, supported=None)[0] == "scan"
    assert auto.choose("gpu", 100, 4096, supported="an L1 penalty")[0] == "fused"


@pytest.mark.parametrize("case", ["target far from zero", "features at 1e-3", "unit scale"])
def test_auto_keeps_scan_where_its_bound_holds(case, capsys, monkeypatch):
    """On a CPU whose loops run kernel by kernel, auto would pick scan at 100
    features and batch 1; where the data's scales break scan's float32 bound
    it picks fused and says why."""
    monkeypatch.setattr(jaxlr.loop_kernels, "in_effect", lambda: False)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 100)).astype(np.float32)
    y = X[:, 0] + rng.normal(size=300).astype(np.float32)
    if case == "target far from zero":
        y = y + 1e4
    elif case == "features at 1e-3":
        X = X * 1e-3
    if jax.default_backend() != "cpu":
        pytest.skip("the measured table picks scan here on a CPU")
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, batch_size=1, engine="auto", verbose=True, log_every=10**6)
    said = capsys.readouterr().out
    if case == "unit scale":
        assert said.startswith("engine: scan")
    else:
        assert said.startswith("engine: fused (scan's float32 bound holds for features near unit scale"), said


def test_the_replay_for_a_capped_slope_looks_at_each_rows_own_slope():
    # scikit-learn caps a row's slope before its weight scales it: a row of
    # weight 0.1 whose slope passes the cap is capped (so the epoch replays
    # in sequence) though its weighted slope is ten times smaller; a row of
    # weight 0 is not trained on at all.
    e, real = np.array([[3.0], [1.0]]), np.array([True, True])
    assert float(scan._steepest(e, np.array([0.1, 1.0]), real, 1.0)) == 6.0
    assert float(scan._steepest(e, np.array([0.0, 1.0]), real, 1.0)) == 2.0
