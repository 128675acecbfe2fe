"""Compiled programs kept on disk, so that a new process does not compile them again.

XLA compiles each new kind of run (a loss, a shape, an engine) once per
process: 0.2 to 3 seconds on a CPU. JAX's persistent compilation cache keeps
the compiled programs in a directory; jaxlr turns it on as it loads its
training code (the first use of `jaxlr.fit`, `jaxlr.solve`, `jaxlr.SGDRegressor`
and the like, `import jaxlr.train`, or a command that trains), in
`~/.cache/jaxlr/xla` (or `$XDG_CACHE_HOME/jaxlr/xla`, or `$JAXLR_CACHE_DIR`).
When it holds more than `MAX_BYTES`, the programs least recently used are
removed then. Every program is kept, however quickly it compiled: JAX's own
default keeps only those that took a second or more, and few of jaxlr's do.
The setting is JAX's, for the whole process: its other programs are kept too.

It stays off where the process says so: with `JAXLR_NO_CACHE=1` in the
environment, after `use_compilation_cache(None)` (or any other call of it), and
where the process set JAX's cache directory itself (its choice stands).
The cache is a cache: a directory that cannot be written costs only speed.
"""

import os
from pathlib import Path

import jax

from jaxlr import names

MAX_BYTES = 2 << 30


def default_dir() -> Path:
    """Where jaxlr keeps compiled programs unless told otherwise."""
    if os.environ.get("JAXLR_CACHE_DIR"):
        return Path(os.environ["JAXLR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxlr" / "xla"


def use_compilation_cache(path="default") -> bool:
    """Keeps compiled programs in `path` ("default": `default_dir()`), or none when None.

    Takes effect for the programs compiled after it. Returns whether the
    cache is on.

    Example:
        >>> jaxlr.compilation_cache.use_compilation_cache(None)   # this process compiles afresh
    """
    from jax.experimental.compilation_cache import compilation_cache

    global _decided
    _decided = True  # the process chose: jaxlr's default no longer applies
    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()
        return False
    path = default_dir() if path == "default" else Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _prune(path, MAX_BYTES)
    except OSError:
        return False  # an unwritable cache only costs speed
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # the next compile opens the cache at `path`
    return True


# Whether the cache was set up, by jaxlr's default or by a call of use_compilation_cache.
_decided = False


def turn_on_once() -> None:
    """jaxlr's default, once per process: the cache in `default_dir()`, unless
    the environment, JAX's own setting or an earlier call says otherwise."""
    global _decided
    if _decided:
        return
    _decided = True
    if names.switched_on("JAXLR_NO_CACHE") or getattr(jax.config, "jax_compilation_cache_dir"):  # noqa: B009 (typed)
        return
    use_compilation_cache()


def _prune(path: Path, max_bytes: int) -> None:
    """Removes the least recently used files of `path` until it holds at most
    three quarters of `max_bytes`, when it holds more than `max_bytes`.

    JAX bounds its cache only with the `filelock` package, which jaxlr does
    not require; a listing of a few hundred files costs about a millisecond.
    """
    entries = []
    with os.scandir(path) as found:
        for entry in found:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                entries.append((max(stat.st_atime, stat.st_mtime), stat.st_size, entry.path))
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return
    for _, size, name in sorted(entries):
        if total <= max_bytes * 3 // 4:
            break
        try:
            os.remove(name)
            total -= size
        except OSError:
            pass  # another process removed it, or may not: the next import tries again
