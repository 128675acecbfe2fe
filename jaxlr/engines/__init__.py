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

Each is a function ``(run, state) -> iterator of Block`` (`jaxlr.engines.core`):
it trains a block of epochs, yields what came of it, and carries on from the
state the driver hands back. Divergence, logging, callbacks and the result are the driver's
(`jaxlr.train`), written once for all of them.
"""

from __future__ import annotations

from jaxlr.names import ENGINES  # noqa: F401 - `jaxlr.engines.ENGINES`, the names `fit` takes


def get(name: str):
    """The engine function for a name."""
    from jaxlr.engines import fused, loop, streamed

    return {"fused": fused.run, "loop": loop.run, "streamed": streamed.run}[name]

