import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from conftest import TRANSFORMS


def test_init_params_shapes_dtype_and_determinism():
    params = jaxlr.init_params(jax.random.key(0), 3, 2)
    assert params.w.shape == (3, 2) and params.b.shape == (2,)
    assert params.w.dtype == jnp.float32
    again = jaxlr.init_params(jax.random.key(0), 3, 2)
    other = jaxlr.init_params(jax.random.key(1), 3, 2)
    np.testing.assert_array_equal(params.w, again.w)
    assert not np.allclose(params.w, other.w)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_net_is_xw_plus_b(transform):
    params = jaxlr.Params(w=jnp.array([[2.0], [-3.4]]), b=jnp.array([4.2]))
    X = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(transform(jaxlr.net)(params, X), [[6.2], [0.8], [2.8]], rtol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_square_loss_gradient_matches_the_analytic_one(transform):
    # L = mean((Xw + b - y)^2) over n*k entries, so dL/dw = 2/(nk) X^T r and
    # dL/db = 2/(nk) sum_rows(r), with r the residuals.
    X, y = jaxlr.synthetic_data(jax.random.key(3), num_examples=8, true_w=[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], true_b=[0.5, -0.5])
    params = jaxlr.init_params(jax.random.key(4), 3, 2)

    def objective(p):
        return jaxlr.square_loss(jaxlr.net(p, X), y)

    grads = transform(jax.grad(objective))(params)
    residual = np.asarray(X) @ np.asarray(params.w) + np.asarray(params.b) - np.asarray(y)
    scale = 2.0 / residual.size
    np.testing.assert_allclose(grads.w, scale * np.asarray(X).T @ residual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads.b, scale * residual.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_square_loss_is_a_mean_not_half_a_mean():
    assert float(jaxlr.square_loss(jnp.array([[3.0], [1.0]]), jnp.array([[1.0], [1.0]]))) == 2.0


def test_square_loss_refuses_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match=r"`yhat` shape \(4, 1\) and `y` shape \(4,\) differ"):
        jaxlr.square_loss(jnp.zeros((4, 1)), jnp.zeros(4))
