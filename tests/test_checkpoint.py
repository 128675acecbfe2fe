"""Checkpoints survive kill -9, and a resumed run ends exactly where an uninterrupted one does."""

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
              optimizer=optax.adam(1e-3), checkpoint=sys.argv[1], checkpoint_every=1)
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
        while not list(directory.glob("checkpoint-*-00000005.npz")):
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
    # Whole files only. The newest and the one before are kept; a kill between
    # writing the newest and removing the oldest (a busy machine widens that
    # moment) leaves the oldest too, which a later save removes.
    assert 1 <= len(saved) <= 3 and all(name.endswith(".npz") for name in saved)

    resumed = _fit(checkpoint=directory, resume=True)
    done_before = int(saved[-1][-12:-4])
    assert 5 <= done_before < EPOCHS
    assert resumed.losses.shape[0] == (EPOCHS - done_before) * 500
    np.testing.assert_array_equal(resumed.params.w, uninterrupted.params.w)
    np.testing.assert_array_equal(resumed.params.b, uninterrupted.params.b)
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses[-resumed.losses.shape[0]:])


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted):
    directory = tmp_path / "ckpt"
    X, y = _data()
    jaxlr.fit(X, y, key=jax.random.key(1), epochs=7, batch_size=4, engine="loop",
              optimizer=optax.adam(1e-3), checkpoint=directory, checkpoint_every=1)  # fmt: skip
    [newest] = directory.glob("checkpoint-*-00000007.npz")
    newest.write_bytes(newest.read_bytes()[:100])  # torn, as by a crash mid-write
    with pytest.warns(UserWarning, match="checkpoint-.*-00000007.npz is unreadable"):
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
    assert sorted(p.name[-12:] for p in directory.iterdir()) == ["00000002.npz", "00000003.npz"]
    rest = jaxlr.fit(X, y, key=jax.random.key(2), epochs=5, batch_size=8, engine=engine,
                     checkpoint=directory, resume=True)  # fmt: skip
    # Bit for bit, as the README promises, whatever the engine.
    np.testing.assert_array_equal(rest.params.w, whole.params.w)
    np.testing.assert_array_equal(rest.params.b, whole.params.b)
    np.testing.assert_array_equal(rest.losses, whole.losses[-rest.losses.shape[0]:])
    np.testing.assert_allclose(rest.moving_losses, whole.moving_losses[-rest.moving_losses.shape[0]:], rtol=1e-5)
    assert first.losses.shape[0] + rest.losses.shape[0] == whole.losses.shape[0]


def test_resuming_with_another_key_or_settings_is_refused(tmp_path):
    X, y = _data()
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="only of a run with another `key`"):
        jaxlr.fit(X, y, key=jax.random.key(3), epochs=2, checkpoint=tmp_path, resume=True)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match=r"other settings \(batch_size=4, now 8\)"):
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, batch_size=8, checkpoint=tmp_path, resume=True)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match=r"other settings \(lr=0.001, now 0.002\)"):
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, lr=0.002, checkpoint=tmp_path, resume=True)
    # The squared loss never reads epsilon: no part of the run. A margin loss's is.
    resumed = jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, epsilon=0.2, checkpoint=tmp_path, resume=True)
    assert int(resumed.state.epoch) == 2
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, loss="huber", checkpoint=tmp_path / "huber")
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match=r"other settings \(epsilon=0.1, now 0.2\)"):
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, loss="huber", epsilon=0.2, checkpoint=tmp_path / "huber",
                  resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="`resume` needs `checkpoint`"):
        jaxlr.fit(X, y, key=jax.random.key(2), resume=True)


def test_resuming_under_other_optimizer_hyperparameters_or_type_is_refused(tmp_path):
    X, y = _data()
    settings = dict(key=jax.random.key(2), batch_size=50, checkpoint=tmp_path)
    jaxlr.fit(X, y, epochs=1, optimizer=optax.adam(0.01), **settings)
    saved = sorted(p.name for p in tmp_path.iterdir())
    for other in (optax.adam(0.5), optax.sgd(0.01), "adam"):
        with pytest.raises(jaxlr.checkpoint.CheckpointError, match=r"only of a run with other settings \(.*optimizer"):
            jaxlr.fit(X, y, epochs=2, optimizer=other, resume=True, **settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == saved  # nothing written, nothing lost
    # The same hyperparameters in a fresh object are the same run.
    again = jaxlr.fit(X, y, epochs=2, optimizer=optax.adam(0.01), resume=True, **settings)
    assert again.losses.shape[0] == 2000 // 50


def test_resume_needs_a_checkpoint_unless_told_to_start_afresh(tmp_path):
    X, y = _data()
    for missing in (tmp_path / "misspelt", tmp_path):
        with pytest.raises(jaxlr.checkpoint.CheckpointError, match="nothing to resume"):
            jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=missing, resume=True)
    assert not (tmp_path / "misspelt").exists()
    fresh = jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path / "new", resume="if_present")
    plain = jaxlr.fit(X, y, key=jax.random.key(2), epochs=1)
    np.testing.assert_array_equal(fresh.params.w, plain.params.w)


