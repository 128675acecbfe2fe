"""How good a fit is: mean squared error and R², on the device or the host.

The host's (`host_metrics`, `RunningMetrics`) need no JAX: the command's
closed form and predictions use them without importing it. The device's
import it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import jax
    from jax.typing import ArrayLike


def mse(yhat: ArrayLike, y: ArrayLike) -> jax.Array:
    """Mean squared error over every example and output (the lesson's `square_loss`)."""
    import jax.numpy as jnp

    from jaxlr.model import square_loss

    return square_loss(jnp.asarray(yhat), jnp.asarray(y))


def r2(yhat: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> jax.Array:
    """Coefficient of determination, averaged over outputs as scikit-learn does.

    1 is a perfect fit; 0 is no better than predicting each output's mean. A
    constant target has no variance to explain: it scores 1 if matched, else 0.

    Args:
        yhat: predictions of shape (n, k), or (n,).
        y: targets of the same shape.
        sample_weight: optional weights of shape (n,).
    """
    import jax.numpy as jnp

    yhat, y = jnp.asarray(yhat), jnp.asarray(y)
    if yhat.shape != y.shape:
        raise ValueError(f"`yhat` shape {yhat.shape} and `y` shape {y.shape} differ.")
    y2 = y.reshape(y.shape[0], -1)
    yhat2 = yhat.reshape(y2.shape)
    weight = jnp.ones(y2.shape[0], y2.dtype) if sample_weight is None else jnp.asarray(sample_weight, y2.dtype)
    return r2_from(yhat2, y2, weight[:, None])


def r2_from(yhat: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """R² of (n, k) predictions with (n, 1) row weights; zero weights drop rows (traceable)."""
    import jax.numpy as jnp

    total_weight = jnp.sum(weight)
    mean = jnp.sum(weight * y, axis=0) / jnp.where(total_weight > 0, total_weight, 1.0)
    residual = jnp.sum(weight * (y - yhat) ** 2, axis=0)
    total = jnp.sum(weight * (y - mean[None, :]) ** 2, axis=0)
    safe_total = jnp.where(total > 0, total, 1.0)
    score = jnp.where(total > 0, 1.0 - residual / safe_total, jnp.where(residual == 0, 1.0, 0.0))
    return jnp.mean(score)


def host_metrics(predictions: np.ndarray, y: np.ndarray, prefix: str = "", weight=None) -> dict[str, float]:
    """MSE and R² of host arrays of shape (n, k), in float64, as a report's
    entries; with `weight` (n,), each row's share (weighted MSE and R²)."""
    return RunningMetrics().add(predictions, y, weight).result(prefix)


class RunningMetrics:
    """MSE and R² over rows that arrive in chunks, in one pass (float64).

    The target's spread is summed about each chunk's own mean and the chunks
    combined by Chan's rule: the sum of squares minus the squared sum would
    cancel to nothing for targets far from zero (1e9 + a small spread). Rows
    may carry weights: each then counts as that many rows.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.squared = self.mean = self.spread = 0.0

    def add(self, predictions: np.ndarray, y: np.ndarray, weight=None) -> "RunningMetrics":
        predictions, y = np.asarray(predictions, np.float64), np.asarray(y, np.float64)
        share = np.ones((y.shape[0], 1)) if weight is None else np.asarray(weight, np.float64).reshape(-1, 1)
        m = float(share.sum())
        if m == 0:
            return self
        chunk_mean = (share * y).sum(axis=0) / m
        chunk_spread = (share * (y - chunk_mean) ** 2).sum(axis=0)
        total = self.count + m
        delta = chunk_mean - self.mean
        self.spread = self.spread + chunk_spread + delta**2 * self.count * m / total
        self.mean = self.mean + delta * m / total
        self.count = total
        self.squared = self.squared + (share * (predictions - y) ** 2).sum(axis=0)
        return self

    def result(self, prefix: str = "") -> dict[str, float]:
        spread, squared = np.asarray(self.spread, np.float64), np.asarray(self.squared, np.float64)
        # A constant target has no spread to explain: scored as `r2` scores
        # it (and scikit-learn), 1 if matched and 0 if not, and said so.
        r2 = np.where(spread > 0, 1 - squared / np.where(spread > 0, spread, 1), np.where(squared == 0, 1.0, 0.0))
        result = {f"{prefix}mse": float(np.mean(squared / self.count)), f"{prefix}r2": float(np.mean(r2))}
        if np.all(spread == 0):
            result[f"{prefix}r2_undefined"] = True
        return result
