"""A fresh process: `python -m jaxlr` (the lesson's job) against `python -c "import jax"`."""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.harness import Row


def _wall(args, env, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{args} failed:\n{done.stderr[-2000:]}")
    return statistics.median(times)


def run(*, repeats=3):
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXLR_")}
    rows = []
    import_jax = _wall(["-c", "import jax"], base, repeats)
    rows.append(Row("cold", 'python -c "import jax"', import_jax))
    rows.append(Row("cold", 'python -c "import jaxlr"', _wall(["-c", "import jaxlr"], base, repeats)))
    no_cache = {**base, "JAXLR_NO_CACHE": "1"}
    rows.append(Row("cold", "python -m jaxlr, cold cache", _wall(["-m", "jaxlr", "--quiet"], no_cache, repeats)))
    with tempfile.TemporaryDirectory() as cache:
        warm = {**base, "JAXLR_CACHE_DIR": cache}
        _wall(["-m", "jaxlr", "--quiet"], warm, 1)  # fills the cache
        rows.append(Row("cold", "python -m jaxlr, warm cache", _wall(["-m", "jaxlr", "--quiet"], warm, repeats)))
    for row in rows:
        row.metrics["over_import_jax_s"] = row.seconds - import_jax
    return rows


def targets(rows):
    over = {r.name: r.metrics["over_import_jax_s"] for r in rows}
    return {
        "cold cache: seconds over import jax <= 1.0": over["python -m jaxlr, cold cache"],
        "warm cache: seconds over import jax <= 0.4": over["python -m jaxlr, warm cache"],
    }
