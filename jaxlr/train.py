"""`fit`: the training loop of the lesson, as a Python loop or as one compiled scan."""

import functools
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import checkpoint as checkpoint_lib
from jaxlr import parallel, validate
from jaxlr.data import NpyStream, batches, key_words, permutation_from_words, to_device
from jaxlr.model import Params, init_params, square_loss
from jaxlr.optim import TrainState, init_state, make_step, update

# The fused engine gathers the shuffled rows of up to this many bytes of
# batches at once, then scans over them: XLA pays a fixed cost per gather, so
# small batches are gathered many at a time, while a chunk that stays in cache
# keeps large batches streaming and memory bounded whatever n is.
_CHUNK_BYTES = 1 << 18


class FitResult(NamedTuple):
    """What `fit` returns (and what a `callback` sees after each epoch).

    Attributes:
        params: the learned Params.
        opt_state: the optax optimizer state at the end (None for plain SGD).
        losses: array of shape (steps,), each batch's loss before its update.
        moving_losses: array of shape (steps,), their exponential moving average.
    """

    params: Params
    opt_state: Any
    losses: jax.Array
    moving_losses: jax.Array


class TrainingDiverged(FloatingPointError):
    """Training stopped because a loss or an update was no longer finite.

    Attributes:
        epoch, batch: where it happened (batch counts from 0 within the epoch).
        last_finite_loss: the loss of the last good step (None if there was none).
        params: the last finite parameters, from just before that step.
        opt_state: the optimizer state that goes with them.
    """

    def __init__(self, epoch, batch, last_finite_loss, state, lr):
        self.epoch, self.batch = epoch, batch
        self.last_finite_loss = last_finite_loss
        self.params, self.opt_state = state.params, state.opt_state
        last = "none" if last_finite_loss is None else f"{last_finite_loss:.3g}"
        rate = f"`lr` (={lr})" if lr is not None else "the optimizer's learning rate"
        super().__init__(
            f"training diverged at epoch {epoch}, batch {batch}: the loss or the parameters "
            f"stopped being finite (last finite loss: {last}). Lower {rate}, or standardize "
            "the features so that they share one scale."
        )


