"""Checkpoints survive kill -9, and a resumed run ends exactly where an uninterrupted one does."""

import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

import jaxlr

EPOCHS = 60
SCRIPT = textwrap.dedent(
    """
    import sys, jax, optax, jaxlr
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=2000)
    jaxlr.fit(X, y, key=jax.random.key(1), epochs={epochs}, batch_size=4, engine="loop",
              optimizer=optax.adam(1e-3), checkpoint=sys.argv[1])
    """
)


def _data():
    return jaxlr.synthetic_data(jax.random.key(0), num_examples=2000)


def _fit(**kwargs):
    X, y = _data()
    return jaxlr.fit(X, y, key=jax.random.key(1), epochs=EPOCHS, batch_size=4, engine="loop",
                     optimizer=optax.adam(1e-3), **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted():
    return _fit()


def test_resume_after_kill_9_is_bit_identical(tmp_path, uninterrupted):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(epochs=EPOCHS))
    directory = tmp_path / "ckpt"
    process = subprocess.Popen([sys.executable, str(script), str(directory)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (directory / "checkpoint-00000005.npz").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    saved = sorted(p.name for p in directory.iterdir() if p.name.startswith("checkpoint-"))
    assert 1 <= len(saved) <= 2 and all(name.endswith(".npz") for name in saved)

    resumed = _fit(checkpoint=directory, resume=True)
    done_before = int(saved[-1][11:19])
    assert 5 <= done_before < EPOCHS
    assert resumed.losses.shape[0] == (EPOCHS - done_before) * 500
    np.testing.assert_array_equal(resumed.params.w, uninterrupted.params.w)
    np.testing.assert_array_equal(resumed.params.b, uninterrupted.params.b)
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses[-resumed.losses.shape[0]:])


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted):
    directory = tmp_path / "ckpt"
    X, y = _data()
    jaxlr.fit(X, y, key=jax.random.key(1), epochs=7, batch_size=4, engine="loop",
              optimizer=optax.adam(1e-3), checkpoint=directory)  # fmt: skip
    newest = directory / "checkpoint-00000007.npz"
    newest.write_bytes(newest.read_bytes()[:100])  # torn, as by a crash mid-write
    with pytest.warns(UserWarning, match="checkpoint-00000007.npz is unreadable"):
        resumed = _fit(checkpoint=directory, resume=True)
    assert resumed.losses.shape[0] == (EPOCHS - 6) * 500
    np.testing.assert_array_equal(resumed.params.w, uninterrupted.params.w)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_checkpoints_every_n_epochs_and_the_moving_average_carries_on(tmp_path, engine):
    X, y = _data()
    whole = jaxlr.fit(X, y, key=jax.random.key(2), epochs=5, batch_size=8, engine=engine)
    directory = tmp_path / engine
    first = jaxlr.fit(X, y, key=jax.random.key(2), epochs=3, batch_size=8, engine=engine,
                      checkpoint=directory, checkpoint_every=2)  # fmt: skip
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint-00000002.npz", "checkpoint-00000003.npz"]
    rest = jaxlr.fit(X, y, key=jax.random.key(2), epochs=5, batch_size=8, engine=engine,
                     checkpoint=directory, resume=True)  # fmt: skip
    np.testing.assert_allclose(rest.params.w, whole.params.w, rtol=1e-6)
    np.testing.assert_allclose(rest.moving_losses, whole.moving_losses[-rest.moving_losses.shape[0]:], rtol=1e-5)
    assert first.losses.shape[0] + rest.losses.shape[0] == whole.losses.shape[0]


def test_resuming_with_another_key_or_settings_is_refused(tmp_path):
    X, y = _data()
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="another `key`"):
        jaxlr.fit(X, y, key=jax.random.key(3), epochs=2, checkpoint=tmp_path, resume=True)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match=r"other settings \(batch_size=4\)"):
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, batch_size=8, checkpoint=tmp_path, resume=True)
    with pytest.raises(ValueError, match="`resume` needs `checkpoint`"):
        jaxlr.fit(X, y, key=jax.random.key(2), resume=True)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    X, y = _data()
    fresh = jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path / "new", resume=True)
    plain = jaxlr.fit(X, y, key=jax.random.key(2), epochs=1)
    np.testing.assert_array_equal(fresh.params.w, plain.params.w)
