"""Tables from files: a registry of readers, and columns turned into features as users expect.

    READERS        a file's suffix -> the reader for it: CSV (also compressed) and Parquet
                   through pyarrow (the `tables` extra), .npy and .npz through NumPy alone
    load_table     a file -> `Table`: the features, the target, the weights, and what
                   happened to every column that was not used as it stands
    apply_encoding a table read again with a trained model's encoding (for `predict`)

How columns become features (CSV and Parquet; a .npy or .npz holds numbers only):

    numbers                a feature as they stand (true/false as 1/0, and pyarrow reads
                           hexadecimal integers such as 0x10 as numbers, which a note
                           says when the first cell is written so); an integer column
                           named like an identifier ("id", "customer_id", "OrderID") with
                           a distinct value in every row is left out
    text, few values       one-hot encoded: a 0/1 feature per value ("city=Paris"), up to
                           `max_categories` values (MAX_CATEGORIES unless told)
    text, a distinct value in every row, or more values than the cap
                           left out (an identifier, or free text)
    numbers written as text ("39.4%", "1_000", "1 234,5", an accounting "(1.5)")
                           left out: their meaning is not guessed
    dates, times           days since 1970-01-01 (a time of day as a fraction of a day);
                           dates written in another form than YYYY-MM-DD are refused
    empty in every row     left out (also the nameless last column of a comma ending every line)

`categorical` one-hot encodes a column whatever its kind and number of values;
`drop` leaves a column out. Every column left out or transformed is named in
`Table.columns` and in a note. A cell left empty (or NA, null, ...) in a column
that is used is an error naming its line and column: nothing is imputed.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from jaxlr.arrays import DataError, _feature_columns, _load_npy, _npy_columns, aligned, aligned_empty, not_a_file

MAX_CATEGORIES = 20
"""The most distinct values a text column may hold to be one-hot encoded without being asked."""

DAYS = "days since 1970-01-01"

# What pandas reads as a missing value, besides an empty cell.
MISSING = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
           "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")  # fmt: skip

TABLES_EXTRA = "pip install 'jaxlr[tables]'"


class Table(NamedTuple):
    """Columns read from a file.

    Attributes:
        X: array of shape (n, d): float64, or a `.npy` file's own float dtype.
        y: float64 array of shape (n, 1), or None when no target was asked for.
        feature_names: the d feature names, in the order of X's columns (a
            one-hot feature is named "column=value").
        target_name: the target column's name, or None.
        weight: float64 array of shape (n,) of per-row weights, or None.
        notes: one-line remarks on how the file was read, for the user to see.
        columns: one dict per column left out, transformed or read with a remark:
            {"column": name, "use": "one-hot" | DAYS | "left out" | "number", "why": text}.
        encoding: how the source columns became the features (see
            `Encoding`), or None for a .npy or .npz table.
    """

    X: np.ndarray
    y: Any
    feature_names: tuple
    target_name: Any
    weight: Any = None
    notes: tuple = ()
    columns: tuple = ()
    encoding: Any = None


class Step(NamedTuple):
    """How one source column becomes features: "number", "one-hot" (with its levels) or "days"."""

    column: str
    kind: str
    levels: tuple = ()

    @property
    def names(self):
        return tuple(f"{self.column}={level}" for level in self.levels) if self.kind == "one-hot" else (self.column,)


class Encoding(tuple):
    """The steps from a table's source columns to its features, in order; JSON in a model file."""

    @property
    def feature_names(self):
        return tuple(name for step in self for name in step.names)

    def to_json(self):
        return [{"column": s.column, "kind": s.kind, **({"levels": list(s.levels)} if s.levels else {})} for s in self]

    @classmethod
    def from_json(cls, steps):
        if not isinstance(steps, list) or not all(isinstance(s, dict) and s.get("kind") in STEP_KINDS for s in steps):
            raise ValueError(f"an encoding is a list of steps of kinds {', '.join(STEP_KINDS)}, got {steps!r}.")
        return cls(Step(str(s["column"]), s["kind"], tuple(str(v) for v in s.get("levels", ()))) for s in steps)


STEP_KINDS = ("number", "one-hot", "days")


class Reader(NamedTuple):
    """One entry of READERS: `read(path) -> pyarrow.Table` (None for NumPy files, read by `load`)."""

    name: str
    read: Callable | None
    lines: bool  # whether its rows are lines of text, to name in messages
    positional: bool = False  # its columns are named by position, not by a header
    target: str | None = None  # the target the format itself fixes (a .npz table's array y)
    streams: bool = False  # it can be read from disk a chunk at a time (`--stream`)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
    except ImportError:
        raise DataError(f"reading CSV and Parquet files needs pyarrow: {TABLES_EXTRA}.") from None
    return pyarrow


