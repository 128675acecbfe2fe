"""scikit-learn's own tests of its `SGDRegressor`, run on `jaxlr.SGDRegressor`.

scikit-learn's sklearn/linear_model/tests/test_sgd.py takes the estimator as a
parameter (`klass`, `Estimator`, `est` or `SGDEstimator`). Every test there
whose parameters include the dense `SGDRegressor` is collected here, by
reading its `parametrize` marks, and called with jaxlr's class in that place;
the module's own `SGDRegressor` factory (which fills in random_state=42,
tol=None and max_iter=5) and its `linear_model.SGDRegressor` name jaxlr's
class while a test runs, so that the tests' own comparisons (``klass in
[...]``, ``Estimator == linear_model.SGDRegressor``) see it as the regressor.

A new scikit-learn that adds a regressor test adds it here too. What does not
run is listed below with the reason: each is a documented difference (the
table in the README's scikit-learn section), not a failure.
"""

from __future__ import annotations

import contextlib
import inspect
import types

import jax
import pytest

test_sgd = pytest.importorskip("sklearn.linear_model.tests.test_sgd")
from sklearn import linear_model  # noqa: E402

import jaxlr  # noqa: E402

# Tests that do not apply to jaxlr's estimator, and why.
SKIPPED = {
    # y with two columns trains two models (one per column): jaxlr's
    # estimator takes multi-output targets, scikit-learn's refuses them.
    "test_input_format": "multi-output y is accepted (one model per column), where scikit-learn refuses it",
    # It checks scikit-learn's private attributes (_average_coef,
    # _standard_coef, ...), which hold its averaging's bookkeeping.
    "test_plain_has_no_average_attr": "checks scikit-learn's private averaging attributes",
    # It reads `loss_functions`, scikit-learn's table of its Cython loss classes.
    "test_loss_function_epsilon": "reads scikit-learn's internal table of Cython loss classes",
}
# scikit-learn's estimator also takes sparse X; jaxlr's takes dense arrays only.
SPARSE = "X must be dense: jaxlr's SGDRegressor does not take sparse matrices"
# These compare with a float64 reference to 16 decimals: jaxlr computes in
# float32 unless JAX's float64 is on, so they run with it on.
FLOAT64 = {
    "test_late_onset_averaging_reached",
    "test_sgd_averaged_computed_correctly",
    "test_sgd_averaged_partial_fit",
    "test_average_sparse",
}
# Fixtures of scikit-learn's own conftest that the tests ask for.
FIXTURES = {"global_random_seed": 42}


def jaxlr_sgd_regressor(**kwargs):
    """The test module's `SGDRegressor` factory, building jaxlr's estimator."""
    test_sgd._update_kwargs(kwargs)
    return jaxlr.SGDRegressor(**kwargs)


# scikit-learn's dense regressor, as the tests name it, and what stands in for it.
_DENSE = {test_sgd.SGDRegressor: jaxlr_sgd_regressor, linear_model.SGDRegressor: jaxlr.SGDRegressor}
_ESTIMATORS = {
    name: getattr(test_sgd, name)
    for name in ("SGDClassifier", "SparseSGDClassifier", "SGDRegressor", "SparseSGDRegressor", "SGDOneClassSVM",
                 "SparseSGDOneClassSVM")  # fmt: skip
}
_ESTIMATORS.update({f"linear_model.{name}": getattr(linear_model, name) for name in ("SGDClassifier", "SGDRegressor")})


def _is_estimator(value) -> bool:
    return any(value is known for known in _ESTIMATORS.values())


def _rows(mark):
    """A parametrize mark's argument names and its rows of values (tuples)."""
    names = mark.args[0]
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    rows = []
    for value in mark.args[1]:
        value = value.values if hasattr(value, "values") and hasattr(value, "marks") else value  # pytest.param
        rows.append(tuple(value) if len(names) > 1 else (value,))
    return names, rows


def _regressor_cases():
    """(test name, keyword arguments, skip reason) for each regressor case of test_sgd.py."""
    cases = []
    for name, function in sorted(vars(test_sgd).items()):
        if not name.startswith("test_") or not inspect.isfunction(function):
            continue
        grids, takes_estimator, dense, sparse = [{}], False, False, False
        for mark in reversed([m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]):
            names, rows = _rows(mark)
            if any(_is_estimator(v) for row in rows for v in row):
                takes_estimator = True
                sparse = sparse or any(v is test_sgd.SparseSGDRegressor for row in rows for v in row)
                rows = [tuple(_DENSE.get(v, v) if _is_estimator(v) else v for v in row) for row in rows
                        if any(v in _DENSE for v in row if _is_estimator(v))]  # fmt: skip
                dense = dense or bool(rows)
            grids = [{**grid, **dict(zip(names, row))} for grid in grids for row in rows]
        if not takes_estimator:
            continue
        if sparse:
            cases.append(pytest.param(name, {}, id=f"{name}[sparse]", marks=pytest.mark.skip(reason=SPARSE)))
        if not dense:
            continue
        for i, grid in enumerate(grids):
            parameters = inspect.signature(function).parameters
            grid = {**{k: v for k, v in FIXTURES.items() if k in parameters}, **grid}
            shown = "-".join(v.__name__ if isinstance(v, type) and not _is_estimator(v) else str(v)
                             for v in grid.values() if isinstance(v, (str, int, float, type)) and not _is_estimator(v))
            marks = [pytest.mark.skip(reason=SKIPPED[name])] if name in SKIPPED else []
            cases.append(pytest.param(name, grid, id=f"{name}[{shown}]" if shown else name, marks=marks))
    return cases


CASES = _regressor_cases()


def test_the_regressor_cases_are_found():
    # The collection reads scikit-learn's marks: if it found nothing, every
    # case below would pass vacuously.
    names = {case.values[0] for case in CASES if not case.marks}
    assert {"test_warm_start", "test_partial_fit_equal_fit", "test_sgd_random_state", "test_sgd_dtype_match",
            "test_validation_set_not_used_for_training", "test_sgd_l1_ratio_not_used"} <= names  # fmt: skip
    assert set(SKIPPED) <= {case.values[0] for case in CASES}


@pytest.mark.parametrize("name, arguments", CASES)
def test_scikit_learns_sgd_regressor_test(name, arguments, monkeypatch):
    monkeypatch.setattr(test_sgd, "SGDRegressor", jaxlr_sgd_regressor)
    monkeypatch.setattr(test_sgd, "linear_model", types.SimpleNamespace(**{
        **{k: getattr(linear_model, k) for k in dir(linear_model) if not k.startswith("__")},
        "SGDRegressor": jaxlr.SGDRegressor,
    }))  # fmt: skip
    with jax.enable_x64(True) if name in FLOAT64 else contextlib.nullcontext():
        getattr(test_sgd, name)(**arguments)
