"""Model files: what a trained model needs to predict, written so that a crash never breaks one.

A model file is a plain `.npz` that NumPy alone can read, without pickle:

    w, b            the parameters, in the standardized feature space
    x_mean, x_scale the standardization: features are (x - x_mean) / x_scale
    feature_names   the feature columns, in order
    target_names    the target columns
    settings        JSON text: how the model was trained
    jaxlr_version, format_version
"""

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxlr.model import Params

FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is missing, damaged, or from an incompatible version."""


class Model(NamedTuple):
    """A trained model with the standardization its inputs need.

    Attributes:
        params: Params in the standardized feature space.
        x_mean, x_scale: arrays of shape (d,); zeros and ones when not standardized.
        feature_names: tuple of d column names.
        target_names: tuple of k column names.
        settings: dict of the training settings.
    """

    params: Params
    x_mean: np.ndarray
    x_scale: np.ndarray
    feature_names: tuple
    target_names: tuple
    settings: dict

    def predict(self, X):
        """Predictions of shape (n, k) for raw (unstandardized) features X of shape (n, d)."""
        X = np.asarray(X, np.float64)
        w, b = np.asarray(self.params.w, np.float64), np.asarray(self.params.b, np.float64)
        return ((X - self.x_mean) / self.x_scale) @ w + b

    def coefficients(self):
        """(w, b) in the original feature units, folding the standardization in."""
        w = np.asarray(self.params.w, np.float64) / self.x_scale[:, None]
        b = np.asarray(self.params.b, np.float64) - self.x_mean @ w
        return w, b


def atomic_write(path, write):
    """Writes a file through `write(binary_file)` so that it appears whole or not at all.

    The bytes go to a temporary file in the same directory, are flushed to
    disk, and only then renamed over `path`: a crash or kill at any moment
    leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a new file should not be
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory):
    # Makes the rename itself durable; not every platform allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(path, model):
    """Writes `model` to `path` (a `.npz`), atomically."""
    from jaxlr import __version__

    arrays = {
        "w": np.asarray(model.params.w),
        "b": np.asarray(model.params.b),
        "x_mean": np.asarray(model.x_mean, np.float64),
        "x_scale": np.asarray(model.x_scale, np.float64),
        "feature_names": np.array(model.feature_names, dtype=str),
        "target_names": np.array(model.target_names, dtype=str),
        "settings": np.array(json.dumps(model.settings, sort_keys=True)),
        "jaxlr_version": np.array(__version__),
        "format_version": np.array(FORMAT_VERSION),
    }
    atomic_write(path, lambda file: np.savez(file, **arrays))


def load_model(path):
    """Reads a model file written by `save_model`.

    Raises:
        ModelFileError: the file is missing, not an npz, truncated, lacks a
            field, or was written by an incompatible format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist.")
    with open(path, "rb") as file:
        if file.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise ModelFileError(f"{path.name} is not a readable jaxlr model file: a model file is a .npz archive.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            fields = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{path.name} is not a readable jaxlr model file ({err}).") from None
    missing = {"w", "b", "x_mean", "x_scale", "feature_names", "target_names", "format_version"} - set(fields)
    if missing:
        raise ModelFileError(f"{path.name} is not a jaxlr model file: it lacks {', '.join(sorted(missing))}.")
    version = int(fields["format_version"])
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name} has model format version {version}; this jaxlr reads version {FORMAT_VERSION}."
        )
    w, b = fields["w"], fields["b"]
    d = len(fields["feature_names"])
    if w.ndim != 2 or w.shape[0] != d or b.shape != (w.shape[1],) or fields["x_mean"].shape != (d,):
        raise ModelFileError(f"{path.name} is inconsistent: w {w.shape}, b {b.shape}, {d} features.")
    return Model(
        params=Params(w=w, b=b),
        x_mean=fields["x_mean"],
        x_scale=fields["x_scale"],
        feature_names=tuple(str(v) for v in fields["feature_names"]),
        target_names=tuple(str(v) for v in fields["target_names"]),
        settings=json.loads(str(fields["settings"])) if "settings" in fields else {},
    )
