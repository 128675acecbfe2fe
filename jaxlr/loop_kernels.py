"""Training loops compiled as one kernel on a CPU: the one XLA option jaxlr sets.

XLA's CPU backend runs the body of a while loop as a series of kernels, each
called on its own, unless the loop is small: when one iteration touches fewer
than ``xla_cpu_small_while_loop_byte_threshold`` bytes (1 KiB by default),
the whole loop is compiled into one kernel. A per-row SGD step passes that
size from about 36 features on, and each of its kernel calls then costs more
than the step's arithmetic: against scikit-learn in the same runs, an epoch
at batch size 1 ran 2.5 to 5 times slower at 100 and 300 features than with
the loop as one kernel (benchmarks/RESULTS.md).

So as it is imported, jaxlr raises the threshold to `LOOP_BYTES` in
``XLA_FLAGS``, where it still takes effect: XLA reads its flags once, as JAX
starts its first backend, so a process that ran a JAX computation before
importing jaxlr keeps its own flags (and trains more slowly). It is left
alone where ``XLA_FLAGS`` already sets ``--xla_backend_extra_options`` (the
process's choice stands) and with ``JAXLR_KEEP_XLA_FLAGS=1`` in the
environment. The option is XLA's, for the whole process: its other small
loops become one kernel too, and only on a CPU.
"""

import functools
import os
import re
import sys

from jaxlr import names

LOOP_BYTES = 1 << 18
"""The bytes one iteration may touch for its loop to become one kernel (256 KiB:
a step at batch size 1 over 3 000 features still compiles as one; 16 KiB did
not suffice at 1 000)."""

_OPTION = "xla_cpu_small_while_loop_byte_threshold"


def apply() -> None:
    """Adds the option to ``XLA_FLAGS``, unless XLA has read its flags already
    or the process chose otherwise."""
    flags = os.environ.get("XLA_FLAGS", "")
    if names.switched_on("JAXLR_KEEP_XLA_FLAGS") or "xla_backend_extra_options" in flags or _backend_started():
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={_OPTION}={LOOP_BYTES}".strip()


def in_effect() -> bool:
    """Whether small training loops run as one kernel on this process's CPU
    backend: whether ``XLA_FLAGS`` sets the threshold to `LOOP_BYTES` or more
    (jaxlr's value, or the process's own, inherited from its parent or given
    before JAX started). The flags are taken to be those XLA read."""
    return _threshold(os.environ.get("XLA_FLAGS", "")) >= LOOP_BYTES


def _backend_started() -> bool:
    """Whether JAX has started a backend, which read ``XLA_FLAGS`` as it did."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


@functools.lru_cache(maxsize=8)  # asked on every fit that picks its engine
def _threshold(flags: str) -> int:
    """The threshold `flags` set (XLA takes the last one given), or XLA's default."""
    found = re.findall(rf"{_OPTION}=(\d+)", flags)
    return int(found[-1]) if found else 1024
