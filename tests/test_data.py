import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxlr


def test_synthetic_data_follows_the_true_function():
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=500, noise=0.0)
    assert X.shape == (500, 2) and y.shape == (500, 1)
    np.testing.assert_allclose(y[:, 0], 2.0 * X[:, 0] - 3.4 * X[:, 1] + 4.2, rtol=1e-5, atol=1e-5)


def test_synthetic_noise_has_the_requested_spread():
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=20_000)
    residual = np.asarray(y[:, 0] - (2.0 * X[:, 0] - 3.4 * X[:, 1] + 4.2))
    # noise = 0.01 * N(0, 1): variance 1e-4, the floor of the training loss.
    assert abs(residual.var() - 1e-4) < 5e-6


def test_synthetic_data_with_several_outputs():
    true_w = np.arange(12, dtype=np.float32).reshape(4, 3)
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=50, true_w=true_w, true_b=[1.0, 2.0, 3.0], noise=0.0)
    assert X.shape == (50, 4) and y.shape == (50, 3)
    np.testing.assert_allclose(y, np.asarray(X) @ true_w + [1.0, 2.0, 3.0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n, batch_size", [(10_000, 4), (10_001, 4), (7, 7), (7, 3), (1, 1)])
def test_batches_visit_every_example_exactly_once(n, batch_size):
    X = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    y = np.arange(n, dtype=np.float32)
    seen, sizes = [], []
    for X_batch, y_batch in jaxlr.batches(X, y, batch_size, key=jax.random.key(1)):
        np.testing.assert_array_equal(X_batch[:, 0], y_batch[:, 0])  # rows stay paired
        seen.extend(y_batch[:, 0].astype(int))
        sizes.append(len(y_batch))
    assert sorted(seen) == list(range(n))
    full, rest = divmod(n, batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest else [])


def test_the_seed_epoch_has_2500_batches(seed_data):
    X, y = seed_data
    assert sum(1 for _ in jaxlr.batches(X, y, 4, key=jax.random.key(0))) == 2500


def _order(key, n=1000):
    X = np.arange(n, dtype=np.float32)[:, None]
    return np.concatenate([yb[:, 0] for _, yb in jaxlr.batches(X, X[:, 0], 10, key=key)])


def test_the_order_is_fixed_by_the_key_and_changes_with_it():
    np.testing.assert_array_equal(_order(jax.random.key(5)), _order(jax.random.key(5)))
    assert not np.array_equal(_order(jax.random.key(5)), _order(jax.random.key(6)))
    assert not np.array_equal(_order(jax.random.key(5)), np.arange(1000))


def test_legacy_uint32_keys_give_the_same_order_as_typed_keys():
    typed = jax.random.key(5)
    np.testing.assert_array_equal(_order(typed), _order(jax.random.key_data(typed)))


def test_no_shuffle_keeps_the_stored_order():
    X = np.arange(10, dtype=np.float32)[:, None]
    ys = [yb[:, 0] for _, yb in jaxlr.batches(X, X[:, 0], 4, key=None, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate(ys), np.arange(10))


def test_permutation_is_uniform_over_positions():
    # Each of 5 values should land in each of 5 positions about 1/5 of the time.
    n, trials = 5, 4000
    counts = np.zeros((n, n))
    for seed in range(trials):
        order = jaxlr.permutation(jax.random.key(seed), n)
        counts[np.arange(n), order] += 1
    expected = trials / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50  # 16 degrees of freedom: p < 1e-4 above 40


def test_batches_are_host_arrays_that_the_step_takes(seed_data):
    X, y = seed_data
    X_batch, y_batch = next(jaxlr.batches(X, y, 4, key=jax.random.key(0)))
    assert isinstance(X_batch, np.ndarray) and X_batch.shape == (4, 2) and y_batch.shape == (4, 1)


def test_a_large_aligned_table_trains_in_place_and_others_are_copied_once():
    from jaxlr import train

    X = jaxlr.aligned_empty((70_001, 64))  # 17.9 MB: past the size that is padded
    assert X.ctypes.data % 64 == 0 and X.flags.c_contiguous and X.dtype == np.float32
    X[:] = np.random.default_rng(0).standard_normal(X.shape, dtype=np.float32)
    y = X[:, :1] * 2 + 1
    placed = train._unpadded(X, None)
    assert placed.unsafe_buffer_pointer() == X.ctypes.data  # JAX uses the memory as it is
    raw = np.empty(X.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64 + 16  # 16 bytes past a 64-byte boundary, as NumPy's own allocations often are
    unaligned = raw[start : start + X.nbytes].view(np.float32).reshape(X.shape)
    unaligned[:] = X
    assert train._unpadded(unaligned, None).unsafe_buffer_pointer() != unaligned.ctypes.data  # copied
    # The unpadded table (70 001 rows, the last batch short) trains as the loop engine does.
    settings = dict(key=jax.random.key(3), epochs=1, batch_size=4096, lr=0.01)
    fused, loop = jaxlr.fit(X, y, **settings), jaxlr.fit(X, y, engine="loop", **settings)
    np.testing.assert_allclose(fused.params.w, loop.params.w, atol=1e-5)
    np.testing.assert_allclose(fused.losses, loop.losses, rtol=1e-4)


def test_loaders_and_casts_allocate_aligned_arrays(tmp_path):
    from jaxlr.data import is_aligned, load_table
    from jaxlr.validate import as_array

    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,3\n4,5,6\n7,8,9\n")
    assert is_aligned(load_table(path, target="y").X)
    assert is_aligned(as_array("X", np.ones((5, 3), np.float64)))  # the float32 cast


def test_a_table_of_many_blocks_is_cast_whole_and_checked_in_every_block(monkeypatch):
    from jaxlr import arrays
    from jaxlr.validate import as_array

    monkeypatch.setattr(arrays, "_BLOCK_BYTES", 3 * 7 * 4)  # three rows of float32 a block: 34 blocks
    warnings.simplefilter("error")  # a RuntimeWarning from a block cast in another thread would fail here
    X = np.random.default_rng(0).normal(size=(101, 7))
    cast, total = arrays.cast_and_sum(X, np.float32)
    assert arrays.is_aligned(cast)
    np.testing.assert_array_equal(cast, X.astype(np.float32))
    np.testing.assert_allclose(total, X.astype(np.float32).sum(), rtol=1e-5)
    X[100, 6] = 1e39  # in the last, short block
    assert not np.isfinite(arrays.cast_and_sum(X, np.float32)[1])
    with pytest.raises(ValueError, match=r"`X` holds a value in row 100 \(counting from 0\) beyond the range of float32"):
        as_array("X", X)


FORKED_CAST = """
import multiprocessing, numpy as np
from jaxlr import arrays
arrays._BLOCK_BYTES = 1 << 12
table = np.random.default_rng(0).normal(size=(3000, 20))
total = arrays.cast_and_sum(table, np.float32)[1]  # the parent's pool starts

def cast(_):
    return arrays.cast_and_sum(table, np.float32)[1]

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(1) as pool:
        print(pool.map_async(cast, [0]).get(60) == [total])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_casts_with_a_pool_of_its_own(tmp_path):
    (tmp_path / "forked.py").write_text(FORKED_CAST)
    done = subprocess.run([sys.executable, "forked.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
