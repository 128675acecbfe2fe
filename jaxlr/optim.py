"""The SGD update of the lesson, the jitted training step built on it, and other update rules.

`sgd` and `make_step` are the lesson's. Beyond it, an update rule turns a
gradient into new params: plain SGD (the hand-written `sgd`), momentum,
Nesterov momentum, Adam, or any optax transformation. A named rule is built
inside the compiled program from traced numbers (its momentum, Adam's betas),
so new values never compile anything; an optax object is used as it is.
"""

from __future__ import annotations

import collections
import functools
import types
from typing import Any, Callable, Hashable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import names, validate
from jaxlr.model import Params, net, square_loss

RULES = names.RULES


def sgd(params: Any, grads: Any, lr: Any) -> Any:
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


def init_state(params: Params, optimizer: Any = None) -> TrainState:
    """The state a step starts from: `params`, plus `optimizer.init(params)` for optax."""
    validate.check_optimizer(optimizer)
    return TrainState(params, None if optimizer is None else optimizer.init(params))


def update(state, X, y, lr, loss=square_loss, optimizer=None):
    """One training step, pure and unjitted: the body of the lesson's step.

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


def make_step(lr: float = 0.001, *, loss: Callable = square_loss, optimizer: Any = None) -> Callable:
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
    rate = validate.check_real("lr", lr, low=0.0) if optimizer is None else None
    if not callable(loss):
        raise TypeError(f"`loss` (={loss!r}) must be a function (yhat, y) -> scalar.")
    return _jitted_step(rate, loss, optimizer)


@functools.lru_cache(maxsize=32)
def _jitted_step(lr, loss, optimizer):
    # Cached so that repeated fits with the same settings reuse one compiled
    # step instead of tracing a fresh closure each time.
    return jax.jit(functools.partial(update, lr=lr, loss=loss, optimizer=optimizer))


# ------------------------------------------------------------------ update rules


class RuleNumbers(NamedTuple):
    """The named rules' numbers, traced: momentum for "momentum"/"nesterov", betas for "adam"."""

    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


Rule = Union[str, Any]  # a name from RULES, or an optax.GradientTransformation


def check_rule(rule: Rule) -> Rule:
    """`rule` if it is a known name or an optax transformation; None means "sgd".

    An optax transformation equal in value to one seen before (the same
    functions closing over the same numbers: ``optax.adam(0.01)`` built
    afresh) comes back as that earlier object, so that it reuses its
    compiled programs instead of compiling (and keeping) new ones.
    """
    if rule is None:
        return "sgd"
    if isinstance(rule, str):
        return validate.check_choice("optimizer", rule, RULES)
    rule = validate.check_optimizer(rule)
    key = rule_value(rule)
    if key is None:
        return rule
    seen = _seen_rules.pop(key, rule)
    _seen_rules[key] = seen  # most recently used last
    while len(_seen_rules) > _SEEN_RULES:
        _seen_rules.popitem(last=False)
    return seen


_SEEN_RULES = 64
_seen_rules: collections.OrderedDict = collections.OrderedDict()


def rule_value(rule: Rule) -> Hashable:
    """What `rule` does, as a hashable value that is the same in every process:
    its name; or for an optax transformation, its functions (module, name and
    line) and the values they close over, followed through nested
    transformations. None when some closed-over value has no such form."""
    if isinstance(rule, str):
        return rule
    try:
        return _value_of(rule, set())
    except _NoValue:
        return None


class _NoValue(Exception):
    pass


_EMPTY = ("empty cell",)


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a name the function binds later (itself, when recursive)
        return _EMPTY


