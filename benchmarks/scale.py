"""One epoch over a large table, each contender alone in a fresh process (for its peak RSS).

The contenders: jaxlr's fused engine with a true per-epoch shuffle, a naive
JAX scan (`jax.random.permutation` and a gather per step), one sequential pass
over contiguous batches (the reference for training: no shuffle at all), a
PyTorch index loop, and a plain copy of the table on the device, which
measures the memory bandwidth the device reaches at all.

GB_per_s counts the fewest bytes each contender must move: the table once for
an epoch of training, twice (read and written) for the copy.

On a CPU the table is allocated 64-byte aligned (`jaxlr.aligned_empty`), so
JAX uses it in place (the in_place column says so) and a fit's peak is the
data plus what training adds; one more contender trains on a table that is
not aligned, which the fit must copy.
"""

import json
import os
import subprocess
import sys

from benchmarks.harness import Row, available

COPY = "device copy (bandwidth reference)"
DEVICE_ORDER = "jaxlr fused program, order drawn on the device"
UNALIGNED = "jaxlr fused, unaligned NumPy table (copied)"
CONTENDERS = (COPY, "sequential pass (no shuffle)", "jaxlr fused", UNALIGNED, DEVICE_ORDER, "naive JAX in-scan gather",
              "PyTorch index loop")  # fmt: skip


def run(*, num_examples=2_000_000, num_features=100, batch_size=1024, repeats=5, device="cpu"):
    rows = []
    for name in CONTENDERS:
        if name.startswith("PyTorch") and not available("torch"):
            rows.append(Row("scale", name, skipped="torch is not installed"))
            continue
        if name == DEVICE_ORDER and device == "cpu":
            continue  # on a CPU the same order is cheaper to draw on the host (see the shuffle case)
        if name == UNALIGNED and device != "cpu":
            continue  # host memory layout matters only where JAX can use host memory in place
        args = [name, num_examples, num_features, batch_size, repeats, device]
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", *map(str, args)],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            if device == "cpu":
                raise RuntimeError(f"scale worker {name!r} failed:\n{done.stderr[-3000:]}")
            # On an accelerator, one contender's failure (say, out of memory)
            # should not cost the others' figures: it is reported instead.
            print(done.stderr[-3000:], file=sys.stderr)
            rows.append(Row("scale", name, skipped="failed: " + done.stderr.strip().splitlines()[-1][:200]))
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        row = Row("scale", name, result["seconds"], result["compile_seconds"])
        data_bytes = num_examples * (num_features + 1) * 4
        moved = 2 * data_bytes if name == COPY else data_bytes
        row.metrics = {
            "samples_per_s": num_examples / result["seconds"],
            "GB_per_s": moved / result["seconds"] / 1e9,
            "peak_rss_MB": result["peak_rss_MB"],
            "data_MB": data_bytes / 1e6,
        }
        if "in_place" in result:
            row.metrics["in_place"] = result["in_place"]
        rows.append(row)
    return rows


def targets(rows):
    by = {r.name: r for r in rows if r.seconds}
    reference = by["sequential pass (no shuffle)"].metrics["samples_per_s"]
    fused = by["jaxlr fused"].metrics
    bandwidth = by[COPY].metrics["GB_per_s"]
    checks = {
        "fused / sequential samples per s >= 0.5": fused["samples_per_s"] / reference,
        "fused peak RSS / (data + 500 MB) <= 1 (aligned table, used in place)": fused["peak_rss_MB"] / (fused["data_MB"] + 500),
    }
    if UNALIGNED in by:
        copied = by[UNALIGNED].metrics
        checks["unaligned table: peak RSS / (2 x data + 400 MB) <= 1"] = copied["peak_rss_MB"] / (2 * copied["data_MB"] + 400)
    return {
        **checks,
        # The GPU targets; on a CPU these fractions are for information.
        "sequential GB/s / copy GB/s >= 0.7 (GPU)": by["sequential pass (no shuffle)"].metrics["GB_per_s"] / bandwidth,
        "fused GB/s / copy GB/s >= 0.5 (GPU)": fused["GB_per_s"] / bandwidth,
    }


# ------------------------------------------------------------------ the worker process