def _read_csv(path):
    pa = _pyarrow()
    from pyarrow import csv as pa_csv

    compressed = path.suffix.lower() in _COMPRESSIONS
    if not compressed:
        _check_text(path)
    # Every name is read as given (a header of empty names stays a header);
    # only the cells pandas reads as missing are null.
    convert = dict(null_values=list(MISSING), strings_can_be_null=True, quoted_strings_can_be_null=True)
    types: dict = {}
    while True:
        try:
            return _parse_in_pieces(pa, pa_csv, path, types, convert)
        except pa.ArrowInvalid as err:
            text = str(err)
            if text.startswith("Empty CSV file"):
                raise DataError(f"{path.name} is empty.") from None
            # The type is settled on the first block of rows; a later block
            # that does not fit it is read again as text, and judged as such.
            late = re.match(r"In CSV column #(\d+): CSV conversion error", text)
            if late:
                header = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 16)).schema.names
                if header[int(late.group(1))] not in types:
                    types[header[int(late.group(1))]] = pa.string()
                    continue
            raise DataError(_csv_problem(path) or f"{path.name} could not be read as CSV: {' '.join(text.split())}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path.name} is not a text CSV file (use .npy or .npz for binary data).") from None


def _parse_in_pieces(pa, pa_csv, path, types, convert):
    """The CSV at `path` as a pyarrow Table, parsed a piece of whole lines at a time.

    Each piece is parsed by pyarrow's threaded reader; the first settles the
    column names and types (`types` overrides), and the others are read
    with them. Freed piece by piece, the parsing buffers cost one piece, not
    the file, and the threaded reader is faster than the streaming one.
    Cutting at line ends is what pyarrow does itself (a quoted value may
    not hold a line break).
    """
    pieces, names, column_types, rest = [], None, dict(types), b""
    with pa.input_stream(str(path)) as stream:  # decompresses by the file's suffix
        while True:
            data = stream.read(_PIECE_BYTES)
            text = rest + data
            cut = text.rfind(b"\n") + 1 if data else len(text)
            # The types are settled on the first piece: it holds a row besides the header.
            too_short = cut == 0 or (names is None and not _holds_a_row(text[:cut]))
            if data and too_short:  # a line longer than a piece, or only a header so far: read on
                rest = text
                continue
            text, rest = text[:cut], text[cut:]
            if names is None:
                piece = pa_csv.read_csv(pa.py_buffer(text), convert_options=pa_csv.ConvertOptions(
                    column_types=column_types, **convert))  # fmt: skip
                names = piece.column_names
                column_types = {**dict(zip(names, piece.schema.types)), **types}
            elif text:
                piece = pa_csv.read_csv(pa.py_buffer(text), read_options=pa_csv.ReadOptions(column_names=names),
                                        convert_options=pa_csv.ConvertOptions(column_types=column_types, **convert))
            else:
                piece = None
            if piece is not None:
                pieces.append(piece)
            if not data:
                return pa.concat_tables(pieces)


def _holds_a_row(text):
    """Whether the whole lines of `text` hold two that are not blank: a header and a row."""
    found = 0
    for line in io.BytesIO(text):
        found += bool(line.strip())
        if found == 2:
            return True
    return False


def _check_text(path):
    with open(path, "rb") as file:
        head = file.read(1 << 16)
    if b"\0" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):  # not UTF-16 text either
        raise DataError(f"{path.name} is not a text CSV file (use .npy or .npz for binary data).")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start <= len(head) - 4:  # not a character cut at the end of the sample
            line = head[: err.start].count(b"\n") + 1
            raise DataError(f"{path.name}: line {line} is not UTF-8 text: {_NOT_UTF8}") from None


_NOT_UTF8 = "jaxlr reads CSV files in UTF-8; save the file as UTF-8 (from Latin-1, Windows-1252 or UTF-16) and try again."


def _utf8(cell: bytes) -> bool:
    try:
        cell.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _read_parquet(path):
    pa = _pyarrow()
    try:
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path.name} is not a readable Parquet file: {' '.join(str(err).split())}") from None


# Bytes of CSV parsed at a time (each by several threads): larger pieces cost
# memory and gain nothing; much smaller ones lose the threads' gain.
_PIECE_BYTES = 16 << 20

# Rows written into X at a time from the columns: a block of X stays in cache.
_FILL_ROWS = 4096

_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")

READERS: dict = {
    ".csv": Reader("CSV", _read_csv, True),
    ".txt": Reader("CSV", _read_csv, True),
    **{f".csv{c}": Reader(f"CSV ({c[1:]})", _read_csv, True) for c in _COMPRESSIONS},
    ".parquet": Reader("Parquet", _read_parquet, False),
    ".pq": Reader("Parquet", _read_parquet, False),
    ".npy": Reader("NumPy matrix", None, False, positional=True, streams=True),
    ".npz": Reader("NumPy archive with X and y", None, False, positional=True, target="y"),
}
"""A file's suffix (lower case) -> its Reader. A new format is one entry here."""


