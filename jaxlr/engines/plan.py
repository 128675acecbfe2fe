"""Which engine runs a fit, decided once: each engine says what it cannot
run, and a setting it cannot run is refused by name, never ignored.

``"auto"`` picks among the engines that can run the settings, by the table
in `jaxlr.engines.auto`. The scan engine is the fused (or streamed) driver
with each epoch's steps computed in parallel, so a plan is a driver
(`jaxlr.engines.get`) and the spec it runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from jaxlr import losses
from jaxlr.engines import auto, core, scan


class Setup(NamedTuple):
    """What an engine needs to know of a fit beyond its `core.Spec`."""

    spec: core.Spec
    streamed: bool  # the rows are read from disk a chunk at a time
    placed: bool  # on chosen devices (`devices`), not the default one
    processes: int  # that the rows are spread over
    shuffle: Any  # True, False, "host" or "device"


def _fused_refuses(setup: Setup) -> Optional[str]:
    if setup.streamed and setup.placed:
        return "`devices` for data streamed from disk: it trains on the default device"
    if setup.streamed and setup.spec.weighted:
        return "`sample_weight` for data streamed from disk"
    return None


def _scan_refuses(setup: Setup) -> Optional[str]:
    return scan.unsupported(setup.spec) or _fused_refuses(setup)


def _loop_refuses(setup: Setup) -> Optional[str]:
    if setup.streamed:
        return "data streamed from disk: it trains with engine='fused', 'scan' or 'auto'"
    if setup.shuffle == "device":
        return "`shuffle` (='device'): the loop shuffles on the host"
    if setup.processes > 1:
        return "several processes: the loop feeds batches from one host (fused and auto can)"
    return None


REFUSES = {"fused": _fused_refuses, "scan": _scan_refuses, "loop": _loop_refuses}
"""Each engine's test of a fit's settings: why it cannot run them, or None."""


def across_processes(engine: str, processes: int) -> Optional[str]:
    """Why `engine` cannot train with its rows spread over the devices of
    `processes` processes, or None: the plan's own answer, asked before the
    processes join so that a command fails at once."""
    if engine == "auto":
        return None  # it picks among the engines that can
    spec = core.Spec(loss=losses.resolve("squared"), sharding="rows over the processes' devices")
    return REFUSES[engine](Setup(spec=spec, streamed=False, placed=True, processes=processes, shuffle=True))


class Plan(NamedTuple):
    driver: str  # a name for `jaxlr.engines.get`
    spec: core.Spec
    reason: Optional[str]  # why "auto" chose it


def plan(engine: str, setup: Setup, *, backend: str, features: int, X=None, y=None) -> Plan:
    """The driver and spec that run `engine` ("auto" resolved) for `setup`.

    Raises:
        ValueError: naming the engine and the setting it cannot run.
    """
    asked, reason = engine, None
    if engine == "auto":
        engine, reason = auto.choose(backend, features, setup.spec.batch_size, supported=_scan_refuses(setup))
        if engine == "scan" and X is not None:
            poorly = scan.poorly_scaled(X, y)
            if poorly is not None:
                engine, reason = "fused", f"scan's float32 bound holds for features near unit scale; {poorly}"
    why = REFUSES[engine](setup)
    if why is not None:
        raise ValueError(f"`engine` (={asked!r}) cannot run {why}.")
    spec = setup.spec._replace(parallel=True) if engine == "scan" else setup.spec
    driver = "loop" if engine == "loop" else ("streamed" if setup.streamed else "fused")
    return Plan(driver, spec, reason)
