"""Data: the synthetic problem, the shuffle, the batching generator, and NumPy files read in pieces."""

import mmap
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import parallel, shuffle, validate
from jaxlr.arrays import (  # noqa: F401  (host arrays, importable from here as before)
    ALIGNMENT,
    DataError,
    _feature_columns,
    _load_npy,
    _npy_columns,
    _npy_layout,
    aligned,
    aligned_empty,
    is_aligned,
    padded,
)

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


# Compiled with LLVM's optimizations off: the program runs once per call, and
# at the lesson's size optimizing it takes a quarter second, far longer than
# the few milliseconds it saves when it runs.
@partial(jax.jit, static_argnums=1, compiler_options={"xla_backend_optimization_level": 0})
def _synthetic_data(key, num_examples, true_w, true_b, noise):
    d, k = true_w.shape
    # One draw for features and noise together: one random-number kernel to
    # compile instead of two (a third less compile time for the lesson's job).
    Z = jax.random.normal(key, (num_examples, d + k))
    X, eps = Z[:, :d], Z[:, d:]
    return X, X @ true_w + true_b[None, :] + noise * eps


def to_device(array, device=None, *, rows=None):
    """Copies a host array to a JAX device, holding at most one copy of it.

    On a CPU the copy is made into 64-byte-aligned memory, which the device
    then uses in place. On an accelerator, `jax.device_put` of one large
    NumPy array can stage a second full copy on the way; a device buffer is
    filled in pieces of at most 64 MB instead, which keeps the peak at the
    host array, its device copy and one piece. A `jax.Array` is only moved
    (if `device` asks for another place).

    Args:
        array: a NumPy or JAX array.
        device: a `jax.Device`, or None for JAX's default.
        rows: the number of rows of the result, at least the array's; the
            rows past the array's are zeros (padding).
    """
    extra = 0 if rows is None else rows - array.shape[0]
    if isinstance(array, jax.Array):
        if extra:
            array = _pad_rows(array, extra)
        return array if device is None else jax.device_put(array, device)
    array = np.asarray(array)
    if array.ndim and parallel.platform(device) == "cpu":
        # One copy into aligned memory, which a CPU device then uses in place,
        # where filling a device buffer piece by piece copied the buffer at
        # every piece: a one-epoch fit over 200 000 x 100 unaligned float32
        # rows took 45-49 ms against 155-171 (RESULTS.md). No more memory.
        return jax.device_put(padded(array, array.shape[0] + extra), device)
    piece_rows = max(1, _TRANSFER_BYTES // max(1, array[:1].nbytes))
    if array.ndim == 0 or array.shape[0] <= piece_rows:
        if extra:
            array = padded(array, array.shape[0] + extra)
        return jax.device_put(array, device)
    rows = piece_rows
    buffer = jnp.zeros((array.shape[0] + extra, *array.shape[1:]), array.dtype, device=device)
    for start in range(0, array.shape[0], rows):
        # The last piece ends flush with the array (rewriting a few rows), so
        # every piece has one shape and `_write_rows` compiles once.
        start = min(start, array.shape[0] - rows)
        buffer = _write_rows(buffer, jax.device_put(array[start : start + rows], device), start)
        # Asynchronous dispatch would otherwise queue every piece's copy at
        # once: a whole second copy of the array before the first write runs.
        buffer.block_until_ready()
    return buffer


_TRANSFER_BYTES = 64 << 20


@partial(jax.jit, static_argnums=1)
def _pad_rows(array, extra):
    return jnp.pad(array, [(0, extra)] + [(0, 0)] * (array.ndim - 1))


@partial(jax.jit, donate_argnums=0)
def _write_rows(buffer, piece, start):
    return jax.lax.dynamic_update_slice_in_dim(buffer, piece, start, axis=0)


def key_words(keys):
    """The raw uint32 words of one key or a batch of keys, on the host."""
    return np.asarray(jax.random.key_data(keys))


def permutation(key, num_examples):
    """A random order of ``range(num_examples)``, fully determined by `key`.

    The order is `jaxlr.shuffle`'s keyed permutation: the same key gives the
    same order on the host (here, with NumPy) and inside a compiled program on
    any device, in O(n) and without a sort.

    Returns:
        An int32 NumPy array of shape (num_examples,).
    """
    return permutation_from_words(key_words(validate.check_key(key)), num_examples)


def permutation_from_words(words, num_examples):
    """`permutation` for a key given by its raw words (see `key_words`)."""
    return shuffle.permutation_from_words(words, num_examples)


def batches(X, y, batch_size, *, key, shuffle=True, sample_weight=None):
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
        sample_weight: optional array of shape (n,); the batches then carry
            their rows' weights too.

    Returns:
        An iterator over (X_batch, y_batch) pairs, or (X_batch, y_batch,
        weight_batch) triples with `sample_weight`.

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
    arrays = [np.asarray(X), np.asarray(y)]
    if sample_weight is not None:
        weight = np.asarray(sample_weight)
        if weight.shape != (n,):
            raise ValueError(f"`sample_weight` has shape {weight.shape}; it needs one weight per row, ({n},).")
        arrays.append(weight)
    return _iterate(arrays, batch_size, order)


def _iterate(arrays, batch_size, order):
    n = arrays[0].shape[0]
    block = batch_size * max(1, _BLOCK_ROWS // batch_size)
    for start in range(0, n, block):
        if order is None:
            blocks = [a[start : start + block] for a in arrays]
        else:
            rows = order[start : start + block]
            blocks = [a[rows] for a in arrays]
        for offset in range(0, blocks[0].shape[0], batch_size):
            yield tuple(b[offset : offset + batch_size] for b in blocks)


# ------------------------------------------------------------------ streams


class NpyStream:
    """The rows of a `.npy` matrix on disk, read a chunk at a time.

    For data larger than memory: `fit` reads each chunk with plain file reads
    (no memory map, so pages already trained on do not stay counted against
    the process), checks it, and trains on it, holding about two chunks at
    a time. Pass it to `fit` as X with y=None, or pass `fit` a `numpy.memmap`
    directly.

    Args:
        path: the `.npy` file, a 2-D C-ordered numeric matrix.
        target: column index of the target when the matrix holds it; the
            other columns (or `features`) are the features.
        features: column indices of the features.
        y: when the matrix holds only features: the targets, an array of
            shape (n,) or (n, k), small enough for memory.
        chunk_bytes: the size of the chunks read from disk. Each epoch visits
            the chunks in a new random order and shuffles fully within each
            chunk, which is not a global permutation: larger chunks mix more,
            smaller ones need less memory (about three chunks at a time).
    """

    def __init__(self, path, *, target=None, features=None, y=None, offset=None, chunk_bytes=64 << 20, layout=None):
        self.path = Path(path)
        self.chunk_bytes = validate.check_int("chunk_bytes", chunk_bytes, low=1)
        if layout is None:
            shape, fortran, dtype, header_end = _npy_layout(self.path)
            self.offset = header_end if offset is None else offset
        else:  # a raw matrix (a memmap of a file with no .npy header): the caller knows its layout
            shape, dtype = layout
            fortran, self.offset = False, 0 if offset is None else offset
        if len(shape) != 2 or shape[0] == 0 or fortran or not validate._is_real(dtype):
            raise DataError(f"{self.path.name} must hold a 2-D C-ordered numeric matrix, got {dtype} {shape}.")
        self.num_rows, self.num_columns = shape
        self.file_dtype = np.dtype(dtype)
        self.dtype = validate.training_dtype(dtype)
        names = [str(j) for j in range(self.num_columns)]
        if target is not None:
            target = validate.check_int("target", target, low=0, high=self.num_columns - 1, high_name="the last column")
        if features is not None:
            if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
                raise TypeError(f"`features` (={validate._describe(features)}) must be a list of column indices.")
            features = [
                validate.check_int("features", j, low=0, high=self.num_columns - 1, high_name="the last column")
                for j in features
            ]
        self.x_columns = _feature_columns(self.path, names, target, features, ["numeric"] * len(names))
        self.y_columns = None if target is None else [target]
        if y is not None:
            y = validate.as_array("y", y)
            y = y.reshape(-1, 1) if y.ndim == 1 else y
            if y.ndim != 2 or y.shape[0] != self.num_rows:
                raise ValueError(f"`y` has shape {y.shape}; it needs {self.num_rows} rows.")
            y = np.asarray(y, self.dtype)
        elif target is None:
            raise ValueError("an NpyStream needs a `target` column or a `y` array.")
        self._y = y
        self.num_features = len(self.x_columns)
        self.num_outputs = 1 if y is None else y.shape[1]

    @classmethod
    def from_memmap(cls, X, y, *, chunk_bytes=64 << 20):
        """The stream behind a memory-mapped matrix (`np.load(..., mmap_mode="r")` or `np.memmap`)."""
        if not (X.ndim == 2 and X.flags.c_contiguous and isinstance(X.base, mmap.mmap) and X.filename):
            if X.ndim == 2 and X.flags.f_contiguous and isinstance(X.base, mmap.mmap):
                raise ValueError("`X` is a memmap stored column by column (Fortran order), which cannot be read a "
                                 "block of rows at a time: save it in C order (np.save(path, np.ascontiguousarray(X))), "
                                 "or load it into memory with np.asarray(X).")  # fmt: skip
            raise ValueError("`X` is a view of a memmap; stream the whole file (NpyStream with `features`).")
        # The layout is the memmap's own, not read again from the file: a raw
        # matrix has no .npy header to read.
        return cls(X.filename, y=y, offset=X.offset, chunk_bytes=chunk_bytes, layout=(X.shape, X.dtype))

    @property
    def row_bytes(self):
        return self.num_columns * self.file_dtype.itemsize

    def chunk_rows(self, batch_size):
        """Rows per chunk: whole batches, at least one."""
        return max(batch_size, (self.chunk_bytes // self.row_bytes) // batch_size * batch_size)

    def steps_per_epoch(self, batch_size):
        """Steps in one epoch: batches never straddle two chunks."""
        rows = self.chunk_rows(batch_size)
        return sum(-(-min(rows, self.num_rows - start) // batch_size) for start in range(0, self.num_rows, rows))

    def read(self, start, stop):
        """Rows [start, stop) as (X, y) NumPy arrays, checked for NaN and inf."""
        count = stop - start
        buffer = np.empty((count, self.num_columns), self.file_dtype)
        with open(self.path, "rb") as file:
            file.seek(self.offset + start * self.row_bytes)
            if file.readinto(memoryview(buffer).cast("B")) != buffer.nbytes:
                raise DataError(f"{self.path.name} ended before row {stop}: is it truncated?")
        # Fancy indexing copies already: no second copy for the dtype.
        X = buffer[:, self.x_columns].astype(self.dtype, copy=False)
        y = self._y[start:stop] if self._y is not None else buffer[:, self.y_columns].astype(self.dtype, copy=False)
        for name, part in (("X", X), ("y", y)):
            if not np.isfinite(part.sum()):
                bad = ~np.isfinite(part).all(axis=1)
                where = "the `y` array given" if name == "y" and self._y is not None else self.path.name
                raise ValueError(
                    f"`{name}` has NaN or inf in row {start + int(np.argmax(bad))} (counting from 0) "
                    f"of {where}. Drop or impute it before training."
                )
        return X, y


def __getattr__(name: str) -> Any:
    # Tables moved to `jaxlr.tables` (readers and column handling); the old names still work.
    if name in ("Table", "load_table"):
        from jaxlr import tables

        return getattr(tables, name)
    raise AttributeError(f"module 'jaxlr.data' has no attribute {name!r}")
