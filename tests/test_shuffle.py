"""The one shuffle: a keyed permutation, the same on the host and inside a compiled program."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from jaxlr import shuffle
from jaxlr.data import key_words
from jaxlr.engines import core

@functools.lru_cache(maxsize=None)
def _device(size):
    # n traced, as in the fused program: one compilation serves many n.
    return jax.jit(lambda words, n: shuffle.device_permutation(words, n, size))


@pytest.mark.parametrize("sizes", [[1, 2, 3, 5, 97, 4096, 4097, 10_007, 10_000, 65_536], [1_999_993, 2_000_000]])
def test_host_and_device_draw_the_same_permutation(sizes):
    # Padding rows follow the real ones, in order; the order depends on n
    # only, not on the padded size.
    size = max(sizes) + 29
    for n in sizes:
        for seed in (0, 12345):
            words = key_words(jax.random.key(seed))
            host = shuffle.permutation_from_words(words, n)
            assert host.dtype == np.int32 and host.shape == (n,)
            np.testing.assert_array_equal(np.sort(host), np.arange(n))  # a permutation
            device = np.asarray(_device(size)(jnp.asarray(words), jnp.int32(n)))
            np.testing.assert_array_equal(device[:n], host)
            np.testing.assert_array_equal(device[n:], np.arange(n, size))


def test_a_batch_of_keys_gives_each_keys_permutation():
    words = key_words(jax.random.split(jax.random.key(0), 5))
    together = shuffle.permutations(words, 1000)
    for row, w in zip(together, words):
        np.testing.assert_array_equal(row, shuffle.permutation_from_words(w, 1000))
    assert len({tuple(row) for row in together}) == 5


def test_the_fused_engine_draws_on_the_device_the_order_the_loop_draws_on_the_host():
    key = jax.random.fold_in(jax.random.key(4), 2)
    drawn = np.asarray(jax.jit(core.device_order, static_argnums=2)(key, jnp.int32(300), 320))
    np.testing.assert_array_equal(drawn[:300], jaxlr.permutation(key, 300))
    np.testing.assert_array_equal(drawn[300:], np.arange(300, 320))
    # So a whole fit is the same run whichever side draws its orders.
    X, y = jaxlr.synthetic_data(jax.random.key(1), num_examples=300)
    runs = [jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, batch_size=8, shuffle=where) for where in ("host", "device")]
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)


@pytest.mark.parametrize("n", [1000, 10_007, 1 << 16, 300_001])
def test_the_permutations_look_uniform(n):
    # Statistics of a uniform random permutation, over 40 fixed keys: the
    # correlation of position and value, and of neighbours (what a batch is
    # made of), times sqrt(n), is about N(0, 1); fixed points are Poisson(1);
    # and orders of different keys are uncorrelated.
    keys = 40
    orders = shuffle.permutations(key_words(jax.random.split(jax.random.key(11), keys)), n).astype(np.float64)
    position = np.arange(n)

    def scaled_correlation(a, b):
        return np.corrcoef(a, b)[0, 1] * np.sqrt(len(a))

    with_position = [scaled_correlation(position, o) for o in orders]
    neighbours = [scaled_correlation(o[:-1], o[1:]) for o in orders]
    across_keys = [scaled_correlation(a, b) for a, b in zip(orders[:-1], orders[1:])]
    for values in (with_position, neighbours, across_keys):
        # The mean of 40 standard normals is within 0.63 of 0 with p > 0.9999,
        # and their standard deviation between 0.6 and 1.5.
        assert abs(np.mean(values)) < 0.63 and 0.6 < np.std(values) < 1.5
    fixed = (orders == position).sum(axis=1)
    assert 0.5 < fixed.mean() < 1.6 and fixed.max() <= 7
    # The first batch of 64 rows spreads over the table as 64 uniform draws would.
    first = (orders[:, :64] * 8 // n).astype(int).ravel()
    counts = np.bincount(first, minlength=8)
    expected = first.size / 8
    assert ((counts - expected) ** 2 / expected).sum() < 30  # 7 degrees of freedom: p < 1e-4


@pytest.mark.parametrize("n", [2, 3, 7, 13])
def test_small_permutations_put_each_value_anywhere(n):
    # On a tiny table, every value should land in every position about equally often.
    trials = 8000  # enough to see the bias of too few rounds (4 instead of 8 fails here)
    orders = shuffle.permutations(key_words(jax.random.split(jax.random.key(5), trials)), n)
    counts = np.zeros((n, n))
    np.add.at(counts, (np.broadcast_to(np.arange(n), orders.shape), orders), 1)
    expected = trials / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = (n - 1) ** 2
    assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 5  # about p < 1e-4 for a uniform shuffle
