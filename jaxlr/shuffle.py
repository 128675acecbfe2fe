"""One shuffle for every backend: a keyed permutation of ``range(n)``.

An epoch's order must be the same wherever it is drawn: by NumPy on the host
(the loop engine, `batches`, a stream's chunks) or by XLA inside a compiled
program on a CPU, GPU or TPU. A sort of random keys (`jax.random.permutation`)
costs O(n log n) and NumPy's Fisher-Yates is sequential and host-only, so
neither serves both. Instead the order is a keyed bijection, written in
uint32 arithmetic that NumPy and XLA evaluate bit for bit alike:

1. A small network of rounds permutes the ``M = 2**bits`` integers below the
   next power of two: each round adds a key, multiplies by an odd constant
   (low bits reach high ones) and xors the value with itself shifted right
   (high bits reach low ones), all modulo M. Every step is invertible, so the
   whole network is a bijection of ``range(M)``, chosen by the round keys.
2. The network's outputs, read for inputs 0, 1, ..., M - 1, hold each
   number below n exactly once: those, in that order, are the permutation of
   ``range(n)``. Since M < 2n, at most half of the work is thrown away; no
   element is visited twice and nothing is sorted.

The round keys come from the raw words of a JAX key (see `key_words`) through
an integer hash, so the same key gives the same order everywhere. Small
domains run more rounds: with few bits, one round mixes little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import jax

# Odd constants with well-spread bits (from well-tested 32-bit hashes); the
# odd rounds multiply them by a key too.
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B, 0x9E3779B1, 0xC2B2AE35, 0x27D4EB2F, 0x165667B1, 0x85EBCA6B, 0xCC9E2D51)
_GOLDEN = 0x9E3779B9
_ROUNDS = 4  # from 2**_SMALL_BITS numbers up: a uniform permutation's statistics, tested
_SMALL_ROUNDS = 8
_SMALL_BITS = 12


def bits_for(n: int) -> int:
    """The bits of the network's domain for n numbers: the least k with 2**k >= n."""
    return max(0, int(n) - 1).bit_length()


def rounds_for(bits) -> int:
    return _SMALL_ROUNDS if bits < _SMALL_BITS else _ROUNDS


def _u32(value, xp):
    # xp None: Python integers, wrapped to 32 bits by `_wrap`.
    return value if xp is None else xp.asarray(value, dtype=xp.uint32)


def _wrap(x, xp):
    return x & 0xFFFFFFFF if xp is None else x


def _hash(x, xp):
    """A 32-bit integer hash (Wellons's lowbias32): every input bit reaches every output bit."""
    x = x ^ (x >> _u32(16, xp))
    x = _wrap(x * _u32(0x7FEB352D, xp), xp)
    x = x ^ (x >> _u32(15, xp))
    x = _wrap(x * _u32(0x846CA68B, xp), xp)
    return x ^ (x >> _u32(16, xp))


def round_keys(words, rounds: int, xp: Any):
    """Two uint32 keys per round (added, multiplied) from a key's words.

    Args:
        words: the key's W words: a list of Python integers (xp None) or a
            uint32 array of shape (W,) of the array module `xp`.

    Returns:
        A list of 2 * rounds keys, of the same kind as the words.
    """
    seed = _u32(_GOLDEN, xp)
    for word in (words if xp is None else [words[i] for i in range(words.shape[0])]):
        seed = _hash(seed ^ word, xp)
    return [_hash(_wrap(seed + _u32((i + 1) * _GOLDEN % (1 << 32), xp), xp), xp) for i in range(2 * rounds)]