def reader_for(path):
    """The Reader of `path`, by its suffix; a file of another suffix is read as CSV."""
    name = Path(path).name.lower()
    for suffix in sorted(READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return READERS[suffix]
    return READERS[".csv"]


def column_names(path):
    """The names of a CSV or Parquet file's columns, read from its header alone."""
    path = Path(path)
    if reader_for(path).lines:
        _pyarrow()
        with _open_text(path) as file:
            for cells in csv.reader(file):
                if any(cell.strip() for cell in cells):
                    return [cell.strip() for cell in cells]
        return []
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


# ------------------------------------------------------------------ loading


def load_table(path, *, target=None, features=None, weight=None, categorical=(), drop=(),
               max_categories=MAX_CATEGORIES, encoding=None, target_optional=False) -> Table:  # fmt: skip
    """Reads a table: CSV (also .csv.gz, ...) or Parquet, a `.npy` matrix, or a `.npz` with X and y.

    In a CSV or Parquet file, `target` is a column name or a 0-based index;
    the features are the columns named in `features`, or else every other
    column that can be one, each turned into features as the module's
    docstring says. A `.npy` matrix's columns are named by their index; a
    `.npz` holds arrays X and y (and optionally feature_names), and its target
    is y whether or not `target` (which may only be "y") is given.

    Args:
        path: the file.
        target: the target column, or None to read features only.
        features: a list of feature columns (names or indices), or None.
        weight: a column of per-row sample weights (never a feature), or None.
        categorical: columns to one-hot encode, whatever they hold.
        drop: columns to leave out.
        max_categories: the most values a text column may hold to be one-hot
            encoded without being named in `categorical`.
        encoding: an `Encoding` (from a trained model) to apply instead of
            choosing the columns: its columns must be in the file; values it
            never saw become all-zero one-hot rows, with a note.
        target_optional: with `encoding`, a target column that does not hold
            a number in every row (rows to score, their target left blank) is
            not read: y is None, with a note.

    Returns:
        Table.

    Raises:
        DataError: the file is missing, empty, ragged, or holds what cannot be
            used where it must be, or pyarrow is missing for a CSV or Parquet file.

    Example:
        >>> table = load_table("houses.csv", target="price")
        >>> table.feature_names, [c["column"] for c in table.columns]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"`data` file {str(path)!r} {not_a_file(path)}.")
    reader = reader_for(path)
    if reader.read is None:
        for option, value in (("categorical", categorical), ("drop", drop)):
            if value:
                raise DataError(f"`{option}` (={list(value)}) needs named columns: {path.name} holds numbers only.")
        if path.suffix.lower() == ".npz":
            if weight is not None:
                raise DataError(f"{path.name}: a .npz table has no columns to take weights from; use a CSV or .npy.")
            return _load_npz(path, target, features)
        return _load_npy_table(path, target, features, weight)
    arrow = reader.read(path)
    names = [str(name).strip() for name in arrow.column_names]
    columns = _Columns(path, reader, arrow.rename_columns(names))
    if encoding is not None:
        return columns.encoded(Encoding(encoding), target, target_optional=target_optional)
    return columns.chosen(target, features, weight, categorical, drop, max_categories)


class _Columns:
    """A pyarrow table's columns with the file they came from, for messages."""

    def __init__(self, path, reader, arrow):
        # A comma ending every line (as some spreadsheets write) makes a last
        # column with neither a name nor a value: left out, with one note.
        self.unnamed = ()
        while arrow.num_columns > 1 and not arrow.column_names[-1] and arrow.column(arrow.num_columns - 1).null_count == arrow.num_rows:
            arrow = arrow.remove_column(arrow.num_columns - 1)
            self.unnamed = (_used("", "left out", "it has no name and is empty in every row (a comma ends each line)"),)
        self.path, self.reader, self.arrow = path, reader, arrow
        self.names = arrow.column_names
        self.rows = arrow.num_rows
        self._text_dates: dict = {}  # column -> its dates written as text, read (see `_dates`)
        unnamed = [j + 1 for j, name in enumerate(self.names) if not name and j > 0]
        if unnamed or (len(self.names) == 1 and not self.names[0]):
            raise DataError(f"{path.name}: the header row names no column {', '.join(map(str, unnamed or [1]))} "
                            "(counting from 1): the first line must name every column.")  # fmt: skip
        duplicates = sorted({name for name in self.names if self.names.count(name) > 1})
        if duplicates:
            raise DataError(f"{path.name} has duplicate column names: {', '.join(map(repr, duplicates))}.")
        if self.rows == 0:
            raise DataError(f"{path.name} has a header row but no data rows.")

    # -------------------------------------------------------------- choosing

    def chosen(self, target, features, weight, categorical, drop, max_categories):
        path, names = self.path, self.names
        target_index = None if target is None else _column_index(path, names, target, "target")
        weight_index = None if weight is None else _column_index(path, names, weight, "sample weight")
        if weight_index is not None and weight_index == target_index:
            raise DataError(f"column {names[weight_index]!r} cannot be both the target and the sample weight.")
        forced = {_column_index(path, names, c, "categorical") for c in categorical}
        dropped = {_column_index(path, names, c, "drop") for c in drop}
        for j in forced & dropped:
            raise DataError(f"column {names[j]!r} cannot be both categorical and dropped.")
        for j, role in ((target_index, "the target"), (weight_index, "the sample weight")):
            if j is not None and j in forced | dropped:
                raise DataError(f"column {names[j]!r} is {role}; it cannot be {'dropped' if j in dropped else 'categorical'}.")
        requested = None
        if features is not None:
            requested = [_column_index(path, names, name, "feature") for name in features]
            requested = _feature_columns(path, names, target_index, requested, None, weight_index)
            # (A column dropped that `features` leaves out is left out, as asked.)
            unlisted = sorted(forced - set(requested))
            if unlisted:
                raise DataError(f"column {names[unlisted[0]]!r} is named in `categorical` but not in `features`, "
                                "which lists every feature: add it there, or leave it out of both.")  # fmt: skip
        steps, report = [], list(self.unnamed)
        candidates = requested if requested is not None else [j for j in range(len(names)) if j not in (target_index, weight_index)]
        for j in candidates:
            name = names[j]
            if j in dropped:
                report.append(_used(name, "left out", "asked for (--drop)"))
                continue
            if j == 0 and name in ("", "Unnamed: 0") and requested is None and len(names) > 1 and self._labels(j):
                # `DataFrame.to_csv` writes the row labels first, under an empty name.
                report.append(_used(name, "left out", "a row index, as pandas writes it"))
                continue
            step, why = self._judge(j, j in forced, max_categories, requested is not None)
            if step is None:
                report.append(_used(name, "left out", why))
                continue
            steps.append(step)
            if step.kind != "number" or why:
                report.append(_used(name, DAYS if step.kind == "days" else step.kind, why))
        if not steps:
            raise DataError(f"{path.name} has no column to use as a feature" + (
                f" (left out: {', '.join(repr(r['column']) for r in report)}; name one in --categorical or --features)." if report else "."))  # fmt: skip
        table = self.encoded(Encoding(steps), None, check_unseen=False)
        y = None if target_index is None else self._numbers(target_index, "target")[:, None]
        weights = None
        if weight_index is not None:
            weights = self._numbers(weight_index, "sample weight")
            if not np.all(weights >= 0):  # (finite: `_numbers` checked)
                first = int(np.argmax(weights < 0))
                raise DataError(f"{self._where(first)}, column {names[weight_index]!r} holds "
                                f"{self._cell(weight_index, first)!r}: a sample weight must be >= 0.")  # fmt: skip
        notes = tuple(f"{path.name}: column {r['column']!r} {_PHRASES[r['use']]}{r['why']}." for r in report)
        return table._replace(y=y, weight=weights, target_name=None if target_index is None else names[target_index],
                              notes=notes, columns=tuple(report))  # fmt: skip

    def _judge(self, j, forced, max_categories, requested):
        """(Step, why) for column j, or (None, why it is left out)."""
        pa = _pyarrow()
        name, column = self.names[j], self.arrow.column(j)
        kind = column.type
        if forced:
            levels = self._levels(j)
            return Step(name, "one-hot", levels), f"{len(levels)} values, asked for (--categorical)"
        if pa.types.is_dictionary(kind):
            column = column.cast(pa.string())
            kind = column.type
        if pa.types.is_null(kind) or column.null_count == self.rows:
            return self._refuse(requested, name, "empty in every row")
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or pa.types.is_decimal(kind):
            if pa.types.is_integer(kind) and _ID_NAME.search(name) and self.rows > 2 and not requested:
                if pa.compute.count_distinct(column).as_py() == self.rows:
                    return None, "an identifier (a distinct value in every row)"
            if pa.types.is_integer(kind) and self.reader.lines and self.rows:
                # pyarrow reads "0x1f" as 31: said, since codes written so are seldom quantities.
                hexadecimal = next((i for i, cells in enumerate(self._head) if j < len(cells)
                                    and _HEXADECIMAL.match(cells[j])), None)  # fmt: skip
                if hexadecimal is not None:
                    cell = self._head[hexadecimal][j].strip()
                    return Step(name, "number"), (f"hexadecimal integers ({self._where(hexadecimal)}, {cell!r} is "
                                                  f"{column[hexadecimal].as_py()})")  # fmt: skip
            return Step(name, "number"), ""
        if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
            return Step(name, "days"), " (a time of day as a fraction of a day)" if pa.types.is_timestamp(kind) else ""
        if (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)) and self.reader.lines:
            # pyarrow reads a CSV column with bytes that are not UTF-8 as binary
            # (a Parquet file's binary column is binary data, left out below).
            bad = (i for i, cell in enumerate(column.to_pylist()) if cell is not None and not _utf8(cell))
            first = next(bad, None)
            if first is not None:
                raise DataError(f"{self._where(first)}, column {name!r} is not UTF-8 text: {_NOT_UTF8}")
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return self._refuse(requested, name, f"of type {kind}, which jaxlr does not turn into numbers")
        present = pa.compute.drop_null(column)
        plain = _matches(present, _NUMBER)
        numbers = int(plain.sum())
        # Numbers with separators or units ('1,982.8', '39.4%'), with at most
        # a few plain ones ('982.8') among them: numbers written as text.
        text_numbers = numbers < len(present) / 2 and bool(_matches(present, _NUMBER_LIKE).all())
        if 0 < numbers < len(present) and not text_numbers:  # a few odd cells among plain numbers: errors
            first = int(np.argmax(~_matches(column, _NUMBER)))
            cell = self._cell(j, first)
            what = ("a number written as text, whose meaning jaxlr does not guess" if _NUMBER_LIKE.match(str(cell))
                    else "not a number")  # fmt: skip
            raise DataError(f"{self._where(first)}, column {name!r} holds {cell!r}, {what} (the column's other "
                            f"cells are plain numbers; fix it, --drop {name}, or --categorical {name} to one-hot "
                            "encode its values)")  # fmt: skip
        if numbers == len(present):  # numbers read as text (another block held text): they are numbers
            return Step(name, "number"), ""
        if bool(_matches(present, _ISO_DATE).all()):
            # Dates as text (a Parquet column of strings, or a CSV column that
            # pyarrow left as text): read as the CSV reader reads its dates.
            self._dates(j)
            timed = not bool(_matches(present, _ISO_DAY).all())
            return Step(name, "days"), " (a time of day as a fraction of a day)" if timed else ""
        if bool(_matches(present, _DATE_LIKE).all()):
            example = present[0].as_py()
            raise DataError(f"{self.path.name}: column {name!r} holds dates written as {example!r}, which jaxlr does "
                            f"not read (write them as YYYY-MM-DD to use them as {DAYS}, or --drop {name}).")  # fmt: skip
        if text_numbers:
            example = present[int(np.argmax(~plain))].as_py()
            return self._refuse(requested, name, f"numbers written as text (such as {example!r}), whose meaning jaxlr "
                                "does not guess: write them as plain numbers to use them")  # fmt: skip
        distinct = pa.compute.count_distinct(present).as_py()
        if distinct == self.rows and self.rows > 1 and not requested:
            return None, "an identifier or free text (a distinct value in every row)"
        if distinct > max_categories:
            return self._refuse(requested, name, f"text with {distinct} distinct values, more than the "
                                f"{max_categories} that are one-hot encoded (--categorical {name} to encode it anyway)")  # fmt: skip
        levels = self._levels(j)
        return Step(name, "one-hot", levels), f"{len(levels)} values: {', '.join(levels[:6])}{', ...' if len(levels) > 6 else ''}"

    def _labels(self, j):
        """Whether column j could be row labels: integers, text or dates (not measurements, which are
        floats). Labels may repeat: `pd.concat` of two frames restarts the index."""
        pa = _pyarrow()
        kind = self.arrow.column(j).type
        return (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_date(kind) or pa.types.is_timestamp(kind))  # fmt: skip

    def _refuse(self, requested, name, why):
        if requested:
            raise DataError(f"{self.path.name}: column {name!r} cannot be a feature: {why}.")
        return None, why

    def _levels(self, j):
        pa = _pyarrow()
        column = self.arrow.column(j)
        self._no_nulls(j)
        values = pa.compute.unique(column.cast(pa.string())).to_pylist()
        return tuple(sorted(values))

    # -------------------------------------------------------------- features

    def encoded(self, encoding, target, check_unseen=True, target_optional=False):
        """The features of `encoding`, from this table's columns (and the target's, see `load_table`)."""
        pa = _pyarrow()
        missing = [step.column for step in encoding if step.column not in self.names]
        if missing:
            raise DataError(f"{self.path.name} lacks the model's feature column(s) {', '.join(map(repr, missing))}.")
        X = aligned_empty((self.rows, len(encoding.feature_names)), np.float64)  # aligned: JAX uses it in place
        notes, offset, numbers = [], 0, {}
        for step in encoding:
            j = self.names.index(step.column)
            if step.kind == "number":
                numbers[offset] = (j, self._number_chunks(j, "feature"))
            elif step.kind == "days":
                X[:, offset] = self._days(j)
            else:
                self._no_nulls(j)
                position = {level: i for i, level in enumerate(step.levels)}
                index = np.concatenate([
                    np.array([position.get(v, -1) for v in chunk.dictionary.to_pylist()] + [-1], np.int64)[_numpy(chunk.indices, np.int64)]
                    for chunk in self.arrow.column(j).cast(pa.string()).dictionary_encode().chunks
                ] or [np.zeros(0, np.int64)])  # fmt: skip
                unseen = index < 0
                block = X[:, offset : offset + len(step.levels)]
                block[:] = 0.0
                seen = ~unseen
                block[np.flatnonzero(seen), index[seen]] = 1.0
                if unseen.any() and check_unseen:
                    values = sorted(set(self.arrow.column(j).cast(pa.string()).to_numpy(zero_copy_only=False)[unseen]))
                    notes.append(f"{self.path.name}: column {step.column!r}: {int(unseen.sum())} row(s) hold values the "
                                 f"model never saw ({', '.join(map(repr, values[:5]))}{', ...' if len(values) > 5 else ''}); "
                                 "their one-hot features are all zero.")  # fmt: skip
            offset += len(step.names)
        self._fill(X, numbers)
        table = Table(X=X, y=None, feature_names=encoding.feature_names, target_name=None, notes=tuple(notes),
                      encoding=encoding)  # fmt: skip
        if target is not None:
            j = _column_index(self.path, self.names, target, "target")
            try:
                table = table._replace(y=self._numbers(j, "target")[:, None], target_name=self.names[j])
            except DataError:
                if not target_optional:
                    raise
                table = table._replace(notes=(*table.notes, (
                    f"{self.path.name}: column {self.names[j]!r}, the target, has empty cells or cells that are not "
                    "numbers: every row is predicted, and no error is reported against it.")))  # fmt: skip
        return table

    def _number_chunks(self, j, role):
        """Column j as float64 NumPy arrays, one per chunk, refusing a missing cell or text."""
        pa = _pyarrow()
        name, column = self.names[j], self.arrow.column(j)
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(pa.string()), pa.string()
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            good = _matches(column, _NUMBER) | np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
            if not good.all():
                first = int(np.argmax(~good))
                raise DataError(f"{self._where(first)}, column {name!r} holds {self._cell(j, first)!r}, not a number"
                                + ("" if role == "feature" else f" (the {role} must be numbers)") + ".")  # fmt: skip
            column = pa.compute.cast(pa.compute.utf8_trim_whitespace(column), pa.float64())
        elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or pa.types.is_decimal(kind)):
            raise DataError(f"{self.path.name}: the {role} column {name!r} holds {kind} values, not numbers.")
        self._no_nulls(j, droppable=role == "feature")
        # Chunk by chunk: a float64 chunk is NumPy's without a copy.
        return [_numpy(chunk, np.float64) for chunk in column.chunks]

    def _numbers(self, j, role):
        """Column j as one float64 array, refusing a missing cell, text, or a value that is not finite."""
        chunks = self._number_chunks(j, role)
        values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        self._check_finite(values[:, None], [j])
        return values

    def _check_finite(self, X, columns, start=0):
        """Refuses NaN or inf in X (rows from `start`), naming the cell; `columns[c]` is X[:, c]'s source."""
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(X.sum()):  # one pass, no temporary
                return
        bad = ~np.isfinite(X)
        if not bad.any():  # finite entries whose sum overflowed
            return
        row, c = (int(v) for v in np.argwhere(bad)[0])
        j = columns[c]
        if j is None:
            return
        raise DataError(f"{self._where(start + row)}, column {self.names[j]!r} holds {self._cell(j, start + row)!r}, "
                        "not a finite number.")  # fmt: skip

    def _fill(self, X, numbers):
        """Writes the number columns {offset: (j, chunks)} into X, in row blocks that stay in cache."""
        if not numbers:
            return
        offsets = list(numbers)
        bounds = {tuple(np.cumsum([len(c) for c in chunks])) for _, chunks in numbers.values()}
        if len(bounds) > 1:  # chunked differently (seldom): column by column
            for offset, (_, chunks) in numbers.items():
                X[:, offset] = np.concatenate(chunks)
        else:
            start = 0
            for c in range(len(next(iter(numbers.values()))[1])):
                size = len(numbers[offsets[0]][1][c])
                for s in range(0, size, _FILL_ROWS):
                    e = min(size, s + _FILL_ROWS)
                    rows = X[start + s : start + e]
                    for offset, (_, chunks) in numbers.items():
                        rows[:, offset] = chunks[c][s:e]
                start += size
        sources = [None] * X.shape[1]
        for offset, (j, _) in numbers.items():
            sources[offset] = j
        for s in range(0, X.shape[0], 1 << 16):
            self._check_finite(X[s : s + (1 << 16)], sources, s)

    def _days(self, j):
        pa = _pyarrow()
        self._no_nulls(j)
        column = self.arrow.column(j)
        if pa.types.is_date(column.type):
            return np.concatenate([_numpy(c, np.float64) for c in column.cast(pa.date32()).cast(pa.int32()).chunks])
        if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and bool(
                _matches(column, _ISO_DATE).all()):  # fmt: skip
            column = self._dates(j)
        if not pa.types.is_timestamp(column.type):  # a table read for a model that took this column as dates
            raise DataError(f"{self.path.name}: column {self.names[j]!r} holds {self._cell(j, 0)!r}, not a date: the "
                            f"model turns it into {DAYS}, from dates written as YYYY-MM-DD.")  # fmt: skip
        per_day = {"s": 86400, "ms": 86400e3, "us": 86400e6, "ns": 86400e9}[column.type.unit]
        return np.concatenate([_numpy(c, np.float64) for c in column.cast(pa.int64()).chunks]) / per_day

    def _dates(self, j):
        """Column j, dates and times written as ISO 8601 text (YYYY-MM-DD,
        a time, a zone), as UTC timestamps, as the CSV reader reads them;
        a cell that is no date (2019-02-29) is named by its line. Read once:
        judging the column and encoding it both ask."""
        if j in self._text_dates:
            return self._text_dates[j]
        import datetime

        pa = _pyarrow()
        column = self.arrow.column(j)
        for kind in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):  # without zones, then with
            try:
                self._text_dates[j] = column.cast(kind).cast(pa.timestamp("us"))
                return self._text_dates[j]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        stamps = []  # zones on some cells only, or a cell that is no date: cell by cell
        for i, cell in enumerate(column.to_pylist()):
            try:
                stamp = None if cell is None else datetime.datetime.fromisoformat(cell.strip())
            except ValueError:
                raise DataError(f"{self._where(i)}, column {self.names[j]!r} holds {cell!r}, which is not a date "
                                f"(YYYY-MM-DD, with a time or not); fix it, or --drop {self.names[j]}.") from None  # fmt: skip
            if stamp is not None and stamp.tzinfo is not None:
                stamp = stamp.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            stamps.append(stamp)
        self._text_dates[j] = pa.chunked_array([pa.array(stamps, pa.timestamp("us"))])
        return self._text_dates[j]

    def _no_nulls(self, j, droppable=True):
        """Refuses a missing cell in column j; `droppable`: a feature, which --drop may leave out (not the
        target nor the weights)."""
        column = self.arrow.column(j)
        if column.null_count:
            first = int(np.argmax(np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)))
            if self.reader.lines:
                line, cells = _csv_line(self.path, first)
                if cells is not None and not any(cell.strip() for cell in cells):
                    raise DataError(f"{self.path.name}: line {line} holds nothing but separators (a blank row, as "
                                    "spreadsheets export them): delete it.")  # fmt: skip
            cell = self._cell(j, first)
            what = "is empty" if not str(cell).strip() else f"is missing ({cell!r})"
            or_drop = f", or --drop {self.names[j]}" if droppable else ""
            raise DataError(f"{self._where(first)}, column {self.names[j]!r} {what}; fill or drop the row{or_drop}.")

    # -------------------------------------------------------------- messages

    def _where(self, row):
        """Where data row `row` (from 0) is: its line in a text file, else its row."""
        if self.reader.lines:
            line, _ = _csv_line(self.path, row)
            if line is not None:
                return f"{self.path.name}: line {line}"
        return f"{self.path.name}: row {row} (counting from 0)"

    @functools.cached_property
    def _head(self) -> list:
        """The cells of the first `_HEAD_ROWS` data rows of a text file, as written."""
        rows = _csv_rows(self.path)
        try:
            return [cells for _, cells in itertools.islice(rows, 1, _HEAD_ROWS + 1)]  # after the header
        finally:
            rows.close()

    def _cell(self, j, row):
        """The cell as written in the file (a text file's own text), for messages."""
        if self.reader.lines:
            _, cells = _csv_line(self.path, row)
            if cells is not None and j < len(cells):
                return cells[j].strip()
        value = self.arrow.column(j)[row].as_py()
        return "" if value is None else value


