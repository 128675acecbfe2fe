"""Engines: the ways one training program is driven over the data.

- ``"fused"``: the whole run (or one epoch at a time when a callback must see
  each) as one compiled program; rows live on the device.
- ``"loop"``: the lesson's Python loop, the `batches` generator feeding the
  jitted step from host memory.
- ``"scan"``: the fused engine with each epoch's steps computed in parallel
  time (`jaxlr.engines.scan`), exact for the squared loss with sgd,
  momentum or nesterov.
- ``"auto"``: one of "fused" and "scan", from a measured table
  (`jaxlr.engines.auto`).
- ``"streamed"``: the fused epoch over a file read a chunk at a time (chosen
  by `fit` when X is an `NpyStream` or a `numpy.memmap`).

Each is a function ``(run, state) -> iterator of Block``: it trains a block
of epochs, yields what came of it, and carries on from the state the driver
hands back. Divergence, logging, callbacks and the result are the driver's
(`jaxlr.train`), written once for all of them.
"""

from __future__ import annotations

from typing import Any, NamedTuple


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


def get(name: str):
    """The engine function for a name."""
    from jaxlr.engines import fused, loop, streamed

    return {"fused": fused.run, "loop": loop.run, "streamed": streamed.run}[name]


ENGINES = ("fused", "loop", "scan", "auto")
