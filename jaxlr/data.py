"""Data: the synthetic problem, the shuffle, the batching generator, and tables from files."""

import csv
import mmap
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr import shuffle, validate

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


ALIGNMENT = 64
"""Bytes to which jaxlr aligns the host arrays it allocates: on a CPU, JAX
uses a NumPy array so aligned in place instead of copying it."""


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-ordered NumPy array whose data starts on a 64-byte boundary.

    Example:
        >>> X = jaxlr.aligned_empty((2_000_000, 100))   # fill it, then fit
        >>> X[:] = np.load("X.npy", mmap_mode="r")
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def aligned(array, dtype=None) -> np.ndarray:
    """`array` as a 64-byte-aligned C-ordered NumPy array of `dtype`: itself when it already is one."""
    array = np.asarray(array)
    dtype = array.dtype if dtype is None else np.dtype(dtype)
    if array.dtype == dtype and is_aligned(array):
        return array
    out = aligned_empty(array.shape, dtype)
    np.copyto(out, array, casting="unsafe")
    return out


def is_aligned(array) -> bool:
    """Whether a NumPy array is C-ordered and starts on a 64-byte boundary."""
    return isinstance(array, np.ndarray) and array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0


def to_device(array, device=None, *, rows=None):
    """Copies a host array to a JAX device in pieces of at most 64 MB.

    `jax.device_put` of one large NumPy array can stage a second full copy on
    the way; filling a device buffer piece by piece keeps the peak at the host
    array, its device copy and one piece. A `jax.Array` is only moved (if
    `device` asks for another place).

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
    piece_rows = max(1, _TRANSFER_BYTES // max(1, array[:1].nbytes))
    if array.ndim == 0 or array.shape[0] <= piece_rows:
        if extra:
            array = np.concatenate([array, np.zeros((extra, *array.shape[1:]), array.dtype)])
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


# ------------------------------------------------------------------ tables


class DataError(ValueError):
    """A data file that cannot be read as a table of numbers."""


class Table(NamedTuple):
    """Columns read from a file.

    Attributes:
        X: array of shape (n, d): float64, or a `.npy` file's own float dtype.
        y: float64 array of shape (n, 1), or None when no target was asked for.
        feature_names: the d column names, in the order of X's columns.
        target_name: the target column's name, or None.
        weight: float64 array of shape (n,) of per-row weights, or None.
        notes: one-line remarks on how the file was read (a column left
            out, ...), for the user to see.
    """

    X: np.ndarray
    y: Any
    feature_names: tuple
    target_name: Any
    weight: Any = None
    notes: tuple = ()


def load_table(path, *, target=None, features=None, weight=None):
    """Reads a CSV file with a header row, a `.npy` matrix, or a `.npz` with X and y.

    In a CSV, `target` is a column name or a 0-based index; the features are
    the columns named in `features`, or else every numeric column but the
    target. A column is numeric when its cells are numbers, whatever row
    they are in: a column with some numbers and some text is an error unless
    `features` leaves it out, and a missing cell (empty, or a marker such as
    NA) or a NaN or inf in a column that is used is an error naming its line
    and column. A first column with an empty name (or ``Unnamed: 0``) is the
    row index pandas writes: it is left out, and `Table.notes` says so. A
    `.npy` matrix is read the same way, with columns named by their index; a
    `.npz` holds arrays X and y (and optionally feature_names), and its
    target is y whether or not `target` (which may only be "y") is given.

    Args:
        path: the file.
        target: the target column, or None to read features only.
        features: a list of feature columns (names or indices), or None.
        weight: a column of per-row sample weights (never a feature), or None.

    Returns:
        Table.

    Raises:
        DataError: the file is missing, empty, ragged, or not numeric where it must be.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"`data` file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if weight is not None:
            raise DataError(f"{path.name}: a .npz table has no columns to take weights from; use a CSV or .npy.")
        return _load_npz(path, target, features)
    if suffix == ".npy":
        # Mapped, not read: only the chosen columns are copied, in the file's
        # float dtype, so a table costs its size once more, not twice in float64.
        matrix = _load_npy(path, mmap_mode="r")
        names = [str(j) for j in range(matrix.shape[1])]

        def finite(values, chosen):
            # Row blocks: a whole-table mask would cost a quarter of the table again.
            for start in range(0, values.shape[0], 1 << 18):
                bad = ~np.isfinite(values[start : start + (1 << 18)])
                if bad.any():
                    i, c = (int(v) for v in np.argwhere(bad)[0])
                    raise DataError(
                        f"{path.name}: row {start + i} (counting from 0), column {chosen[c]} holds "
                        f"{values[start + i, c]}, not a finite number."
                    )
            return values

        def matrix_column(j):
            return finite(_npy_columns(matrix, [j], np.float64), [j])[:, 0]

        return _select(path, names, matrix_column, target, features, ["numeric"] * len(names), weight,
                       columns=lambda chosen: finite(_npy_columns(matrix, chosen), chosen))  # fmt: skip
    header, rows, lines = _read_csv(path)
    columns = [_CsvColumn(path, header[j], [row[j] for row in rows], lines) for j in range(len(header))]
    notes = ()
    if header[0] in ("", "Unnamed: 0") and len(header) > 1:
        requested = [str(c).strip() for c in [target, weight, *(features or [])] if c is not None]
        if not any(c in (header[0], "0") for c in requested):
            # `DataFrame.to_csv` writes the row labels first, under an empty name.
            columns[0].kind = "index"
            notes = (f"{path.name}: the first column {header[0]!r} is a row index (as pandas writes it); it is not used.",)
    table = _select(path, header, lambda j: columns[j].values(), target, features,
                    [c.kind for c in columns], weight)  # fmt: skip
    return table._replace(notes=notes)


