"""Every path x every setting: the float64 reference's params, or a refusal naming the setting.

The matrix is generated from `tests/conformance.py`: adding a setting there
runs it through every path.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conformance as cf
import jaxlr

# float32 training against a float64 reference over 3 epochs of 7 steps.
TOLERANCE = 2e-4


def check_cell(path, name, outcome):
    """`outcome` is (w, b) or the error a path raised."""
    refused = cf.ALWAYS_REFUSED.get(name) or cf.REFUSED.get(path, lambda s: None)(cf.SETTINGS[name])
    if refused is not None:
        assert isinstance(outcome, Exception), f"{path} ran {name}, which it should refuse by `{refused}`"
        # The refusal names one of the cell's own settings.
        named = [s for s in cf.SETTINGS[name] if f"`{s}`" in str(outcome) or f"'{s}'" in str(outcome)]
        assert named, f"{path} x {name}: the refusal names none of the cell's settings: {outcome}"
        return
    if isinstance(outcome, Exception):
        raise outcome
    w, b = outcome
    want_w, want_b = cf.expected(name)
    scale = 1 + np.abs(np.append(want_w, want_b)).max()
    np.testing.assert_allclose(np.append(w, b), np.append(want_w, want_b), atol=TOLERANCE * scale, rtol=0,
                               err_msg=f"{path} x {name}")  # fmt: skip


def run(path, name, tmp_path):
    try:
        return cf.run_path(path, name, tmp_path)
    except (ValueError, TypeError) as err:
        return err


CELLS = [
    pytest.param(path, name, id=f"{path}-{name}")
    for path in ("loop", "fused", "scan", "streamed", "sweep")
    for name in cf.SETTINGS
    if (path, name) not in cf.NOT_APPLICABLE
]


@pytest.mark.parametrize("path, name", CELLS)
def test_cell(path, name, tmp_path):
    check_cell(path, name, run(path, name, tmp_path))


def test_the_reference_is_not_fooled_by_its_own_settings():
    """Each setting moves the reference's answer: a cell whose setting were
    ignored by both a path and the reference would otherwise pass."""
    plain = np.append(*cf.expected("plain"))
    for name in cf.SETTINGS:
        if name in ("plain", "record_steps_off", "optax_sgd", "optax_with_l1", "optax_with_schedule"):
            continue  # these promise the plain run's answer (optax.sgd(0.02) is plain SGD at lr 0.02)
        moved = np.abs(np.append(*cf.expected(name)) - plain).max()
        assert moved > 50 * TOLERANCE, f"{name} barely moves the reference ({moved:.2g})"


def test_eight_devices_conform():
    """The devices path, for every cell, in a process with 8 simulated devices."""
    from conftest import simulated_devices_env

    env = simulated_devices_env(8)
    here = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(here / "conformance.py")], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert set(results) == set(cf.SETTINGS)
    for name, got in results.items():
        outcome = ValueError(got["error"]) if "error" in got else (np.array(got["w"]), got["b"])
        check_cell("devices", name, outcome)


# ------------------------------------------------------------------ the estimator, against scikit-learn's

# The estimator's promise is scikit-learn's SGDRegressor: its settings, by
# scikit-learn's names, against scikit-learn's own float64 answer over the same
# rows in the same order (shuffle=False) from the same start.
ESTIMATOR_SETTINGS = {
    "plain": dict(penalty=None),
    "huber": dict(loss="huber", epsilon=0.5, penalty=None),
    "epsilon_insensitive": dict(loss="epsilon_insensitive", epsilon=0.1, penalty=None),
    "squared_epsilon_insensitive": dict(loss="squared_epsilon_insensitive", epsilon=0.2, penalty=None),
    "l2": dict(penalty="l2", alpha=0.05),
    "l1": dict(penalty="l1", alpha=0.01),
    "elasticnet": dict(penalty="elasticnet", alpha=0.01, l1_ratio=0.3),
    "l1_ratio_none": dict(penalty="l2", l1_ratio=None),
    "optimal": dict(learning_rate="optimal", alpha=1.0, penalty=None),
    "invscaling": dict(learning_rate="invscaling", eta0=0.02, power_t=0.3, penalty=None),
    "adaptive": dict(learning_rate="adaptive", eta0=0.05, tol=1e-3, n_iter_no_change=1, penalty=None),
    "average": dict(average=True, penalty=None),
    "average_from_60": dict(average=60, penalty=None),
    "sample_weight": dict(penalty=None, sample_weight=True),
    "no_intercept": dict(fit_intercept=False, penalty=None),
    "tol": dict(tol=0.05, n_iter_no_change=2, max_iter=20, penalty=None),
    "validation": dict(early_stopping=True, validation_fraction=0.2, tol=1e-3, n_iter_no_change=2, max_iter=20,
                       penalty=None),  # fmt: skip
}
ESTIMATOR_BASE = dict(learning_rate="constant", eta0=0.01, max_iter=cf.EPOCHS, tol=None, shuffle=False, random_state=0)


def _estimators(name):
    sklearn = pytest.importorskip("sklearn.linear_model")
    settings = {**ESTIMATOR_BASE, **ESTIMATOR_SETTINGS[name]}
    weighted = settings.pop("sample_weight", False)
    return jaxlr.SGDRegressor(**settings), sklearn.SGDRegressor(**settings), weighted


@pytest.mark.parametrize("how", ["fit", "partial_fit"])
@pytest.mark.parametrize("name", list(ESTIMATOR_SETTINGS))
def test_estimator_cell(name, how):
    import warnings

    X, y, weight, *_ = cf.data()
    ours, theirs, weighted = _estimators(name)
    if how == "partial_fit" and (ours.early_stopping or ours.learning_rate == "adaptive" or ours.tol is not None):
        pytest.skip("partial_fit runs one epoch a call: scikit-learn's stopping rule and adaptive rate do not apply")
    start = dict(coef_init=np.array([0.1, -0.2, 0.05]), intercept_init=np.array([0.3]))
    given = dict(sample_weight=weight.astype(np.float64)) if weighted else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning, the same for both
        if how == "fit":
            for model, rows in ((ours, X), (theirs, X.astype(np.float64))):
                model.fit(rows, y.astype(np.float64), **start, **given)
        else:
            for model, rows in ((ours, X), (theirs, X.astype(np.float64))):
                for _ in range(cf.EPOCHS):
                    model.partial_fit(rows, y.astype(np.float64), **given)
    want = np.append(theirs.coef_, theirs.intercept_)
    scale = 1 + np.abs(want).max()
    np.testing.assert_allclose(np.append(ours.coef_, ours.intercept_), want, atol=TOLERANCE * scale, rtol=0,
                               err_msg=f"estimator {how} x {name}")  # fmt: skip
    assert ours.n_iter_ == theirs.n_iter_
