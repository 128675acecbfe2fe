import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr


def _lstsq_with_intercept(X, y):
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    design = np.hstack([X, np.ones((X.shape[0], 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return coef[:-1], coef[-1]


def test_solve_matches_numpy_lstsq():
    X, y = jaxlr.synthetic_data(
        jax.random.key(0), num_examples=300, true_w=np.ones((5, 2)), true_b=[1.0, -1.0], noise=0.5
    )
    params = jaxlr.solve(X, y)
    w, b = _lstsq_with_intercept(X, y)
    np.testing.assert_allclose(params.w, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params.b, b, rtol=1e-4, atol=1e-5)


def test_solve_recovers_the_seed_truth(seed_data):
    params = jaxlr.solve(*seed_data)
    np.testing.assert_allclose(np.asarray(params.w).ravel(), [2.0, -3.4], atol=1e-3)
    np.testing.assert_allclose(params.b, [4.2], atol=1e-3)


def test_solve_runs_in_float64_under_x64():
    rng = np.random.default_rng(0)
    # Ill conditioned: two nearly equal columns far from the origin. The
    # normal equations lose about twice the digits that the SVD does.
    base = rng.normal(size=(200, 1)) + 1000.0
    X = np.hstack([base, base + 1e-4 * rng.normal(size=(200, 1))])
    y = X @ np.array([[1.0], [2.0]]) + 3.0
    with jax.enable_x64(True):
        params = jaxlr.solve(X, y)
        assert params.w.dtype == jnp.float64
        w, b = _lstsq_with_intercept(X, y)
        np.testing.assert_allclose(params.w, w, rtol=1e-6)
        np.testing.assert_allclose(params.b, b, rtol=1e-6)


def test_mse_and_r2_against_direct_formulas():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 2))
    yhat = y + 0.3 * rng.normal(size=(50, 2))
    assert np.isclose(float(jaxlr.mse(yhat, y)), np.mean((yhat - y) ** 2), rtol=1e-5)
    per_output = 1 - ((y - yhat) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert np.isclose(float(jaxlr.r2(yhat, y)), per_output.mean(), rtol=1e-5)
    assert float(jaxlr.r2(y, y)) == 1.0


def test_r2_of_a_constant_target():
    y = np.ones((5, 1))
    assert float(jaxlr.r2(y, y)) == 1.0
    assert float(jaxlr.r2(y + 1, y)) == 0.0


def test_r2_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        jaxlr.r2(np.ones((5, 1)), np.ones(5))