_PHRASES = {"number": "is read as numbers: ", "left out": "is left out: ", "one-hot": "is one-hot encoded: ", DAYS: f"is turned into {DAYS}"}


def _numpy(chunk, dtype):
    """One pyarrow array without nulls as a NumPy array of `dtype`, without a copy where the types agree.

    Read from its data buffer: pyarrow's own `to_numpy` imports pandas, a
    third of a second of the command's start.
    """
    import pyarrow as pa

    if chunk.null_count:
        raise ValueError("a chunk with nulls")  # callers refuse nulls first
    if not (pa.types.is_integer(chunk.type) or pa.types.is_floating(chunk.type)):
        chunk = chunk.cast(pa.float64())
    kind = np.dtype(_NUMPY_TYPES[str(chunk.type)])
    values = np.frombuffer(chunk.buffers()[1], kind, count=len(chunk), offset=chunk.offset * kind.itemsize)
    return values if kind == dtype else values.astype(dtype)


_NUMPY_TYPES = {"double": "float64", "float": "float32", "halffloat": "float16", **{
    f"{sign}int{bits}": f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}}  # fmt: skip


def _used(name, use, why):
    return {"column": name, "use": use, "why": why}


_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|Inf|INF|infinity|Infinity)\s*$")
# Digits with separators: commas, points, apostrophes, underscores ("1,982.8").
_SEPARATED = r"[\d.,_']*\d[\d.,_']*"
# Thousands grouped by no-break or thin spaces, as French and Swiss tables
# write them ("12 345,5"): groups of three, not any digits apart (postcodes).
_GROUPED = "\\d{1,3}([\u00a0\u202f\u2009]\\d{3})+([.,]\\d+)?"
# Accounting tables write a negative amount in parentheses, with its
# decimals or groups ("(1,234.50)"; "(1)" is a label).
_NEGATIVE = rf"\([$€£]?\s*(\d[\d,']*[.,]\d+|{_GROUPED})\s*[$€£]?\)"
_NUMBER_LIKE = re.compile(
    rf"^\s*([$€£+-]*\s*({_SEPARATED}|{_GROUPED})\s*[%‰$€£]?|{_NEGATIVE}|[+-]?0[xXbBoO][0-9a-fA-F_]+)\s*$"
)
_HEXADECIMAL = re.compile(r"^\s*[+-]?0[xX][0-9a-fA-F]+\s*$")
_HEAD_ROWS = 100  # the rows read again as written, for what pyarrow's reading hides (hexadecimal)
# Dates and times as the CSV reader reads them (ISO 8601), when they come as text.
_ISO_DATE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?\s*$")
_ISO_DAY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_DATE_LIKE = re.compile(
    r"^\s*(\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"  # 31/12/2021, 2021.12.31 10:00
    r"|\d{4}[-/]\d{1,2}"  # 2021-12: a month
    rf"|\d{{1,2}}\s+{_MONTH},?\s+\d{{2,4}}|{_MONTH}\s+\d{{1,2}},?\s+\d{{2,4}}|{_MONTH}\s+\d{{4}})\s*$",  # 31 Dec 2021
    re.IGNORECASE,
)
_ID_NAME = re.compile(r"(^|[_\W])(id|ID|Id)$|[a-z]ID$|[a-z]Id$|^(id|ID|Id)[_\W]|^(id|ID)$")


