"""Learning-rate schedules: the step size as a function of the step count t.

scikit-learn's four, with t counting updates from 1:

- ``"constant"``: eta0;
- ``"optimal"``: ``1 / (alpha * (t0 + t - 1))`` (Bottou's heuristic; t0 from `optimal_t0`);
- ``"invscaling"``: ``eta0 / t ** power_t``;
- ``"adaptive"``: eta0, divided by 5 each time the stopping rule sees no
  improvement for `n_iter_no_change` epochs, until it falls below 1e-6.

The schedule's name is part of the compiled program and its numbers are
traced, so new values compile nothing. Any optax schedule (a function of the
step count, from 0) may be given instead; it is part of the program too. A
function whose second argument has no default, or is called `total`, is
given the run's total number of updates as well (the budget of `epochs`,
counting a given `state`'s updates), so it can end where the run does::

    fit(X, y, key=key, schedule=lambda count, total: 0.05 * (1 - count / total))
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from jaxlr import names, validate

SCHEDULES = names.SCHEDULES

Schedule = Union[str, Callable[..., jax.Array]]  # of (count) or (count, total)


class Rate(NamedTuple):
    """A named schedule's numbers (traced values)."""

    eta0: float
    power_t: float = 0.25
    t0: float = 1.0  # the "optimal" schedule's offset
    alpha: float = 0.0001  # the "optimal" schedule's alpha
    total_steps: int = 0  # the updates the run makes in all, for a schedule of (count, total)


def check(schedule: Schedule) -> Schedule:
    if callable(schedule):
        validate.cached(_checked_rates, schedule)
        return schedule
    return validate.check_choice("schedule", schedule, SCHEDULES)


@functools.lru_cache(maxsize=64)
def _checked_rates(schedule: Callable) -> None:
    """Refuses, before anything is traced, a schedule that does not give one
    rate, a number, for a step count (`rate` asks it one count at a time)."""
    name = getattr(schedule, "__name__", type(schedule).__name__)
    count = total = jax.ShapeDtypeStruct((), jnp.int32)
    try:
        out = jax.eval_shape(lambda c, n: jnp.asarray(schedule(c, n) if reads_total(schedule) else schedule(c)),
                             count, total)  # fmt: skip
    except Exception as err:  # the user's function failed on a count
        raise ValueError(f"`schedule` (={name}) failed on a step count: {err}") from err
    if out.shape != () or not jnp.issubdtype(out.dtype, jnp.number):
        got = f"shape {out.shape}" if out.shape != () else f"dtype {out.dtype}"
        raise ValueError(f"`schedule` (={name}) must return one rate, a number, for a step count, not {got}.")


def ignores_lr(schedule: Schedule) -> bool:
    """Whether the schedule's rates come without `lr` (eta0): "optimal" takes
    them from alpha, a user's function is the rate itself."""
    return callable(schedule) or schedule == "optimal"


def reads_total(schedule: Schedule) -> bool:
    """Whether the schedule is a user's function of (count, total): the only
    one whose rates depend on the run's length."""
    return callable(schedule) and validate.takes_argument(schedule, 2, "total")


def optimal_t0(alpha: float) -> float:
    """The offset t0 that makes the "optimal" schedule's first step a typical weight's size.

    As scikit-learn computes it for regression: a typical weight is
    ``1 / sqrt(sqrt(alpha))``, and t0 makes ``1 / (alpha * t0)`` equal to it.
    """
    return 1.0 / (math.sqrt(1.0 / math.sqrt(alpha)) * alpha)


def rate(schedule: Schedule, numbers: Rate, t: jax.Array, drops: jax.Array) -> jax.Array:
    """The learning rate of update number t (counting from 1), after `drops` adaptive cuts."""
    if callable(schedule):
        t = jnp.asarray(t)
        one = (lambda count: schedule(count, numbers.total_steps)) if reads_total(schedule) else schedule
        if t.ndim == 0:
            return jnp.asarray(one(t - 1))
        # One count at a time, as a schedule is written: optax's piecewise
        # schedules take an array of counts for one count, and a function may
        # branch on its count. (One that ignores it gives one rate for all.)
        value = jax.vmap(one)(t.reshape(-1) - 1)
        return jnp.broadcast_to(jnp.asarray(value), (t.size,)).reshape(t.shape)
    t = jnp.asarray(t, jnp.asarray(numbers.eta0).dtype)
    if schedule == "optimal":
        return 1.0 / (numbers.alpha * (numbers.t0 + t - 1.0))
    if schedule == "invscaling":
        return numbers.eta0 / t**numbers.power_t
    if schedule == "adaptive":
        return numbers.eta0 * 0.2 ** drops.astype(t.dtype) * jnp.ones_like(t)
    return numbers.eta0 * jnp.ones_like(t)
