"""One epoch over a large table, each contender alone in a fresh process (for its peak RSS).

The contenders: jaxlr's fused engine with a true per-epoch shuffle, a naive
JAX scan (`jax.random.permutation` and a gather per step), one sequential pass
over contiguous batches (the memory-bandwidth reference: no shuffle at all),
and a PyTorch index loop.
"""

import json
import os
import subprocess
import sys

from benchmarks.harness import Row, available

CONTENDERS = ("sequential pass (no shuffle)", "jaxlr fused", "naive JAX in-scan gather", "PyTorch index loop")


def run(*, num_examples=2_000_000, num_features=100, batch_size=1024, repeats=5, device="cpu"):
    rows = []
    for name in CONTENDERS:
        if name.startswith("PyTorch") and not available("torch"):
            rows.append(Row("scale", name, skipped="torch is not installed"))
            continue
        if name.startswith("PyTorch") and device != "cpu":
            rows.append(Row("scale", name, skipped="the PyTorch loop runs on the CPU only"))
            continue
        args = [name, num_examples, num_features, batch_size, repeats, device]
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", *map(str, args)],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"scale worker {name!r} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        row = Row("scale", name, result["seconds"], result["compile_seconds"])
        data_bytes = num_examples * (num_features + 1) * 4
        row.metrics = {
            "samples_per_s": num_examples / result["seconds"],
            "GB_per_s": data_bytes / result["seconds"] / 1e9,
            "peak_rss_MB": result["peak_rss_MB"],
            "data_MB": data_bytes / 1e6,
        }
        rows.append(row)
    return rows


def targets(rows):
    by = {r.name: r for r in rows if r.seconds}
    reference = by["sequential pass (no shuffle)"].metrics["samples_per_s"]
    fused = by["jaxlr fused"].metrics
    return {
        "fused / sequential samples per s >= 0.4": fused["samples_per_s"] / reference,
        "fused peak RSS / (2 x data + 400 MB) <= 1": fused["peak_rss_MB"] / (2 * fused["data_MB"] + 400),
    }


# ------------------------------------------------------------------ the worker process


def _worker(name, n, d, batch_size, repeats, device):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlr
    from benchmarks.harness import measure, peak_rss_mb

    if device != "cpu":
        jax.config.update("jax_default_device", jax.devices(device)[0])
    rng = np.random.default_rng(0)
    # Host data as a user would hold it: a NumPy table in memory.
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = X @ rng.standard_normal((d, 1), dtype=np.float32) + np.float32(0.5)
    key = jax.random.key(0)
    num_batches = n // batch_size

    # Every JAX contender gets the same single device copy of the table.
    X_dev, y_dev = jaxlr.to_device(X), jaxlr.to_device(y)
    if name == "jaxlr fused":

        def epoch():
            return jaxlr.fit(X_dev, y_dev, key=key, epochs=1, batch_size=batch_size, lr=1e-3)
    elif name == "sequential pass (no shuffle)":
        params = jaxlr.init_state(jaxlr.init_params(key, d, 1))

        @jax.jit
        def sequential(state, X, y):
            def body(state, i):
                rows = (jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size) for a in (X, y))
                return jaxlr.optim.update(state, *rows, 1e-3)

            return jax.lax.scan(body, state, jnp.arange(num_batches))

        def epoch():
            return sequential(params, X_dev, y_dev)
    elif name == "naive JAX in-scan gather":
        params = jaxlr.init_state(jaxlr.init_params(key, d, 1))

        @jax.jit
        def naive(state, X, y, key):
            order = jax.random.permutation(key, X.shape[0])[: num_batches * batch_size]
            return jax.lax.scan(
                lambda s, rows: jaxlr.optim.update(s, X[rows], y[rows], 1e-3),
                state, order.reshape(num_batches, batch_size),
            )  # fmt: skip

        def epoch():
            return naive(params, X_dev, y_dev, key)
    elif name == "PyTorch index loop":
        import torch

        del X_dev, y_dev
        torch.set_num_threads(os.cpu_count() or 1)
        X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
        w = torch.zeros(d, 1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)

        def epoch():
            order = torch.randperm(n)
            for i in range(num_batches):
                rows = order[i * batch_size : (i + 1) * batch_size]
                loss = ((X_t[rows] @ w + b - y_t[rows]) ** 2).mean()
                loss.backward()
                with torch.no_grad():
                    for p in (w, b):
                        p -= 1e-3 * p.grad
                        p.grad.zero_()
            return None
    else:
        raise SystemExit(f"unknown contender {name!r}")

    median, first, _ = measure(epoch, repeats=repeats)
    print(json.dumps({"seconds": median, "compile_seconds": max(0.0, first - median), "peak_rss_MB": peak_rss_mb()}))


if __name__ == "__main__":
    name, n, d, batch_size, repeats, device = sys.argv[1:]
    _worker(name, int(n), int(d), int(batch_size), int(repeats), device)
