"""The closed-form answer SGD should approach, and the metrics to compare fits by."""

import jax
import jax.numpy as jnp

from jaxlr import validate
from jaxlr.model import Params, square_loss


def solve(X, y):
    """Least squares with an intercept, in closed form.

    Centres X and y, then solves by SVD (`jnp.linalg.lstsq`): stable where
    the normal equations square the condition number. Runs in float64 when
    `jax_enable_x64` is on.

    Args:
        X: array of shape (n, d).
        y: array of shape (n, k), or (n,).

    Returns:
        Params minimising the mean squared error.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> solve(X, y).w.ravel()  # about [2, -3.4]
    """
    X, y = validate.training_arrays(X, y)
    return _solve(X, y)


@jax.jit
def _solve(X, y):
    x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)
    w = jnp.linalg.lstsq(X - x_mean[None, :], y - y_mean[None, :])[0]
    # The intercept makes the fit pass through the means.
    return Params(w=w, b=y_mean - x_mean @ w)


def mse(yhat, y):
    """Mean squared error over every example and output (same as `square_loss`)."""
    return square_loss(jnp.asarray(yhat), jnp.asarray(y))


def r2(yhat, y):
    """Coefficient of determination, averaged over outputs as scikit-learn does.

    1 is a perfect fit; 0 is no better than predicting each output's mean.

    Args:
        yhat: predictions of shape (n, k).
        y: targets of the same shape.
    """
    yhat, y = jnp.asarray(yhat), jnp.asarray(y)
    if yhat.shape != y.shape:
        raise ValueError(f"`yhat` shape {yhat.shape} and `y` shape {y.shape} differ.")
    y2 = y.reshape(y.shape[0], -1)
    residual = ((y2 - yhat.reshape(y2.shape)) ** 2).sum(axis=0)
    total = ((y2 - y2.mean(axis=0)[None, :]) ** 2).sum(axis=0)
    # A constant target has no variance to explain: score 1 if matched, else 0.
    safe_total = jnp.where(total > 0, total, 1.0)
    score = jnp.where(total > 0, 1.0 - residual / safe_total, jnp.where(residual == 0, 1.0, 0.0))
    return jnp.mean(score)
