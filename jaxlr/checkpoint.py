"""Checkpoints: a training run saved after its epochs, resumable exactly after a crash.

A checkpoint is `checkpoint-RRRRRRRRRRRR-EEEEEEEE.npz` in its directory, R
naming the run (a digest of its key and settings) and E the number of epochs
done. It holds the params, the optimizer state's leaves, the moving average,
the run's key and settings, and the state of callbacks that keep one (early
stopping's best params): since epoch e shuffles with a key derived from the
run's key and e alone, the epoch count is the whole RNG position. Each is
written atomically (temporary file, fsync, rename) and the run's previous one
is kept, so a kill at any moment leaves at least one good checkpoint. A run
only ever deletes its own files: several runs can share a directory.
"""

import hashlib
import json
import re
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxlr.npz import NpzReader
from jaxlr.persist import atomic_write

FORMAT_VERSION = 4
_NAME = re.compile(r"^checkpoint-([0-9a-f]{12})-(\d{8})\.npz$")
_ANY = re.compile(r"^checkpoint-.*\.npz$")  # this format's or an older one's
# What a write killed midway leaves (`atomic_write`'s temporary file).
_PARTIAL = re.compile(r"\.checkpoint-([0-9a-f]{12})-([0-9]{8})\.npz\.[^.]+\.tmp")  # (whole names: fullmatch)
_KEEP = 2


class CheckpointError(ValueError):
    """A checkpoint that does not belong to the run resuming from it, or a
    directory that would make a run redo or discard work."""


class Checkpoint(NamedTuple):
    """A run as it stood after `epoch` epochs.

    Attributes:
        epoch: epochs done.
        state: the run's whole position (`jaxlr.FitState`): params, optimizer
            state, step count, moving average, averaged params, stopping rule.
        key_words: the raw words of the run's key.
        settings: what the run was trained with, as JSON-able values.
        extras: arrays by name: the state of callbacks that keep one.
    """

    epoch: int
    state: Any
    key_words: np.ndarray
    settings: dict
    extras: dict = {}


def run_name(key_words, settings: dict) -> str:
    """The run's name in its files: a digest of its key and settings."""
    text = json.dumps(settings, sort_keys=True).encode() + np.asarray(key_words, np.uint32).tobytes()
    return hashlib.sha256(text).hexdigest()[:12]


def save(directory, checkpoint):
    """Writes `checkpoint` into `directory` and keeps only its run's newest two."""
    directory = Path(directory)
    run = run_name(checkpoint.key_words, checkpoint.settings)
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "epoch": np.array(checkpoint.epoch),
        "key_words": np.asarray(checkpoint.key_words),
        "settings": np.array(json.dumps(checkpoint.settings, sort_keys=True)),
    }
    for i, leaf in enumerate(jax.tree.leaves(checkpoint.state)):
        arrays[f"state_{i}"] = np.asarray(leaf)
    for name, value in checkpoint.extras.items():
        arrays[f"extra_{name}"] = np.asarray(value)
    path = directory / f"checkpoint-{run}-{checkpoint.epoch:08d}.npz"
    atomic_write(path, lambda file: np.savez(file, **arrays))
    for old in _listed(directory, run)[_KEEP:]:
        old.unlink(missing_ok=True)
    for partial in _partial(directory, run):  # writes a kill cut short, which this one supersedes
        if int(_PARTIAL.fullmatch(partial.name).group(2)) <= checkpoint.epoch:
            partial.unlink(missing_ok=True)
    return path


def latest(directory, state_like, run: str):
    """The newest readable checkpoint of `run` in `directory`, or None if there is none.

    A damaged newest checkpoint (a torn or truncated file) is skipped with a
    warning, and the one before it is used.

    Args:
        state_like: a `FitState` of the right structure and shapes, to
            rebuild the saved one.
        run: the run's name (`run_name`).
    """
    for path in _listed(Path(directory), run):
        try:
            return _load(path, state_like)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"checkpoint {path.name} is unreadable ({err}); trying the one before it.", stacklevel=3)
    return None


def files(directory, run=None) -> list:
    """The checkpoint files in `directory` (of `run` only, if given), newest first."""
    return _listed(Path(directory), run)


def describe(path) -> tuple:
    """(key words, settings) of the run that wrote the checkpoint at `path`,
    or (None, None) when they cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            settings = json.loads(str(archive["settings"]))
            return np.asarray(archive["key_words"]), settings if isinstance(settings, dict) else None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
        return None, None


def discard(directory, run: str) -> None:
    """Deletes `run`'s checkpoints from `directory` (and no other run's), and
    what writes of them that were killed midway left."""
    for path in [*_listed(Path(directory), run), *_partial(Path(directory), run)]:
        path.unlink(missing_ok=True)


def _listed(directory, run=None):
    """Checkpoint files in `directory` (any format; of `run` only if given), newest first."""
    if not directory.is_dir():
        return []
    if run is None:
        return sorted((p for p in directory.iterdir() if _ANY.match(p.name)), key=lambda p: p.stat().st_mtime, reverse=True)
    found = [p for p in directory.iterdir() if (m := _NAME.match(p.name)) and m.group(1) == run]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _partial(directory, run):
    """The temporary files of `run`'s writes that never finished, in
    `directory`: those untouched for `PARTIAL_SECONDS` (a write still going
    on, of another process on the same run, is left to finish)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if (m := _PARTIAL.fullmatch(path.name)) and m.group(1) == run:
            try:
                if time.time() - path.stat().st_mtime > PARTIAL_SECONDS:
                    found.append(path)
            except OSError:  # renamed or removed by its writer meanwhile
                pass
    return found


PARTIAL_SECONDS = 60.0


def _load(path, state_like):
    num_leaves = jax.tree.structure(state_like).num_leaves
    wanted = {"format_version", "epoch", "key_words", "settings", *(f"state_{i}" for i in range(num_leaves + 1))}
    with NpzReader(path, "checkpoint") as archive:  # only the members wanted, each checked before it is read
        fields = {name: archive.read(name, "biufU", ndim=0 if name in ("format_version", "epoch", "settings") else None)
                  for name in archive.names & wanted | {n for n in archive.names if n.startswith("extra_")}}
    if int(fields["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"format version {int(fields['format_version'])}, not {FORMAT_VERSION}")
    treedef = jax.tree.structure(state_like)
    likes = jax.tree.leaves(state_like)
    last = f"state_{treedef.num_leaves - 1}"
    if last not in fields and f"state_{treedef.num_leaves - 2}" in fields:
        # Written before FitState recorded its average's start (its last
        # field): the run's own start, which its settings fix, is that start.
        fields[last] = np.asarray(likes[-1])
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
        extras={name[len("extra_"):]: value for name, value in fields.items() if name.startswith("extra_")},
    )


def _settings(field):
    settings = json.loads(str(field))
    if not isinstance(settings, dict):
        raise ValueError("its settings are not a JSON object")
    return settings
