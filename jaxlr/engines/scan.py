"""The scan engine's epoch: exact SGD on the squared loss in parallel time.

On the squared loss one step is an affine map of the params, so the steps of
an epoch need not wait for each other. This module computes the same iterates
as the sequential `core.run_epoch`, in one of two exact forms:

- **Chunked residuals** (small batches, the per-sample default included).
  Within a chunk of k steps starting from W0, each step's residuals depend
  on W0 and on the residuals of the steps before it, linearly:

      e = (I - L)^-1 (r0),    r0 = what each row's residual would be from W0,

  where L is strictly block-lower-triangular, built from the rows' Gram
  matrix X Xᵀ and the scalar "impulse responses" of the update rule (how a
  gradient taken at step i moves W by step t: -lr_i for plain SGD; decayed by
  L2 and carried by momentum otherwise). The chunk's Grams and inverses are
  computed for many chunks at once; only a few matrix-vector products per
  chunk remain in sequence. The residuals give each step's loss for free.
  Plain SGD without averaging takes a lean form of it (`_lean_block`): per
  chunk of `LEAN_ROWS` rows, one triangular solve (`solve_triangular`) and
  one rank-`LEAN_ROWS` update, with no impulse responses nor inverse.
- **Composed maps** (batches large against the number of features). Each
  step is the map ``z -> T z + u`` of the params (and momentum); maps are
  composed by `jax.lax.associative_scan`, so a block of T steps takes
  O(log T) dependent operations. T is stored as I - E: composing keeps the
  small deviations E exactly where I - E would round them away.

Both apply to plain SGD, momentum and Nesterov, with an L2 penalty, sample
weights, any learning-rate schedule (rates are fixed for an epoch before it
starts: the adaptive schedule changes only between epochs), averaging, and
``fit_intercept=False``. What is not affine in the params (other losses, L1,
Adam or an optax transformation, a capped slope) is refused by `unsupported`.

Float32 products run at the highest precision (GPUs would otherwise round
them to TF32).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import losses as losses_lib
from jaxlr import schedules

HIGHEST = jax.lax.Precision.HIGHEST

# Rows per chunk of the chunked form: its Gram is CHUNK_ROWS², its work per
# row grows with it, while the steps left in sequence shrink with it.
CHUNK_ROWS = 32
# Rows per chunk of the lean form (`_lean_block`): measured on a 2-core CPU at
# batch 1, 16 beat 8 and 32 at d = 10, 100 and 300 (the Gram and the system
# grow with it, the steps left in sequence shrink).
LEAN_ROWS = 16
# Rows gathered at once: the chunks of a block are prepared together.
BLOCK_ROWS = 8192
# Steps composed at once by the map form: memory is MAP_STEPS (d+1)² floats
# per block (twice for momentum).
MAP_STEPS = 256


def unsupported(spec) -> Optional[str]:
    """Why the scan engine cannot run `spec` exactly, or None when it can."""
    if squared_factor(spec.loss) is None:
        return f"`loss` (={spec.loss.name!r}): only the squared loss makes a step affine in the params"
    if spec.rule not in ("sgd", "momentum", "nesterov"):
        name = spec.rule if isinstance(spec.rule, str) else "an optax transformation"
        return f"`optimizer` (={name!r}): only sgd, momentum and nesterov steps are affine in the params"
    if spec.l1:
        return "an L1 `penalty`: its clipped step is not affine in the params"
    if spec.max_slope is not None and (spec.rule != "sgd" or spec.average):
        # Plain SGD checks each epoch's slopes and runs it in sequence when one reached the cap.
        return "`max_slope` with momentum, nesterov or averaging: a capped slope is not affine in the params"
    if spec.sharding is not None:
        return "several `devices`: the scan engine runs on one"
    return None


def poorly_scaled(X, y) -> Optional[str]:
    """Why the scan engine's float32 error bound may not hold for this data,
    or None. The chunks' residuals are solved from their rows' Gram matrix,
    whose rounding grows with the features' spread of scales and with a
    target far from its mean (measured: 10x the fused engine's error at a y
    offset of 1e4, 30x with features scaled by 1e-3)."""
    scale = np.sqrt(np.asarray(_column_power(X), np.float64))
    y_mean, spread = (np.asarray(v, np.float64) for v in _mean_and_spread(y))
    if scale.size and (scale.min() < 0.1 or scale.max() > 10):
        return f"the features' root mean squares run from {scale.min():.2g} to {scale.max():.2g}"
    if np.any(np.abs(y_mean) > 10 * np.maximum(spread, 1e-30)):
        return f"the target's mean ({float(np.abs(y_mean).max()):.3g}) is far from zero against its spread"
    return None


@jax.jit
def _column_power(X):
    return jnp.mean(jnp.square(X.astype(jnp.float32)), axis=0)


@jax.jit
def _mean_and_spread(y):
    y = y.astype(jnp.float32)
    mean = jnp.mean(y, axis=0)
    return mean, jnp.sqrt(jnp.mean(jnp.square(y - mean[None, :]), axis=0))


def squared_factor(loss) -> Optional[float]:
    """c when `loss` is c times the squared error, else None."""
    function: Any = loss.function
    factor = 1.0
    while isinstance(function, losses_lib._Scaled):
        function, factor = function.function, factor * function.factor
    return factor if function is losses_lib.squared else None


def is_lean(spec, batch_size: int, features: int) -> bool:
    """Whether the epoch runs in the lean chunked form (`_lean_block`): plain
    SGD without averaging, whose only per-step scalars are a rate and L2's
    shrink, on batches too small for the map form."""
    return spec.rule == "sgd" and not spec.average and not uses_maps(batch_size, features)


def uses_maps(batch_size: int, features: int) -> bool:
    """Whether batches are large enough against the features for the map form."""
    return batch_size >= 2 * (features + 1)


# ------------------------------------------------------------------ the rule's scalars


def _dimension(rule) -> int:
    return 1 if rule == "sgd" else 2  # (W) or (W, velocity)


def _transfer(rule, lr, momentum, decay, live):
    """Each step's scalar map of one coordinate: ``z' = M z + n g``.

    z is (W) for sgd and (W, v) for momentum and Nesterov; g is the data
    gradient of that coordinate; `decay` is the L2 strength on it (0 for the
    intercept). A step with no real rows (`live` False) leaves z as it is.
    Returns M of shape (..., s, s) and n of shape (..., s).
    """
    lr, decay, live = jnp.broadcast_arrays(lr, decay, live)
    one = jnp.ones_like(lr)
    if rule == "sgd":
        M = jnp.maximum(0, 1 - lr * decay)[..., None, None]  # L2's shrink stops at zero (`penalties.l2_shrink`)
        n = (-lr)[..., None]
    else:
        # optax.trace: v' = g + mu v, then W' = W - lr v' (or, Nesterov,
        # W' = W - lr (g + mu v')), the gradient g including the L2 term.
        push = lr if rule == "momentum" else lr * (1 + momentum)
        carry = lr * momentum if rule == "momentum" else lr * momentum**2
        M = jnp.stack([jnp.stack([1 - push * decay, -carry], -1), jnp.stack([decay * one, momentum * one], -1)], -2)
        n = jnp.stack([-push, one], -1)
    eye = jnp.broadcast_to(jnp.eye(M.shape[-1], dtype=M.dtype), M.shape)
    M = jnp.where(live[..., None, None], M, eye)
    n = jnp.where(live[..., None], n, 0)
    return M, n


def _impulses(M, n, weights):
    """How a chunk's steps move its coordinates, from each step's (M, n).

    Args:
        M: (..., k, s, s) and n: (..., k, s), step by step.
        weights: (..., k), which updates the running average takes in.

    Returns:
        start: (..., k + 1, s, s), the map from z0 to z before each step and
            after the last; pushes: (..., k + 1, s, k), the response of z
            before each step (and after the last) to each step's gradient,
            zero for the steps not yet taken; and the same two summed over
            the states after each step with `weights` (for the average).
    """
    k, s = n.shape[-2], n.shape[-1]
    batch = n.shape[:-2]
    eye = jnp.broadcast_to(jnp.eye(s, dtype=M.dtype), (*batch, s, s))
    none = jnp.zeros((*batch, s, k), M.dtype)

    def body(carry, step):
        Phi, U, Phi_sum, U_sum = carry
        M_t, n_t, w_t, t = step
        before = (Phi, U)
        Phi = _small_matmul(M_t, Phi)
        U = _small_matmul(M_t, U)
        arriving = (jnp.arange(k) == t).astype(U.dtype).reshape((1,) * (U.ndim - 1) + (k,))
        U = U + n_t[..., :, None] * arriving
        w = w_t[..., None, None]
        return (Phi, U, Phi_sum + w * Phi, U_sum + w * U), before

    moved = jnp.moveaxis
    steps = (moved(M, -3, 0), moved(n, -2, 0), moved(weights, -1, 0), jnp.arange(k))
    (Phi, U, Phi_sum, U_sum), (Phis, Us) = jax.lax.scan(body, (eye, none, jnp.zeros_like(eye), none), steps)
    start = jnp.concatenate([moved(Phis, 0, -3), Phi[..., None, :, :]], -3)
    pushes = jnp.concatenate([moved(Us, 0, -3), U[..., None, :, :]], -3)
    return start, pushes, Phi_sum, U_sum


def _impulses_plain(M, n, weights):
    """`_impulses` for steps whose M is 1 (plain SGD without L2), in closed form."""
    k = n.shape[-2]
    batch = n.shape[:-2]
    start = jnp.ones((*batch, k + 1, 1, 1), n.dtype)
    later = (jnp.arange(k + 1)[:, None] > jnp.arange(k)[None, :]).astype(n.dtype)  # step i before state t
    pushes = (later.reshape((1,) * len(batch) + (k + 1, 1, k)) * n[..., None, :, 0][..., None, :])
    start_sum = jnp.sum(weights, -1)[..., None, None]
    from_each = jnp.cumsum(weights[..., ::-1], -1)[..., ::-1]  # weights of the states after step i onwards
    push_sum = (n[..., 0] * from_each)[..., None, :]
    return start, pushes, start_sum, push_sum


# ------------------------------------------------------------------ one epoch


def run_epoch(spec, numbers, state, data, order, in_sequence=None):
    """`core.run_epoch`, computed in parallel time (same results to rounding).

    `in_sequence()` runs the epoch step by step instead: with a slope cap,
    the epoch falls back on it when a row's slope reached the cap."""
    X, y, weight = data.X, data.y, data.weight
    dtype = X.dtype
    d, K = X.shape[1], y.shape[1]
    B = spec.batch_size
    steps = order.shape[0] // B
    maps = uses_maps(B, d)
    # Steps per chunk: a power of two, for the inverse's doubling (the lean
    # form solves its system directly, and takes any whole number of steps).
    if maps:
        k = 1
    elif is_lean(spec, B, d):
        k = max(1, LEAN_ROWS // B)
    else:
        k = 1 << max(0, (CHUNK_ROWS // B).bit_length() - 1)
    if maps:
        C = MAP_STEPS
    elif is_lean(spec, B, d):
        C = max(1, BLOCK_ROWS // (k * B))  # chunks per block
    else:
        C = max(1, BLOCK_ROWS // (k * B) // k)
    per_block = C * k
    blocks = -(-steps // per_block)
    total = blocks * per_block
    # Steps past the epoch's (padding of the order) read no real row.
    sentinel = jnp.iinfo(jnp.int32).max
    rows = jnp.full(total * B, sentinel, jnp.int32).at[: steps * B].set(order[: steps * B])
    rows = rows.reshape(blocks, per_block, B)

    index = jnp.arange(total, dtype=jnp.int32)
    lr = schedules.rate(spec.schedule, numbers.rate, state.step + 1 + index, state.stop.drops).astype(dtype)
    lr = jnp.broadcast_to(lr, (total,))
    factor = squared_factor(spec.loss)
    rule, s = spec.rule, _dimension(spec.rule)
    momentum = jnp.asarray(numbers.rule.momentum, dtype)
    l2 = jnp.asarray(numbers.penalty.l2 if spec.l2 else 0.0, dtype)
    average_from = numbers.average_start

    # The state as one array Z of shape (s, d + 1, K): W̃ = (w; b), then the velocity.
    Z = jnp.concatenate([state.params.w, state.params.b[None]], 0)[None]
    if s == 2:
        trace = state.opt_state.trace
        Z = jnp.concatenate([Z, jnp.concatenate([trace.w, trace.b[None]], 0)[None]], 0)

    def gather(block_rows):
        stored = jnp.minimum(block_rows, X.shape[0] - 1)
        real = block_rows < data.n
        row_weight = real.astype(dtype) if weight is None else jnp.where(real, weight[stored], 0)
        return X[stored], y[stored], real, row_weight

    def step_scalars(real, block_lr, first):
        count = jnp.sum(real, axis=-1)
        live = count > 0
        scale = 2 * factor / (jnp.maximum(count, 1).astype(dtype) * K)
        t = state.step + first + 1 + jnp.arange(real.shape[0])  # the update number of each step
        takes = live & (t >= average_from) if spec.average else jnp.zeros_like(live)
        return count, live, scale, takes.astype(dtype)

    form = _map_block if maps else _lean_block if is_lean(spec, B, d) else _chunk_block
    carry = (Z, state.average, state.step)
    carry, outputs = jax.lax.scan(
        lambda carry, block: form(spec, carry, block, gather=gather, step_scalars=step_scalars, lr=lr,
                                  momentum=momentum, l2=l2, k=k, C=C, s=s, rule=rule, factor=factor,
                                  average_from=average_from),
        carry, (rows, jnp.arange(blocks) * per_block),
    )  # fmt: skip
    Z, average, _ = carry
    step_losses, plain, norms, steepest = (o.reshape(-1)[:steps] for o in outputs)

    real_steps = (data.n + B - 1) // B
    is_real = jnp.arange(steps) < real_steps
    shown = is_real & state.ok
    step_losses = jnp.where(shown, step_losses, jnp.nan)
    watched = None
    if spec.stops:
        watched = jnp.where(shown, plain + 0.5 * l2 * norms, jnp.nan)
    moving = state.moving
    moving_out = jnp.full(steps, jnp.nan, dtype)
    if spec.smooth:
        moving_out = smooth_masked(step_losses, is_real, numbers.smoothing, state.moving)
        moving = jnp.where(real_steps > 0, moving_out[jnp.maximum(real_steps - 1, 0)], state.moving)
    new = state._replace(
        params=state.params._replace(w=Z[0, :d], b=Z[0, d]), moving=moving, average=average,
        step=state.step + real_steps.astype(state.step.dtype),
        ok=state.ok & jnp.all(losses_lib.loss_ok(step_losses, numbers.loss_limit) | ~is_real),
        last_loss=step_losses[jnp.maximum(real_steps - 1, 0)],
    )  # fmt: skip
    if s == 2:
        velocity = state.params._replace(w=Z[1, :d], b=Z[1, d])
        new = new._replace(opt_state=state.opt_state._replace(trace=velocity))
    if spec.max_slope is not None:
        # Exact while no row's slope reached the cap; else the epoch is run
        # again in sequence from its start, capped step by step.
        capped = jnp.any(steepest > spec.max_slope)
        return jax.lax.cond(capped, in_sequence, lambda: (new, (step_losses, moving_out, watched)))
    return new, (step_losses, moving_out, watched)


def _step_losses(spec, entries, count, row_weight, real, k):
    """Each step's mean loss from its rows' loss entries (C chunks of k steps
    of B rows and K outputs): weighted, and plain where the stopping rule
    reads the unweighted loss."""
    C, R, K = entries.shape
    counts = jnp.maximum(count.reshape(C, k), 1).astype(entries.dtype) * K
    by_step = lambda a: jnp.sum(a.reshape(C, k, R // k, K), (2, 3)) / counts  # noqa: E731
    weighted = by_step(row_weight.reshape(C, R)[..., None] * entries)
    plain = by_step(real.reshape(C, R)[..., None] * entries) if spec.stops and spec.weighted else weighted
    return weighted, plain


def _average_into(average, sums, taken, step_before, average_from):
    """The running mean of the params after `taken` more updates whose params sum to `sums` (d + 1, K)."""
    done = jnp.maximum(step_before - average_from + 1, 0).astype(taken.dtype)
    total = jnp.maximum(done + taken, 1)
    d = average.w.shape[0]
    moved = average._replace(w=average.w + (sums[:d] - taken * average.w) / total,
                             b=average.b + (sums[d] - taken * average.b) / total)  # fmt: skip
    return jax.tree.map(lambda a, b: jnp.where(taken > 0, a, b), moved, average)


def _per_row(table, rows):
    """A per-step table's last axis repeated for each of a step's `rows` (a broadcast, not a gather)."""
    return jnp.broadcast_to(table[..., None], (*table.shape, rows)).reshape(*table.shape[:-1], -1)


def _by_coordinate(table, d):
    """A (2, ...) table of the w class and the intercept's class as (..., d + 1), one entry per coordinate."""
    return jnp.concatenate([jnp.repeat(table[0][..., None], d, -1), table[1][..., None]], -1)


def _chunk_block(spec, carry, block, *, gather, step_scalars, lr, momentum, l2, k, C, s, rule, factor,
                 average_from):  # fmt: skip
    """A block of C chunks of k steps in the chunked-residual form.

    Everything that does not depend on the params is prepared for all chunks
    at once; what is left in sequence is, per chunk,

        e = A Z - v,     Z' = T ∘ Z + Pᵀ e,

    the residuals of the chunk's rows from its starting state Z, and the
    state after it.
    """
    block_rows, first = block
    Z, average, step_before = carry
    Xb, yb, real, row_weight = gather(block_rows)  # (C k, B, ...)
    per, B, d = Xb.shape
    K = yb.shape[-1]
    R, D = k * B, d + 1
    dtype = Xb.dtype
    block_lr = jax.lax.dynamic_slice_in_dim(lr, first, per)
    count, live, scale, takes = step_scalars(real, block_lr, first)

    # The rule's scalars for the w coordinates (decayed by L2) and the intercept.
    decay = jnp.stack([jnp.full_like(block_lr, l2), jnp.zeros_like(block_lr)])  # (2, per)
    M, n = _transfer(rule, block_lr, momentum, decay, live)
    if not spec.fit_intercept:
        n = n.at[1].set(0)  # the intercept's gradient is held at zero
    chunked = lambda a: a.reshape(a.shape[0], C, k, *a.shape[2:])  # noqa: E731
    weights = jnp.broadcast_to(takes.reshape(C, k), (2, C, k))
    plain = rule == "sgd" and not spec.l2  # M = 1: a gradient moves W by -lr once and for all
    start, pushes, start_sum, push_sum = (_impulses_plain if plain else _impulses)(chunked(M), chunked(n), weights)
    # start: (2, C, k+1, s, s); pushes: (2, C, k+1, s, k); start_sum: (2, C, s, s); push_sum: (2, C, s, k)

    X_c = Xb.reshape(C, R, d)
    Xt = jnp.concatenate([X_c, jnp.ones((C, R, 1), dtype)], -1)  # rows x̃ = (x, 1)
    y_c = yb.reshape(C, R, K)
    gain = (scale[:, None] * row_weight).reshape(C, R)  # a row's weight in its step's gradient
    rows_of = functools.partial(_per_row, rows=B)  # per step -> per row, along the last axis

    # Row r's residual from the chunk's start: Σ_j start[t(r)][0, j] x̃_r · Z[j].
    F = jnp.moveaxis(rows_of(jnp.moveaxis(_by_coordinate(start[:, :, :k, 0, :], d), 1, -1)), -1, 1)
    F = F * Xt[:, :, None]  # (C, R, s, D)
    F = F.reshape(C, R, s * D)
    targets = y_c
    if k > 1:
        # How row q's gradient reaches row r's residual, through w (x_r·x_q) and b.
        both_ways = lambda table: jnp.swapaxes(rows_of(jnp.swapaxes(rows_of(table), -1, -2)), -1, -2)  # noqa: E731
        w_push, b_push = both_ways(pushes[0][:, :k, 0, :]), both_ways(pushes[1][:, :k, 0, :])  # (C, R, R)
        gram = jnp.einsum("crd,cqd->crq", X_c, X_c, precision=HIGHEST)
        lower = (w_push * gram + b_push) * gain[:, None, :]
        inverse = _unit_lower_inverse(jnp.eye(R, dtype=dtype)[None] - lower, B)
        F = jnp.matmul(inverse, F, precision=HIGHEST)
        targets = jnp.matmul(inverse, y_c, precision=HIGHEST)
    T = _by_coordinate(start[:, :, k], d)  # (C, s, s, D): the state after the chunk from the one before
    moved_by = gain[:, None, :, None] * Xt[:, None]  # (C, 1, R, D): a row's gradient per unit of residual
    P = _by_coordinate(rows_of(pushes[:, :, k]), d) * moved_by  # (C, s, R, D): how each row's residual moves Z
    inputs = [F, targets, T, P]
    if spec.average:
        S = _by_coordinate(start_sum[:, :, 0, :], d)  # (C, s, D): the params summed over the chunk...
        Q = _by_coordinate(rows_of(push_sum[:, :, 0, :]), d) * moved_by[:, 0]  # (C, R, D)
        inputs += [S, Q, jnp.sum(takes.reshape(C, k), -1)]

    def chunk(carry, prepared):
        Z, average, step_before = carry
        F, targets, T, P = prepared[:4]
        e = jnp.dot(F, Z.reshape(s * D, K), precision=HIGHEST) - targets  # (R, K)
        moved = jnp.sum(T[..., None] * Z[None], 1) + jnp.einsum("irc,rk->ick", P, e, precision=HIGHEST)
        if spec.average:
            S, Q, taken = prepared[4:]
            sums = jnp.sum(S[..., None] * Z, 0) + jnp.dot(Q.T, e, precision=HIGHEST)  # ...from W0 and the pushes
            average = _average_into(average, sums, taken, step_before, average_from)
        return (moved, average, step_before + k), (e, Z)

    carry, (e, starts) = jax.lax.scan(chunk, carry, tuple(inputs))

    weighted, plain_losses = _step_losses(spec, factor * e * e, count, row_weight, real, k)
    norms = jnp.zeros((C, k), dtype)
    if spec.stops and spec.l2:
        # ||w||² before each step: from the chunk's start and its earlier rows' pushes.
        along = rows_of(pushes[0][:, :k, 0, :])  # (C, k, R)
        w_before = jnp.einsum("ctj,cjdk->ctdk", start[0][:, :k, 0, :], starts[:, :, :d], precision=HIGHEST)
        w_before = w_before + jnp.einsum("ctr,crd,crk->ctdk", along, X_c, gain[..., None] * e, precision=HIGHEST)
        norms = jnp.sum(w_before * w_before, (2, 3))
    return carry, (weighted, plain_losses, norms, jnp.zeros((C, k), dtype))  # max_slope is refused here


def _lean_block(spec, carry, block, *, gather, step_scalars, lr, l2, k, C, factor, **_):
    """A block of C chunks of k steps of plain SGD (no momentum, no average).

    Row r of a chunk, taken at step t(r), has the residual
    e_r = x_r·w_t + b_t - y_r. Unrolling the steps before it from the
    chunk's start (w0, b0), with s_u L2's shrink at step u and
    a_q = lr_t(q) · scale_t(q) · weight_q row q's gain,

        e_r + Σ_{t(q) < t(r)} a_q (Π_{t(q) < u < t(r)} s_u · x_r·x_q + 1) e_q
            = Π_{u < t(r)} s_u · x_r·w0 + b0 - y_r,

    a unit lower triangular system (I + L) e = r0, and the chunk ends at
    w = Π_u s_u · w0 - Σ_q Π_{t(q) < u} s_u · a_q x_q e_q, b = b0 - Σ_q a_q e_q.
    The Grams and L are built for all chunks of the block at once; per chunk
    in sequence remain r0, one triangular solve and the rank-R update.
    """
    block_rows, first = block
    Z, average, step_before = carry
    Xb, yb, real, row_weight = gather(block_rows)  # (C k, B, ...)
    per, B, d = Xb.shape
    K = yb.shape[-1]
    R = k * B
    dtype = Xb.dtype
    block_lr = jax.lax.dynamic_slice_in_dim(lr, first, per)
    count, live, scale, _ = step_scalars(real, block_lr, first)
    # A step of padding moves nothing: the fused step's rate is 0 there, so L2 does not shrink.
    rate = jnp.where(live, block_lr, 0).reshape(C, k)
    gain = ((rate * scale.reshape(C, k))[..., None] * row_weight.reshape(C, k, B)).reshape(C, R)

    step_of_row = jnp.arange(R) // B
    earlier = step_of_row[None, :] < step_of_row[:, None]  # (R, R): row q's step came before row r's
    X_c = Xb.reshape(C, R, d)
    y_c = yb.reshape(C, R, K)
    gram = jnp.einsum("crd,cqd->crq", X_c, X_c, precision=HIGHEST)
    if spec.l2:
        shrink = jnp.maximum(0, 1 - rate * l2)  # (C, k); stops at zero (`penalties.l2_shrink`)
        from_start = jnp.concatenate([jnp.ones((C, 1), dtype), jnp.cumprod(shrink, -1)], -1)  # (C, k + 1)
        # between[c, t, u]: the product of the shrinks of the steps strictly
        # between u and t (t = k: to the chunk's end). As a ratio of running
        # products while every shrink is at least a half (they cannot
        # underflow, and round as the products do), else a product per pair
        # (a shrink may be exactly zero).
        between = jax.lax.cond(jnp.all(shrink >= 0.5), _shrink_ratios, _shrink_products, shrink, from_start)
        by_rows = between[:, :k] if B == 1 else between[:, step_of_row][:, :, step_of_row]  # (C, R, R)
        gram = gram * by_rows
        start_scale = from_start[:, :k] if B == 1 else from_start[:, step_of_row]  # (C, R): w0's shrink by row r's step
        end_scale = from_start[:, k]  # (C,)
        push = (between[:, k] if B == 1 else between[:, k][:, step_of_row]) * gain  # (C, R): row q's pull on w by the chunk's end
    else:
        start_scale = jnp.ones((C, R), dtype)
        end_scale = jnp.ones((C,), dtype)
        push = gain
    coupling = gram + 1 if spec.fit_intercept else gram
    keeps_starts = spec.stops and spec.l2
    system = jnp.where(earlier[None], coupling * gain[:, None, :], 0) + jnp.eye(R, dtype=dtype)[None]

    def chunk(carry, prepared):
        Z, average, step_before = carry
        X_r, y_r, system, start_scale, end_scale, push, gain = prepared
        w, b = Z[0, :d], Z[0, d]
        start = start_scale[:, None] * jnp.dot(X_r, w, precision=HIGHEST) + b[None] - y_r  # (R, K)
        e = jax.scipy.linalg.solve_triangular(system, start, lower=True, unit_diagonal=True)
        w = end_scale * w - jnp.dot(X_r.T, push[:, None] * e, precision=HIGHEST)
        if spec.fit_intercept:
            b = b - jnp.dot(gain, e, precision=HIGHEST)
        return (jnp.concatenate([w, b[None]], 0)[None], average, step_before + k), (e, Z if keeps_starts else None)

    carry, (e, starts) = jax.lax.scan(chunk, carry, (X_c, y_c, system, start_scale, end_scale, push, gain))

    weighted, plain_losses = _step_losses(spec, factor * e * e, count, row_weight, real, k)
    norms = jnp.zeros((C, k), dtype)
    if spec.stops and spec.l2:
        # ||w||² before each step: w0 shrunk, less the pulls of the chunk's earlier rows.
        pulls = jnp.where((step_of_row[None, :] < jnp.arange(k)[:, None])[None], between[:, :k][:, :, step_of_row], 0) * gain[:, None]
        w_before = from_start[:, :k, None, None] * starts[:, None, 0, :d]
        w_before = w_before - jnp.einsum("ctr,crd,crk->ctdk", pulls, X_c, e, precision=HIGHEST)
        norms = jnp.sum(w_before * w_before, (2, 3))
    steepest = _steepest(e.reshape(C, k, B, K), row_weight.reshape(C, k, B), real.reshape(C, k, B), factor)
    return carry, (weighted, plain_losses, norms, steepest)


def _steepest(e, row_weight, real, factor):
    """Each step's largest slope of the loss of a real row of weight > 0,
    |2 c e|, the quantity a `max_slope` caps before the weight scales it (the
    last axes, rows and outputs, reduced)."""
    slope = jnp.abs(2 * factor * e)
    return jnp.max(jnp.where((real & (row_weight > 0))[..., None], slope, 0), axis=(-2, -1))


def _shrink_ratios(shrink, from_start):
    return from_start[:, :, None] / from_start[:, None, 1:]


def _shrink_products(shrink, from_start):
    C, k = shrink.shape
    steps = jnp.arange(k)
    after = steps[None, :] > steps[:, None]  # (u, v): v after u
    through = jnp.cumprod(jnp.where(after[None], shrink[:, None, :], 1), axis=-1)  # (C, u, v): Π_{u < v' <= v}
    return jnp.concatenate([jnp.ones((C, 1, k), shrink.dtype), jnp.swapaxes(through, -1, -2)], 1)


def _map_block(spec, carry, block, *, gather, step_scalars, lr, momentum, l2, k, C, s, rule, factor,
               average_from):  # fmt: skip
    """A block of steps in the composed-map form (one step per "chunk")."""
    block_rows, first = block
    Z, average, step_before = carry
    Xb, yb, real, row_weight = gather(block_rows)  # (T, B, d), (T, B, K)
    T, B, d = Xb.shape
    K = yb.shape[-1]
    block_lr = jax.lax.dynamic_slice_in_dim(lr, first, T)
    count, live, scale, takes = step_scalars(real, block_lr, first)
    dtype = Xb.dtype
    D = d + 1
    ones = jnp.ones((T, B, 1), dtype)
    Xt = jnp.concatenate([Xb, ones], -1)  # (T, B, D)
    gain = scale[:, None] * row_weight  # (T, B)
    # The data gradient is Q W - h with Q = gain-weighted X̃ᵀX̃ and h = X̃ᵀ(gain y).
    Q = jnp.einsum("tbi,tb,tbj->tij", Xt, gain, Xt, precision=HIGHEST)
    h = jnp.einsum("tbi,tb,tbk->tik", Xt, gain, yb, precision=HIGHEST)
    if not spec.fit_intercept:
        Q, h = Q.at[:, d].set(0), h.at[:, d].set(0)
    decay = jnp.concatenate([jnp.full((d,), 1.0, dtype), jnp.zeros((1,), dtype)]) * l2  # L2 on w only
    Qp = Q + jnp.diag(decay)[None]  # the gradient's full linear part (data + L2)
    lr_t = jnp.where(live, block_lr, 0)[:, None, None]
    eye = jnp.eye(D, dtype=dtype)[None]
    if s == 1:
        # z' = z - lr (Qp z - h): E = lr Qp, u = lr h; L2's shrink stops at
        # zero (`penalties.l2_shrink`), so its share of E is at most 1.
        E = lr_t * Q + jnp.minimum(lr_t * jnp.diag(decay)[None], 1.0)
        u = lr_t * h
    else:
        # z = (W, v): v' = Qp W + mu v - h, W' = W - push (Qp W - h) - carry v,
        # push = lr (momentum) or lr (1 + mu) (Nesterov), carry = lr mu or lr mu².
        mu = jnp.where(live, momentum, 1.0)[:, None, None]
        push = lr_t if rule == "momentum" else lr_t * (1 + mu)
        hold = lr_t * mu if rule == "momentum" else lr_t * mu * mu
        live_t = live[:, None, None].astype(dtype)
        top = jnp.concatenate([push * Qp, hold * eye], -1)
        bottom = jnp.concatenate([-live_t * Qp, (1 - mu) * eye + jnp.zeros_like(Qp)], -1)
        E = jnp.concatenate([top, bottom], -2)  # T = I - E
        u = jnp.concatenate([push * h, -live_t * h], -2)

    def compose(earlier, later):
        # (I - E2)((I - E1) z + u1) + u2 = (I - (E1 + E2 - E2 E1)) z + (u1 + u2 - E2 u1)
        E1, u1 = earlier
        E2, u2 = later
        return E1 + E2 - jnp.matmul(E2, E1, precision=HIGHEST), u1 + u2 - jnp.matmul(E2, u1, precision=HIGHEST)

    E_pre, u_pre = jax.lax.associative_scan(compose, (E, u))  # the map from z0 to z after each step
    z0 = Z.reshape(s * D, K)
    after = z0[None] - jnp.matmul(E_pre, z0, precision=HIGHEST) + u_pre  # (T, s D, K)
    W_after = after[:, :D]
    W_before = jnp.concatenate([z0[None, :D], W_after[:-1]], 0)
    e = jnp.einsum("tbi,tik->tbk", Xt, W_before, precision=HIGHEST) - yb
    entries = factor * e * e
    counts = jnp.maximum(count, 1).astype(dtype) * K
    weighted = jnp.sum(row_weight[:, :, None] * entries, (1, 2)) / counts
    plain = weighted
    if spec.stops and spec.weighted:
        plain = jnp.sum(real[:, :, None] * entries, (1, 2)) / counts
    norms = jnp.sum(W_before[:, :d] ** 2, (1, 2))
    if spec.average:
        sums = jnp.einsum("t,tik->ik", takes, W_after, precision=HIGHEST)
        average = _average_into(average, sums, jnp.sum(takes), step_before, average_from)
    steepest = _steepest(e, row_weight, real, factor)
    return (after[-1].reshape(s, D, K), average, step_before + T), (weighted, plain, norms, steepest)


def _small_matmul(a, b):
    """``a @ b`` over batch dimensions. XLA on a CPU runs a batched product
    as one library call per matrix, about a microsecond each: for the small
    matrices here, an elementwise product and sum is far faster."""
    if a.shape[-1] > 16:
        return jnp.matmul(a, b, precision=HIGHEST)
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _unit_lower_inverse(A, block):
    """The inverse of A (..., R, R), lower triangular by blocks of `block`
    rows with identity blocks on its diagonal; R / block a power of two.

    Pairs of inverted diagonal blocks merge level by level,
    ``[[X1, 0], [A21, X2]]^-1 = [[X1, 0], [-X2 A21 X1, X2]]``: log2(R / block)
    rounds of batched matrix products (XLA's own triangular solve runs
    row by row on a CPU, a hundred times slower here).
    """
    R = A.shape[-1]
    batch = A.shape[:-2]
    inverse = jnp.broadcast_to(jnp.eye(block, dtype=A.dtype), (*batch, R // block, block, block))
    m = block
    while m < R:
        pairs = R // (2 * m)
        blocks = A.reshape(*batch, pairs, 2 * m, pairs, 2 * m)
        diagonal = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)  # (..., pairs, 2m, 2m)
        lower = diagonal[..., m:, :m]
        first, second = inverse[..., 0::2, :, :], inverse[..., 1::2, :, :]
        corner = -_small_matmul(second, _small_matmul(lower, first))
        top = jnp.concatenate([first, jnp.zeros_like(first)], -1)
        bottom = jnp.concatenate([corner, second], -1)
        inverse = jnp.concatenate([top, bottom], -2)
        m *= 2
    return inverse[..., 0, :, :]


# ------------------------------------------------------------------ the loss's moving average


def smooth_masked(losses, real, smoothing, start):
    """The moving average after each step, in parallel: real steps move it
    (``m = (1 - s) m + s loss``; from the first loss itself when `start` is
    NaN), other steps leave it."""
    keep = jnp.where(real, 1 - smoothing, 1.0).astype(losses.dtype)
    add = jnp.where(real, smoothing * losses, 0.0).astype(losses.dtype)
    start = jnp.where(jnp.isnan(start), losses[0], start)

    def compose(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    scale, shift = jax.lax.associative_scan(compose, (keep, add))
    return scale * start + shift
