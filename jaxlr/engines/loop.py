"""The loop engine: the lesson's Python loop, one jitted step per batch from host memory."""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from jaxlr import parallel
from jaxlr.data import batches
from jaxlr.engines import core
from jaxlr.engines.core import Block


def run(run, state) -> Iterator[Block]:
    step = core.step_program(run.spec)
    fields = core.step_fields(run.spec)
    end_epoch = core.epoch_end_program(run.spec)
    X, y, weight = run.host_rows
    dtype = X.dtype
    # On the device once: NumPy arrays would be copied over at every call.
    numbers = jax.device_put(run.numbers)
    settings = core.unpack(jax.device_get(run.numbers))
    smoothing, limit = np.asarray(settings.smoothing, dtype), np.asarray(settings.loss_limit, dtype)
    moving_last = np.asarray(state.moving, dtype)
    # Losses are read back only every `read_every` steps (and at an epoch's
    # end): to notice divergence early without a sync on every step.
    read_every = 500
    # Several CPU devices run a step's all-reduce on one shared thread pool:
    # with steps queued behind each other, the threads can all be taken by the
    # devices of different steps, each waiting at its rendezvous for devices
    # that never get a thread (a hang seen on a loaded 2-core machine). One
    # step at a time keeps every thread on the same step.
    serial = run.mesh is not None and run.mesh.size > 1 and parallel.platform(mesh=run.mesh) == "cpu"
    for e in range(run.epochs):
        epoch = run.initial_epoch + e
        first_step = run.initial_step + e * run.steps_per_epoch
        key = None if run.draw == "none" else jax.random.wrap_key_data(run.epoch_words(epoch))
        stream = batches(X, y, run.spec.batch_size, key=key, shuffle=run.draw != "none", sample_weight=weight)
        if weight is None:
            stream = ((X_b, y_b, None) for X_b, y_b in stream)
        start, carried = state, tuple(getattr(state, name) for name in fields)
        drops = state.stop.drops if run.spec.schedule == "adaptive" else None
        values, read = [], []
        for i, (X_b, y_b, w_b) in enumerate(stream):
            if run.mesh is not None:
                # A short last batch that does not split evenly goes whole to every device.
                even = X_b.shape[0] % run.mesh.size == 0
                placed = (parallel.by_rows if even else parallel.replicated)(run.mesh)
                X_b, y_b, w_b = jax.device_put((X_b, y_b, w_b), placed)
            carried, value = step(carried, drops, numbers, X_b, y_b, w_b)
            if serial:
                jax.block_until_ready(value)
            values.append(value)
            if (i + 1) % read_every == 0 or i + 1 == run.steps_per_epoch:
                taken = np.array([np.asarray(v) for v in values], dtype).reshape(len(values), -1)
                # The moving average of what was read, from where it stood: one call, not one a step.
                smoothed = np.asarray(core.smooth(taken[:, 0], smoothing, moving_last))
                moving_last = smoothed[-1]
                read.append(np.column_stack([taken, smoothed]))
                values = []
                if not core.loss_ok(taken[:, 0], limit).all():
                    break
        state = state._replace(**dict(zip(fields, carried)))
        taken = np.concatenate(read) if read else np.zeros((0, 2), dtype)
        if "step" not in fields:
            state = state._replace(step=np.int32(first_step + len(taken)))
        losses, objectives, moving = taken[:, 0], taken[:, -2], taken[:, -1]
        good = core.loss_ok(losses, limit)
        if run.spec.smooth:  # as the compiled engines, which keep it only for the steps they record
            finite_moving = moving[good]
            state = state._replace(moving=np.asarray(finite_moving[-1] if len(finite_moving) else state.moving, dtype))
        finite = bool(good.all())
        if not run.spec.guard:
            # What the guarded step tracks as it goes, worked out from the losses.
            last = losses[-1] if len(losses) else state.last_loss
            state = state._replace(ok=np.bool_(finite and bool(state.ok)), last_loss=last)
        if not finite or not bool(state.ok):
            yield Block(state, start, epoch, first_step, losses, moving, np.zeros(0, dtype), core.peaks(losses)[None])
            return
        state = end_epoch(state, run.validation_data, numbers, objectives, np.float32(len(losses)))
        epoch_losses, epoch_peaks = np.array([losses.mean()], dtype), core.peaks(losses)[None]
        if not run.keep_steps:
            losses = moving = np.zeros(0, dtype)
        yield Block(state, start, epoch, first_step, losses, moving, epoch_losses, epoch_peaks)
        if bool(state.stop.done):
            return
