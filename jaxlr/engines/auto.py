"""``engine="auto"``: the engine expected to run fastest, and why.

The choice is a lookup in a table measured with ``python -m benchmarks
engines``, which times one epoch of the fused and the scan engine, in turns,
over features x batch size (the table and its figures are in
benchmarks/RESULTS.md, "Which engine where"). The loop engine is never
chosen: it exists to show the lesson's loop, and is slower than both.
"""

from __future__ import annotations

from typing import Optional

from jaxlr import loop_kernels

# On a CPU, where the scan engine beat the fused one in each of three runs
# (2-core Xeon and EPYC; RESULTS.md): as (fewest features, most rows per
# batch), for a process whose small loops run as one kernel
# (`jaxlr.loop_kernels`) and for one whose loops run kernel by kernel.
# As one kernel, a fused epoch (plain SGD, 100 000 rows) took 0.4-0.6 x the
# scan engine's time at every cell measured (10 to 300 features, batches of
# 1, 8 and 64), so scan is never chosen. Kernel by kernel, the fused step
# slows 4 x from about 36 features, and scan took 0.45-0.5 x fused's time at
# batch 1 from 50 features (1.8-2.0 x at 20); batches of 8 and more stay on
# fused (scan 1.2-12 x its time).
CPU_SCAN_WINS: dict[bool, tuple[tuple[int, int], ...]] = {True: (), False: ((50, 1),)}

# On an accelerator a sequential step costs a kernel launch or more (~10 µs)
# whatever its size, while the scan engine does an epoch in O(log steps)
# dependent operations. Not yet measured here: see RESULTS.md.
ACCELERATOR_ENGINE = "scan"


def choose(backend: str, features: int, batch_size: int, *, supported: Optional[str],
           loops_as_kernels: Optional[bool] = None) -> tuple[str, str]:  # fmt: skip
    """(engine, reason) for a run of batches of `batch_size` rows of `features` on `backend`.

    `supported` is None when the scan engine can run the settings exactly,
    else the reason it cannot (`jaxlr.engines.scan.unsupported`).
    `loops_as_kernels`: which CPU table to read; None for this process's
    (`jaxlr.loop_kernels.in_effect`).
    """
    if loops_as_kernels is None:
        loops_as_kernels = loop_kernels.in_effect()
    if supported is not None:
        return "fused", f"the scan engine does not apply ({supported})"
    if backend != "cpu":
        return ACCELERATOR_ENGINE, f"on {backend}, sequential steps wait on each other's launches; scan does not"
    for fewest_features, most_batch in CPU_SCAN_WINS[loops_as_kernels]:
        if features >= fewest_features and batch_size <= most_batch:
            return "scan", (
                f"on cpu, scan measured faster from {fewest_features} features at batches of up to {most_batch}"
            )
    return "fused", f"on cpu, fused measured as fast or faster for {features} features at batch size {batch_size}"