def test_a_directory_holding_checkpoints_is_not_overwritten_without_being_told(tmp_path):
    X, y = _data()
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, checkpoint=tmp_path, checkpoint_every=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="already holds checkpoints of this run"):
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=3, checkpoint=tmp_path)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="already holds checkpoints of a run with another `key`"):
        jaxlr.fit(X, y, key=jax.random.key(5), epochs=3, checkpoint=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # overwrite=True starts this run afresh and keeps the other run's files.
    jaxlr.fit(X, y, key=jax.random.key(5), epochs=1, checkpoint=tmp_path, overwrite=True)
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path, overwrite=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and all(name.endswith("-00000001.npz") for name in names)


def test_fewer_epochs_than_the_checkpoint_holds_is_refused_and_a_finished_run_keeps_its_moving_loss(tmp_path):
    X, y = _data()
    done = jaxlr.fit(X, y, key=jax.random.key(2), epochs=3, checkpoint=tmp_path)
    with pytest.raises(ValueError, match=r"`epochs` \(=2\) is fewer than the 3 epochs"):
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, checkpoint=tmp_path, resume=True)
    again = jaxlr.fit(X, y, key=jax.random.key(2), epochs=3, checkpoint=tmp_path, resume=True)
    assert again.losses.shape == (0,)
    np.testing.assert_array_equal(again.params.w, done.params.w)
    assert float(again.state.moving) == float(done.moving_losses[-1])


def _run_settings(seed):
    return dict(key=jax.random.key(seed), batch_size=16, lr=0.01, engine="fused")


def test_two_runs_in_one_directory_each_resume_their_own_state(tmp_path):
    X, y = _data()
    whole = {seed: jaxlr.fit(X, y, epochs=5, **_run_settings(seed)) for seed in (1, 2)}
    jaxlr.fit(X, y, epochs=3, checkpoint=tmp_path, checkpoint_every=1, **_run_settings(1))
    jaxlr.fit(X, y, epochs=4, checkpoint=tmp_path, checkpoint_every=1, resume="if_present", **_run_settings(2))
    assert len(list(tmp_path.iterdir())) == 4  # each run keeps its own newest two
    for seed in (1, 2):
        rest = jaxlr.fit(X, y, epochs=5, checkpoint=tmp_path, resume=True, **_run_settings(seed))
        np.testing.assert_array_equal(rest.params.w, whole[seed].params.w)


CONCURRENT = textwrap.dedent(
    """
    import sys, jax, jaxlr
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=2000)
    jaxlr.fit(X, y, key=jax.random.key(int(sys.argv[2])), epochs=int(sys.argv[3]), batch_size=4, engine="loop",
              checkpoint=sys.argv[1], checkpoint_every=1, resume="if_present")
    """
)


