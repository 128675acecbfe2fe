"""Training loops compiled as one kernel on a CPU: the one XLA option jaxlr sets.

XLA's CPU backend runs the body of a while loop as a series of kernels, each
called on its own, unless the loop is small: when one iteration touches fewer
than ``xla_cpu_small_while_loop_byte_threshold`` bytes (1 KiB by default),
the whole loop is compiled into one kernel. A per-row SGD step passes that
size from about 36 features on, and each of its kernel calls then costs more
than the step's arithmetic: an epoch at batch size 1 ran 3 to 4 times slower
at 100 and 300 features than with the loop as one kernel (benchmarks/RESULTS.md).

So as it is imported, jaxlr raises the threshold to `LOOP_BYTES` in
``XLA_FLAGS``, where it still takes effect: XLA reads its flags once, as JAX
starts its first backend, so a process that ran a JAX computation before
importing jaxlr keeps its own flags (and trains more slowly). It is left
alone where ``XLA_FLAGS`` already sets ``--xla_backend_extra_options`` (the
process's choice stands) and with ``JAXLR_KEEP_XLA_FLAGS=1`` in the
environment. The option is XLA's, for the whole process: its other small
loops become one kernel too, and only on a CPU.
"""

import os
import re
import sys

LOOP_BYTES = 1 << 18
"""The bytes one iteration may touch for its loop to become one kernel (256 KiB: a
step at batch size 1 up to a few thousand features)."""

_OPTION = "xla_cpu_small_while_loop_byte_threshold"

# Whether this process's CPU backend compiles loops of up to LOOP_BYTES as one
# kernel, decided once, as jaxlr is imported (see `apply`).
_in_effect = False


def apply() -> bool:
    """Sets the option in ``XLA_FLAGS`` unless it is too late or the process
    chose otherwise; returns whether it is in effect."""
    global _in_effect
    flags = os.environ.get("XLA_FLAGS", "")
    if _OPTION in flags:  # the process's own value
        _in_effect = not _backend_started() and _own_threshold(flags) >= LOOP_BYTES
    elif os.environ.get("JAXLR_KEEP_XLA_FLAGS") or "xla_backend_extra_options" in flags or _backend_started():
        _in_effect = False
    else:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={_OPTION}={LOOP_BYTES}".strip()
        _in_effect = True
    return _in_effect


def in_effect() -> bool:
    """Whether small training loops run as one kernel on this process's CPU backend."""
    return _in_effect


def _backend_started() -> bool:
    """Whether JAX has started a backend, which read ``XLA_FLAGS`` as it did."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def _own_threshold(flags: str) -> int:
    found = re.search(rf"{_OPTION}=(\d+)", flags)
    return int(found.group(1)) if found else 0
