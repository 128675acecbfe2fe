"""Compiled programs kept on disk: a new process fits a kind of model it has seen without compiling."""

import os
import subprocess
import sys

import jax

import jaxlr
from jaxlr import compilation_cache

# A fit in a fresh process; prints how many programs XLA compiled for it
# (the persistent cache's misses, or every program when the cache is off) and
# the cache directory in use.
FIRST_FIT = """
import collections, jax, numpy as np
events = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kw: events.update([event]))
jax.monitoring.register_event_duration_secs_listener(lambda event, duration, **kw: events.update([event]))
import jaxlr
{prelude}
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 4)).astype(np.float32)
y = X @ np.arange(4.0, dtype=np.float32) + 1
jax.block_until_ready(jaxlr.fit(X, y, key=jax.random.key(0), epochs=2, batch_size=8))
uses_cache = jax.config.jax_compilation_cache_dir is not None
compiled = events["/jax/compilation_cache/cache_misses"] if uses_cache else events["/jax/core/compile/backend_compile_duration"]
print(compiled, jax.config.jax_compilation_cache_dir)
"""


def _first_fit(prelude="", **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAXLR_", "JAX_COMPILATION"))}
    done = subprocess.run([sys.executable, "-c", FIRST_FIT.replace("{prelude}", prelude)], env={**base, **env},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    compiled, directory = done.stdout.split()[-2:]
    return int(compiled), directory


def test_a_second_process_compiles_nothing_for_a_kind_of_fit_the_cache_holds(tmp_path):
    cache = tmp_path / "cache"
    assert _first_fit(JAXLR_CACHE_DIR=str(cache)) == (4, str(cache))
    assert any(cache.iterdir())
    # JAXLR_NO_CACHE=0 means what it says: the cache stays on.
    assert _first_fit(JAXLR_CACHE_DIR=str(cache), JAXLR_NO_CACHE="0") == (0, str(cache))


def test_the_cache_is_off_when_the_environment_says_so_and_the_users_own_directory_stands(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert _first_fit(JAXLR_CACHE_DIR=str(ours), JAXLR_NO_CACHE="1") == (4, "None")
    assert not ours.exists()
    assert _first_fit(JAXLR_CACHE_DIR=str(ours), JAX_COMPILATION_CACHE_DIR=str(theirs))[1] == str(theirs)
    assert not ours.exists()
    # Turned off before jaxlr loads its training code: loading it does not turn it on again.
    off = "jaxlr.compilation_cache.use_compilation_cache(None)"
    assert _first_fit(off, JAXLR_CACHE_DIR=str(ours)) == (4, "None")
    assert not ours.exists()


def test_the_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXLR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.default_dir() == tmp_path / "jaxlr" / "xla"
    monkeypatch.setenv("JAXLR_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation_cache.default_dir() == tmp_path / "mine"


def test_a_full_cache_loses_its_least_recently_used_programs(tmp_path):
    for age, name in enumerate(["oldest", "older", "newer", "newest"]):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    compilation_cache._prune(tmp_path, max_bytes=400)  # within the bound: all stay
    assert len(list(tmp_path.iterdir())) == 4
    compilation_cache._prune(tmp_path, max_bytes=350)  # over it: down to 3/4 of it, the oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer", "newest"]


def test_the_command_without_the_cache_writes_none(tmp_path):
    cache = tmp_path / "cache"
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXLR_")}
    done = subprocess.run([sys.executable, "-m", "jaxlr", "--quiet", "--no-cache"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**base, "JAXLR_CACHE_DIR": str(cache)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not cache.exists() or not any(cache.iterdir())
    assert jaxlr.fit is not None  # loads the training code, which turns this process's cache on
    assert jax.config.jax_compilation_cache_dir  # this process (the suite) keeps its own cache
