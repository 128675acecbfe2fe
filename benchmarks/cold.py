"""A fresh process: `python -m jaxlr` (the lesson's job) against `python -c "import jax"`,
and the first `fit` of a new process, with the compiled programs on disk and without."""

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


# The seconds of a new process's first fit (the lesson's table, batches of 16), imports not counted.
FIRST_FIT = """
import time, jax, numpy as np, jaxlr
X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=1000)
X, y = np.asarray(X), np.asarray(y)
start = time.perf_counter()
jax.block_until_ready(jaxlr.fit(X, y, key=jax.random.key(1), epochs=3, batch_size=16))
print(time.perf_counter() - start)
"""


def _first_fit(env, repeats):
    times = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", FIRST_FIT], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"the first fit failed:\n{done.stderr[-2000:]}")
        times.append(float(done.stdout.split()[-1]))
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
        first_fit_cold = _first_fit(no_cache, repeats)
        _first_fit(warm, 1)  # fills the cache
        first_fit_warm = _first_fit(warm, repeats)
    for row in rows:
        row.metrics["over_import_jax_s"] = row.seconds - import_jax
    rows.append(Row("cold", "first fit in a new process, no cache", first_fit_cold))
    rows.append(Row("cold", "first fit in a new process, warm cache", first_fit_warm))
    return rows


def targets(rows):
    over = {r.name: r.metrics["over_import_jax_s"] for r in rows if "over_import_jax_s" in r.metrics}
    first_fit = {r.name: r.seconds for r in rows}["first fit in a new process, warm cache"]
    return {
        "first fit of a cached kind in a new process: seconds <= 0.5": first_fit,
        "cold cache: seconds over import jax <= 1.0": over["python -m jaxlr, cold cache"],
        "warm cache: seconds over import jax <= 0.4": over["python -m jaxlr, warm cache"],
    }
