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

from jaxlr.persist import NpzReader, atomic_write

FORMAT_VERSION = 2
_NAME = re.compile(r"^checkpoint-(\d{8})\.npz$")
_KEEP = 2


class CheckpointError(ValueError):
    """A checkpoint that does not belong to the run resuming from it."""


class Checkpoint(NamedTuple):
    """A run as it stood after `epoch` epochs.

    Attributes:
        epoch: epochs done.
        state: the run's whole position (`jaxlr.FitState`): params, optimizer
            state, step count, moving average, averaged params, stopping rule.
        key_words: the raw words of the run's key.
        settings: what the run was trained with, as JSON-able values.
    """

    epoch: int
    state: Any
    key_words: np.ndarray
    settings: dict


def save(directory, checkpoint):
    """Writes `checkpoint` into `directory` and keeps only the newest two."""
    directory = Path(directory)
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "epoch": np.array(checkpoint.epoch),
        "key_words": np.asarray(checkpoint.key_words),
        "settings": np.array(json.dumps(checkpoint.settings, sort_keys=True)),
    }
    for i, leaf in enumerate(jax.tree.leaves(checkpoint.state)):
        arrays[f"state_{i}"] = np.asarray(leaf)
    path = directory / f"checkpoint-{checkpoint.epoch:08d}.npz"
    atomic_write(path, lambda file: np.savez(file, **arrays))
    for old in _listed(directory)[_KEEP:]:
        old.unlink(missing_ok=True)
    return path


def latest(directory, state_like):
    """The newest readable checkpoint in `directory`, or None if there is none.

    A damaged newest checkpoint (a torn or truncated file) is skipped with a
    warning, and the one before it is used.

    Args:
        state_like: a `FitState` of the right structure and shapes, to
            rebuild the saved one.
    """
    for path in _listed(Path(directory)):
        try:
            return _load(path, state_like)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"checkpoint {path.name} is unreadable ({err}); trying the one before it.", stacklevel=3)
    return None


def _listed(directory):
    """Checkpoint files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _load(path, state_like):
    num_leaves = jax.tree.structure(state_like).num_leaves
    wanted = {"format_version", "epoch", "key_words", "settings", *(f"state_{i}" for i in range(num_leaves + 1))}
    with NpzReader(path, "checkpoint") as archive:  # only the members wanted, each checked before it is read
        fields = {name: archive.read(name, "biufU", ndim=0 if name in ("format_version", "epoch", "settings") else None)
                  for name in archive.names & wanted}
    if int(fields["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"format version {int(fields['format_version'])}, not {FORMAT_VERSION}")
    treedef = jax.tree.structure(state_like)
    likes = jax.tree.leaves(state_like)
    leaves = [fields[f"state_{i}"] for i in range(treedef.num_leaves)]
    if f"state_{treedef.num_leaves}" in fields or any(
        saved.shape != np.shape(like) for saved, like in zip(leaves, likes)
    ):
        raise CheckpointError(f"{path.name} holds the state of a different optimizer or model shape.")
    leaves = [saved.astype(np.asarray(like).dtype) for saved, like in zip(leaves, likes)]
    return Checkpoint(
        epoch=int(fields["epoch"]),
        state=jax.tree.unflatten(treedef, leaves),
        key_words=fields["key_words"],
        settings=_settings(fields["settings"]),
    )


def _settings(field):
    settings = json.loads(str(field))
    if not isinstance(settings, dict):
        raise ValueError("its settings are not a JSON object")
    return settings