def _round_constants(keys, bits, rounds: int, xp):
    """Per round: the added key, the multiplier and the shift (bits may be traced)."""
    if xp is None:
        half, third = max((bits + 1) // 2, 1), max((bits + 2) // 3, 1)
    else:
        half = xp.maximum((bits + 1) // 2, 1).astype(xp.uint32)
        third = xp.maximum((bits + 2) // 3, 1).astype(xp.uint32)
    constants = []
    for r in range(rounds):
        multiplier = _u32(_MULTIPLIERS[r % len(_MULTIPLIERS)], xp)
        if r % 2:  # keyed multipliers: small domains need the variety
            multiplier = _wrap(multiplier * (keys[2 * r] | _u32(1, xp)), xp)
        constants.append((keys[2 * r + 1], multiplier, third if r % 2 else half))
    return constants


# ------------------------------------------------------------------ host


def permutations(words, n: int) -> np.ndarray:
    """The orders of ``range(n)`` for a batch of keys, on the host.

    Args:
        words: uint32 key words, shape (E, W): one key per row.
        n: how many numbers to permute.

    Returns:
        int32 array of shape (E, n).
    """
    words = np.asarray(words, np.uint32)
    count, bits = words.shape[0], bits_for(n)
    rounds = rounds_for(bits)
    # The key schedule in Python integers: a few dozen operations on scalars,
    # which NumPy would dispatch one by one.
    schedule = [_round_constants(round_keys(row.tolist(), rounds, None), bits, rounds, None) for row in words]
    # Up to 16 bits, uint16 arithmetic gives the same low bits at twice the
    # speed: modulo 2**bits, only the constants' low bits matter.
    dtype, width = (np.uint16, 0xFFFF) if bits <= 16 else (np.uint32, 0xFFFFFFFF)
    if count == 1:  # scalars: no small arrays to build
        per_round = [tuple(dtype(value & width) for value in constants) for constants in schedule[0]]
    else:
        per_round = [(np.array([keys[r] for keys in schedule], np.uint64) & width).astype(dtype).T.reshape(3, count, 1)
                     for r in range(rounds)]  # fmt: skip
    mask = dtype((1 << bits) - 1)
    x = np.arange(1 << bits, dtype=dtype)
    x = np.tile(x, (count, 1)) if count > 1 else x[None]
    shifted = np.empty_like(x)
    for added, multiplier, shift in per_round:  # in place: each op is one pass over x
        x += added
        x *= multiplier
        x &= mask
        np.right_shift(x, shift, out=shifted)
        x ^= shifted
    # np.compress, not x[x < n]: boolean indexing branches on each element, three times slower here.
    kept = np.compress((x < n).ravel(), x.ravel())
    return kept.reshape(count, n).astype(np.int32, copy=False)


def permutation_from_words(words, n: int) -> np.ndarray:
    """The order of ``range(n)`` for one key given by its raw words, on the host: int32 (n,)."""
    return permutations(np.asarray(words, np.uint32)[None], n)[0]


# ------------------------------------------------------------------ device


def device_permutation(words: jax.Array, n, size: int) -> jax.Array:
    """`permutation_from_words` inside a JAX program, then ``n, ..., size - 1``.

    Args:
        words: the key's uint32 words, shape (W,).
        n: how many numbers to permute (may be traced), at most `size`.
        size: the length of the result (static).

    Returns:
        int32 array of shape (size,): the permutation of ``range(n)`` that
        the host draws for the same words, followed by the numbers from n to
        size - 1 in order (padding, which comes last).
    """
    import jax
    import jax.numpy as jnp

    n = jnp.asarray(n, jnp.int32)
    bits = jnp.maximum(n - 1, 0)
    bits = jnp.where(n <= 1, 0, 32 - jax.lax.clz(bits.astype(jnp.uint32)).astype(jnp.int32))
    span = 1 << bits_for(size)  # static: a power of two at least as large as the domain
    inputs = jnp.arange(span, dtype=jnp.uint32)
    mask = ((jnp.uint32(1) << bits.astype(jnp.uint32)) - 1).astype(jnp.uint32)

    def network(rounds):
        def run(_):
            keys = round_keys(jnp.asarray(words, jnp.uint32), rounds, jnp)
            x = inputs
            for added, multiplier, shift in _round_constants(keys, bits, rounds, jnp):
                x = ((x + added) * multiplier) & mask
                x = x ^ (x >> shift)
            return x

        return run

    # (Below 4 096 rows the rounds are known from `size` alone, but without
    # the branch a small fit's program ran slower: 100 `partial_fit` calls of
    # 4 rows took 39-42 ms against 36-37.)
    x = jax.lax.cond(bits < _SMALL_BITS, network(_SMALL_ROUNDS), network(_ROUNDS), None)
    keep = (inputs <= mask) & (x < n.astype(jnp.uint32))
    position = _running_count(keep.astype(jnp.int32)) - 1
    order = jnp.arange(size, dtype=jnp.int32)
    return order.at[jnp.where(keep, position, size)].set(x.astype(jnp.int32), mode="drop", unique_indices=True)


# Entries summed at once by `_running_count`: measured on a 2-core CPU, 16
# beat 8 and 32 from 512 to 2**21 entries; 64 made XLA write the products out.
_COUNT_BLOCK = 16


def _running_count(x):
    """``jnp.cumsum(x)`` for a power-of-two length, by blocks.

    XLA's CPU backend runs a cumsum as a reduce-window: most of a shuffle's
    time, about 30 µs for 512 entries and 12 ms for 2**21. Here each block
    of 16 entries is summed against a triangle of ones (one fused
    reduction), and the blocks' totals are counted the same way, level by
    level: 2 to 7 times faster from 2**15 to 2**21 entries (measured alone,
    one run each), exact in integers, and a small program to compile.
    """
    import jax.numpy as jnp

    width = min(x.shape[0], _COUNT_BLOCK)
    blocks = x.reshape(-1, width)
    triangle = jnp.arange(width)[:, None] >= jnp.arange(width)[None, :]
    within = jnp.sum(jnp.where(triangle[None], blocks[:, None, :], 0), axis=-1)
    if blocks.shape[0] == 1:
        return within.reshape(-1)
    before = _running_count(within[:, -1]) - within[:, -1]  # the entries of the blocks before each
    return (within + before[:, None]).reshape(-1)