def _matches(column, pattern):
    """A NumPy bool mask: which cells of a text column match `pattern` (nulls do not)."""
    import pyarrow.compute as pc

    import pyarrow as pa

    # Kleene "and" with validity: a null cell is False, not null (and no pandas import, as fill_null makes).
    found = pc.match_substring_regex(column, pattern.pattern, ignore_case=bool(pattern.flags & re.IGNORECASE))
    matched = pc.and_kleene(found, pc.is_valid(column)).cast(pa.int8())
    return np.concatenate([_numpy(chunk, np.int8) for chunk in matched.chunks] or [np.zeros(0, np.int8)]).astype(bool)


def _open_text(path):
    import pyarrow as pa

    stream = pa.input_stream(str(path), compression="detect")
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="", errors="replace")


def _csv_rows(path):
    """(line, cells) of each row of a text file, the header first, as the
    parser counts rows: it skips empty lines, and a line of commas is a row."""
    with _open_text(path) as file:
        reader = csv.reader(file)
        for cells in reader:
            if cells:
                yield reader.line_num, cells


def _csv_line(path, row):
    """(the file's line, the cells) of data row `row` (from 0)."""
    rows = _csv_rows(path)
    try:
        return next(itertools.islice(rows, row + 1, None), (None, None))
    finally:
        rows.close()


