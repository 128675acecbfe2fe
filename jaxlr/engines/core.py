"""The training program every engine shares: one step, one epoch, many epochs.

A step is the lesson's update grown up: the weighted loss of a batch plus the
L2 term is differentiated, the update rule moves the params with the
schedule's learning rate, the L1 part is applied as a clipped step, and then a
few small pure functions each add one thing to the result: the running
average of the params, skipping padding, the divergence guard, and the moving
average of the loss. An epoch scans the step over batches gathered in the
epoch's order; a run loops epochs until the budget is spent, the stopping
rule fires, or the params stop being finite.

What the program does is the static `Spec` (one compiled program per spec and
shapes); every number is a traced value in `Numbers`, so new learning rates,
penalties, tolerances or a new number of rows (rows are padded to a bucketed
count and masked) reuse the compiled program.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import arrays, loop_kernels, penalties, schedules, shuffle
from jaxlr.engines import scan
from jaxlr.losses import Loss, loss_ok
from jaxlr.metrics import r2_from
from jaxlr.model import Params, net
from jaxlr.optim import Rule, RuleNumbers, rule_apply, rule_init

# An epoch gathers the shuffled rows of up to this many bytes of batches at
# once, then scans over them: XLA pays a fixed cost per gather, so small
# batches are gathered many at a time, while a chunk that stays in cache keeps
# large batches streaming and memory bounded whatever n is.
CHUNK_BYTES = 1 << 18


class Spec(NamedTuple):
    """What the program does: hashable, one compiled program per value.

    Attributes:
        loss: the per-entry loss.
        rule: "sgd", "momentum", "nesterov", "adam", or an optax transformation.
        schedule: a name from `jaxlr.schedules.SCHEDULES`, or an optax
            schedule (a function of the step count).
        l1: whether the program applies an L1 step at all.
        l2: whether it adds an L2 term at all.
        average: whether it keeps the running average of the params.
        batch_size: rows per step.
        sharding: with several devices, how each batch is split over them.
        stops: whether a stopping rule watches the epochs (`tol` was given):
            only then does each step also work out the objective it watches.
        fit_intercept: False leaves b where it started.
        weighted: rows carry sample weights (else every real row weighs 1).
        smooth: keep the moving average of the loss (the lesson's curve).
        max_slope: cap on the loss's slope at each prediction, or None.
        guard: check the params after every step and keep the last finite
            ones. The fast program checks only each loss, and the params once
            an epoch; when that finds trouble, the driver replays the block
            with the guard on to find the last finite state.
        parallel: compute each epoch's steps in parallel time
            (`jaxlr.engines.scan`); the guarded replay stays sequential.
        shapes: features, outputs, dtype and the stored (bucketed) rows of
            the data and validation data: part of the key, so that the
            bounded caches of compiled programs are bounded in shapes too.
        values_read: what a user's loss and schedule read when traced (their
            code, the values they close over, the globals they read): part
            of the key, so that one reading a global since changed compiles
            anew, where a jitted function would keep its first trace's value.
    """

    loss: Loss
    rule: Rule = "sgd"
    schedule: schedules.Schedule = "constant"
    l1: bool = False
    l2: bool = False
    average: bool = False
    batch_size: int = 1
    sharding: Any = None
    stops: bool = False
    fit_intercept: bool = True
    weighted: bool = False
    smooth: bool = True
    max_slope: Optional[float] = None
    guard: bool = False
    parallel: bool = False
    shapes: tuple = ()
    values_read: Any = None


class StopNumbers(NamedTuple):
    """The stopping rule: stop after `patience` epochs in a row whose score
    did not beat the best by `tol` (-inf: never stop before the budget)."""

    tol: float = -math.inf
    patience: int = 5


class Numbers(NamedTuple):
    """Every number of a run, traced: changing one compiles nothing."""

    rate: schedules.Rate
    rule: RuleNumbers = RuleNumbers()
    penalty: penalties.Penalty = penalties.Penalty()
    epsilon: float = 0.1
    smoothing: float = 0.01
    average_start: int = 1  # the update count t from which the average runs
    stop: StopNumbers = StopNumbers()
    loss_limit: float = math.inf  # a loss above it counts as diverged (see `jaxlr.train.LOSS_GROWTH`)


class StopState(NamedTuple):
    best: jax.Array  # best score so far (higher is better), -inf at first
    stalled: jax.Array  # epochs in a row without improvement
    drops: jax.Array  # times the adaptive schedule cut the learning rate
    done: jax.Array  # the rule said stop


class FitState(NamedTuple):
    """The run's whole position: continuing from it continues the run exactly.

    Attributes:
        params: the model's Params.
        opt_state: the update rule's state (None for plain SGD).
        step: updates done so far (the schedules' t is step + 1).
        epoch: epochs done so far; epoch e shuffles with a key folded with e.
        moving: the moving average of the loss (NaN before the first step).
        last_loss: the loss of the latest finite step (NaN before any).
        average: the running average of the params (when averaging).
        l1: the cumulative L1 penalty's bookkeeping.
        ok: False once a loss or the params stopped being finite; the state
            then holds the last finite params.
        stop: the stopping rule's memory.
        average_start: the update count t from which `average` runs (0 for
            a run that keeps none): a run continued from this state goes on
            averaging from there. (Last, so that a checkpoint written before
            it holds the other fields in their order.)
    """

    params: Params
    opt_state: Any
    step: jax.Array
    epoch: jax.Array
    moving: jax.Array
    last_loss: jax.Array
    average: Params
    l1: penalties.L1State
    ok: jax.Array
    stop: StopState
    average_start: Any = None  # None only in a state pickled before it was recorded


def init_fit_state(params: Params, rule: Rule, *, epoch: int = 0, step: int = 0, average: bool = True) -> FitState:
    """The state a run starts from: `params`, the rule's fresh state, nothing averaged yet.

    A run that does not average keeps NaN for the running average: a state
    continued with averaging then starts its average afresh, rather than
    take the starting params for the mean of the updates made so far."""
    return _init_fit_state(rule, average)(params, np.int32(epoch), np.int32(step))


@functools.lru_cache(maxsize=16)
def _init_fit_state(rule: Rule, average: bool = True) -> Callable:
    # One compiled call: built eagerly, the state's dozen arrays would cost a
    # dispatch each.
    def build(params, epoch, step):
        dtype = params.w.dtype
        nan = jnp.full((), jnp.nan, dtype)
        unkept = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
        return FitState(
            params=params, opt_state=rule_init(rule, params), step=step, epoch=epoch,
            moving=nan, last_loss=nan, average=params if average else unkept, l1=penalties.l1_init(params.w), ok=jnp.asarray(True),
            stop=StopState(jnp.full((), -jnp.inf, dtype), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                           jnp.asarray(False)),
            average_start=jnp.int32(1 if average else 0),
        )  # fmt: skip

    return jax.jit(build)


class Block(NamedTuple):
    """What a block of epochs produced.

    Attributes:
        state: the FitState after it (not finite if training diverged: see `ok`).
        start: the FitState the block started from (to replay it).
        first_epoch, first_step: where the block started.
        losses, moving: each real step's loss and moving average, shape (steps,).
        epoch_losses: each epoch's mean loss, shape (epochs run,).
        peaks: each epoch's first and largest loss, shape (epochs run, 2), for
            the divergence rule when the steps' losses are not kept.
    """

    state: Any
    start: Any
    first_epoch: int
    first_step: int
    losses: Any
    moving: Any
    epoch_losses: Any
    peaks: Any


class Data(NamedTuple):
    """Rows on the device, and how many of them are real.

    Rows are padded to a bucketed count (a large device array is used as it
    is); an epoch's order lists the n real rows first, then padding, which
    steps skip.

    Attributes:
        X: array of shape (N, d); y: (N, k), N >= n.
        weight: the rows' sample weights, shape (N,); None when all are 1.
        n: the number of real rows (traced).
        val: optional validation Data, scored each epoch by the stopping rule.
    """

    X: Any
    y: Any
    weight: Any
    n: Any
    val: Any = None


# ------------------------------------------------------------------ one step


def descend(spec: Spec, numbers: Numbers, state: FitState, X, y, weight, count, real, lr=None):
    """The update itself: loss gradient (+ L2), the rule's move, then the L1 step.

    Returns the new params, rule state and L1 state; the batch's mean loss
    (weighted, over its real rows and outputs, without penalty); and the
    objective the stopping rule watches (unweighted mean loss plus penalty),
    both before the update.
    """
    if lr is None:
        lr = schedules.rate(spec.schedule, numbers.rate, state.step + 1, state.stop.drops)
    if _rate_stops_on_padding(spec):
        lr = jnp.where(count > 0, lr, jnp.zeros_like(lr))
    count = jnp.maximum(count, 1).astype(X.dtype)
    # Plain SGD shrinks w for L2 before its step, never past zero (scikit-learn's
    # clamp); other rules take L2 as a gradient term.
    shrinks = spec.l2 and spec.rule == "sgd"

    def objective(params):
        yhat = net(params, X)
        if spec.max_slope is not None:
            # scikit-learn caps the loss's slope at each prediction, before the
            # row's weight scales it: an absurd step then moves far but stays finite.
            yhat = _clip_slope(yhat, spec.max_slope * weight[:, None] / (count * y.shape[1]))
        entries = spec.loss.function(yhat, y, numbers.epsilon)
        data_loss = jnp.sum(weight[:, None] * entries) / (count * entries.shape[1])
        plain_loss = None if spec.weighted else data_loss  # unweighted, it is the same
        if spec.stops and spec.weighted:
            plain_loss = jnp.sum(jnp.where(real[:, None], entries, 0)) / (count * entries.shape[1])
        penalty = penalties.l2_term(params.w, numbers.penalty.l2) if spec.l2 and not shrinks else 0.0
        return data_loss + penalty, (data_loss, plain_loss)

    (_, (value, plain)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    if not spec.fit_intercept:
        grads = grads._replace(b=jnp.zeros_like(grads.b))
    watched = None
    if spec.stops:
        watched = plain
        if spec.l2:
            watched = watched + penalties.l2_term(state.params.w, numbers.penalty.l2)
        if spec.l1:
            watched = watched + numbers.penalty.l1 * jnp.sum(jnp.abs(state.params.w))
    start = state.params
    if shrinks:
        start = start._replace(w=penalties.l2_shrink(start.w, lr, numbers.penalty.l2))
    params, opt_state = rule_apply(spec.rule, start, grads, state.opt_state, lr, numbers.rule)
    if not spec.fit_intercept:  # b's gradient is zero, but an optax rule may move it still (weight decay)
        params = params._replace(b=state.params.b)
    l1 = state.l1
    if spec.l1:
        w, l1 = penalties.l1_step(params.w, l1, lr * numbers.penalty.l1)
        params = params._replace(w=w)
    return params, opt_state, l1, value, watched


@jax.custom_vjp
def _clip_slope(yhat, bound):
    """The identity, whose gradient is clipped to [-bound, bound] entry by entry."""
    return yhat


def _clip_slope_forward(yhat, bound):
    return yhat, bound


def _clip_slope_backward(bound, cotangent):
    return jnp.clip(cotangent, -bound, bound), None


_clip_slope.defvjp(_clip_slope_forward, _clip_slope_backward)


def averaged(numbers: Numbers, average: Params, params: Params, t) -> Params:
    """The running mean of the params over updates t >= average_start (scikit-learn's ASGD)."""
    count = t - numbers.average_start + 1
    on = count >= 1
    scale = 1.0 / jnp.maximum(count, 1).astype(params.w.dtype)
    return jax.tree.map(lambda a, p: jnp.where(on, a + (p - a) * scale, a), average, params)


def next_average(moving, value, smoothing):
    """The lesson's smoothed loss: ``m_t = (1 - s) m_{t-1} + s * loss_t``."""
    return (1 - smoothing) * moving + smoothing * value


def sound(params) -> jax.Array:
    """Whether every entry of `params` is finite and at most the square root of
    the largest number of its dtype: beyond that, the squared loss of a
    prediction on features of order one overflows, so the run has diverged
    even where the last loss it saw was finite."""
    checks = []
    for leaf in jax.tree.leaves(params):
        bound = math.sqrt(float(jnp.finfo(leaf.dtype).max))
        checks.append(jnp.all(jnp.abs(leaf) <= bound))  # False for NaN too
    return functools.reduce(jnp.logical_and, checks)


def train_step(spec: Spec, numbers: Numbers, state: FitState, X, y, weight, count, real, lr=None):
    """One step on a batch of rows (X, y) with row weights (0 on padding).

    `count` of the rows are real, marked by the boolean array `real`.

    A batch with no real rows (padding) leaves the state as it is. A step whose
    loss or params are not finite leaves it too, with ``ok`` False: the state
    then keeps the last finite params, and every later step is skipped.

    Returns:
        The new FitState, and the batch's loss (NaN for padding), the moving
        average after it, and the stopping rule's objective.
    """
    if spec.sharding is not None:
        X, y, weight = jax.lax.with_sharding_constraint((X, y, weight), spec.sharding)
    params, opt_state, l1, value, watched = descend(spec, numbers, state, X, y, weight, count, real, lr)
    step = state.step + 1
    average = averaged(numbers, state.average, params, step) if spec.average else state.average
    has_rows = count > 0
    finite = loss_ok(value, numbers.loss_limit)
    if spec.guard:
        # The params, not only the loss: a last step can overflow them with a finite loss.
        finite = finite & sound(params)
    moving = state.moving
    if spec.smooth:
        moving = next_average(jnp.where(jnp.isnan(moving), value, moving), value, numbers.smoothing)
    moved = state._replace(
        params=params, opt_state=opt_state, step=step, l1=l1, average=average, moving=moving, last_loss=value,
    )  # fmt: skip
    if spec.guard:
        new = jax.tree.map(lambda a, b: jnp.where(has_rows & finite & state.ok, a, b), moved, state)
    elif _padding_moves_nothing(spec):
        # A batch of padding has zero weights, so a zero gradient: plain SGD
        # without penalty leaves the params exactly as they were. Only the
        # moving average must be told to wait.
        new = moved._replace(moving=jnp.where(has_rows, moved.moving, state.moving)) if spec.smooth else moved
    else:
        # Only what a batch of padding would move is held back: a select over
        # the whole state on every step costs the fused loop several times
        # its step (measured: 7 x for batch-1 SGD with averaging).
        held = {name: jax.tree.map(lambda a, b: jnp.where(has_rows, a, b), getattr(moved, name), getattr(state, name))
                for name in _padding_moves(spec)}  # fmt: skip
        new = moved._replace(**held)
    new = new._replace(ok=state.ok & (finite | ~has_rows))
    shown = has_rows & state.ok
    watched = None if watched is None else jnp.where(shown, watched, jnp.nan)
    return new, (jnp.where(shown, value, jnp.nan), new.moving, watched)


def _padding_moves_nothing(spec: Spec) -> bool:
    return spec.rule == "sgd" and not (spec.l1 or spec.l2 or spec.average)


def _rate_stops_on_padding(spec: Spec) -> bool:
    """Plain SGD with L2 only: a batch of padding steps at rate 0, which
    leaves the weights exactly as they are (a shrink by 1, a step of 0)
    without holding them back by a select, which costs the fused loop
    several times its step when the running average is selected too."""
    return spec.rule == "sgd" and spec.l2 and not spec.l1 and not spec.guard


def _padding_moves(spec: Spec) -> tuple[str, ...]:
    """The FitState fields that a batch of padding (zero weights, so a zero
    gradient) would still change: the counts, and what decays or averages."""
    fields = ["step", "last_loss", "moving"]
    if spec.rule != "sgd":  # momentum and Adam move on without a gradient
        fields += ["params", "opt_state"]
    if spec.l1 or (spec.l2 and not _rate_stops_on_padding(spec)):  # the penalties shrink the weights
        fields += ["params", "l1"]
    if spec.average:
        fields += ["average"]
    return tuple(dict.fromkeys(fields))


# ------------------------------------------------------------------ one epoch


def run_epoch(spec: Spec, numbers: Numbers, state: FitState, data: Data, order: jax.Array):
    """Every batch of one epoch, in `order` (N row indices, padding last).

    Returns:
        The new state, and the losses, moving averages and stopping-rule
        objectives of the epoch's N / batch_size steps.
    """
    if spec.parallel and not spec.guard:
        in_sequence = functools.partial(run_epoch, spec._replace(parallel=False), numbers, state, data, order)
        return scan.run_epoch(spec, numbers, state, data, order, in_sequence)
    X, y, weight = data.X, data.y, data.weight
    d = X.shape[1]
    B = spec.batch_size
    steps = order.shape[0] // B
    row_bytes = (d + y.shape[1] + 1) * X.dtype.itemsize
    per_chunk = max(1, min(steps, CHUNK_BYTES // (B * row_bytes)))
    num_chunks, leftover = divmod(steps, per_chunk)
    rows = order[: steps * B].reshape(steps, B)

    # The scan carries only the fields a step changes: every carried field
    # costs the loop a little on each of its thousands of iterations.
    changing = _changing_fields(spec)
    fixed = state

    # A step reads only what it needs: each array the loop slices costs
    # every one of its thousands of iterations a little.
    # A named schedule's rates are worked out for the whole epoch at once.
    needs_index = not spec.guard and spec.average
    needs_rates = not spec.guard and spec.schedule != "constant"

    def one(carried, batch):
        X_b, y_b, count, w_b, index, lr = batch
        state = fixed._replace(**dict(zip(changing, carried)))
        if index is not None:  # padding comes last, so step i of the epoch is update number step + i + 1
            state = state._replace(step=fixed.step + index)
        # The padding of an order comes last, so a batch's real rows come first.
        real = jnp.arange(B) < count
        w_b = real.astype(X.dtype) if w_b is None else jnp.where(real, w_b, 0)
        state, outputs = train_step(spec, numbers, state, X_b, y_b, w_b, count, real, lr)
        return tuple(getattr(state, name) for name in changing), outputs

    def train_on(state, chunk):
        # chunk: (m, B) row indices and the m steps' numbers; one gather, then
        # m steps on its slices.
        chunk_rows, index, rates = chunk
        # Padding rows of an order may lie past the end of X (a large array
        # is used as it is, unpadded): they read its last row, with weight 0.
        stored = jnp.minimum(chunk_rows, X.shape[0] - 1)
        gathered = (X[stored], y[stored], jnp.sum(chunk_rows < data.n, axis=-1, dtype=jnp.int32),
                    None if weight is None else weight[stored], index if needs_index else None, rates)  # fmt: skip
        if chunk_rows.shape[0] == 1:
            state, values = one(state, jax.tree.map(lambda a: a[0], gathered))
            return state, jax.tree.map(lambda v: v[None], values)
        if not _carried_packed(spec):
            return jax.lax.scan(one, state, gathered)
        pack, unpack = _packing(state, X.dtype)

        def packed_step(packed, batch):
            carried, outputs = one(unpack(packed), batch)
            return pack(carried), outputs

        packed, values = jax.lax.scan(packed_step, pack(state), gathered)
        return unpack(packed), values

    pieces = []
    carried = tuple(getattr(state, name) for name in changing)
    index = jnp.arange(steps, dtype=jnp.int32)
    rates = None
    if needs_rates:
        rates = schedules.rate(spec.schedule, numbers.rate, fixed.step + 1 + index, fixed.stop.drops)
    if num_chunks:
        chunks = rows[: num_chunks * per_chunk].reshape(num_chunks, per_chunk, B)
        chunk_index = index[: num_chunks * per_chunk].reshape(num_chunks, per_chunk)
        chunk_rates = None if rates is None else rates[: num_chunks * per_chunk].reshape(num_chunks, per_chunk)
        carried, values = jax.lax.scan(train_on, carried, (chunks, chunk_index, chunk_rates))
        pieces.append(jax.tree.map(lambda v: v.reshape(-1), values))
    if leftover:
        tail = slice(num_chunks * per_chunk, None)
        carried, values = train_on(carried, (rows[tail], index[tail], None if rates is None else rates[tail]))
        pieces.append(values)
    outputs = pieces[0] if len(pieces) == 1 else jax.tree.map(lambda *parts: jnp.concatenate(parts), *pieces)
    state = fixed._replace(**dict(zip(changing, carried)))
    if not spec.guard:
        # What the guarded step tracks as it goes, worked out once from the losses.
        losses = outputs[0]
        real_steps = (data.n + B - 1) // B
        is_real = index < real_steps
        state = state._replace(
            step=fixed.step + real_steps.astype(fixed.step.dtype),
            ok=fixed.ok & jnp.all(loss_ok(losses, numbers.loss_limit) | ~is_real),
            last_loss=losses[jnp.maximum(real_steps - 1, 0)],
        )  # fmt: skip
    return state, outputs


def _carried_packed(spec: Spec) -> bool:
    """Whether the loop carries its state as one flat vector (see `_packing`).

    Only where loops run kernel by kernel (`jaxlr.loop_kernels`). There,
    measured on a CPU, batch 1, 20 000 rows: plain SGD with L1 runs 1.2 to 3.7
    times faster packed (d = 300 to 20); with averaging or another rule too,
    packing is faster at d = 20 but slower at d = 100 and 300, so they stay
    apart. With the loop as one kernel, packing made elastic net 1.5 to 6
    times slower (d = 20 to 300; RESULTS.md).
    """
    return spec.l1 and spec.rule == "sgd" and not spec.average and not spec.guard and not loop_kernels.in_effect()


def _packing(carried, dtype):
    """(pack, unpack) for the loop's carried state: its leaves of `dtype` as
    one flat vector, the others as they are. With L1's state carried apart,
    XLA's CPU runtime runs the loop body as a graph of small kernels rather
    than in sequence, at several times the cost of the step itself.
    """
    leaves, treedef = jax.tree.flatten(carried)
    same = [jnp.result_type(leaf) == dtype for leaf in leaves]

    def pack(tree):
        parts = jax.tree.leaves(tree)
        flat = [jnp.ravel(p) for p, s in zip(parts, same) if s]
        return jnp.concatenate(flat), tuple(p for p, s in zip(parts, same) if not s)

    def unpack(packed):
        flat, others = packed
        others, out, offset = iter(others), [], 0
        for leaf, s in zip(leaves, same):
            if s:
                size = int(np.prod(jnp.shape(leaf)))
                out.append(flat[offset : offset + size].reshape(jnp.shape(leaf)))
                offset += size
            else:
                out.append(next(others))
        return jax.tree.unflatten(treedef, out)

    return pack, unpack


def _changing_fields(spec: Spec) -> tuple[str, ...]:
    fields = ["params", "opt_state", "moving"]
    if spec.guard:
        fields += ["step", "last_loss", "ok"]
    if spec.average:
        fields.append("average")
    if spec.l1:
        fields.append("l1")
    return tuple(fields)


def order_length(data: Data, batch_size: int) -> int:
    """Entries in an epoch's order: the stored rows (padded or not) in whole batches."""
    return -(-data.X.shape[0] // batch_size) * batch_size


def device_order(key: jax.Array, n: jax.Array, N: int) -> jax.Array:
    """A random order of the n real rows, then the N - n padding rows, drawn on
    the device: the order the host draws for the same key (`jaxlr.shuffle`)."""
    return shuffle.device_permutation(jax.random.key_data(key), n, N)


# ------------------------------------------------------------------ many epochs


def epoch_score(spec: Spec, numbers: Numbers, state: FitState, data: Data, objectives: jax.Array, real_steps):
    """What the stopping rule maximises: validation R² when there are
    validation rows, else minus the epoch's mean objective (unweighted loss
    plus penalty, each step's taken before its update), as scikit-learn does."""
    if data.val is not None:
        val = data.val
        real = jnp.arange(val.X.shape[0]) < val.n
        weight = (real.astype(val.X.dtype) if val.weight is None else jnp.where(real, val.weight, 0))[:, None]
        return r2_from(net(state.params, val.X), val.y, weight)
    return -mean_loss(objectives, real_steps)


def stop_update(numbers: Numbers, stop: StopState, score, lr_now, adaptive: bool) -> StopState:
    """scikit-learn's rule: an epoch that does not beat the best score by `tol`
    counts as stalled; after `patience` of them in a row, the adaptive schedule
    cuts its rate by 5 (while it is above 1e-6), any other stops."""
    stalled = jnp.where(score < stop.best + numbers.stop.tol, stop.stalled + 1, 0)
    best = jnp.maximum(stop.best, score)
    out_of_patience = stalled >= numbers.stop.patience
    cut = out_of_patience & (lr_now > 1e-6) if adaptive else jnp.asarray(False)
    return StopState(
        best=best, stalled=jnp.where(cut, 0, stalled), drops=stop.drops + cut.astype(stop.drops.dtype),
        done=stop.done | (out_of_patience & ~cut),
    )  # fmt: skip


def run_epochs(spec: Spec, numbers: Numbers, state: FitState, data: Data, orders, num_epochs, *,
               keep_steps: bool, shuffle_key=None, budget: Optional[int] = None):  # fmt: skip
    """Epochs until `num_epochs` ran, the stopping rule fired, or training diverged.

    Args:
        orders: int32 array (E, N) of each epoch's order, drawn on the host;
            or None to draw each on the device from ``fold_in(shuffle_key,
            epoch)`` (or to keep the stored order when shuffle_key is None too).
        num_epochs: the budget (traced); with `orders`, at most E.
        budget: without `orders`, E: the most epochs whose losses are kept.
        keep_steps: also return every step's loss and moving average, as
            arrays of shape (E, N / batch_size), besides each epoch's mean loss
            (shape (E,)); else None in their places.

    Returns:
        The state, and (losses, moving) of shape (E, steps) or None, each
        epoch's mean loss, shape (E,) with E the budget when it is static, and
        each epoch's `peaks`, shape (E, 2).
    """
    N = order_length(data, spec.batch_size)
    steps = N // spec.batch_size
    real_steps = jnp.maximum(1, (data.n + spec.batch_size - 1) // spec.batch_size)
    E = orders.shape[0] if orders is not None else budget
    dtype = data.X.dtype
    start_epoch = state.epoch

    def order_for(i, epoch):
        if orders is not None:
            return orders[i]
        if shuffle_key is None:
            return jnp.arange(N, dtype=jnp.int32)
        return device_order(jax.random.fold_in(shuffle_key, epoch), data.n, N)

    def body(carry):
        state, record = carry
        i = state.epoch - start_epoch
        state, (losses, moving, objectives) = run_epoch(spec, numbers, state, data, order_for(i, state.epoch))
        state = end_epoch(spec, numbers, state, data, objectives, real_steps)
        step_losses, step_moving, epoch_losses, epoch_peaks = record
        if keep_steps:
            step_losses, step_moving = step_losses.at[i].set(losses), step_moving.at[i].set(moving)
        return state, (step_losses, step_moving, epoch_losses.at[i].set(mean_loss(losses, real_steps)),
                       epoch_peaks.at[i].set(peaks(losses)))  # fmt: skip

    def going(carry):
        state, _ = carry
        return (state.epoch - start_epoch < num_epochs) & state.ok & ~state.stop.done

    if orders is not None and keep_steps and not spec.stops:
        # A fixed number of epochs: a plain scan, whose stacked outputs cost
        # less than writing into buffers. `orders` has a bucketed number of
        # rows (so that few programs compile), and the epochs past the budget
        # are skipped. Epochs after a divergence run on non-finite params and
        # change nothing the driver keeps.
        def scan_body(state, order_and_index):
            order, i = order_and_index

            def train(state):
                state, (losses, moving, _) = run_epoch(spec, numbers, state, data, order)
                state = end_epoch(spec, numbers, state, data, losses, real_steps)
                return state, (losses, moving, mean_loss(losses, real_steps), peaks(losses))

            def skip(state):
                nothing = jnp.full(steps, jnp.nan, dtype)
                return state, (nothing, nothing, jnp.full((), jnp.nan, dtype), jnp.full(2, jnp.nan, dtype))

            return jax.lax.cond(i < num_epochs, train, skip, state)

        return jax.lax.scan(scan_body, state, (orders, jnp.arange(orders.shape[0])))
    epoch_losses, epoch_peaks = jnp.full(E, jnp.nan, dtype), jnp.full((E, 2), jnp.nan, dtype)
    record: tuple = (None, None, epoch_losses, epoch_peaks)
    if keep_steps:
        nothing = jnp.full((E, steps), jnp.nan, dtype)
        record = (nothing, nothing, epoch_losses, epoch_peaks)
    state, record = jax.lax.while_loop(going, body, (state, record))
    return state, record


@jax.jit
def smooth(losses, smoothing, start):
    """The moving average after each of `losses`, continuing from `start`
    (NaN: from the first loss itself)."""
    start = jnp.where(jnp.isnan(start), losses[0], start)

    def body(moving, value):
        moving = next_average(moving, value, smoothing)
        return moving, moving

    return jax.lax.scan(body, start, losses)[1]


def peaks(losses):
    """An epoch's first loss and its largest (padding, NaN, left out): what the
    divergence rule needs when the steps' losses are not kept (NumPy in,
    NumPy out)."""
    xp = jnp if isinstance(losses, jax.Array) else np
    seen = xp.where(xp.isnan(losses), -xp.inf, losses)
    return xp.stack([losses[0], xp.max(seen)]) if losses.shape[0] else xp.full(2, xp.nan, losses.dtype)


def mean_loss(losses, count):
    """The mean of an epoch's losses over its `count` real steps (padding is NaN)."""
    return jnp.sum(jnp.where(jnp.isnan(losses), 0, losses)) / count


def end_epoch(spec: Spec, numbers: Numbers, state: FitState, data: Data, objectives, real_steps) -> FitState:
    """After an epoch that did not diverge: count it, and let the stopping rule judge it."""
    stop = state.stop
    if spec.stops:
        score = epoch_score(spec, numbers, state, data, objectives, real_steps)
        lr_now = schedules.rate(spec.schedule, numbers.rate, state.step + 1, state.stop.drops)
        stop = stop_update(numbers, state.stop, score, lr_now, spec.schedule == "adaptive")
    judged = state._replace(epoch=state.epoch + 1, stop=stop)
    # Once an epoch, the params themselves: a last step can overflow them with a finite loss.
    ok = state.ok & sound(state.params)
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), judged, state)._replace(ok=ok)


def _layout(template: Numbers) -> tuple[tuple[str, ...], tuple[str, ...], Any]:
    """The dotted name of each field of `Numbers` ("rate.eta0"), in the tree's
    order, the names of its counts, and the tree: a field whose default is an
    int is a count, packed as int32; the others take the run's float dtype."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(template)
    names = tuple(".".join(key.name for key in path) for path, _ in leaves)
    counts = tuple(name for name, (_, leaf) in zip(names, leaves) if isinstance(leaf, int))
    return names, counts, tree


_FIELD_NAMES, COUNT_NAMES, _NUMBERS_TREE = _layout(Numbers(rate=schedules.Rate(eta0=0.0)))
FLOAT_NAMES = tuple(name for name in _FIELD_NAMES if name not in COUNT_NAMES)


def packed_at(name: str) -> int:
    """Where `pack` puts the float field `name` ("loss_limit", "rate.eta0")."""
    return FLOAT_NAMES.index(name)


def pack(numbers: Numbers, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """`numbers` as one float and one int array on the device: a fit with the
    same numbers as an earlier one copies nothing to the device."""
    try:
        return _packed(numbers, np.dtype(dtype))
    except TypeError:  # a number that cannot be a key (an array)
        return _pack(numbers, dtype)


@functools.lru_cache(maxsize=64)
def _packed(numbers: Numbers, dtype: np.dtype) -> tuple[jax.Array, jax.Array]:
    return _pack(numbers, dtype)


def _pack(numbers: Numbers, dtype: Any) -> tuple[jax.Array, jax.Array]:
    value = dict(zip(_FIELD_NAMES, jax.tree.leaves(numbers)))
    with np.errstate(over="ignore"):  # a limit beyond float32 becomes inf
        floats = np.array([value[name] for name in FLOAT_NAMES], dtype)
    counts = np.array([value[name] for name in COUNT_NAMES], np.int32)
    return on_device(floats), on_device(counts)


def on_device(value: np.ndarray) -> jax.Array:
    """A small host array as a device array, the same one for the same contents."""
    value = np.asarray(value)
    return _on_device(value.tobytes(), value.dtype.str, value.shape)


@functools.lru_cache(maxsize=256)
def _on_device(data: bytes, dtype: str, shape: tuple) -> jax.Array:
    # Each host argument of a compiled call is a copy to the device, tens of
    # microseconds: at the lesson's size, as much as a tenth of the run.
    return jax.device_put(np.frombuffer(data, dtype).reshape(shape))


def unpack(packed) -> Numbers:
    """The inverse of `pack` (inside a compiled program)."""
    floats, counts = packed
    value = {name: floats[i] for i, name in enumerate(FLOAT_NAMES)}
    value.update({name: counts[i] for i, name in enumerate(COUNT_NAMES)})
    return jax.tree.unflatten(_NUMBERS_TREE, [value[name] for name in _FIELD_NAMES])


@functools.lru_cache(maxsize=16)
def program(spec: Spec, keep_steps: bool, draw: str, budget: Optional[int] = None) -> Callable:
    """The compiled training program for a spec: ``(state, data, numbers,
    orders, num_epochs, shuffle_key) -> (state, record)``.

    `draw` is "host" (orders given), "device" (drawn from shuffle_key) or
    "none" (rows in their stored order); `budget`, the most epochs whose
    steps are kept when they are not drawn on the host. A bounded cache:
    evicted programs, and whatever their static arguments hold, are freed.
    """

    fields = _program_fields(spec)
    reads = (*fields, "stop") if "stop" not in fields else fields

    def train(given, data, packed, orders, num_epochs, shuffle_key):
        # The fields the program does not read are rebuilt as constants.
        fresh = _init_fit_state(spec.rule).__wrapped__(given[0], jnp.int32(0), jnp.int32(0))
        state = fresh._replace(**dict(zip(reads, given)))
        state, record = run_epochs(spec, unpack(packed), state, data, orders if draw == "host" else None,
                                   num_epochs, keep_steps=keep_steps,
                                   shuffle_key=shuffle_key if draw == "device" else None, budget=budget)  # fmt: skip
        return tuple(getattr(state, name) for name in fields), record

    compiled = jax.jit(train)

    def run(state, data, packed, orders, num_epochs, shuffle_key):
        # Only the fields the program reads go in and only those it changes
        # come back: each is an argument to pass or a buffer to fill.
        given = tuple(getattr(state, name) for name in reads)
        changed, record = compiled(given, data, packed, orders, num_epochs, shuffle_key)
        return state._replace(**dict(zip(fields, changed))), record

    run.lower = lambda state, *rest: compiled.lower(tuple(getattr(state, name) for name in reads), *rest)  # type: ignore[attr-defined]
    return run


def _program_fields(spec: Spec) -> tuple[str, ...]:
    """The FitState fields a run of epochs changes."""
    fields = (*_changing_fields(spec._replace(guard=True)), "epoch")
    return (*fields, "stop") if spec.stops else fields


@functools.lru_cache(maxsize=16)
def epoch_program(spec: Spec) -> Callable:
    """One pass over `data` in `order`, with no epoch bookkeeping: for a
    stream, whose epoch is many such passes. ``(state, data, numbers, order)
    -> (state, (losses, moving, objectives))``."""
    return jax.jit(lambda state, data, packed, order: run_epoch(spec, unpack(packed), state, data, order))


@functools.lru_cache(maxsize=16)
def step_program(spec: Spec) -> Callable:
    """`train_step` compiled on its own, for the loop engine: ``(carried,
    drops, packed, X, y, weight) -> (carried, loss)``, the loss being
    ``[loss, objective]`` when a stopping rule watches.

    Only the fields a step changes travel in and out (`step_fields`), and
    of the rest only what a step reads (the adaptive schedule's cuts): every
    array passed costs a call a little, and the loop pays it on every batch.
    The moving average is left to the host, which smooths the losses it reads.
    """
    fields = step_fields(spec)
    spec = spec._replace(smooth=False)

    def step(carried, drops, packed, X, y, weight):
        changing = dict(zip(fields, carried))
        fresh = _init_fit_state(spec.rule).__wrapped__(changing["params"], jnp.int32(0), jnp.int32(0))
        state = fresh._replace(**changing)
        if drops is not None:
            state = state._replace(stop=state.stop._replace(drops=drops))
        real = jnp.ones(X.shape[0], bool)
        weight = real.astype(X.dtype) if weight is None else weight
        state, (loss, _, objective) = train_step(spec, unpack(packed), state, X, y, weight, X.shape[0], real)
        # One array out: the host reads each step's back separately.
        reported = loss if objective is None else jnp.stack([loss, objective])
        return tuple(getattr(state, name) for name in fields), reported

    return jax.jit(step)


def step_fields(spec: Spec) -> tuple[str, ...]:
    """The FitState fields the loop engine's step carries (the host counts
    the steps when the schedule does not need them)."""
    fields = tuple(name for name in _changing_fields(spec) if name != "moving")
    if not spec.guard and reads_step(spec):
        fields = (*fields, "step")
    return fields


def reads_step(spec: Spec) -> bool:
    """Whether a step reads the update count: a schedule that changes with it,
    or the running average, which starts at an update number."""
    return spec.schedule != "constant" or spec.average


@functools.lru_cache(maxsize=16)
def epoch_end_program(spec: Spec) -> Callable:
    """`end_epoch` compiled on its own, for engines that loop epochs on the host."""
    return jax.jit(lambda state, data, packed, objectives, real_steps: end_epoch(
        spec, unpack(packed), state, data, objectives, real_steps))


# ------------------------------------------------------------------ padding


def bucket(count: int) -> int:
    """`count` rounded up to one of 32 sizes per power of two (at most ~3 % more).

    Folds of a table differ by a row or two: all land in one bucket and share
    one compiled program.
    """
    if count <= 32:
        return count
    granule = 1 << (count.bit_length() - 6)
    return -(-count // granule) * granule


def padded_rows(n: int, batch_size: int) -> int:
    """Rows the program sees for n real rows: whole batches, a bucketed count of them."""
    return bucket(-(-n // batch_size)) * batch_size


def pad_rows(array, rows: int):
    """`array` with zero rows appended up to `rows` (NumPy stays NumPy)."""
    extra = rows - array.shape[0]
    if extra == 0:
        return array
    if isinstance(array, np.ndarray):
        return arrays.padded(array, rows)
    return jnp.pad(array, [(0, extra)] + [(0, 0)] * (array.ndim - 1))


def clear_caches() -> None:
    """Forgets the programs and device arrays kept here (`jaxlr.clear_caches` frees them all)."""
    for cached in (_init_fit_state, _on_device, _packed, program, epoch_program, step_program, epoch_end_program):
        cached.cache_clear()