def _worker(name, n, d, batch_size, repeats, device):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlr
    from benchmarks.harness import measure, peak_rss_mb

    key = jax.random.key(0)
    num_batches = n // batch_size
    in_place = None
    if device == "cpu":
        rng = np.random.default_rng(0)
        # Host data as a user would hold it: a NumPy table in memory, drawn
        # where it lies (a drawn copy would count in the peak).
        if name == UNALIGNED:  # 16 bytes past a 64-byte boundary, as NumPy's own large arrays often lie
            raw = np.empty(n * d * 4 + 64, np.uint8)
            start = -raw.ctypes.data % 64 + 16
            X = raw[start : start + n * d * 4].view(np.float32).reshape(n, d)
        else:
            X = jaxlr.aligned_empty((n, d), np.float32)
        rng.standard_normal(out=X, dtype=np.float32)
        y = X @ rng.standard_normal((d, 1), dtype=np.float32) + np.float32(0.5)
        # Every JAX contender gets the same device array of the table: on a
        # CPU, JAX uses the aligned host table in place.
        if name == UNALIGNED:
            X_dev = y_dev = None  # the fit copies the table itself: only that copy may count
            in_place = False
        else:
            X_dev, y_dev = jax.device_put(X), jax.device_put(y)
            in_place = X_dev.unsafe_buffer_pointer() == X.ctypes.data
    else:
        jax.config.update("jax_default_device", jax.devices(device)[0])
        # Drawn on the accelerator: drawing gigabytes on the host would take
        # longer than the benchmark, and only device memory is measured here.
        data_key, truth_key = jax.random.split(jax.random.key(1))
        X_dev = jax.random.normal(data_key, (n, d), jnp.float32)
        y_dev = X_dev @ jax.random.normal(truth_key, (d, 1), jnp.float32) + 0.5
    state = jaxlr.init_state(jaxlr.init_params(key, d, 1))  # where the JAX loops start
    if name == COPY:
        add = jax.jit(lambda X, y, shift: (X + shift, y + shift))

        def epoch():  # reads the table once and writes it once
            return add(X_dev, y_dev, jnp.float32(1.0))
    elif name == "jaxlr fused":

        def epoch():
            return jaxlr.fit(X_dev, y_dev, key=key, epochs=1, batch_size=batch_size, lr=1e-3)
    elif name == UNALIGNED:

        def epoch():
            return jaxlr.fit(X, y, key=key, epochs=1, batch_size=batch_size, lr=1e-3)
    elif name == DEVICE_ORDER:
        # The fused epoch with its row order drawn on the device (a sort)
        # instead of by NumPy on the host.
        def epoch():
            return jaxlr.fit(X_dev, y_dev, key=key, epochs=1, batch_size=batch_size, lr=1e-3, shuffle="device")
    elif name == "sequential pass (no shuffle)":
        @jax.jit
        def sequential(state, X, y):
            def body(state, i):
                rows = (jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size) for a in (X, y))
                return jaxlr.optim.update(state, *rows, 1e-3)

            return jax.lax.scan(body, state, jnp.arange(num_batches))

        def epoch():
            return sequential(state, X_dev, y_dev)
    elif name == "naive JAX in-scan gather":
        @jax.jit
        def naive(state, X, y, key):
            order = jax.random.permutation(key, X.shape[0])[: num_batches * batch_size]
            return jax.lax.scan(
                lambda s, rows: jaxlr.optim.update(s, X[rows], y[rows], 1e-3),
                state, order.reshape(num_batches, batch_size),
            )  # fmt: skip

        def epoch():
            return naive(state, X_dev, y_dev, key)
    elif name == "PyTorch index loop":
        import torch

        if device == "cpu":
            del X_dev, y_dev
            torch.set_num_threads(os.cpu_count() or 1)
            X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
        else:  # the same device buffers, shared rather than copied
            X_t, y_t = torch.from_dlpack(X_dev), torch.from_dlpack(y_dev)
        w = torch.zeros(d, 1, requires_grad=True, device=X_t.device)
        b = torch.zeros(1, requires_grad=True, device=X_t.device)

        def epoch():
            order = torch.randperm(n, device=X_t.device)
            for i in range(num_batches):
                rows = order[i * batch_size : (i + 1) * batch_size]
                loss = ((X_t[rows] @ w + b - y_t[rows]) ** 2).mean()
                loss.backward()
                with torch.no_grad():
                    for p in (w, b):
                        p -= 1e-3 * p.grad
                        p.grad.zero_()
            if X_t.is_cuda:
                torch.cuda.synchronize()
            return None
    else:
        raise SystemExit(f"unknown contender {name!r}")

    median, first, _ = measure(epoch, repeats=repeats)
    result = {"seconds": median, "compile_seconds": max(0.0, first - median), "peak_rss_MB": peak_rss_mb()}
    if name in ("jaxlr fused", UNALIGNED) and in_place is not None:
        result["in_place"] = in_place
    print(json.dumps(result))


if __name__ == "__main__":
    name, n, d, batch_size, repeats, device = sys.argv[1:]
    _worker(name, int(n), int(d), int(batch_size), int(repeats), device)
