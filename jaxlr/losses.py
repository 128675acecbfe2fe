"""Loss functions: how far a prediction is from its target, entry by entry.

Every loss here is per entry, ``loss(yhat, y) -> array of yhat's shape``;
training takes the (weighted) mean over the rows of a batch and its outputs.
They share the lesson's scale: near a residual of zero the Huber loss *is*
the squared loss ``(yhat - y) ** 2``, so one learning rate means the same for
both. scikit-learn halves its squared and Huber losses;
`jaxlr.SGDRegressor` converts (see its notes).

A new loss is one function here, named by its entry in `jaxlr.names.LOSSES`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxlr import names, validate

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
    """Support-vector regression's loss: ``max(0, |yhat - y| - epsilon)``.

    A residual of exactly `epsilon` is inside the margin: its gradient is 0,
    as scikit-learn's (``jnp.maximum`` would give it half the slope).
    """
    beyond = jnp.abs(jnp.asarray(yhat) - y) - epsilon
    return jnp.where(beyond > 0, beyond, 0.0)


def squared_epsilon_insensitive(yhat: ArrayLike, y: ArrayLike, epsilon: ArrayLike = 0.1) -> jax.Array:
    """``max(0, |yhat - y| - epsilon) ** 2``: squared, with no cost within epsilon."""
    return epsilon_insensitive(yhat, y, epsilon) ** 2


# Each named loss is the function of that name above.
LOSSES: dict[str, LossFunction] = {name: globals()[name] for name in names.LOSSES}


MARGIN_LOSSES = ("huber", "epsilon_insensitive", "squared_epsilon_insensitive")
"""The losses whose `epsilon` is a margin in the target's units."""

MARGIN_FRACTION = 0.1
"""A table's default margin, as a fraction of its target's standard deviation."""


def loss_ok(losses, limit):
    """Per loss: finite and not above `limit`, the divergence rule's test (NumPy in, NumPy out)."""
    return (losses <= limit) & (losses < math.inf)


def default_margin(y) -> float:
    """A margin that fits the target's spread: `MARGIN_FRACTION` times its standard deviation.

    A fixed margin means different losses on different targets: 0.1 on a target
    whose spread is 200 makes Huber an absolute loss whose steps are 0.1 at
    most, which barely moves; on a target whose spread is 0.01 it is the squared
    loss. A tenth of the spread is Huber's "most residuals squared" on a fit
    that explains most of the variance, and 0.1 on a standardized target.

    Args:
        y: array of shape (n,) or (n, k): the training targets, in their units.

    Example:
        >>> default_margin(np.array([0.0, 200.0]))
        10.0
    """
    import numpy as np

    spread = float(np.std(np.asarray(y, np.float64)))
    return MARGIN_FRACTION * spread if spread > 0 else MARGIN_FRACTION


def margin_warning(loss: str, epsilon: float, residual_rms: float) -> str | None:
    """A one-line warning when `epsilon` sits far from the residuals' size, else None.

    Far means beyond a factor of 100 either way: below, Huber takes steps of at
    most epsilon and learns slowly; above, it is the squared loss, and an
    epsilon-insensitive loss ignores every residual.
    """
    if loss not in MARGIN_LOSSES or not residual_rms > 0 or epsilon <= 0:
        return None
    ratio = epsilon / residual_rms
    if 0.01 <= ratio <= 100:
        return None
    where = "below" if ratio < 0.01 else "above"
    return (f"the {loss} margin --epsilon {epsilon:.4g} is far {where} the residuals' size (RMSE {residual_rms:.4g}); "
            "leave --epsilon out for a margin of a tenth of the target's spread.")


class Loss(NamedTuple):
    """A loss resolved from a name or a function (hashable: it keys compiled programs)."""

    name: str
    function: LossFunction


def resolve(loss: Union[str, LossFunction]) -> Loss:
    """The Loss named by `loss` ("squared", "huber", ...), or a user's function.

    A user's function is called as ``loss(yhat, y, epsilon)`` when its third
    parameter has no default or is called `epsilon`, as
    ``loss(yhat, y, epsilon=epsilon)`` when `epsilon` is keyword-only, and
    ``loss(yhat, y)`` otherwise (a third parameter with a default and another
    name is its own); it must return one loss per entry (the shape of yhat),
    not their mean.
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


def reads_epsilon(loss: Loss) -> bool:
    """Whether `loss` reads its `epsilon` argument: the margin losses, and a user's function that takes it."""
    function = loss.function
    while isinstance(function, _Scaled):
        function = function.function
    return not (function is squared or isinstance(function, _TwoArgumentLoss))


def check_entries(loss: Loss, rows: int, outputs: int, dtype) -> None:
    """Refuses, before anything is traced, a loss that does not return one loss
    per entry: a mean would be taken again, and its shape breaks the program."""
    if LOSSES.get(loss.name) is loss.function:
        return  # jaxlr's own losses keep the shape
    validate.cached(_checked_entries, loss, rows, outputs, np.dtype(dtype))


@functools.lru_cache(maxsize=64)
def _checked_entries(loss: Loss, rows: int, outputs: int, dtype) -> None:
    # Cached: tracing the loss costs a millisecond or two, more than a small
    # partial_fit's training; a refit pays it once.
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
    if validate.takes_argument(function, 3, "epsilon"):
        return function
    return _TwoArgumentLoss(function)


class _TwoArgumentLoss:
    """A ``(yhat, y)`` loss called as ``(yhat, y, epsilon)``, passing epsilon
    on by keyword where it asks for it so (``*, epsilon``); equal when the function is."""

    def __init__(self, function: LossFunction):
        self.function = function
        self.__name__ = getattr(function, "__name__", "custom")
        self.by_keyword = validate.takes_keyword(function, "epsilon")

    def __call__(self, yhat, y, epsilon=None):
        return self.function(yhat, y, epsilon=epsilon) if self.by_keyword else self.function(yhat, y)

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