def fit(
    X,
    y,
    *,
    key,
    epochs=2,
    lr=0.001,
    batch_size=4,
    params=None,
    optimizer=None,
    engine="fused",
    log_every=500,
    smoothing=0.01,
    verbose=False,
    device=None,
    opt_state=None,
    initial_epoch=0,
    callback=None,
    checkpoint=None,
    checkpoint_every=1,
    resume=False,
    devices=None,
    chunk_bytes=64 << 20,
):
    """Trains a linear model by mini-batch SGD (or an optax optimizer).

    Both engines run the same step on the same batches in the same order:
    ``"loop"`` feeds the jitted step from the `batches` generator in a Python
    loop, as the lesson does; ``"fused"`` runs the whole training as one
    compiled `lax.scan`. Neither reads a loss back to the host every step.

    Args:
        X: array of shape (n, d); bool and int are cast to float.
        y: array of shape (n, k), or (n,) for one output.
        key: PRNG key. It is split into an initialisation key and a shuffle
            key; epoch e shuffles with ``fold_in(shuffle_key, e)``, so the order
            of any epoch does not depend on the epochs before it.
        epochs: passes over the data.
        lr: SGD learning rate (optax optimizers carry their own).
        batch_size: rows per step, between 1 and n; the last batch of an
            epoch is short when it does not divide n.
        params: starting Params; None draws them with `init_params`.
        optimizer: None for the hand-written `sgd`, or an optax transformation.
        engine: "fused" or "loop".
        log_every: with `verbose`, print a line every this many batches.
        smoothing: weight of the newest loss in the moving average, in (0, 1].
        verbose: print the lesson's progress lines (the fused engine prints
            them when its program returns).
        device: a `jax.Device`, or a platform name such as "cpu" or "gpu",
            to hold the data and the parameters; None for JAX's default.
        opt_state: the optimizer state to continue from, with `params`.
        initial_epoch: index of the first epoch, to continue a run: with the
            same key, the params and opt_state after epoch e-1, and
            ``initial_epoch=e``, the result is that of one uninterrupted run.
        callback: called as ``callback(epoch, result)`` after each epoch, with
            a FitResult for that epoch; returning True stops training. The
            fused engine then compiles one epoch at a time.
        checkpoint: a directory to save the run in every `checkpoint_every`
            epochs (and after the last), atomically, keeping the previous one.
        checkpoint_every: epochs between checkpoints.
        devices: data parallelism: a number of devices, a list of them, or a
            one-axis `jax.sharding.Mesh`. Each batch is split by rows over
            them (`batch_size` must divide evenly), the params are replicated,
            and XLA sums the gradients; the steps are those of one device.
            X and y may be global arrays built across processes (see
            `jaxlr.parallel`). Not with `device`.
        chunk_bytes: for X given as a `numpy.memmap` or an `NpyStream`: the
            size of the chunks read from disk. Each epoch visits the chunks in
            a new random order and shuffles fully within each chunk, which is
            not a global permutation: larger chunks mix more, smaller ones
            need less memory (about three chunks at a time).
        resume: continue from the newest good checkpoint in `checkpoint`, if
            any: the run then trains only the epochs still missing from
            ``initial_epoch + epochs`` and ends with the params an
            uninterrupted run would have. The key and settings must match.

    Returns:
        FitResult.

    Raises:
        TrainingDiverged: a loss or an update stopped being finite; the error
            carries the last finite params.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> result = fit(X, y, key=jax.random.key(1))
        >>> result.params.w.ravel()  # close to [2, -3.4]
    """
    key = validate.check_key(key)
    if isinstance(X, np.memmap):
        X = NpyStream.from_memmap(X, y)
    stream = X if isinstance(X, NpyStream) else None
    if stream is not None:
        n, d, k, dtype = stream.num_rows, stream.num_features, stream.num_outputs, stream.dtype
        chunk_bytes = validate.check_int("chunk_bytes", chunk_bytes, low=1)
    else:
        X, y = validate.training_arrays(X, y)
        (n, d), k, dtype = X.shape, y.shape[1], X.dtype
    epochs = validate.check_int("epochs", epochs, low=0)
    initial_epoch = validate.check_int("initial_epoch", initial_epoch, low=0)
    batch_size = validate.check_int(
        "batch_size", batch_size, low=1, high=n, high_name="the number of examples"
    )
    optimizer = validate.check_optimizer(optimizer)
    # An optax transformation carries its own learning rate.
    lr = validate.check_real("lr", lr, low=0.0) if optimizer is None else None
    smoothing = validate.check_real("smoothing", smoothing, low=0.0, high=1.0)
    log_every = validate.check_int("log_every", log_every, low=1)
    engine = validate.check_choice("engine", engine, ("fused", "loop"))
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` (={callback!r}) must be a function (epoch, result) -> bool.")
    device = _as_device(device)
    mesh = parallel.data_mesh(devices)
    if mesh is not None:
        if device is not None:
            raise ValueError("give `device` or `devices`, not both.")
        if batch_size % mesh.size:
            raise ValueError(
                f"`batch_size` (={batch_size}) must be divisible by the number of devices (={mesh.size})."
            )
        if engine == "loop" and jax.process_count() > 1:
            raise ValueError("across processes use engine='fused': the loop feeds batches from one host.")
    if stream is not None and (engine != "fused" or mesh is not None or device is not None):
        raise ValueError("data streamed from disk trains with engine='fused' on the default device.")
    saving = None
    if checkpoint is not None:
        checkpoint_every = validate.check_int("checkpoint_every", checkpoint_every, low=1)
        Path(checkpoint).mkdir(parents=True, exist_ok=True)
        # The optimizer is recorded by the structure of its state.
        optimizer_kind = repr(jax.tree.structure(_Saving.opt_state_like(optimizer, d, k, dtype)))
        saving = _Saving(
            directory=checkpoint, every=checkpoint_every, key_words=key_words(key),
            settings={"examples": n, "features": d, "outputs": k, "batch_size": batch_size, "lr": lr,
                      "optimizer": None if optimizer is None else optimizer_kind},
        )  # fmt: skip
    elif resume:
        raise ValueError("`resume` needs `checkpoint`, the directory to resume from.")
    moving_start = None
    if resume:
        found = checkpoint_lib.latest(checkpoint, saving.opt_state_like(optimizer, d, k, dtype))
        if found is not None:
            saving.check_matches(found, checkpoint)
            end = initial_epoch + epochs
            params, opt_state, moving_start = found.params, found.opt_state, found.moving_last
            initial_epoch, epochs = found.epoch, max(0, end - found.epoch)

    epoch_ids = np.arange(initial_epoch, initial_epoch + epochs)
    initial_params, epoch_words = _start(key, epoch_ids, num_inputs=d, num_outputs=k, dtype=dtype)
    if params is None:
        params = initial_params
    else:
        params = validate.check_params(params, d, k)
        params = Params(*(jnp.asarray(p, dtype) for p in params))
    state = init_state(params, optimizer)
    if opt_state is not None:
        if optimizer is None:
            raise ValueError("`opt_state` was given without the `optimizer` it belongs to.")
        state = state._replace(opt_state=opt_state)
    if device is not None:
        state = jax.device_put(state, device)
    if mesh is not None:
        state = parallel.put_replicated(state, mesh)
        X, y = (a if isinstance(a, jax.Array) and not a.is_fully_addressable else parallel.put_replicated(a, mesh)
                for a in (X, y))  # fmt: skip

    if saving is not None:
        callback = saving.callback(initial_epoch + epochs, moving_start, callback)
    run = _Run(
        lr=lr, batch_size=batch_size, optimizer=optimizer, smoothing=smoothing,
        log_every=log_every if verbose else None, callback=callback,
        steps_per_epoch=-(-n // batch_size), moving_start=moving_start,
        mesh=mesh,
    )  # fmt: skip
    epochs_and_words = list(zip(epoch_ids.tolist(), np.asarray(epoch_words)))
    if stream is not None:
        return _run_streamed(state, stream, epochs_and_words, run, chunk_bytes)
    if engine == "loop":
        return _run_loop(state, X, y, epochs_and_words, run)
    X, y = to_device(X, device), to_device(y, device)
    return _run_fused(state, X, y, epochs_and_words, run)


class SweepResult(NamedTuple):
    """What `sweep` returns: one leading axis of size m, one entry per learning rate.

    Attributes:
        lrs: array of shape (m,).
        params: Params with w of shape (m, d, k) and b of shape (m, k).
        losses: array of shape (m, steps).
        moving_losses: array of shape (m, steps).
        diverged: bool array of shape (m,): True where a loss stopped being finite
            (that run's params and later losses are then not finite either).
    """

    lrs: jax.Array
    params: Params
    losses: jax.Array
    moving_losses: jax.Array
    diverged: jax.Array


def sweep(X, y, *, key, lrs, epochs=2, batch_size=4, params=None, smoothing=0.01, device=None):
    """Trains one model per learning rate, all at once, as one compiled program.

    The runs share the key, so they see the same initial params and the same
    batches in the same order; `jax.vmap` turns the m parameter updates of a
    step into one batched computation over the gathered batch. Run i equals
    ``fit(X, y, key=key, lr=lrs[i], ...)`` with the fused engine. Plain SGD
    only: an optax optimizer fixes its learning rate when it is built.

    Args:
        X, y, key, epochs, batch_size, params, smoothing, device: as for `fit`.
        lrs: 1-D sequence of m learning rates, each finite and > 0.

    Returns:
        SweepResult. A run that diverges does not stop the others: see `diverged`.

    Example:
        >>> lrs = jnp.logspace(-4, -1, 64)
        >>> result = sweep(X, y, key=jax.random.key(0), lrs=lrs)
        >>> best = jnp.argmin(result.moving_losses[:, -1])
    """
    key = validate.check_key(key)
    X, y = validate.training_arrays(X, y)
    n, d = X.shape
    k = y.shape[1]
    epochs = validate.check_int("epochs", epochs, low=1)
    batch_size = validate.check_int(
        "batch_size", batch_size, low=1, high=n, high_name="the number of examples"
    )
    smoothing = validate.check_real("smoothing", smoothing, low=0.0, high=1.0)
    rates = np.asarray(lrs, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError(f"`lrs` must be a non-empty 1-D sequence, got shape {rates.shape}.")
    if not (np.all(np.isfinite(rates)) and np.all(rates > 0)):
        raise ValueError(f"`lrs` must all be finite and > 0; got {rates[~(np.isfinite(rates) & (rates > 0))][:3]}.")
    device = _as_device(device)
    initial_params, epoch_words = _start(key, np.arange(epochs), num_inputs=d, num_outputs=k, dtype=X.dtype)
    if params is None:
        params = initial_params
    else:
        params = Params(*(jnp.asarray(p, X.dtype) for p in validate.check_params(params, d, k)))
    orders = _shuffled_orders(np.asarray(epoch_words), n)
    X, y = to_device(X, device), to_device(y, device)
    state, rates = init_state(params), rates.astype(X.dtype)
    if device is not None:
        state, rates = jax.device_put((state, rates), device)
    params, ok, losses, moving = _sweep_program(state, X, y, orders, rates, smoothing, batch_size=batch_size)
    return SweepResult(rates, params, losses, moving, ~ok)


@partial(jax.jit, static_argnames=("batch_size",))
def _sweep_program(state, X, y, orders, lrs, smoothing, *, batch_size):
    # The m runs sit side by side in one state, w as (d, m, k) and b as (m, k):
    # the products of a step are then (batch, d) @ (d, m) ones, and the
    # program ran about a third faster here than with the runs on a leading
    # axis, where XLA copies w and the errors into that shape every step.
    m = lrs.shape[0]
    w, b = state.params
    side_by_side = init_state(Params(jnp.repeat(w[:, None], m, axis=1), jnp.repeat(b[None], m, axis=0)))
    (final, ok), losses, moving, _ = _fused_epochs(
        side_by_side, X, y, orders, lrs, smoothing, jnp.full((m,), jnp.nan, X.dtype),
        batch_size=batch_size, loss=square_loss, optimizer=None, across_lrs=True,
    )  # fmt: skip
    params = Params(jnp.moveaxis(final.params.w, 1, 0), final.params.b)
    return params, ok, losses.T, moving.T


class _Run(NamedTuple):
    """The settings both engines need, gathered once."""

    lr: Any
    batch_size: int
    optimizer: Any
    smoothing: float
    log_every: Any
    callback: Any
    steps_per_epoch: int
    moving_start: Any  # the moving average carried in from a checkpoint, or None
    mesh: Any  # the data-parallel mesh, or None for one device


class _Saving(NamedTuple):
    """What `fit` needs to write and to check checkpoints."""

    directory: Any
    every: int
    key_words: np.ndarray
    settings: dict

    @staticmethod
    def opt_state_like(optimizer, d, k, dtype):
        params = Params(jnp.zeros((d, k), dtype), jnp.zeros(k, dtype))
        return init_state(params, optimizer).opt_state

    def check_matches(self, found, directory):
        if not np.array_equal(found.key_words, self.key_words):
            raise checkpoint_lib.CheckpointError(
                f"the checkpoint in {str(directory)!r} was written by a run with another `key`."
            )
        differ = sorted(name for name in self.settings if found.settings.get(name) != self.settings[name])
        if differ:
            was = ", ".join(f"{name}={found.settings.get(name)!r}" for name in differ)
            raise checkpoint_lib.CheckpointError(
                f"the checkpoint in {str(directory)!r} was written with other settings ({was})."
            )

    def callback(self, end_epoch, moving_start, then):
        """A fit callback that saves every `every` epochs and after the last."""
        moving = [moving_start]

        def save_then_continue(epoch, result):
            done = epoch + 1
            if result.moving_losses.shape[0]:
                moving[0] = float(parallel.host_value(result.moving_losses)[-1])
            if done % self.every == 0 or done == end_epoch:
                saved = checkpoint_lib.Checkpoint(
                    epoch=done, params=jax.tree.map(parallel.host_value, result.params),
                    opt_state=result.opt_state, moving_last=moving[0],
                    key_words=self.key_words, settings=self.settings,
                )  # fmt: skip
                checkpoint_lib.save(self.directory, saved)
            return bool(then(epoch, result)) if then is not None else False

        return save_then_continue


@partial(jax.jit, static_argnames=("num_inputs", "num_outputs", "dtype"))
def _start(key, epochs, *, num_inputs, num_outputs, dtype):
    """Splits `key` into initial params and the raw key words of each epoch.

    One compiled call instead of a handful of small ones: at the seed's size
    these dispatches would cost as much as the training itself.
    """
    init_key, shuffle_key = jax.random.split(key)
    params = init_params(init_key, num_inputs, num_outputs, dtype=dtype)
    # fold_in, not split: an epoch's key must not depend on how many epochs
    # ran before it, so that a run can resume at any epoch.
    epoch_keys = jax.vmap(jax.random.fold_in, (None, 0))(shuffle_key, epochs)
    return params, jax.random.key_data(epoch_keys)


def _as_device(device):
    if device is None or isinstance(device, jax.Device):
        return device
    if isinstance(device, str):
        try:
            return jax.devices(device)[0]
        except RuntimeError:
            raise ValueError(f"`device` (={device!r}) names no available JAX platform.") from None
    raise TypeError(f"`device` (={device!r}) must be None, a jax.Device, or a name like 'cpu'.")


# ------------------------------------------------------------------ moving average


@jax.jit
def moving_average(losses, smoothing=0.01, initial=None):
    """The lesson's smoothed loss: ``m_t = (1 - s) m_{t-1} + s * loss_t``.

    The first value is the first loss itself (unless `initial`, the average
    carried over from earlier steps, is given), so the curve starts on the
    data rather than at zero.

    Args:
        losses: array of shape (steps,).
        smoothing: s, the weight of the newest loss.
        initial: optional moving average before the first of `losses`.

    Returns:
        Array of shape (steps,).
    """
    if losses.shape[0] == 0:
        return losses
    return _smooth(losses, smoothing, losses[0] if initial is None else initial)


def _smooth(losses, smoothing, start):
    """The moving average of `losses`, continuing from the value `start`."""

    def body(moving, value):
        moving = _next_average(moving, value, smoothing)
        return moving, moving

    return jax.lax.scan(body, jnp.asarray(start, losses.dtype), losses)[1]


def _next_average(moving, value, smoothing):
    # The one formula of the moving average, shared by both engines so that
    # they agree to the bit.
    return (1 - smoothing) * moving + smoothing * value


def _print_log_line(epoch, batch, value):
    # str() of a NumPy scalar prints the digits its precision holds, no more.
    print(f"Epoch {epoch}, batch {batch}. Moving avg of loss: {value!s}")


def _guarded_update(carry, X, y, *, lr, loss, optimizer, freeze=True):
    """`update`, carrying a flag that turns False at the first non-finite loss.

    carry is (state, ok). With `freeze`, the state then stays at the params
    that step started from, and losses read NaN from there on. The host
    learns of it at its next read, not every step. Checking the loss
    suffices: it is quadratic in the params, so it overflows before they do.
    """
    state, ok = carry
    new_state, value = update(state, X, y, lr, loss, optimizer)
    good = ok & jnp.isfinite(value)
    if freeze:
        new_state = jax.tree.map(lambda new, old: jnp.where(good, new, old), new_state, state)
        value = jnp.where(good, value, jnp.nan)
    return (new_state, good), value


def _raise_diverged(losses, state, run, *, epoch, first_batch=0, previous=None, epoch_length=None):
    """Raises TrainingDiverged at the first non-finite value of `losses`.

    Args:
        losses: host array of a program's losses, NaN from the bad step on.
        state: the last finite state (from the guarded replay).
        epoch, first_batch: where losses[0] was taken.
        previous: the loss of the step before losses[0], if any.
        epoch_length: steps per epoch when `losses` spans several epochs.
    """
    at = int(np.argmax(~np.isfinite(losses)))
    last = float(losses[at - 1]) if at else previous
    position = first_batch + at
    if epoch_length is not None:
        passed, position = divmod(position, epoch_length)
        epoch += passed
    raise TrainingDiverged(epoch, position, last, state, run.lr)


def _last_loss(parts):
    """The newest loss in a list of loss arrays, or None."""
    return float(parallel.host_value(parts[-1])[-1]) if parts else None


def _finish(state, loss_parts, moving_parts, dtype):
    def join(parts):
        if not parts:
            return jnp.zeros(0, dtype)
        return parts[0] if len(parts) == 1 else jnp.concatenate([jnp.asarray(p) for p in parts])

    return FitResult(state.params, state.opt_state, join(loss_parts), join(moving_parts))


# ------------------------------------------------------------------ loop engine


def _run_loop(state, X, y, epochs_and_words, run):
    step = make_step(run.lr, optimizer=run.optimizer)  # the lesson's jitted step
    X, y = np.asarray(X), np.asarray(y)  # the generator slices host memory
    # Losses are read back only every `read_every` steps (and at an epoch's
    # end): to print a line, to notice divergence, and to smooth them.
    read_every = run.log_every or 500
    loss_parts, moving_parts = [], []
    moving_last = None if run.moving_start is None else np.asarray(run.moving_start, X.dtype)
    for epoch, words in epochs_and_words:
        parts_before = len(loss_parts)
        stream = batches(X, y, run.batch_size, key=jax.random.wrap_key_data(words))
        chunk_start, chunk = state, []  # the state and the steps since the last read
        for i, batch in enumerate(stream):
            if run.mesh is not None:
                # A short last batch that does not split evenly goes whole to every device.
                even = batch[0].shape[0] % run.mesh.size == 0
                batch = jax.device_put(batch, (parallel.by_rows if even else parallel.replicated)(run.mesh))
            state, value = step(state, *batch)
            chunk.append((batch, value))
            if (i + 1) % read_every and i + 1 < run.steps_per_epoch:
                continue
            values = np.array([np.asarray(v) for _, v in chunk], dtype=X.dtype)
            if not np.isfinite(values).all():
                _replay_to_divergence(chunk_start, chunk, epoch, i + 1 - len(chunk), _last_loss(loss_parts), run)
            moving = np.asarray(moving_average(values, run.smoothing, moving_last))
            moving_last = moving[-1]
            loss_parts.append(values)
            moving_parts.append(moving)
            if run.log_every is not None and (i + 1) % run.log_every == 0:
                _print_log_line(epoch, i, moving_last)
            chunk_start, chunk = state, []
        if run.callback is not None:
            epoch_result = _finish(state, loss_parts[parts_before:], moving_parts[parts_before:], X.dtype)
            if run.callback(epoch, epoch_result):
                break
    return _finish(state, loss_parts, moving_parts, X.dtype)


def _replay_to_divergence(state, chunk, epoch, first_batch, last_finite_loss, run):
    """Reruns a chunk of steps with the guarded step to find where training
    diverged and the last finite params, then raises TrainingDiverged.

    Rare, so the loop's fast path runs the plain step and only this replay pays
    for the guard.
    """
    guarded = _jitted_guarded_update(run.lr, square_loss, run.optimizer)
    carry = (state, np.bool_(True))
    for offset, (batch, _) in enumerate(chunk):
        carry, value = guarded(carry, *batch)
        if not bool(carry[1]):
            raise TrainingDiverged(epoch, first_batch + offset, last_finite_loss, carry[0], run.lr)
        last_finite_loss = float(value)
    raise AssertionError("a non-finite loss did not recur on replay")  # steps are deterministic


@functools.lru_cache(maxsize=32)
def _jitted_guarded_update(lr, loss, optimizer):
    # Cached: repeated fits with the same settings reuse one compiled step.
    return jax.jit(partial(_guarded_update, lr=lr, loss=loss, optimizer=optimizer))


# ------------------------------------------------------------------ fused engine


def _run_fused(state, X, y, epochs_and_words, run):
    n = X.shape[0]
    # Without a callback the whole run is one program; with one, one per epoch.
    per_call = 1 if run.callback is not None else max(1, len(epochs_and_words))
    loss_parts, moving_parts = [], []
    # NaN stands for "no average yet": training starts it from its first loss.
    moving_last = np.array(np.nan if run.moving_start is None else run.moving_start, X.dtype)
    for start in range(0, len(epochs_and_words), per_call):
        block = epochs_and_words[start : start + per_call]
        orders = _shuffled_orders([words for _, words in block], n)
        if run.mesh is not None:
            orders, moving_last = parallel.put_replicated((orders, moving_last), run.mesh)
        program = partial(
            _fused_epochs, X=X, y=y, orders=orders, lr=run.lr, smoothing=run.smoothing,
            moving_last=moving_last, batch_size=run.batch_size, loss=square_loss,
            optimizer=run.optimizer,
            batch_sharding=None if run.mesh is None else parallel.by_rows(run.mesh),
        )  # fmt: skip
        (new_state, ok), losses, moving, moving_last = program(state)
        if not bool(parallel.host_value(ok)):  # one read per program, not per step
            # Rare, so the fast program does not freeze the params at the
            # first bad step; this replay does, to hand back the last finite ones.
            (state, _), losses, _, _ = program(state, freeze=True)
            _raise_diverged(parallel.host_value(losses), state, run, epoch=block[0][0],
                            previous=_last_loss(loss_parts), epoch_length=run.steps_per_epoch)  # fmt: skip
        state = new_state
        loss_parts.append(losses)
        moving_parts.append(moving)
        if run.log_every is not None:
            shown = parallel.host_value(moving).reshape(len(block), run.steps_per_epoch)
            for (epoch, _), row in zip(block, shown):
                for i in range(run.log_every - 1, run.steps_per_epoch, run.log_every):
                    _print_log_line(epoch, i, row[i])
        if run.callback is not None:
            if run.callback(block[0][0], FitResult(state.params, state.opt_state, losses, moving)):
                break
    return _finish(state, loss_parts, moving_parts, X.dtype)


def _shuffled_orders(epoch_words, n):
    """Each epoch's row order, stacked into an int32 array of shape (epochs, n)."""
    orders = np.empty((len(epoch_words), n), np.int32)
    for epoch, words in enumerate(epoch_words):
        orders[epoch] = permutation_from_words(words, n)
    return orders


@partial(jax.jit, static_argnames=("batch_size", "loss", "optimizer", "freeze", "batch_sharding", "across_lrs"))
def _fused_epochs(
    state, X, y, orders, lr, smoothing, moving_last, *, batch_size, loss, optimizer, freeze=False,
    batch_sharding=None, across_lrs=False,
):
    """Epochs of training as one program: a scan over epochs, each a scan over batches.

    Args:
        orders: int32 array of shape (epochs, n), each epoch's row order.
        moving_last: the moving average so far; NaN before the first step.
        batch_sharding: with several devices, how each gathered batch is
            split over them; XLA then sums the gradients across devices.
        across_lrs: `lr` is a vector of m learning rates and the state holds
            m runs side by side (w of shape (d, m, k), b of shape (m, k), as
            `sweep` builds it); each step updates all m with `jax.vmap`, and
            losses gain a trailing axis of size m.

    Returns:
        (state, ok) as `_guarded_update` leaves them; the losses and their
        moving average, each of shape (epochs * steps_per_epoch,); and the
        last moving average, to carry into the next call.
    """
    n, d = X.shape
    num_full, remainder = divmod(n, batch_size)
    row_bytes = (d + y.shape[1]) * X.dtype.itemsize
    per_chunk = max(1, min(num_full, _CHUNK_BYTES // (batch_size * row_bytes)))
    num_chunks, leftover = divmod(num_full, per_chunk)
    guarded = partial(_guarded_update, loss=loss, optimizer=optimizer, freeze=freeze)
    # Unrolling the sweep's loop lets XLA fuse across its steps (a fifth
    # faster); the single run's loop, already a few fused kernels, slows down.
    unroll = 8 if across_lrs else 1

    def update_all(carry, X_batch, y_batch):
        if batch_sharding is not None:
            X_batch, y_batch = jax.lax.with_sharding_constraint((X_batch, y_batch), batch_sharding)
        if not across_lrs:
            return guarded(carry, X_batch, y_batch, lr=lr)
        # Runs that diverge are told from their losses at the end (a run's
        # losses stay non-finite once they are), so the steps carry no flag.
        state, ok = carry
        axis = TrainState(Params(1, 0), None)
        one_run = lambda state, lr: update(state, X_batch, y_batch, lr, loss, optimizer)
        state, value = jax.vmap(one_run, in_axes=(axis, 0), out_axes=(axis, 0))(state, lr)
        return (state, ok), value

    def step(carry, X_batch, y_batch):
        # The moving average rides along in the carry: a separate scan over
        # the losses afterwards would cost as much as a seventh of the run.
        carry, moving = carry
        carry, value = update_all(carry, X_batch, y_batch)
        moving = _next_average(jnp.where(jnp.isnan(moving), value, moving), value, smoothing)
        return (carry, moving), (value, moving)

    def train_on(carry, rows):
        # rows: (m, batch_size) indices; one gather, then m steps on slices.
        if rows.shape[0] == 1:  # a batch fills the chunk: gather it in the step
            carry, values = step(carry, X[rows[0]], y[rows[0]])
            return carry, jax.tree.map(lambda v: v[None], values)
        return jax.lax.scan(lambda c, batch: step(c, *batch), carry, (X[rows], y[rows]), unroll=unroll)

    def epoch(carry, order):
        full = order[: num_full * batch_size].reshape(num_full, batch_size)
        pieces = []
        if num_chunks:
            chunks = full[: num_chunks * per_chunk].reshape(num_chunks, per_chunk, batch_size)
            carry, chunk_values = jax.lax.scan(train_on, carry, chunks)
            pieces.append(jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:]), chunk_values))
        if leftover:
            carry, tail_values = train_on(carry, full[num_chunks * per_chunk :])
            pieces.append(tail_values)
        if remainder:
            rows = order[num_full * batch_size :]
            carry, last_values = step(carry, X[rows], y[rows])
            pieces.append(jax.tree.map(lambda v: v[None], last_values))
        return carry, jax.tree.map(lambda *parts: jnp.concatenate(parts), *pieces)

    ok = jnp.ones(lr.shape if across_lrs else (), bool)
    (carry, moving_last), (losses, moving) = jax.lax.scan(epoch, ((state, ok), moving_last), orders)
    losses, moving = (v.reshape(-1, *v.shape[2:]) for v in (losses, moving))
    if across_lrs:
        carry = (carry[0], jnp.all(jnp.isfinite(losses), axis=0))
    return carry, losses, moving, moving_last


# ------------------------------------------------------------------ streamed from disk


def _run_streamed(state, stream, epochs_and_words, run, chunk_bytes):
    """The fused engine over a file, a chunk at a time.

    Each epoch visits the chunks in an order drawn from its key and shuffles
    the rows within each chunk; batches never straddle two chunks. The next
    chunk is read from disk while the device trains on the current one.
    """
    n = stream.num_rows
    rows = max(run.batch_size, (chunk_bytes // stream.row_bytes) // run.batch_size * run.batch_size)
    starts = list(range(0, n, rows))
    loss_parts, moving_parts = [], []
    moving_last = np.array(np.nan if run.moving_start is None else run.moving_start, stream.dtype)
    for epoch, words in epochs_and_words:
        rng = np.random.Generator(np.random.SFC64(words.tolist()))
        visit = [starts[i] for i in rng.permutation(len(starts))]
        epoch_losses, epoch_moving, steps_before = [], [], 0
        upcoming = stream.read(visit[0], min(visit[0] + rows, n))
        for position in range(len(visit)):
            X_host, y_host = upcoming
            order = rng.permutation(X_host.shape[0]).astype(np.int32)[None]
            X_chunk, y_chunk = to_device(X_host), to_device(y_host)
            program = partial(
                _fused_epochs, X=X_chunk, y=y_chunk, orders=order, lr=run.lr, smoothing=run.smoothing,
                moving_last=moving_last, batch_size=min(run.batch_size, X_host.shape[0]),
                loss=square_loss, optimizer=run.optimizer,
            )  # fmt: skip
            (new_state, ok), losses, moving, moving_last = program(state)
            if position + 1 < len(visit):  # read ahead while the device works
                following = visit[position + 1]
                upcoming = stream.read(following, min(following + rows, n))
            if not bool(ok):
                (state, _), losses, _, _ = program(state, freeze=True)
                _raise_diverged(np.asarray(losses), state, run, epoch=epoch, first_batch=steps_before,
                                previous=_last_loss(epoch_losses or loss_parts))  # fmt: skip
            state = new_state
            steps_before += losses.shape[0]
            epoch_losses.append(losses)
            epoch_moving.append(moving)
        losses, moving = jnp.concatenate(epoch_losses), jnp.concatenate(epoch_moving)
        loss_parts.append(losses)
        moving_parts.append(moving)
        if run.log_every is not None:
            shown = np.asarray(moving)
            for i in range(run.log_every - 1, shown.shape[0], run.log_every):
                _print_log_line(epoch, i, shown[i])
        if run.callback is not None:
            if run.callback(epoch, FitResult(state.params, state.opt_state, losses, moving)):
                break
    return _finish(state, loss_parts, moving_parts, stream.dtype)