def _csv_problem(path):
    """A ragged row, named by its line, when the parser refused the file; None if none is found."""
    try:
        with _open_text(path) as file:
            reader = csv.reader(file)
            width, header = None, None
            for cells in reader:
                if not cells:
                    continue  # an empty line, which the parser skips too
                if not any(cell.strip() for cell in cells) and width is not None and len(cells) != width:
                    return (f"{path.name}: line {reader.line_num} holds nothing but spaces or tabs, which is read "
                            "as a row of one empty field: remove the line.")  # fmt: skip
                if width is None:
                    width, header = len(cells), cells
                elif len(cells) != width:
                    hint = (" (its last field is empty: does a comma end each data line but not the header?)"
                            if len(cells) == width + 1 and not cells[-1].strip() else "")  # fmt: skip
                    separator = _other_separator(header)
                    if separator:
                        hint = (f" (the file separates its columns with {separator}, and its decimal commas split "
                                "the lines: jaxlr reads columns separated by commas, and numbers with a decimal point)")  # fmt: skip
                    return f"{path.name}: line {reader.line_num} has {len(cells)} fields but the header has {width}{hint}."
    except (csv.Error, OSError) as err:
        return f"{path.name} could not be parsed as CSV: {err}"
    return None


def _other_separator(header) -> str | None:
    """"semicolons" or "tabs" where a header read as one column holds them, the file's own separator; else None."""
    if len(header) != 1:
        return None
    return "semicolons" if ";" in header[0] else "tabs" if "\t" in header[0] else None


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
    hint = ""
    separator = _other_separator(names)
    if separator:
        hint = f" (its header is one column: the file separates its columns with {separator}; jaxlr reads them separated by commas)"
    with_commas = [name for name in names if "," in name and wanted in (part.strip() for part in name.split(","))]
    if with_commas:
        hint = f" (a name holding a comma is given in double quotes: '\"{with_commas[0]}\"')"
    listed = ", ".join(repr(name) if "," in name else name for name in names)
    raise DataError(f"{role} column {wanted!r} is not in {path.name}; its columns are: {listed}{hint}.")


