"""A large CSV from a fresh process: `jaxlr solve` against `pandas.read_csv` + `numpy.linalg.lstsq`.

Each contender runs in a process of its own, as a user would run it, and
reports its own peak resident memory (VmHWM). The jaxlr command runs with a
warm persistent compilation cache (filled by one run before the timed ones).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.harness import Row

# Each script prints its peak resident memory in bytes as its last line on stderr.
_PEAK = 'print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024, file=sys.stderr)'
PANDAS = f"""
import sys
import numpy as np
import pandas as pd
frame = pd.read_csv(sys.argv[1])
y = frame.pop("y").to_numpy(np.float64)
X = frame.to_numpy(np.float64)
del frame
w = np.linalg.lstsq(np.column_stack([X, np.ones(len(X))]), y, rcond=None)[0]
print(w[0])
{_PEAK}
"""
JAXLR = f"""
import sys
from jaxlr import cli
status = cli.main(sys.argv[1:])
{_PEAK}
sys.stdout.flush()
import os
os._exit(status)
"""


def write_table(path, num_rows, num_features, seed=0):
    """A CSV of `num_features` features x0, x1, ... and a target y, four decimals each (about 9 bytes a cell)."""
    import pyarrow as pa
    from pyarrow import csv

    rng = np.random.default_rng(seed)
    w = rng.normal(size=num_features)
    columns, y = {}, np.full(num_rows, 3.0)
    for j in range(num_features):
        x = np.round(rng.normal(size=num_rows), 4)
        columns[f"x{j}"] = x
        y += w[j] * x
    columns["y"] = np.round(y + 0.01 * rng.normal(size=num_rows), 4)
    csv.write_csv(pa.table(columns), path)
    return w


def _run(script, args, env):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-2000:]}")
    return seconds, int(done.stderr.split()[-1])


def run(*, num_rows=1_000_000, num_features=20, repeats=3):
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "table.csv")
        write_table(path, num_rows, num_features)
        size = os.path.getsize(path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAXLR_")}
        env["JAXLR_CACHE_DIR"] = os.path.join(directory, "cache")
        jaxlr = ["solve", "--data", path, "--target", "y", "--json", "--quiet"]
        _run(JAXLR, jaxlr, env)  # fills the compilation cache
        contenders = {"pandas.read_csv + numpy lstsq": (PANDAS, [path]), "jaxlr solve": (JAXLR, jaxlr)}
        measured = {name: [] for name in contenders}
        for _ in range(repeats):  # interleaved: a busy moment falls on both
            for name, (script, args) in contenders.items():
                measured[name].append(_run(script, args, env))
        for name, runs in measured.items():
            times, peaks = [t for t, _ in runs], [p for _, p in runs]
            rows.append(Row("tables", name, statistics.median(times), metrics={
                "min_s": min(times), "max_s": max(times), "peak_mb": max(peaks) / 1e6,
                "file_mb": size / 1e6, "runs": len(times)}))  # fmt: skip
    return rows


def targets(rows):
    by = {r.name: r for r in rows}
    jaxlr, pandas = by["jaxlr solve"], by["pandas.read_csv + numpy lstsq"]
    bound = 2 * jaxlr.metrics["file_mb"] + 400
    return {
        "jaxlr solve / (pandas.read_csv + lstsq) <= 1.5 (median)": jaxlr.seconds / pandas.seconds,
        "jaxlr solve / (pandas.read_csv + lstsq) <= 1.5 (slowest jaxlr against fastest pandas)":
            jaxlr.metrics["max_s"] / pandas.metrics["min_s"],
        "jaxlr solve peak RSS / (2 x file + 400 MB) <= 1": jaxlr.metrics["peak_mb"] / bound,
    }