def test_two_concurrent_runs_in_one_directory_each_resume_their_own_state(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(CONCURRENT)
    directory = tmp_path / "ckpt"
    runs = [subprocess.Popen([sys.executable, str(script), str(directory), str(seed), "6"]) for seed in (1, 2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    names = sorted(p.name for p in directory.iterdir())
    assert [name[-12:] for name in names] == ["00000005.npz", "00000006.npz"] * 2
    X, y = _data()
    for seed in (1, 2):
        settings = dict(key=jax.random.key(seed), batch_size=4, engine="loop")
        rest = jaxlr.fit(X, y, epochs=7, checkpoint=directory, resume=True, **settings)
        whole = jaxlr.fit(X, y, epochs=7, **settings)
        assert rest.losses.shape[0] == 500
        np.testing.assert_array_equal(rest.params.w, whole.params.w)


@pytest.mark.parametrize("stop_after", [3, 9])
def test_early_stopping_resumes_to_the_same_model(tmp_path, stop_after):
    # Stopped by its rule at epoch 8 (best: 5) when uninterrupted; interrupted
    # before that (3), or after (9: the resumed run must not train on).
    from jaxlr.callbacks import EarlyStopping

    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=300)
    X_val, y_val = jaxlr.synthetic_data(jax.random.key(9), num_examples=50)
    settings = dict(key=jax.random.key(1), batch_size=8, lr=0.05)
    whole_rule = EarlyStopping(2, X_val, y_val)
    whole = jaxlr.fit(X, y, epochs=40, callback=whole_rule, **settings)
    assert whole_rule.stopped and int(whole.state.epoch) < 40

    first_rule = EarlyStopping(2, X_val, y_val)
    jaxlr.fit(X, y, epochs=min(stop_after, 40), callback=first_rule, checkpoint=tmp_path, checkpoint_every=1, **settings)
    rule = EarlyStopping(2, X_val, y_val)
    resumed = jaxlr.fit(X, y, epochs=40, callback=rule, checkpoint=tmp_path, resume=True, **settings)
    assert rule.stopped and (rule.best_epoch, rule.epochs_seen) == (whole_rule.best_epoch, whole_rule.epochs_seen)
    np.testing.assert_array_equal(rule.best_params.w, whole_rule.best_params.w)
    np.testing.assert_array_equal(resumed.params.w, whole.params.w)
    assert int(resumed.state.epoch) == int(whole.state.epoch)


def test_checkpoints_are_fsynced_renamed_versioned_and_never_unpickled(tmp_path, monkeypatch):
    import os

    X, y = _data()
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", Path(b).name)), real_replace(a, b))[1])
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path)
    monkeypatch.undo()
    [path] = tmp_path.iterdir()
    assert calls[0] == "fsync" and calls[1] == ("replace", path.name)  # written whole, then named
    with np.load(path) as archive:
        fields = dict(archive)
    assert int(fields["format_version"]) == jaxlr.checkpoint.FORMAT_VERSION
    # Another format version, or a pickled object inside: skipped as unreadable, never loaded.
    for name, value in (("format_version", np.array(1)), ("state_0", np.array([object()], dtype=object))):
        np.savez(path, **{**fields, name: value})
        with pytest.warns(UserWarning, match="unreadable"), pytest.raises(jaxlr.checkpoint.CheckpointError):
            jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, checkpoint=tmp_path, resume=True)


def test_by_default_checkpoints_are_saved_by_time_and_after_the_last_epoch(tmp_path, monkeypatch):
    X, y = _data()
    settings = dict(key=jax.random.key(2), epochs=4, batch_size=50)
    monkeypatch.setattr(jaxlr.train, "CHECKPOINT_SECONDS", float("inf"))  # never due: only the last epoch
    jaxlr.fit(X, y, checkpoint=tmp_path / "slow", **settings)
    assert [p.name[-12:] for p in (tmp_path / "slow").iterdir()] == ["00000004.npz"]
    monkeypatch.setattr(jaxlr.train, "CHECKPOINT_SECONDS", 0.0)  # always due: every epoch (the newest two kept)
    jaxlr.fit(X, y, checkpoint=tmp_path / "fast", engine="loop", **settings)
    assert sorted(p.name[-12:] for p in (tmp_path / "fast").iterdir()) == ["00000003.npz", "00000004.npz"]


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda X, y: dict(X=X * 2), "data differs"),
        (lambda X, y: dict(y=y + 1), "data differs"),
        (lambda X, y: dict(sample_weight=np.full(len(y), 0.5)), "data differs"),
        (lambda X, y: dict(init=jaxlr.Params(np.ones((2, 1), np.float32), np.zeros(1, np.float32))), "init differs"),
        (lambda X, y: dict(loss=lambda yhat, target: (yhat - target) ** 2), "loss="),
        (lambda X, y: dict(schedule=lambda t: 0.001 + 0 * t), "schedule="),
        (lambda X, y: dict(validation=(X[:20], y[:20] + 1), tol=0.0), "validation differs"),
    ],
)
def test_resume_refuses_other_data_weights_start_or_functions(tmp_path, change, named):
    """The run's identity holds what it trains on, not only counts and names."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2)).astype(np.float32)
    y = X.sum(axis=1)
    first = change(X, y).get("validation") and {"validation": (X[:20], y[:20]), "tol": 0.0}
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=2, checkpoint=tmp_path, **(first or {}))
    given = {"X": X, "y": y, **change(X, y)}
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match=named):
        jaxlr.fit(given.pop("X"), given.pop("y"), key=jax.random.key(0), epochs=3, checkpoint=tmp_path,
                  resume=True, **given)  # fmt: skip
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=3, checkpoint=tmp_path, resume=True, **(first or {}))  # the same run resumes


def test_a_run_resumes_whichever_side_draws_its_orders(tmp_path):
    """Host and device draw the same orders: where they are drawn is no part of the run."""
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    whole = jaxlr.fit(X, y, key=jax.random.key(0), epochs=4, shuffle="host")
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=2, checkpoint=tmp_path, shuffle="host")
    resumed = jaxlr.fit(X, y, key=jax.random.key(0), epochs=4, checkpoint=tmp_path, resume=True, shuffle="device")
    np.testing.assert_array_equal(resumed.params.w, whole.params.w)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="shuffle=True, now False"):
        jaxlr.fit(X, y, key=jax.random.key(0), epochs=4, checkpoint=tmp_path, resume=True, shuffle=False)


def test_two_user_losses_on_one_line_are_two_runs(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    y = X.sum(axis=1)
    first, second = (lambda yhat, t: (yhat - t) ** 2), (lambda yhat, t: abs(yhat - t))
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, checkpoint=tmp_path, loss=first)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="loss="):
        jaxlr.fit(X, y, key=jax.random.key(0), epochs=2, checkpoint=tmp_path, resume=True, loss=second)


@pytest.mark.parametrize("other", [dict(penalty="l1"), dict(alpha=0.5), dict(l1_ratio=0.9)])
def test_resume_refuses_another_penalty(tmp_path, other):
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    y = X.sum(axis=1)
    settings = dict(key=jax.random.key(0), checkpoint=tmp_path, penalty="elasticnet", alpha=0.1, l1_ratio=0.5)
    jaxlr.fit(X, y, epochs=1, **settings)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="penalty="):
        jaxlr.fit(X, y, epochs=2, resume=True, **{**settings, **other})


def test_resume_refuses_another_alpha_of_the_optimal_schedule_without_a_penalty(tmp_path):
    """alpha sets the "optimal" schedule's rates even where no penalty uses it."""
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    settings = dict(key=jax.random.key(0), checkpoint=tmp_path, schedule="optimal", penalty=None)
    jaxlr.fit(X, y, epochs=1, alpha=10.0, **settings)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="alpha=10.0, now 20.0"):
        jaxlr.fit(X, y, epochs=2, alpha=20.0, resume=True, **settings)


