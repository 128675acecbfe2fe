"""The fused engine: a block of epochs as one compiled program over rows on the device."""

from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np

from jaxlr import parallel
from jaxlr.engines import core
from jaxlr.engines.core import Block

# Host-drawn orders are built a block of epochs at a time: at most this many
# row indices at once (4 MB), so memory does not grow with the number of
# epochs, while a small table still runs many epochs per call.
_ORDER_ENTRIES = 1 << 20


def run(run, state) -> Iterator[Block]:
    data = run.data
    N = core.order_length(data, run.spec.batch_size)
    # Whether the orders come from the host or not, a call's record holds at
    # most about _ORDER_ENTRIES steps: memory follows the epochs that run,
    # not the budget (a stopping rule may end a run of 5000 epochs after 9).
    per_call = max(1, min(run.epochs, _ORDER_ENTRIES // N))
    adapt = run.epochs_per_call == "auto"
    if run.epochs_per_call is not None:
        per_call = 1 if adapt else min(per_call, run.epochs_per_call)
    budget = None if run.draw == "host" else core.bucket(per_call)
    train = core.program(run.spec, run.keep_steps, run.draw, budget)
    done, calls, seconds = 0, 0, 0.0
    while done < run.epochs:
        if adapt and calls == 2:
            # Timed on the second call (the first compiles): from now on, calls
            # of about AUTO_SECONDS, a power of two epochs each (few programs).
            per_call = _epochs_for(AUTO_SECONDS / max(seconds, 1e-6), run.epochs - done)
            budget = None if run.draw == "host" else core.bucket(per_call)
            train = core.program(run.spec, run.keep_steps, run.draw, budget)
        began = time.perf_counter()
        count = min(per_call, run.epochs - done)
        first_epoch, first_step = run.initial_epoch + done, run.initial_step + done * run.steps_per_epoch
        orders = None
        if run.draw == "host":
            # A bucketed number of epochs' orders: the program skips the extra
            # ones, and a new number of epochs seldom compiles a new program.
            orders = run.orders(first_epoch, count, N, rows=core.bucket(count))
            if run.mesh is not None:
                orders = parallel.put_replicated(orders, run.mesh)
        start = state
        state, record = train(state, data, run.numbers, orders, core.on_device(np.int32(count)), run.shuffle_key)
        # One read of everything the host needs; trimming happens there, where
        # slicing costs no dispatch.
        epoch_now, ok, record = parallel.host_values((state.epoch, state.ok, record))
        ran = int(epoch_now) - first_epoch
        ran_or_diverging = ran + (0 if ok else 1)
        step_losses, step_moving, epoch_losses, epoch_peaks = record
        epoch_losses, epoch_peaks = epoch_losses[:ran], epoch_peaks[:ran_or_diverging]
        losses = moving = np.zeros(0, data.X.dtype)
        if step_losses is not None:
            losses = step_losses[:ran_or_diverging, : run.steps_per_epoch].reshape(-1)
            moving = step_moving[:ran_or_diverging, : run.steps_per_epoch].reshape(-1)
        seconds, calls = time.perf_counter() - began, calls + 1
        yield Block(state, start, first_epoch, first_step, losses, moving, epoch_losses, epoch_peaks)
        if ran < count:  # stopped by the rule, or diverged
            return
        done += count


# With epochs_per_call="auto" (checkpoints by time), the length of a call.
AUTO_SECONDS = 1.0


def _epochs_for(epochs: float, left: int) -> int:
    return max(1, min(1 << max(0, math.ceil(math.log2(max(epochs, 1.0)))), 1 << 20, max(left, 1)))
