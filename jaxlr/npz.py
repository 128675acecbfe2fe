"""Reading `.npz` archives (model files, checkpoints, tables) without trusting them.

Nothing here imports JAX.
"""

import json
import zipfile
from pathlib import Path

import numpy as np


class ModelFileError(ValueError):
    """A model file that is missing, damaged, or from an incompatible version."""


class ShapeError(ValueError):
    def __init__(self, name, shape, wanted):
        super().__init__(f"{name} has shape {shape}, not {wanted}")
        self.name, self.shape, self.wanted = name, shape, wanted


class NpzReader:
    """Reads chosen arrays of an `.npz` archive, checking each before reading it.

    `np.load` trusts an array's header: a header that claims 10^12 rows
    allocates them, and reading every member reads an unused one of any
    size. Here only the members asked for are read, each only after its
    header's dtype and shape agree with what the caller expects and with the
    number of bytes the archive declares for it. Every failure is a
    `ModelFileError` (a ValueError) with a one-line message.

    Args:
        path: the archive.
        what: how to name the file in messages ("jaxlr model file").
    """

    def __init__(self, path, what):
        self.path, self.what = Path(path), what

    def __enter__(self):
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
            self._fail(f"is not a readable {self.what} ({_first_line(err)})")
        self.names = {name[: -len(".npy")] for name in self._zip.namelist() if name.endswith(".npy")}
        # Declared sizes are bounded by the file's own: np.savez stores
        # members as they are, and a compressed one may grow, but not without limit.
        self._budget = 64 * self.path.stat().st_size + (1 << 20)
        return self

    def __exit__(self, *exc):
        self._zip.close()

    def _fail(self, text):
        raise ModelFileError(f"{self.path.name} {text}.") from None

    def read(self, name, kinds, *, shape=None, ndim=None):
        """The array `name`, whose dtype kind must be in `kinds` and shape `shape` (or rank `ndim`)."""
        if name not in self.names:
            self._fail(f"is not a {self.what}: it lacks {name}")
        try:
            info = self._zip.getinfo(name + ".npy")
            with self._zip.open(info) as file:
                version = np.lib.format.read_magic(file)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unknown .npy version {version}")
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                found, fortran, dtype = read_header(file)
                if dtype.hasobject or dtype.kind not in kinds or (dtype.kind in "fiu" and dtype.itemsize > 8):
                    self._fail(f"is damaged: {name} holds {dtype} values")
                if shape is not None and tuple(found) != tuple(shape):
                    raise ShapeError(name, tuple(found), tuple(shape))
                if ndim is not None and len(found) != ndim:
                    self._fail(f"is damaged: {name} has shape {tuple(found)}, not {ndim}-D")
                size = int(np.prod(found, dtype=object)) * dtype.itemsize
                header = file.tell()
                if size + header != info.file_size:
                    self._fail(
                        f"is damaged: {name} declares shape {tuple(found)} of {dtype} ({size} bytes) "
                        f"but the archive holds {info.file_size - header} bytes for it"
                    )
                self._budget -= size
                if self._budget < 0:
                    self._fail(f"is damaged: {name} declares {size} bytes, far more than the file holds")
                data = file.read(size)
        except (ShapeError, ModelFileError):
            raise
        except Exception as err:  # noqa: BLE001 - a crafted file can fail zipfile, zlib or NumPy in many ways; each is one line
            self._fail(f"is not a readable {self.what}: {name}: {_first_line(err)}")
        if len(data) != size:
            self._fail(f"is not a readable {self.what}: {name} is truncated")
        return np.frombuffer(data, dtype).reshape(found, order="F" if fortran else "C").copy()

    def scalar(self, name, kinds):
        """A 0-d (or one-element) integer field as an int."""
        value = self.read(name, kinds, ndim=0)
        return int(value)

    def json(self, name):
        """A 0-d text field holding JSON, parsed."""
        text = str(self.read(name, "U", ndim=0))
        try:
            return json.loads(text)
        except ValueError as err:
            self._fail(f"is damaged: {name} is not JSON ({_first_line(err)})")


def _first_line(err):
    return " ".join(str(err).split()) or type(err).__name__
