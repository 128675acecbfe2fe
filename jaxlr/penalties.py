"""Penalties on the weights (never on the intercept): L2, L1 and elastic net.

The objective is ``mean loss + alpha * R(w)`` with scikit-learn's
``R(w) = (1 - l1_ratio) / 2 * ||w||^2 + l1_ratio * ||w||_1``:

- the L2 part is smooth, so it joins the loss's gradient (`l2_term`); plain
  SGD takes it as scikit-learn does, a shrink of the weights that stops at
  zero (`l2_shrink`);
- the L1 part is not: a subgradient step would only make the weights dither
  around zero. It is applied after each update as a clipped *cumulative*
  penalty (Tsuruoka, Tsujii and Ananiadou, 2009, as scikit-learn does): each
  weight is pulled towards zero by the total penalty owed so far, never past
  it, so weights that should be zero are exactly zero.

A penalty is two numbers (`Penalty`), traced into the compiled program, so a
new alpha never compiles anything.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxlr import names, validate

PENALTIES = names.PENALTIES


class Penalty(NamedTuple):
    """Strengths of the two parts: ``l2 / 2 * ||w||^2 + l1 * ||w||_1``."""

    l2: float = 0.0
    l1: float = 0.0


def make(penalty: Optional[str], alpha: float = 0.0001, l1_ratio: float = 0.15) -> Penalty:
    """The Penalty for a name ("l2", "l1", "elasticnet" or None) and its strength.

    Example:
        >>> make("elasticnet", alpha=0.01, l1_ratio=0.5)
        Penalty(l2=0.005, l1=0.005)
    """
    if penalty == "none":
        penalty = None
    validate.check_choice("penalty", penalty, PENALTIES)
    alpha = validate.check_real("alpha", alpha, low=0.0, low_open=False)
    l1_ratio = validate.check_real("l1_ratio", l1_ratio, low=0.0, high=1.0, low_open=False)
    ratio = {None: None, "l2": 0.0, "l1": 1.0, "elasticnet": l1_ratio}[penalty]
    if ratio is None:
        return Penalty()
    return Penalty(l2=(1.0 - ratio) * alpha, l1=ratio * alpha)


def l2_term(w: jax.Array, strength: ArrayLike) -> jax.Array:
    """``strength / 2 * ||w||^2``, added to the objective; its gradient is strength * w."""
    return jnp.asarray(0.5 * strength * jnp.sum(w * w))


def l2_shrink(w: jax.Array, lr: ArrayLike, strength: ArrayLike) -> jax.Array:
    """Plain SGD's L2 step, taken before the loss's: w times ``max(0, 1 - lr * strength)``.

    The same as the gradient term's step while ``lr * strength <= 1``; beyond,
    the weights go to zero instead of past it, as scikit-learn's do (a
    strength too large for the rate would otherwise flip and grow them).
    """
    return w * jnp.maximum(0.0, 1.0 - lr * strength)


class L1State(NamedTuple):
    """The cumulative penalty's bookkeeping.

    Attributes:
        owed: u, the total L1 penalty per weight owed since the start (a scalar).
        applied: q, array of w's shape: the penalty actually applied to each weight.
        lost: what rounding left out of `owed` so far (Kahan's compensation): in
            float32, tens of millions of tiny amounts summed plainly would stall.
    """

    owed: jax.Array
    applied: jax.Array
    lost: jax.Array


def l1_init(w: jax.Array) -> L1State:
    return L1State(jnp.zeros((), w.dtype), jnp.zeros_like(w), jnp.zeros((), w.dtype))


def l1_step(w: jax.Array, state: L1State, amount: ArrayLike) -> tuple[jax.Array, L1State]:
    """Owes `amount` (= lr * l1 strength) more, then pulls each weight towards 0 by what it owes.

    A weight is clipped at zero rather than pushed past it; ``applied`` keeps
    what each weight really paid, so it pays the rest later if it moves away
    from zero again.
    """
    # Compensated summation: the part of `amount` that rounding drops joins the next one.
    adding = amount - state.lost
    owed = state.owed + adding
    lost = (owed - state.owed) - adding
    pulled_down = jnp.maximum(0.0, w - (owed + state.applied))
    pulled_up = jnp.minimum(0.0, w + (owed - state.applied))
    new_w = jnp.where(w > 0, pulled_down, jnp.where(w < 0, pulled_up, w))
    return new_w, L1State(owed, state.applied + (new_w - w), lost)
