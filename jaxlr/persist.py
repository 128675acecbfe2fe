"""Model files: what a trained model needs to predict, written so that a crash never breaks one.

A model file is a plain `.npz` that NumPy alone can read, without pickle:

    w, b            the parameters, in the standardized feature space
    x_mean, x_scale the standardization: features are (x - x_mean) / x_scale
    feature_names   the feature columns, in order
    target_names    the target columns
    settings        JSON text: how the model was trained
    encoding        JSON text, optional: how a table's columns became the features
                    (see `jaxlr.tables.Encoding`), applied to the tables it predicts for
    jaxlr_version, format_version
"""

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxlr.arrays import not_a_file
from jaxlr.npz import ModelFileError, NpzReader, ShapeError
from jaxlr.params import Params

FORMAT_VERSION = 1


class Model(NamedTuple):
    """A trained model with the standardization its inputs need.

    Attributes:
        params: Params in the standardized feature space.
        x_mean, x_scale: arrays of shape (d,); zeros and ones when not standardized.
        feature_names: tuple of d column names.
        target_names: tuple of k column names.
        settings: dict of the training settings.
        encoding: a `jaxlr.tables.Encoding` (the columns turned into the
            features), or None for features read as they stand.
    """

    params: Params
    x_mean: np.ndarray
    x_scale: np.ndarray
    feature_names: tuple
    target_names: tuple
    settings: dict
    encoding: Any = None

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
    leaves either the old file or the new one, never a torn one. A file
    replaced keeps its permission bits; a new one gets the umask's. A
    symbolic link is written through (the file it names is replaced, the
    link stays), and what is not a regular file (a pipe, a terminal,
    ``/dev/null``) is written into as it is, never replaced.
    """
    try:
        found = os.stat(path)  # through symbolic links
    except FileNotFoundError:
        found = None
    if found is not None and not stat.S_ISREG(found.st_mode):
        if stat.S_ISDIR(found.st_mode):
            raise IsADirectoryError(f"{str(path)!r} is a directory, not a file to write.")
        with open(path, "wb") as file:  # a stream or a device: nothing to rename over
            write(file)
        return
    path = Path(os.path.realpath(path))  # a link's target is replaced, not the link
    directory = path.parent
    if found is not None:
        # A file replaced keeps its permissions (a private 0600 model stays private).
        mode = stat.S_IMODE(found.st_mode)
    else:
        mode = 0o666 & ~_umask()  # mkstemp makes it private; a new file should not be
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, mode)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            # A full disk says so without naming the file: name the one being written.
            raise OSError(err.errno, err.strerror, str(path)) from err
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
    if model.encoding is not None:
        arrays["encoding"] = np.array(json.dumps(model.encoding.to_json()))
    atomic_write(path, lambda file: np.savez(file, **arrays))


def load_model(path):
    """Reads a model file written by `save_model`.

    Only the arrays a model needs are read, each after its declared dtype
    and shape have been checked against the others and against the bytes
    the archive says it holds: a damaged or crafted file is refused before
    it can make this process read or allocate more than the model's size.

    Raises:
        ModelFileError: the file is missing, not an npz, truncated, lacks a
            field, holds a malformed one, or was written by an incompatible
            format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} {not_a_file(path)}.")
    with NpzReader(path, "jaxlr model file") as archive:
        missing = {"w", "b", "x_mean", "x_scale", "feature_names", "target_names", "format_version"} - archive.names
        if missing:
            raise ModelFileError(f"{path.name} is not a jaxlr model file: it lacks {', '.join(sorted(missing))}.")
        version = archive.scalar("format_version", "iu")
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"{path.name} has model format version {version}; this jaxlr reads version {FORMAT_VERSION}."
            )
        feature_names = archive.read("feature_names", "U", ndim=1)
        target_names = archive.read("target_names", "U", ndim=1)
        d, k = len(feature_names), len(target_names)
        try:
            w = archive.read("w", "f", shape=(d, k))
            b = archive.read("b", "f", shape=(k,))
            x_mean = archive.read("x_mean", "f", shape=(d,))
            x_scale = archive.read("x_scale", "f", shape=(d,))
        except ShapeError as err:
            raise ModelFileError(
                f"{path.name} is inconsistent: {err.name} has shape {err.shape} but {d} features and "
                f"{k} target(s) need {err.wanted}."
            ) from None
        settings = {}
        if "settings" in archive.names:
            settings = archive.json("settings")
            if not isinstance(settings, dict):
                raise ModelFileError(f"{path.name} is damaged: its settings are not a JSON object.")
        encoding = None
        if "encoding" in archive.names:
            from jaxlr.tables import Encoding

            try:
                encoding = Encoding.from_json(archive.json("encoding"))
            except ValueError as err:
                raise ModelFileError(f"{path.name} is damaged: {err}") from None
            if encoding.feature_names != tuple(str(v) for v in feature_names):
                raise ModelFileError(f"{path.name} is damaged: its encoding does not make its feature names.")
    for name, array in (("w", w), ("b", b), ("x_mean", x_mean)):
        if not np.isfinite(array).all():
            raise ModelFileError(f"{path.name} is damaged: {name} holds NaN or inf.")
    if not (np.isfinite(x_scale).all() and (x_scale > 0).all()):
        raise ModelFileError(f"{path.name} is damaged: x_scale must be finite and > 0.")
    return Model(
        params=Params(w=w, b=b),
        x_mean=x_mean.astype(np.float64),
        x_scale=x_scale.astype(np.float64),
        feature_names=tuple(str(v) for v in feature_names),
        target_names=tuple(str(v) for v in target_names),
        settings=settings,
        encoding=encoding,
    )
