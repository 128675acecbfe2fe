"""`fit`: the training loop of the lesson, as a Python loop or as one compiled scan."""

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import validate
from jaxlr.data import batches, permutation_from_words
from jaxlr.model import Params, init_params, square_loss
from jaxlr.optim import TrainState, init_state, make_step, update

# The fused engine gathers the shuffled rows of this many bytes of batches at
# a time, then scans over them: gathers stay large and cache friendly, while
# memory beyond the data itself stays bounded whatever n is.
_CHUNK_BYTES = 1 << 24


class FitResult(NamedTuple):
    """What `fit` returns.

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
        verbose: print the lesson's progress lines.
        device: a `jax.Device`, or a platform name such as "cpu" or "gpu",
            to hold the data and the parameters; None for JAX's default.

    Returns:
        FitResult.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> result = fit(X, y, key=jax.random.key(1))
        >>> result.params.w.ravel()  # close to [2, -3.4]
    """
    key = validate.check_key(key)
    X, y = validate.training_arrays(X, y)
    n, d = X.shape
    k = y.shape[1]
    epochs = validate.check_int("epochs", epochs, low=0)
    batch_size = validate.check_int(
        "batch_size", batch_size, low=1, high=n, high_name="the number of examples"
    )
    optimizer = validate.check_optimizer(optimizer)
    # An optax transformation carries its own learning rate.
    lr = validate.check_real("lr", lr, low=0.0) if optimizer is None else None
    smoothing = validate.check_real("smoothing", smoothing, low=0.0, high=1.0)
    log_every = validate.check_int("log_every", log_every, low=1)
    engine = validate.check_choice("engine", engine, ("fused", "loop"))
    device = _as_device(device)

    initial_params, epoch_words = _start(key, np.arange(epochs), num_inputs=d, num_outputs=k, dtype=X.dtype)
    epoch_words = np.asarray(epoch_words)
    if params is None:
        params = initial_params
    else:
        params = validate.check_params(params, d, k)
        params = Params(*(jnp.asarray(p, X.dtype) for p in params))
    state = init_state(params, optimizer)
    if device is not None:
        state = jax.device_put(state, device)

    if engine == "loop":
        run = _run_loop
    else:
        run = _run_fused
        X, y = (jnp.asarray(a) if device is None else jax.device_put(a, device) for a in (X, y))
    state, losses, moving = run(
        state, X, y, epoch_words,
        lr=lr, batch_size=batch_size, optimizer=optimizer,
        smoothing=smoothing, log_every=log_every if verbose else None,
    )  # fmt: skip
    return FitResult(state.params, state.opt_state, losses, moving)


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
        moving = (1 - smoothing) * moving + smoothing * value
        return moving, moving

    return jax.lax.scan(body, jnp.asarray(start, losses.dtype), losses)[1]


def _print_log_line(epoch, batch, value):
    # str() of a NumPy scalar prints the digits its precision holds, no more.
    print(f"Epoch {epoch}, batch {batch}. Moving avg of loss: {value!s}")


# ------------------------------------------------------------------ loop engine


def _run_loop(state, X, y, epoch_words, *, lr, batch_size, optimizer, smoothing, log_every):
    step = make_step(lr, optimizer=optimizer)
    X, y = np.asarray(X), np.asarray(y)  # the generator slices host memory
    losses, pending, moving_parts = [], [], []

    def flush():
        # The one place the loop waits for the device: at a log line or the end.
        values = np.array([np.asarray(v) for v in pending], dtype=X.dtype)
        initial = moving_parts[-1][-1] if moving_parts else None
        moving_parts.append(np.asarray(moving_average(values, smoothing, initial)))
        losses.append(values)
        pending.clear()

    for epoch, words in enumerate(epoch_words):
        key = jax.random.wrap_key_data(words)
        for i, (X_batch, y_batch) in enumerate(batches(X, y, batch_size, key=key)):
            state, value = step(state, X_batch, y_batch)
            pending.append(value)
            if log_every is not None and (i + 1) % log_every == 0:
                flush()
                _print_log_line(epoch, i, moving_parts[-1][-1])
    if pending:
        flush()
    return state, _concat(losses, X.dtype), _concat(moving_parts, X.dtype)


def _concat(parts, dtype):
    return jnp.asarray(np.concatenate(parts) if parts else np.zeros(0, dtype))


# ------------------------------------------------------------------ fused engine


def _run_fused(state, X, y, epoch_words, *, lr, batch_size, optimizer, smoothing, log_every):
    n = X.shape[0]
    orders = _shuffled_orders(epoch_words, n)
    state, losses, moving = _fused_epochs(
        state, X, y, orders, lr, smoothing,
        batch_size=batch_size, loss=square_loss, optimizer=optimizer,
    )  # fmt: skip
    if log_every is not None:
        # One read once the program is done: the fused engine logs afterwards.
        steps_per_epoch = -(-n // batch_size)
        shown = np.asarray(moving).reshape(-1, steps_per_epoch)
        for epoch in range(shown.shape[0]):
            for i in range(log_every - 1, steps_per_epoch, log_every):
                _print_log_line(epoch, i, shown[epoch, i])
    return state, losses, moving


def _shuffled_orders(epoch_words, n):
    """Each epoch's row order, stacked into an int32 array of shape (epochs, n)."""
    orders = np.empty((len(epoch_words), n), np.int32)
    for epoch, words in enumerate(epoch_words):
        orders[epoch] = permutation_from_words(words, n)
    return orders


@partial(jax.jit, static_argnames=("batch_size", "loss", "optimizer"))
def _fused_epochs(state, X, y, orders, lr, smoothing, *, batch_size, loss, optimizer):
    """A whole run as one program: a scan over epochs, each a scan over batches.

    Args:
        orders: int32 array of shape (epochs, n), each epoch's row order.

    Returns:
        The final state, and the losses and their moving average, each of
        shape (epochs * steps_per_epoch,).
    """
    n, d = X.shape
    num_full, remainder = divmod(n, batch_size)
    row_bytes = (d + y.shape[1]) * X.dtype.itemsize
    per_chunk = max(1, min(num_full, _CHUNK_BYTES // (batch_size * row_bytes)))
    num_chunks, leftover = divmod(num_full, per_chunk)
    step = partial(update, lr=lr, loss=loss, optimizer=optimizer)

    def train_on(state, rows):
        # rows: (m, batch_size) indices; one gather, then m steps on slices.
        return jax.lax.scan(lambda s, batch: step(s, *batch), state, (X[rows], y[rows]))

    def epoch(state, order):
        full = order[: num_full * batch_size].reshape(num_full, batch_size)
        pieces = []
        if num_chunks:
            chunks = full[: num_chunks * per_chunk].reshape(num_chunks, per_chunk, batch_size)
            state, chunk_losses = jax.lax.scan(train_on, state, chunks)
            pieces.append(chunk_losses.reshape(-1))
        if leftover:
            state, tail_losses = train_on(state, full[num_chunks * per_chunk :])
            pieces.append(tail_losses)
        if remainder:
            rows = order[num_full * batch_size :]
            state, last_loss = step(state, X[rows], y[rows])
            pieces.append(last_loss[None])
        return state, jnp.concatenate(pieces)

    state, losses = jax.lax.scan(epoch, state, orders)
    losses = losses.reshape(-1)
    return state, losses, moving_average(losses, smoothing)
