"""The parameters of a linear model: weights and intercepts, a pytree of two arrays.

Defined apart from `jaxlr.model` (which re-exports it) so that the host side
(model files, standardization, the closed form) uses it without importing JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import jax


class Params(NamedTuple):
    """Weights and bias of a linear model, a pytree that `jax.grad` differentiates.

    Attributes:
        w: array of shape (d, k), one column of weights per output.
        b: array of shape (k,), one intercept per output.
    """

    w: jax.Array
    b: jax.Array