# ------------------------------------------------------------------ NumPy files


def _load_npy_table(path, target, features, weight):
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

    def column(j):
        return finite(_npy_columns(matrix, [j], np.float64), [j])[:, 0]

    target_index = None if target is None else _column_index(path, names, target, "target")
    weight_index = None if weight is None else _column_index(path, names, weight, "sample weight")
    if weight_index is not None and weight_index == target_index:
        raise DataError(f"column {names[weight_index]!r} cannot be both the target and the sample weight.")
    if features is not None:
        features = [_column_index(path, names, name, "feature") for name in features]
    chosen = _feature_columns(path, names, target_index, features, ["numeric"] * len(names), weight_index)
    X = finite(_npy_columns(matrix, chosen), chosen)
    weights = None
    if weight_index is not None:
        weights = column(weight_index)
        if not np.all(weights >= 0):
            raise DataError(f"sample weight column {names[weight_index]!r} of {path.name} must be finite and >= 0.")
    return Table(
        X=X,
        y=None if target_index is None else column(target_index)[:, None],
        feature_names=tuple(names[j] for j in chosen),
        target_name=None if target_index is None else names[target_index],
        weight=weights,
    )


def _load_npz(path, target, features):
    if target is not None and str(target).strip() != "y":
        raise DataError(f"the target of a .npz table is its array y; leave out the target (got {str(target)!r}).")
    from jaxlr.npz import ModelFileError, NpzReader

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
        chosen = _feature_columns(path, names, None, [_column_index(path, names, name, "feature") for name in features], None)
        X, names = X[:, chosen], [names[j] for j in chosen]
    X = aligned(X, np.float64)
    y = None if y is None else np.asarray(y, np.float64)
    for name, array in (("X", X), ("y", y)):
        if array is not None and not np.isfinite(array).all():
            row = int(np.argmax(~np.isfinite(array).all(axis=1)))
            raise DataError(f"{name} in {path.name} holds NaN or inf in row {row} (counting from 0).")
    return Table(X=X, y=y, feature_names=tuple(names), target_name=None if y is None else "y")
