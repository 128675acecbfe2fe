"""Data larger than memory: a 1.5 GB .npy file trained in 64 MB chunks."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxlr

ROWS, FEATURES = 3_700_000, 100  # 3.7e6 x 101 float32 = 1.49 GB
STREAM = textwrap.dedent(
    """
    import json, resource, sys, jax, jaxlr
    stream = jaxlr.NpyStream(sys.argv[1], target=100, chunk_bytes=64 << 20)
    result = jaxlr.fit(stream, None, key=jax.random.key(1), epochs=1, batch_size=1024, lr=0.01)
    # VmHWM, the peak RSS of this program: getrusage's ru_maxrss would also
    # count the pages of the (large) pytest process this one was forked from.
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"w": jax.device_get(result.params.w).ravel().tolist(),
                      "b": jax.device_get(result.params.b).tolist(), "peak_rss_MB": peak,
                      "steps": int(result.losses.shape[0])}))
    """
)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.npy"
    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES).astype(np.float32) / 10
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(ROWS, FEATURES + 1))
    for start in range(0, ROWS, 200_000):
        X = rng.standard_normal((min(200_000, ROWS - start), FEATURES), dtype=np.float32)
        matrix[start : start + len(X), :FEATURES] = X
        matrix[start : start + len(X), FEATURES] = X @ w + 0.5 + 0.1 * rng.standard_normal(len(X), dtype=np.float32)
    matrix.flush()
    del matrix
    return path


def _mse(params_w, params_b, X, y):
    return float(np.mean((X @ np.reshape(params_w, (-1, 1)) + params_b - y) ** 2))


def test_streaming_keeps_memory_bounded_and_reaches_the_noise_floor(big_file):
    assert big_file.stat().st_size > 1.45e9
    done = subprocess.run([sys.executable, "-c", STREAM, str(big_file)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    streamed = json.loads(done.stdout.strip().splitlines()[-1])
    assert streamed["peak_rss_MB"] < 700, streamed["peak_rss_MB"]
    assert ROWS // 1024 <= streamed["steps"] <= ROWS // 1024 + 64  # one short batch per chunk at most

    # One streamed epoch learns the truth up to the noise, 0.1 ** 2.
    matrix = np.load(big_file, mmap_mode="r")
    X, y = np.array(matrix[:200_000, :FEATURES]), np.array(matrix[:200_000, FEATURES:])
    del matrix
    assert _mse(streamed["w"], streamed["b"], X, y) < 0.0105


def test_a_memmap_streams_too_and_chunks_change_order_each_epoch(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5000, 3)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5], np.float32) + 1.0
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    stream = jaxlr.NpyStream.from_memmap(mapped, y, chunk_bytes=12_000)
    result = jaxlr.fit(stream, None, key=jax.random.key(0), epochs=4, batch_size=10, lr=0.05)
    np.testing.assert_allclose(np.asarray(result.params.w).ravel(), [1.0, -2.0, 0.5], atol=1e-3)
    assert result.losses.shape == (4 * 500,)
    # With a rate too small to move the params, a step's loss names its batch:
    # each epoch must visit the chunks in another order, and the rows of a
    # chunk in another order too.
    still = jaxlr.fit(stream, None, key=jax.random.key(0), epochs=2, batch_size=10, lr=1e-30)
    steps = stream.chunk_rows(10) // 10
    epochs = np.asarray(still.losses).reshape(2, -1, steps)  # (epoch, chunk visited, step)
    # A chunk's mean loss does not depend on the order of its rows: it names the chunk.
    means = epochs.mean(axis=2)
    visits = [[int(np.argmin(np.abs(means[0] - m))) for m in epoch] for epoch in means]
    np.testing.assert_allclose(means[1], means[0][visits[1]], rtol=1e-5)
    assert sorted(visits[1]) == visits[0] and visits[1] != visits[0]
    assert not any(np.array_equal(epochs[1][j], epochs[0][visits[1][j]]) for j in range(len(visits[1])))
    with pytest.raises(ValueError, match="view of a memmap"):
        jaxlr.fit(mapped[:, :2], y, key=jax.random.key(0))
    with pytest.raises(ValueError, match="engine='fused'"):
        jaxlr.fit(mapped, y, key=jax.random.key(0), engine="loop")


def test_nan_in_a_streamed_chunk_names_its_row(tmp_path):
    matrix = np.ones((1000, 3), np.float32)
    matrix[777, 1] = np.nan
    np.save(tmp_path / "m.npy", matrix)
    with pytest.raises(ValueError, match=r"`X` has NaN or inf in row 777"):
        jaxlr.fit(jaxlr.NpyStream(tmp_path / "m.npy", target=2, chunk_bytes=1200), None, key=jax.random.key(0))
    # A target given beside the mapped features is named as that array, not as the file.
    y = np.ones(1000, np.float32)
    y[5] = np.inf
    matrix[777, 1] = 0
    np.save(tmp_path / "m.npy", matrix)
    with pytest.raises(ValueError, match=r"`y` has NaN or inf in row 5 \(counting from 0\) of the `y` array given"):
        jaxlr.fit(np.load(tmp_path / "m.npy", mmap_mode="r"), y, key=jax.random.key(0))
    np.save(tmp_path / "f.npy", np.asfortranarray(matrix))
    with pytest.raises(ValueError, match=r"`X` is a memmap stored column by column \(Fortran order\)"):
        jaxlr.fit(np.load(tmp_path / "f.npy", mmap_mode="r"), y, key=jax.random.key(0))