RATE = 0.05  # read by a schedule below as a global


def _schedule_of_a_global(count):
    return RATE + 0 * count


class _Decay:
    def __init__(self, peak):
        self.peak = peak

    def __call__(self, count, total):
        return self.peak * (1 - count / total)


def test_a_users_function_is_known_by_its_constants_globals_and_attributes(tmp_path, monkeypatch):
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    settings = dict(key=jax.random.key(0), batch_size=8, checkpoint=tmp_path)
    # A number edited in place (the same name, line and closure) is another function.
    first = eval("lambda count: 0.05 + 0 * count")
    jaxlr.fit(X, y, epochs=1, schedule=first, **settings)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="schedule="):
        jaxlr.fit(X, y, epochs=2, schedule=eval("lambda count: 0.5 + 0 * count"), resume=True, **settings)
    jaxlr.fit(X, y, epochs=2, schedule=eval("lambda count: 0.05 + 0 * count"), resume=True, **settings)
    # So is one whose global changed.
    jaxlr.fit(X, y, epochs=1, schedule=_schedule_of_a_global, overwrite=True, **settings)
    monkeypatch.setattr(sys.modules[__name__], "RATE", 0.5)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="schedule="):
        jaxlr.fit(X, y, epochs=2, schedule=_schedule_of_a_global, resume=True, **settings)
    # A callable object is known by its attributes.
    jaxlr.fit(X, y, epochs=1, schedule=_Decay(0.05), overwrite=True, **settings)
    jaxlr.fit(X, y, epochs=2, schedule=_Decay(0.05), resume=True, **settings)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="schedule="):
        jaxlr.fit(X, y, epochs=3, schedule=_Decay(0.5), resume=True, **settings)


def test_an_optax_schedule_resumes_in_the_process_that_ran_it(tmp_path):
    """optax turns some of its ints into floats as it runs: 30 and 30.0 are one value."""
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    schedule = optax.cosine_decay_schedule(0.05, 30)
    settings = dict(key=jax.random.key(0), batch_size=4, schedule=schedule, checkpoint=tmp_path)
    jaxlr.fit(X, y, epochs=2, **settings)
    jaxlr.fit(X, y, epochs=4, resume=True, **settings)


