"""Data for the lesson: the synthetic problem, the shuffle, and the batching generator."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import validate

# The generator gathers this many shuffled rows at a time: large enough that
# each batch is a cheap slice, small enough that a big table is never copied whole.
_BLOCK_ROWS = 1 << 16


def synthetic_data(key, num_examples=10_000, true_w=(2.0, -3.4), true_b=4.2, noise=0.01):
    """Draws a regression problem whose answer is known.

    X ~ N(0, 1) and y = X @ true_w + true_b + noise * N(0, 1), so the best
    achievable mean squared error is ``noise ** 2`` (1e-4 for the defaults).

    Args:
        key: a PRNG key.
        num_examples: n, the number of rows.
        true_w: weights of shape (d,) for one output, or (d, k) for k outputs.
        true_b: intercept, a scalar or shape (k,).
        noise: standard deviation of the Gaussian noise added to y.

    Returns:
        X of shape (n, d) and y of shape (n, k), float32.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> X.shape, y.shape
        ((10000, 2), (10000, 1))
    """
    key = validate.check_key(key)
    num_examples = validate.check_int("num_examples", num_examples, low=1)
    noise = validate.check_real("noise", noise, low=0.0, low_open=False)
    true_w = np.asarray(true_w, dtype=np.float32)
    if true_w.ndim not in (1, 2) or true_w.shape[0] == 0:
        raise ValueError(f"`true_w` must have shape (d,) or (d, k), got {true_w.shape}.")
    true_w = true_w.reshape(true_w.shape[0], -1)
    true_b = np.asarray(true_b, dtype=np.float32)
    num_outputs = true_w.shape[1]
    if true_b.size not in (1, num_outputs) or true_b.ndim > 1:
        raise ValueError(f"`true_b` must be a scalar or have shape ({num_outputs},), got {true_b.shape}.")
    true_b = np.broadcast_to(true_b.reshape(-1), (num_outputs,))
    return _synthetic_data(key, num_examples, true_w, true_b, noise)


@partial(jax.jit, static_argnums=1)
def _synthetic_data(key, num_examples, true_w, true_b, noise):
    x_key, noise_key = jax.random.split(key)
    X = jax.random.normal(x_key, (num_examples, true_w.shape[0]))
    eps = jax.random.normal(noise_key, (num_examples, true_w.shape[1]))
    return X, X @ true_w + true_b[None, :] + noise * eps


def key_words(keys):
    """The raw uint32 words of one key or a batch of keys, on the host."""
    return np.asarray(jax.random.key_data(keys))


def permutation(key, num_examples):
    """A random order of ``range(num_examples)``, fully determined by `key`.

    The shuffle is NumPy's Fisher-Yates on the host, seeded from the key's
    bits: it costs O(n), where `jax.random.permutation` sorts (about 40 times
    slower on a CPU for 10 000 rows), and host work overlaps device work.

    Returns:
        An int32 NumPy array of shape (num_examples,).
    """
    return permutation_from_words(key_words(validate.check_key(key)), num_examples)


def permutation_from_words(words, num_examples):
    """`permutation` for a key given by its raw words (see `key_words`)."""
    rng = np.random.Generator(np.random.SFC64(words.tolist()))
    return rng.permutation(num_examples).astype(np.int32)


def batches(X, y, batch_size, *, key, shuffle=True):
    """One epoch of mini-batches: every example exactly once, in a shuffled order.

    The lesson's data iterator. Batches are NumPy arrays in host memory, which
    a jitted step takes at almost no cost; the last batch is short when
    `batch_size` does not divide n.

    Args:
        X: array of shape (n, d).
        y: array of shape (n, k), or (n,).
        batch_size: rows per batch, between 1 and n.
        key: a PRNG key that fixes the order; each epoch should get its own.
        shuffle: False keeps the rows in their stored order (`key` may be None).

    Returns:
        An iterator over (X_batch, y_batch) pairs.

    Example:
        >>> X, y = synthetic_data(jax.random.key(0))
        >>> sum(1 for _ in batches(X, y, 4, key=jax.random.key(1)))
        2500
    """
    X, y = validate.training_arrays(X, y)
    n = X.shape[0]
    batch_size = validate.check_int(
        "batch_size", batch_size, low=1, high=n, high_name="the number of examples"
    )
    order = permutation(key, n) if shuffle else None
    # Slicing a host array is about a microsecond; indexing a device array
    # per batch is a dispatch, a hundred times dearer.
    return _iterate(np.asarray(X), np.asarray(y), batch_size, order)


def _iterate(X, y, batch_size, order):
    n = X.shape[0]
    block = batch_size * max(1, _BLOCK_ROWS // batch_size)
    for start in range(0, n, block):
        if order is None:
            X_block, y_block = X[start : start + block], y[start : start + block]
        else:
            rows = order[start : start + block]
            X_block, y_block = X[rows], y[rows]
        for offset in range(0, X_block.shape[0], batch_size):
            yield X_block[offset : offset + batch_size], y_block[offset : offset + batch_size]