# What pandas reads as a missing value, besides an empty cell.
_MISSING = frozenset(
    "#N/A #NA -1.#IND -1.#QNAN -NaN -nan 1.#IND 1.#QNAN <NA> N/A NA NULL NaN None n/a nan null".split()
) | {"#N/A N/A"}


class _CsvColumn:
    """One column of a CSV: its kind, judged from every cell, and its values."""

    def __init__(self, path, name, cells, lines):
        self.path, self.name, self.cells, self.lines = path, name, cells, lines
        self._values = np.empty(len(cells))
        self.first_text = None
        numbers = 0
        for i, cell in enumerate(cells):
            text = cell.strip()
            try:
                self._values[i] = float(text)
            except ValueError:
                self._values[i] = np.nan
                if text and text not in _MISSING and self.first_text is None:
                    self.first_text = i
            else:
                numbers += 1
        # "numeric", "text", "mixed" (numbers and text), or "empty" (no value at all).
        if self.first_text is None:
            self.kind = "numeric" if numbers else "empty"
        else:
            self.kind = "mixed" if numbers else "text"

    def values(self):
        """The column as float64, refusing any cell that is not a finite number."""
        values = self._values
        finite = np.isfinite(values)
        if not finite.all():
            i = self.first_text if self.kind == "mixed" else int(np.argmax(~finite))
            cell = self.cells[i].strip()
            if not cell:
                what = "is empty"
            elif cell in _MISSING:
                what = f"is missing ({cell!r})"
            else:
                try:
                    float(cell)
                    what = f"holds {cell!r}, not a finite number"
                except ValueError:
                    what = f"holds {cell!r}, not a number"
            raise DataError(f"{self.path.name}: line {self.lines[i]}, column {self.name!r} {what}.")
        return values


