"""Checkpoints: a training run saved after its epochs, resumable exactly after a crash.

A checkpoint is `checkpoint-EEEEEEEE.npz` in its directory, E being the number
of epochs done. It holds the params, the optimizer state's leaves, the moving
average, and the run's key: since epoch e shuffles with a key derived from the
run's key and e alone, the epoch count is the whole RNG position. Each is
written atomically (temporary file, fsync, rename) and the previous one is
kept, so a kill at any moment leaves at least one good checkpoint.
"""

import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxlr.model import Params
from jaxlr.persist import atomic_write

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{8})\.npz$")
_KEEP = 2


class CheckpointError(ValueError):
    """A checkpoint that does not belong to the run resuming from it."""


class Checkpoint(NamedTuple):
    """A run as it stood after `epoch` epochs."""

    epoch: int
    params: Params
    opt_state: Any
    moving_last: float
    key_words: np.ndarray
    settings: dict


def save(directory, checkpoint):
    """Writes `checkpoint` into `directory` and keeps only the newest two."""
    directory = Path(directory)
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "epoch": np.array(checkpoint.epoch),
        "w": np.asarray(checkpoint.params.w),
        "b": np.asarray(checkpoint.params.b),
        "moving_last": np.array(checkpoint.moving_last),
        "key_words": np.asarray(checkpoint.key_words),
        "settings": np.array(json.dumps(checkpoint.settings, sort_keys=True)),
    }
    for i, leaf in enumerate(jax.tree.leaves(checkpoint.opt_state)):
        arrays[f"opt_{i}"] = np.asarray(leaf)
    path = directory / f"checkpoint-{checkpoint.epoch:08d}.npz"
    atomic_write(path, lambda file: np.savez(file, **arrays))
    for old in _listed(directory)[_KEEP:]:
        old.unlink(missing_ok=True)
    return path


def latest(directory, opt_state_like):
    """The newest readable checkpoint in `directory`, or None if there is none.

    A damaged newest checkpoint (a torn or truncated file) is skipped with a
    warning, and the one before it is used.

    Args:
        opt_state_like: an optimizer state of the right structure (from
            `optimizer.init(params)`), to rebuild the saved one; None for SGD.
    """
    for path in _listed(Path(directory)):
        try:
            return _load(path, opt_state_like)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"checkpoint {path.name} is unreadable ({err}); trying the one before it.", stacklevel=3)
    return None


def _listed(directory):
    """Checkpoint files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _load(path, opt_state_like):
    with np.load(path, allow_pickle=False) as archive:
        fields = {name: archive[name] for name in archive.files}
    if int(fields["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"format version {int(fields['format_version'])}, not {FORMAT_VERSION}")
    treedef = jax.tree.structure(opt_state_like)
    leaves = [fields[f"opt_{i}"] for i in range(treedef.num_leaves)]
    if f"opt_{treedef.num_leaves}" in fields:
        raise CheckpointError(f"{path.name} holds the state of a different optimizer.")
    for saved, like in zip(leaves, jax.tree.leaves(opt_state_like)):
        if saved.shape != np.shape(like):
            raise CheckpointError(f"{path.name} holds the state of a different optimizer.")
    return Checkpoint(
        epoch=int(fields["epoch"]),
        params=Params(w=fields["w"], b=fields["b"]),
        opt_state=jax.tree.unflatten(treedef, leaves),
        moving_last=float(fields["moving_last"]),
        key_words=fields["key_words"],
        settings=json.loads(str(fields["settings"])),
    )
