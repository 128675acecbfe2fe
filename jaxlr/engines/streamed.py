"""The streamed engine: the fused epoch over a file, a chunk at a time.

Each epoch visits the chunks in an order drawn from its key and shuffles the
rows within each chunk; batches never straddle two chunks. The next chunk is
read from disk while the device trains on the current one.
"""

from __future__ import annotations

from typing import Iterator

import jax.numpy as jnp
import numpy as np

from jaxlr import shuffle
from jaxlr.data import to_device
from jaxlr.engines import core
from jaxlr.engines.core import Block


def run(run, state) -> Iterator[Block]:
    stream = run.stream
    n, B = stream.num_rows, run.spec.batch_size
    rows = stream.chunk_rows(B)
    starts = list(range(0, n, rows))
    one_pass = core.epoch_program(run.spec)
    end_epoch = core.epoch_end_program(run.spec)
    for e in range(run.epochs):
        epoch = run.initial_epoch + e
        first_step = run.initial_step + e * run.steps_per_epoch
        shuffled = run.draw != "none"  # shuffle=False: the chunks and their rows in stored order
        words = run.epoch_words(epoch) if shuffled else np.zeros(0, np.uint32)
        visit = [starts[i] for i in shuffle.permutation_from_words(words, len(starts))] if shuffled else starts
        losses, moving, objectives, start = [], [], [], state
        upcoming = stream.read(visit[0], min(visit[0] + rows, n))
        for position in range(len(visit)):
            X_host, y_host = upcoming
            count = X_host.shape[0]
            N = core.padded_rows(count, B)
            # Each chunk's rows by a key of its own: the epoch's words and the chunk's place in the visit.
            if shuffled:
                within = shuffle.permutation_from_words(np.append(words, np.uint32(position)), count)
                order = np.concatenate([within, np.arange(count, N, dtype=np.int32)])
            else:
                order = np.arange(N, dtype=np.int32)
            data = core.Data(to_device(X_host, rows=N), to_device(y_host, rows=N), None, np.int32(count))
            state, (chunk_losses, chunk_moving, chunk_objectives) = one_pass(state, data, run.numbers, order)
            if position + 1 < len(visit):  # read ahead while the device works
                following = visit[position + 1]
                upcoming = stream.read(following, min(following + rows, n))
            real = -(-count // B)
            losses.append(chunk_losses[:real])
            moving.append(chunk_moving[:real])
            objectives.append((chunk_losses if chunk_objectives is None else chunk_objectives)[:real])
            if not bool(state.ok):
                seen = np.asarray(jnp.concatenate(losses))
                yield Block(state, start, epoch, first_step, seen, jnp.concatenate(moving),
                            np.zeros(0, stream.dtype), core.peaks(seen)[None])  # fmt: skip
                return
        epoch_losses, epoch_moving = jnp.concatenate(losses), jnp.concatenate(moving)
        count = np.float32(epoch_losses.shape[0])
        state = end_epoch(state, run.validation_data, run.numbers, jnp.concatenate(objectives), count)
        mean = np.array([float(jnp.mean(epoch_losses))], stream.dtype)
        epoch_peaks = core.peaks(np.asarray(epoch_losses))[None]
        if not run.keep_steps:
            epoch_losses = epoch_moving = jnp.zeros(0, stream.dtype)
        yield Block(state, start, epoch, first_step, epoch_losses, epoch_moving, mean, epoch_peaks)
        if bool(state.stop.done):
            return