def _read_csv(path):
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first name.
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            # Each row with the file's line it ends on (the header is line 1;
            # blank lines are skipped but still counted).
            numbered = [(row, reader.line_num) for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not a text CSV file (use .npy or .npz for binary data).") from None
    except csv.Error as err:
        raise DataError(f"{path.name} could not be parsed as CSV: {err}") from None
    if not numbered:
        raise DataError(f"{path.name} is empty.")
    lines = [row for row, _ in numbered]
    header = [name.strip() for name in lines[0]]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"{path.name} has duplicate column names: {', '.join(map(repr, duplicates))}.")
    if len(lines) == 1:
        raise DataError(f"{path.name} has a header row but no data rows.")
    for row, number in numbered[1:]:
        if len(row) != len(header):
            raise DataError(
                f"{path.name}: line {number} has {len(row)} fields but the header has {len(header)}."
            )
    return header, lines[1:], [number for _, number in numbered[1:]]


def _column_index(path, names, wanted, role):
    """The index of a column given by name or by 0-based index."""
    wanted = str(wanted).strip()
    if wanted in names:
        return names.index(wanted)
    if wanted.lstrip("-").isdigit():
        index = int(wanted)
        if 0 <= index < len(names):
            return index
        raise DataError(f"{role} column index {index} is out of range: {path.name} has {len(names)} columns.")
    raise DataError(f"{role} column {wanted!r} is not in {path.name}; its columns are: {', '.join(names)}.")


def _feature_columns(path, names, target_index, features, kinds, weight_index=None):
    """The feature columns' indices: `features` (indices) if given, else every numeric column left.

    One check for tables in memory and streamed ones: no column is both the
    target (or the weight) and a feature.
    """
    if features is not None:
        for index, role in ((target_index, "the target"), (weight_index, "a sample weight")):
            if index in features:
                raise DataError(f"column {names[index]!r} cannot be both {role} and a feature.")
        chosen = list(features)
    else:
        # A mixed column is chosen too, so that its text cell is reported rather than the column dropped.
        chosen = [j for j in range(len(names)) if kinds[j] in ("numeric", "mixed") and j not in (target_index, weight_index)]
    if not chosen:
        raise DataError(f"{path.name} has no numeric feature columns.")
    return chosen


def _npy_columns(matrix, chosen, dtype=None):
    """Columns of a memory-mapped `.npy` matrix, as a new array (its own float dtype, else float64).

    Rows are read a block at a time with plain file reads: pages read through
    the map would stay counted against the process, a second copy of the file.
    """
    if dtype is None:
        dtype = matrix.dtype if matrix.dtype.kind == "f" else np.float64
    out = np.empty((matrix.shape[0], len(chosen)), dtype)
    if not matrix.flags.c_contiguous:
        out[:] = matrix[:, chosen]
        return out
    row_bytes = matrix.shape[1] * matrix.dtype.itemsize
    block = max(1, (16 << 20) // row_bytes)
    with open(matrix.filename, "rb") as file:
        file.seek(matrix.offset)
        for start in range(0, matrix.shape[0], block):
            rows = np.empty((min(block, matrix.shape[0] - start), matrix.shape[1]), matrix.dtype)
            if file.readinto(memoryview(rows).cast("B")) != rows.nbytes:
                raise DataError(f"{Path(matrix.filename).name} ended before row {start + rows.shape[0]}: is it truncated?")
            out[start : start + rows.shape[0]] = rows[:, chosen]
    return out


def _select(path, names, column, target, features, kinds, weight=None, columns=None):
    target_index = None if target is None else _column_index(path, names, target, "target")
    weight_index = None if weight is None else _column_index(path, names, weight, "sample weight")
    if weight_index is not None and weight_index == target_index:
        raise DataError(f"column {names[weight_index]!r} cannot be both the target and the sample weight.")
    if features is not None:
        features = [_column_index(path, names, name, "feature") for name in features]
    chosen = _feature_columns(path, names, target_index, features, kinds, weight_index)
    if columns is None:
        values = [column(j) for j in chosen]
        X = aligned_empty((len(values[0]), len(values)), np.float64)  # aligned: JAX can use it in place
        for j, part in enumerate(values):
            X[:, j] = part
    else:
        X = columns(chosen)
    y = None if target_index is None else column(target_index)[:, None]
    weights = None
    if weight_index is not None:
        weights = column(weight_index)
        if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
            raise DataError(f"sample weight column {names[weight_index]!r} of {path.name} must be finite and >= 0.")
    return Table(
        X=X,
        y=y,
        feature_names=tuple(names[j] for j in chosen),
        target_name=None if target_index is None else names[target_index],
        weight=weights,
    )


def _load_npy(path, mmap_mode=None):
    shape, _, dtype, header_end = _npy_layout(path)
    if dtype.hasobject or not validate._is_real(dtype):
        raise DataError(f"{path.name} holds {dtype} values, not numbers.")
    size = header_end + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size != path.stat().st_size:
        # Checked before reading: NumPy would allocate whatever the header claims.
        raise DataError(
            f"{path.name} is damaged: its header declares {dtype} {shape} ({size} bytes with the header) "
            f"but the file has {path.stat().st_size} bytes."
        )
    try:
        matrix = np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path.name} is not a readable .npy array: {err}") from None
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise DataError(f"{path.name} must hold a 2-D array with at least one row, got shape {matrix.shape}.")
    if matrix.dtype.kind not in "biuf":
        raise DataError(f"{path.name} holds {matrix.dtype} values, not numbers.")
    return matrix


