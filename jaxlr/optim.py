"""The SGD update of the lesson, and the jitted training step built on it."""

import functools
from typing import Any, NamedTuple

import jax

from jaxlr import validate
from jaxlr.model import Params, net, square_loss


def sgd(params, grads, lr):
    """One step of plain gradient descent: every leaf moves by -lr * its gradient.

    Args:
        params: a pytree of arrays, e.g. Params.
        grads: a pytree of the same structure.
        lr: the learning rate, a scalar.

    Returns:
        The updated pytree; nothing is modified in place.
    """
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


class TrainState(NamedTuple):
    """What changes from one step to the next.

    Attributes:
        params: the model's Params.
        opt_state: the optax optimizer's state; None for the hand-written SGD.
    """

    params: Params
    opt_state: Any = None


def init_state(params, optimizer=None):
    """The state a step starts from: `params`, plus `optimizer.init(params)` for optax."""
    validate.check_optimizer(optimizer)
    return TrainState(params, None if optimizer is None else optimizer.init(params))


def update(state, X, y, lr, loss=square_loss, optimizer=None):
    """One training step, pure and unjitted: the body shared by both engines.

    Returns:
        The new TrainState and the batch's loss before the update.
    """

    def objective(params):
        return loss(net(params, X), y)

    value, grads = jax.value_and_grad(objective)(state.params)
    if optimizer is None:
        return TrainState(sgd(state.params, grads, lr), None), value
    import optax  # imported with the optimizer, not with jaxlr

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), value


def make_step(lr=0.001, *, loss=square_loss, optimizer=None):
    """Returns the jitted step ``(state, X, y) -> (state, loss)``.

    The step compiles once per batch shape and is then reused: feeding it new
    batches of the same shape never retraces. Build the starting state with
    `init_state`.

    Args:
        lr: learning rate of the hand-written SGD (ignored when `optimizer` is
            given: optax transformations carry their own).
        loss: a function ``(yhat, y) -> scalar``.
        optimizer: None for `sgd`, or an `optax.GradientTransformation`.

    Example:
        >>> step = make_step(0.001)
        >>> state = init_state(init_params(jax.random.key(0), 2))
        >>> state, value = step(state, X[:4], y[:4])
    """
    validate.check_optimizer(optimizer)
    lr = validate.check_real("lr", lr, low=0.0) if optimizer is None else None
    if not callable(loss):
        raise TypeError(f"`loss` (={loss!r}) must be a function (yhat, y) -> scalar.")
    return _jitted_step(lr, loss, optimizer)


@functools.lru_cache(maxsize=32)
def _jitted_step(lr, loss, optimizer):
    # Cached so that repeated fits with the same settings reuse one compiled
    # step instead of tracing a fresh closure each time.
    return jax.jit(functools.partial(update, lr=lr, loss=loss, optimizer=optimizer))
