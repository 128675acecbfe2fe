"""``engine="auto"``: the engine expected to run fastest, and why.

The choice is a lookup in a table measured with ``python -m benchmarks
engines``, which times one epoch of the fused and the scan engine, in turns,
over features x batch size (the table and its figures are in
benchmarks/RESULTS.md, "Which engine where"). The loop engine is never
chosen: it exists to show the lesson's loop, and is slower than both.
"""

from __future__ import annotations

from typing import Optional

# On a CPU, where the scan engine beat the fused one in each of three runs
# (2-core Xeon; RESULTS.md): as (fewest features, most rows per batch). With
# the lean chunked form (plain SGD, batch 1, L2, one epoch of 200 000 rows,
# 2026-11-27) scan took 0.45-0.46 x fused's time at 50 features and
# 0.41-0.45 x at 100; at 20 it took 1.8-2.0 x, so fused is kept below 50.
# Batches of 8 and more were measured before the lean form (scan 2-12 x
# fused's time) and are kept on fused.
CPU_SCAN_WINS: tuple[tuple[int, int], ...] = ((50, 1),)

# On an accelerator a sequential step costs a kernel launch or more (~10 µs)
# whatever its size, while the scan engine does an epoch in O(log steps)
# dependent operations. Not yet measured here: see RESULTS.md.
ACCELERATOR_ENGINE = "scan"


def choose(backend: str, features: int, batch_size: int, *, supported: Optional[str]) -> tuple[str, str]:
    """(engine, reason) for a run of batches of `batch_size` rows of `features` on `backend`.

    `supported` is None when the scan engine can run the settings exactly,
    else the reason it cannot (`jaxlr.engines.scan.unsupported`).
    """
    if supported is not None:
        return "fused", f"the scan engine does not apply ({supported})"
    if backend != "cpu":
        return ACCELERATOR_ENGINE, f"on {backend}, sequential steps wait on each other's launches; scan does not"
    for fewest_features, most_batch in CPU_SCAN_WINS:
        if features >= fewest_features and batch_size <= most_batch:
            return "scan", (
                f"on cpu, scan measured faster from {fewest_features} features at batches of up to {most_batch}"
            )
    return "fused", f"on cpu, fused measured as fast or faster for {features} features at batch size {batch_size}"
