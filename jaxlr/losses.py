"""Loss functions: how far a prediction is from its target, entry by entry.

Every loss here is per entry, ``loss(yhat, y) -> array of yhat's shape``;
training takes the (weighted) mean over the rows of a batch and its outputs.
They share the lesson's scale: near a residual of zero the Huber loss *is*
the squared loss ``(yhat - y) ** 2``, so one learning rate means the same for
both. scikit-learn halves its squared and Huber losses;
`jaxlr.SGDRegressor` converts (see its notes).

A new loss is one function and one entry in `LOSSES`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

LossFunction = Callable[..., jax.Array]


def squared(yhat: ArrayLike, y: ArrayLike, epsilon: ArrayLike = 0.0) -> jax.Array:
    """The lesson's squared error, ``(yhat - y) ** 2``; `epsilon` is unused."""
    return (jnp.asarray(yhat) - y) ** 2


def huber(yhat: ArrayLike, y: ArrayLike, epsilon: ArrayLike = 0.1) -> jax.Array:
    """Squared within `epsilon` of the target, linear beyond it: outliers pull less.

    ``r ** 2`` for ``|r| <= epsilon``, ``2 epsilon |r| - epsilon ** 2`` beyond,
    with r = yhat - y: continuous with a continuous gradient.
    """
    r = jnp.abs(jnp.asarray(yhat) - y)
    return jnp.where(r <= epsilon, r**2, 2 * epsilon * r - epsilon**2)


def epsilon_insensitive(yhat: ArrayLike, y: ArrayLike, epsilon: ArrayLike = 0.1) -> jax.Array:
    """Support-vector regression's loss: ``max(0, |yhat - y| - epsilon)``."""
    return jnp.maximum(0.0, jnp.abs(jnp.asarray(yhat) - y) - epsilon)


def squared_epsilon_insensitive(yhat: ArrayLike, y: ArrayLike, epsilon: ArrayLike = 0.1) -> jax.Array:
    """``max(0, |yhat - y| - epsilon) ** 2``: squared, with no cost within epsilon."""
    return epsilon_insensitive(yhat, y, epsilon) ** 2


LOSSES: dict[str, LossFunction] = {
    "squared": squared,
    "huber": huber,
    "epsilon_insensitive": epsilon_insensitive,
    "squared_epsilon_insensitive": squared_epsilon_insensitive,
}


class Loss(NamedTuple):
    """A loss resolved from a name or a function (hashable: it keys compiled programs)."""

    name: str
    function: LossFunction


def resolve(loss: Union[str, LossFunction]) -> Loss:
    """The Loss named by `loss` ("squared", "huber", ...), or a user's function.

    A user's function is called as ``loss(yhat, y, epsilon)`` when it accepts
    three arguments and ``loss(yhat, y)`` otherwise, and must return one loss
    per entry (the shape of yhat), not their mean.
    """
    if isinstance(loss, str):
        if loss not in LOSSES:
            options = ", ".join(repr(name) for name in LOSSES)
            raise ValueError(f"`loss` (={loss!r}) must be one of {options}, or a function (yhat, y) -> losses.")
        return Loss(loss, LOSSES[loss])
    if isinstance(loss, Loss):
        return loss
    if not callable(loss):
        raise TypeError(f"`loss` (={loss!r}) must be a name such as 'huber' or a function (yhat, y) -> losses.")
    return Loss(getattr(loss, "__name__", "custom"), _with_epsilon(loss))


def check_entries(loss: Loss, rows: int, outputs: int, dtype) -> None:
    """Refuses, before anything is traced, a loss that does not return one loss
    per entry: a mean would be taken again, and its shape breaks the program."""
    example = jax.ShapeDtypeStruct((rows, outputs), dtype)
    try:
        out = jax.eval_shape(lambda yhat, y: loss.function(yhat, y, jnp.asarray(0.1, dtype)), example, example)
    except Exception as err:  # the user's function failed on arrays of the data's shape
        raise ValueError(f"`loss` (={loss.name!r}) failed on predictions of shape {(rows, outputs)}: {err}") from err
    if getattr(out, "shape", None) != (rows, outputs):
        raise ValueError(
            f"`loss` (={loss.name!r}) must return one loss per entry, of the predictions' shape "
            f"{(rows, outputs)}, not {getattr(out, 'shape', type(out).__name__)}: leave the mean to training."
        )


def _with_epsilon(function: LossFunction) -> LossFunction:
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
        takes_three = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters) >= 3 or any(
            p.kind == p.VAR_POSITIONAL for p in parameters
        )
    except (TypeError, ValueError):
        takes_three = False
    if takes_three:
        return function
    return _TwoArgumentLoss(function)


class _TwoArgumentLoss:
    """A ``(yhat, y)`` loss called as ``(yhat, y, epsilon)``; equal when the function is."""

    def __init__(self, function: LossFunction):
        self.function = function
        self.__name__ = getattr(function, "__name__", "custom")

    def __call__(self, yhat, y, epsilon=None):
        return self.function(yhat, y)

    def __eq__(self, other):
        return isinstance(other, _TwoArgumentLoss) and other.function == self.function

    def __hash__(self):
        return hash(self.function)


def scaled(loss: Union[str, LossFunction], factor: float) -> Loss:
    """`loss` times a constant, e.g. scikit-learn's halved squared loss: ``scaled("squared", 0.5)``."""
    base = resolve(loss)
    if factor == 1:
        return base
    return Loss(f"{factor:g}*{base.name}", _Scaled(base.function, float(factor)))


class _Scaled:
    """A loss times a constant; equal to another when both parts are (it keys compiled programs)."""

    def __init__(self, function: LossFunction, factor: float):
        self.function, self.factor = function, factor

    def __call__(self, yhat, y, epsilon=0.1):
        return self.factor * self.function(yhat, y, epsilon)

    def __eq__(self, other):
        return isinstance(other, _Scaled) and (other.function, other.factor) == (self.function, self.factor)

    def __hash__(self):
        return hash((self.function, self.factor))