def test_functions_that_call_other_attributes_or_hold_sets_are_told_apart_and_alike(tmp_path):
    import jax.numpy as jnp

    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    settings = dict(key=jax.random.key(0), batch_size=8, checkpoint=tmp_path)
    jaxlr.fit(X, y, epochs=1, loss=eval("lambda yhat, t: jnp.abs(yhat - t)", {"jnp": jnp}), **settings)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="loss="):
        jaxlr.fit(X, y, epochs=2, loss=eval("lambda yhat, t: jnp.square(yhat - t)", {"jnp": jnp}), resume=True,
                  **settings)  # fmt: skip
    # A set's order follows the process's string hashing; the digest does not.
    source = "lambda yhat, t: (yhat - t) ** 2 * ('mid' in {'alpha', 'beta', 'mid', 'omega'})"
    digests = set()
    for seed in ("1", "2"):
        code = f"import jax.numpy as jnp; from jaxlr.train import _function_name; print(_function_name('loss', 'l', {source}))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**__import__("os").environ, "PYTHONHASHSEED": seed})  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        digests.add(done.stdout.strip())
    assert len(digests) == 1, digests


def test_a_run_continued_from_a_state_resumes_only_from_that_state(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2)).astype(np.float32)
    y = X.sum(axis=1)
    run = functools.partial(jaxlr.fit, X, y, key=jax.random.key(0), lr=0.05)
    one, two = run(epochs=1).state, run(epochs=2).state
    run(epochs=1, state=one, checkpoint=tmp_path)
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="state differs"):
        run(epochs=1, state=two, checkpoint=tmp_path, resume=True)
    # Nothing of this run to resume: it starts from its own state.
    np.testing.assert_array_equal(run(epochs=1, state=two, checkpoint=tmp_path, resume="if_present").params.w,
                                  run(epochs=1, state=two).params.w)  # fmt: skip
    resumed = run(epochs=1, state=one, checkpoint=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params.w, run(epochs=1, state=one).params.w)


@pytest.mark.parametrize("average", [False, 3])
def test_a_checkpoint_written_before_the_state_recorded_its_average_start_resumes(tmp_path, average):
    # Such a checkpoint holds every field of the state but the last one.
    X, y = _data()
    settings = dict(key=jax.random.key(2), batch_size=8, average=average, checkpoint=tmp_path, checkpoint_every=1)
    jaxlr.fit(X, y, epochs=2, **settings)
    for path in tmp_path.iterdir():
        with np.load(path) as archive:
            fields = dict(archive)
        last = max(int(name[len("state_"):]) for name in fields if name.startswith("state_"))
        del fields[f"state_{last}"]
        np.savez(path, **fields)
    resumed = jaxlr.fit(X, y, epochs=4, resume=True, **settings)
    whole = jaxlr.fit(X, y, epochs=4, key=jax.random.key(2), batch_size=8, average=average)
    np.testing.assert_array_equal(resumed.params.w, whole.params.w)
    assert int(resumed.state.average_start) == (average or 0)


def test_what_a_write_killed_midway_leaves_is_removed_by_the_runs_next_save(tmp_path):
    # A kill during a write leaves the write's temporary file (the checkpoints
    # themselves stay whole). The run's next save, or a fresh start over it,
    # removes those of its own that it supersedes, and no other run's.
    X, y = _data()
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, checkpoint=tmp_path, checkpoint_every=1)
    run = jaxlr.checkpoint.files(tmp_path)[0].name.split("-")[1]
    left = {name: tmp_path / name for name in (
        f".checkpoint-{run}-00000003.npz.k1lled.tmp",  # this run's, superseded by epoch 3's save
        f".checkpoint-{run}-00000009.npz.ahead_.tmp",  # this run's, of an epoch not saved yet
        ".checkpoint-0123456789ab-00000001.npz.other.tmp",  # another run's
        ".model.npz.s0me0n.tmp",  # not a checkpoint's
        f".checkpoint-{run}-00000001.npz.k1lled.tmp\n",  # a user's, whose name only looks like one
        f".checkpoint-{run}-00000002.npz.wr1ting.tmp",  # this run's, still being written by another process
    )}  # fmt: skip
    for path in left.values():
        path.write_bytes(b"PK\x03\x04 torn")
        if "wr1ting" not in path.name:  # left by writes long dead
            os.utime(path, (time.time() - 2 * jaxlr.checkpoint.PARTIAL_SECONDS,) * 2)
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=3, checkpoint=tmp_path, checkpoint_every=1, resume=True)
    kept = {name for name, path in left.items() if path.exists()}
    assert kept == set(list(left)[1:])
    jaxlr.fit(X, y, key=jax.random.key(2), epochs=1, checkpoint=tmp_path, overwrite=True)
    assert {name for name, path in left.items() if path.exists()} == set(list(left)[2:])
