"""The closed-form answer SGD should approach, and the metrics to compare fits by."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import validate
from jaxlr.metrics import mse, r2  # noqa: F401  (re-exported: they lived here)
from jaxlr.model import Params


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
    if isinstance(X, np.ndarray) and X.nbytes > _IN_BLOCKS_BYTES:
        return _solve_in_blocks(X, y)
    return _solve(X, y)


# Host tables larger than this are solved a block of rows at a time: the
# device's SVD would hold a centred copy of X and its factor U besides X.
_IN_BLOCKS_BYTES = 64 << 20
_BLOCK_BYTES = 16 << 20


def _solve_in_blocks(X, y):
    """The same least squares, on the host in float64, with memory for a block of rows.

    A QR factorisation of the centred rows [X | y], block by block (each
    block is factored together with the R of the blocks before it): as stable
    as one QR of the whole, and least squares needs only R. Its top-left
    d x d part against its top-right d x k part gives w.
    """
    n, d = X.shape
    k = y.shape[1]
    rows = max(d + k, _BLOCK_BYTES // (8 * (d + k)))
    blocks = range(0, n, rows)
    x_mean = sum(X[i : i + rows].sum(axis=0, dtype=np.float64) for i in blocks) / n
    y_mean = sum(y[i : i + rows].sum(axis=0, dtype=np.float64) for i in blocks) / n
    R = np.zeros((0, d + k))
    for i in blocks:
        block = np.hstack([X[i : i + rows] - x_mean, y[i : i + rows] - y_mean])
        R = np.linalg.qr(np.vstack([R, block]), mode="r")
    w = np.linalg.lstsq(R[:d, :d], R[:d, d:], rcond=None)[0]
    return Params(w=jnp.asarray(w, X.dtype), b=jnp.asarray(y_mean - x_mean @ w, X.dtype))


@jax.jit
def _solve(X, y):
    x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)
    w = jnp.linalg.lstsq(X - x_mean[None, :], y - y_mean[None, :])[0]
    # The intercept makes the fit pass through the means.
    return Params(w=w, b=y_mean - x_mean @ w)