def _load_npz(path, target, features):
    if target is not None and str(target).strip() != "y":
        raise DataError(f"the target of a .npz table is its array y; leave out the target (got {str(target)!r}).")
    from jaxlr.persist import ModelFileError, NpzReader

    try:
        with NpzReader(path, ".npz archive") as archive:
            # Only the arrays a table uses are read, each checked against its
            # declared size first: an archive may hold others of any size.
            kinds = {"X": ("biuf", 2), "y": ("biuf", None), "feature_names": ("U", 1)}
            arrays = {name: archive.read(name, kinds[name][0], ndim=kinds[name][1]) for name in kinds if name in archive.names}
            held = sorted(archive.names)
    except ModelFileError as err:
        raise DataError(str(err)) from None
    if "X" not in arrays:
        raise DataError(f"{path.name} must hold an array named X (and y to train); it holds {held}.")
    X = arrays["X"]
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise DataError(f"X in {path.name} must be a 2-D numeric array, got {X.dtype} of shape {X.shape}.")
    names = [str(v) for v in arrays.get("feature_names", [f"x{j}" for j in range(X.shape[1])])]
    if len(names) != X.shape[1]:
        raise DataError(f"{path.name} names {len(names)} features but X has {X.shape[1]} columns.")
    y = None
    if "y" in arrays:
        y = np.asarray(arrays["y"])
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != X.shape[0] or y.dtype.kind not in "biuf":
            raise DataError(f"y in {path.name} must be numeric with {X.shape[0]} rows, got {y.dtype} of shape {y.shape}.")
    elif target is not None:
        raise DataError(f"{path.name} holds no array named y to train on.")
    if features is not None:
        chosen = [_column_index(path, names, name, "feature") for name in features]
        X, names = X[:, chosen], [names[j] for j in chosen]
    X = aligned(X, np.float64)
    y = None if y is None else np.asarray(y, np.float64)
    for name, array in (("X", X), ("y", y)):
        if array is not None and not np.isfinite(array).all():
            row = int(np.argmax(~np.isfinite(array).all(axis=1)))
            raise DataError(f"{name} in {path.name} holds NaN or inf in row {row} (counting from 0).")
    return Table(X=X, y=y, feature_names=tuple(names), target_name=None if y is None else "y")


# ------------------------------------------------------------------ streams


def _npy_layout(path):
    """(shape, fortran_order, dtype, header_end) from a .npy file's header."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(file)
            return shape, fortran, dtype, file.tell()
    except (OSError, ValueError) as err:
        raise DataError(f"{path.name} is not a readable .npy array: {err}") from None


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
        self.dtype = validate._float_dtype(dtype)
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
                raise ValueError(
                    f"`{name}` has NaN or inf in row {start + int(np.argmax(bad))} (counting from 0) "
                    f"of {self.path.name}. Drop or impute it before training."
                )
        return X, y