def _value_of(obj, seen: set):
    if obj is _EMPTY:
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and float(obj) == obj and abs(obj) < 2**53:
        return ("number", float(obj))  # 30 and 30.0 alike (optax turns some of its ints to floats)
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, np.generic):
        return (obj.dtype.str, obj.item())
    if isinstance(obj, (np.ndarray, jax.Array)) and not isinstance(obj, jax.core.Tracer):
        value = np.asarray(obj)
        if value.size > 1024:
            raise _NoValue
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if id(obj) in seen:
        return ("again",)
    seen = seen | {id(obj)}
    if isinstance(obj, (tuple, list)):
        return (type(obj).__qualname__, tuple(_value_of(item, seen) for item in obj))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((repr(k), _value_of(v, seen)) for k, v in obj.items())))
    if isinstance(obj, functools.partial):
        return ("partial", _value_of(obj.func, seen), _value_of(obj.args, seen), _value_of(obj.keywords, seen))
    if isinstance(obj, types.FunctionType):
        cells = tuple(_value_of(_contents(cell), seen) for cell in obj.__closure__ or ())
        return ("function", obj.__module__, obj.__qualname__, _code_value(obj.__code__), _globals_read(obj, seen),
                cells, _value_of(obj.__defaults__, seen), _value_of(obj.__kwdefaults__, seen))  # fmt: skip
    if isinstance(obj, (types.BuiltinFunctionType, type)):
        return ("named", getattr(obj, "__module__", None), obj.__qualname__)
    call = getattr(type(obj), "__call__", None)
    if isinstance(call, types.FunctionType) and hasattr(obj, "__dict__"):  # an instance of a callable class
        return ("instance", _value_of(type(obj), seen), _value_of(call, seen), _value_of(vars(obj), seen))
    raise _NoValue


def _code_value(code: types.CodeType) -> tuple:
    """What a function's code does: its bytecode, constants and the names it
    reads (``jnp.abs`` and ``jnp.square`` differ only there), those of the
    functions defined in it too (a number edited in place changes it)."""
    return (code.co_code, tuple(_constant_value(c) for c in code.co_consts), code.co_names)


def _constant_value(constant) -> tuple:
    if isinstance(constant, types.CodeType):
        return _code_value(constant)
    if isinstance(constant, frozenset):  # its order follows the process's string hashing
        return ("frozenset", tuple(sorted(repr(item) for item in constant)))
    return (type(constant).__name__, repr(constant))


def _names_read(code: types.CodeType) -> set:
    return set(code.co_names).union(*(_names_read(c) for c in code.co_consts if isinstance(c, types.CodeType)))


def _globals_read(function: types.FunctionType, seen: set) -> tuple:
    """The module-level values `function` reads: plain values in full;
    modules, functions and classes by name; any other object by its type."""
    found: list[tuple] = []
    for name in sorted(_names_read(function.__code__)):
        if name not in function.__globals__:
            continue  # an attribute's name, or a builtin
        value = function.__globals__[name]
        if isinstance(value, types.ModuleType):
            found.append((name, "module", value.__name__))
        elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
            found.append((name, "named", getattr(value, "__module__", None), value.__qualname__))
        else:
            try:
                found.append((name, _value_of(value, seen)))
            except _NoValue:
                found.append((name, "object", type(value).__qualname__))
    return tuple(found)


def _transformation(rule: Rule, numbers: RuleNumbers):
    """The optax transformation giving a named rule's direction (None for plain SGD)."""
    if rule == "sgd":
        return None
    import optax

    if rule in ("momentum", "nesterov"):
        return optax.trace(decay=numbers.momentum, nesterov=rule == "nesterov")
    if rule == "adam":
        return optax.scale_by_adam(b1=numbers.b1, b2=numbers.b2, eps=numbers.eps)
    return rule  # an optax object, which carries its own learning rate


def rule_init(rule: Rule, params: Params) -> Any:
    """The update rule's starting state for `params` (None for plain SGD)."""
    transformation = _transformation(rule, RuleNumbers())
    return None if transformation is None else transformation.init(params)


def rule_apply(rule: Rule, params: Params, grads: Params, opt_state: Any, lr: jax.Array, numbers: RuleNumbers):
    """New params and rule state after one update with learning rate `lr`."""
    if rule == "sgd":
        return sgd(params, grads, lr), None
    import optax

    transformation = _transformation(rule, numbers)
    direction, opt_state = transformation.update(grads, opt_state, params)
    if isinstance(rule, str):
        return sgd(params, direction, lr), opt_state
    return optax.apply_updates(params, direction), opt_state


def zeros_like_state(rule: Rule, w_shape: tuple[int, ...], dtype: Any) -> Any:
    """A rule state of the right structure, to check or read checkpoints against."""
    params = Params(jnp.zeros(w_shape, dtype), jnp.zeros(w_shape[1:], dtype))
    return rule_init(rule, params)
