"""The closed-form answer SGD should approach, and the metrics to compare fits by."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import validate
from jaxlr.metrics import mse, r2  # noqa: F401  (re-exported: they lived here)
from jaxlr.model import Params
from jaxlr.preprocessing import Standardizer, least_squares


def solve(X, y):
    """Least squares with an intercept, in closed form.

    Centres X and y, then solves by SVD (`jnp.linalg.lstsq`): stable where
    the normal equations square the condition number. The solve runs in
    float32, or in float64 when `jax_enable_x64` is on. NumPy input is first
    centred and scaled on the host in its own precision (float64 for float64
    input): rounded to float32 first, a timestamp near 1.7e9 would lose every
    digit below 128 and the fit with it. JAX arrays are centred on their
    device, in their own dtype.

    Args:
        X: array of shape (n, d).
        y: array of shape (n, k), or (n,).

    Returns:
        Params minimising the mean squared error, in the training dtype.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> solve(X, y).w.ravel()  # about [2, -3.4]
    """
    if isinstance(X, jax.Array) and isinstance(y, jax.Array):
        return _solve(*validate.training_arrays(X, y))
    X, y = validate.exact_arrays(X, y)
    if X.nbytes > _IN_BLOCKS_BYTES:
        # A large host table: float64 least squares a block of rows at a time, no whole copy.
        return _solve_in_blocks(X, y)
    scaler = Standardizer.fit(X, y, target="scale")
    params = _solve(*validate.training_arrays(scaler.transform(X), scaler.transform_target(y)))
    # Back to the original units in float64: the intercept of a feature far
    # from zero is a difference of large numbers.
    w, b = scaler.to_original(params)
    dtype = params.w.dtype
    _warn_if_rounded(X, y, w, b, dtype)
    return Params(w=jnp.asarray(w.astype(dtype)), b=jnp.asarray(b.astype(dtype)))


def _warn_if_rounded(X, y, w, b, dtype):
    """Warns when params rounded to `dtype` predict worse than the fit itself:
    a feature far from zero (a timestamp near 1.7e9) gives an intercept that
    float32 holds only to a multiple of 64 or more."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    eps = float(np.finfo(dtype).eps)
    if eps <= np.finfo(np.float64).eps:
        return
    rows = max(1, _BLOCK_BYTES // (8 * (X.shape[1] + y.shape[1])))
    squared, largest = np.zeros(y.shape[1]), np.zeros(X.shape[1])
    for i in range(0, X.shape[0], rows):
        X_b = np.asarray(X[i : i + rows], np.float64)
        squared += ((X_b @ w + b - np.asarray(y[i : i + rows], np.float64)) ** 2).sum(axis=0)
        largest = np.maximum(largest, np.abs(X_b).max(axis=0))
    residual = np.sqrt(squared / X.shape[0])
    rounding = eps * (np.abs(b) + largest @ np.abs(w))
    if np.any(rounding > np.maximum(residual, np.finfo(np.float64).tiny)):
        import warnings

        warnings.warn(
            f"solve: in {np.dtype(dtype).name}, the params predict only to about {rounding.max():.3g} "
            f"(the intercept {b.flat[0]:.6g} is rounded), where the fit's residuals are {residual.max():.3g}. "
            "Centre the features first (jaxlr.Standardizer) and predict in those units, or turn on float64 "
            "(jax.config.update('jax_enable_x64', True)).",
            stacklevel=3,
        )


# Host tables larger than this are solved a block of rows at a time: the
# device's SVD would hold a centred copy of X and its factor U besides X.
_IN_BLOCKS_BYTES = 64 << 20
_BLOCK_BYTES = 16 << 20  # of the check of the rounded params


def _solve_in_blocks(X, y):
    """`least_squares` rounded to the training dtype, with a warning where that loses the fit."""
    w, b = least_squares(X, y)
    dtype = jax.dtypes.canonicalize_dtype(X.dtype)  # float32 unless x64 is on
    _warn_if_rounded(X, y, w, b, dtype)
    return Params(w=jnp.asarray(w.astype(dtype)), b=jnp.asarray(b.astype(dtype)))


@jax.jit
def _solve(X, y):
    x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)
    w = jnp.linalg.lstsq(X - x_mean[None, :], y - y_mean[None, :])[0]
    # The intercept makes the fit pass through the means.
    return Params(w=w, b=y_mean - x_mean @ w)
