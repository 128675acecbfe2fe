import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlr

SEED_LINE = re.compile(r"^Epoch (\d), batch (\d+)\. Moving avg of loss: (\S+)$")


@pytest.fixture(scope="module")
def seed_fits(seed_data):
    X, y = seed_data
    key = jax.random.key(42)
    return {engine: jaxlr.fit(X, y, key=key, engine=engine) for engine in ("fused", "loop")}


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_the_seed_job_learns_the_truth(seed_fits, engine):
    result = seed_fits[engine]
    assert np.max(np.abs(np.asarray(result.params.w).ravel() - [2.0, -3.4])) < 0.01
    assert abs(float(result.params.b[0]) - 4.2) < 0.01
    # The moving loss settles at the noise variance, 0.01 ** 2 = 1e-4.
    assert float(result.moving_losses[-1]) < 3e-4
    assert result.losses.shape == result.moving_losses.shape == (5000,)


def test_both_engines_give_the_same_run(seed_fits):
    fused, loop = seed_fits["fused"], seed_fits["loop"]
    np.testing.assert_allclose(fused.params.w, loop.params.w, atol=1e-5)
    np.testing.assert_allclose(fused.params.b, loop.params.b, atol=1e-5)
    np.testing.assert_allclose(fused.losses, loop.losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fused.moving_losses, loop.moving_losses, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n, batch_size, optimizer", [
    (10_001, 4, None), (203, 10, None), (203, 203, None), (500, 7, "adam"),
])  # fmt: skip
def test_engines_agree_when_the_batch_size_does_not_divide_n(n, batch_size, optimizer):
    X, y = jaxlr.synthetic_data(jax.random.key(1), num_examples=n)
    make = {None: lambda: None, "adam": lambda: optax.adam(0.01)}[optimizer]
    runs = [
        jaxlr.fit(X, y, key=jax.random.key(2), epochs=3, batch_size=batch_size, optimizer=make(), engine=e)
        for e in ("fused", "loop")
    ]
    assert runs[0].losses.shape == (3 * -(-n // batch_size),)
    np.testing.assert_allclose(runs[0].params.w, runs[1].params.w, atol=1e-5)
    np.testing.assert_allclose(runs[0].params.b, runs[1].params.b, atol=1e-5)


@pytest.mark.parametrize("settings", [
    {"average": True}, {"average": 300}, {"penalty": "l2", "alpha": 0.01}, {"penalty": "l1", "alpha": 0.01},
    {"penalty": "l2", "alpha": 0.01, "average": True}, {"penalty": "l2", "alpha": 0.01, "schedule": "invscaling"},
    {"penalty": "elasticnet", "alpha": 0.01, "average": True},
])  # fmt: skip
def test_the_padding_batches_of_an_epoch_move_nothing(settings):
    # 1000 batches of one row are run as 1008 (a bucketed count): the last 8
    # hold no rows and must neither average nor shrink the weights.
    X, y = jaxlr.synthetic_data(jax.random.key(1), num_examples=1000)
    runs = [jaxlr.fit(X, y, key=jax.random.key(2), epochs=2, batch_size=1, lr=0.01, engine=e, **settings)
            for e in ("fused", "loop")]  # fmt: skip
    np.testing.assert_allclose(runs[0].params.w, runs[1].params.w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[0].params.b, runs[1].params.b, rtol=1e-5, atol=1e-6)


def test_the_same_key_repeats_the_run_bit_for_bit(seed_data):
    X, y = seed_data
    first = jaxlr.fit(X[:2000], y[:2000], key=jax.random.key(7), batch_size=16)
    second = jaxlr.fit(X[:2000], y[:2000], key=jax.random.key(7), batch_size=16)
    np.testing.assert_array_equal(first.params.w, second.params.w)
    np.testing.assert_array_equal(first.losses, second.losses)
    other = jaxlr.fit(X[:2000], y[:2000], key=jax.random.key(8), batch_size=16)
    assert not np.array_equal(first.losses, other.losses)


def test_several_outputs_are_learned():
    true_w = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5]], np.float32)
    true_b = np.array([0.1, -0.2, 0.3], np.float32)
    X, y = jaxlr.synthetic_data(jax.random.key(3), num_examples=4000, true_w=true_w, true_b=true_b)
    result = jaxlr.fit(X, y, key=jax.random.key(4), epochs=3, batch_size=8, lr=0.01)
    assert result.params.w.shape == (2, 3)
    np.testing.assert_allclose(result.params.w, true_w, atol=0.01)
    np.testing.assert_allclose(result.params.b, true_b, atol=0.01)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_verbose_prints_the_lessons_ten_lines(seed_data, engine, capsys):
    X, y = seed_data
    result = jaxlr.fit(X, y, key=jax.random.key(42), engine=engine, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    parsed = [SEED_LINE.match(line).groups() for line in lines]
    expected = [(str(e), str(b)) for e in range(2) for b in (499, 999, 1499, 1999, 2499)]
    assert [p[:2] for p in parsed] == expected
    printed = [float(p[2]) for p in parsed]
    steps = [2500 * int(e) + int(b) for e, b in expected]
    np.testing.assert_allclose(printed, np.asarray(result.moving_losses)[steps], rtol=1e-6)
    assert printed[0] > 1.0 and printed[-1] < 3e-4


def test_quiet_by_default(seed_data, capsys):
    X, y = seed_data
    jaxlr.fit(X[:100], y[:100], key=jax.random.key(0))
    assert capsys.readouterr().out == ""


def test_moving_average_follows_the_lessons_recurrence():
    losses = np.array([4.0, 2.0, 1.0, 0.5], np.float32)
    expected, moving = [], None
    for value in losses:
        moving = value if moving is None else 0.9 * moving + 0.1 * value
        expected.append(moving)
    np.testing.assert_allclose(jaxlr.moving_average(losses, 0.1), expected, rtol=1e-6)
    # Carrying the average on from earlier steps:
    np.testing.assert_allclose(jaxlr.moving_average(losses[2:], 0.1, expected[1]), expected[2:], rtol=1e-6)


def test_given_params_are_the_starting_point(seed_data):
    X, y = seed_data
    truth = jaxlr.Params(w=jnp.array([[2.0], [-3.4]]), b=jnp.array([4.2]))
    result = jaxlr.fit(X[:400], y[:400], key=jax.random.key(0), init=truth, epochs=1)
    # Starting at the truth, every batch loss is pure noise.
    assert float(result.losses.max()) < 1e-3
    untrained = jaxlr.fit(X[:400], y[:400], key=jax.random.key(0), init=truth, epochs=0)
    np.testing.assert_array_equal(untrained.params.w, truth.w)
    assert untrained.losses.shape == (0,)


def test_epochs_resume_where_they_left_off(seed_data):
    # Epoch e's order depends only on the key and e, so the second epoch of a
    # two-epoch run equals a one-epoch run started from the first's params.
    X, y = seed_data
    key = jax.random.key(9)
    whole = jaxlr.fit(X, y, key=key, epochs=2)
    first = jaxlr.fit(X, y, key=key, epochs=1)
    np.testing.assert_array_equal(whole.losses[:2500], first.losses)


def test_devices_places_data_and_params(seed_data):
    X, y = seed_data
    cpu = jax.devices("cpu")[0]
    for device in (cpu, "cpu"):
        result = jaxlr.fit(X[:100], y[:100], key=jax.random.key(0), devices=device)
        assert result.params.w.devices() == {cpu}


@pytest.mark.parametrize("make_key", [jax.random.key, lambda seed: np.array([0, seed], np.uint32)])
def test_a_continued_run_shuffles_by_the_key_it_is_given(make_key):
    # What a key's split gives is kept while the key lives: a later key, which
    # may be given a freed one's id, gets its own.
    X, y = jaxlr.synthetic_data(jax.random.key(1), num_examples=64)
    start = jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, batch_size=1).state

    def continued(seed):
        return np.asarray(jaxlr.fit(X, y, key=make_key(seed), epochs=1, batch_size=1, state=start).params.w)

    runs = [continued(seed) for seed in (1, 2, 1, 2)]
    np.testing.assert_array_equal(runs[0], runs[2])
    np.testing.assert_array_equal(runs[1], runs[3])
    assert not np.array_equal(runs[0], runs[1])


@pytest.mark.parametrize("rows", [64, 60])  # a bucket's count exactly (nothing padded), and padded
def test_changing_the_callers_table_during_a_run_changes_nothing(rows):
    # The program reads the rows on each call: it reads a copy, not the caller's arrays.
    X = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    y, weight = X.sum(axis=1), np.linspace(0.5, 2.0, rows, dtype=np.float32)
    settings = dict(key=jax.random.key(0), epochs=3, lr=0.01, batch_size=1)
    untouched = jaxlr.fit(X.copy(), y.copy(), sample_weight=weight.copy(), **settings).params.w
    changing_X, changing_y, changing_weight = X.copy(), y.copy(), weight.copy()

    def zero_them(epoch, result):
        changing_X[:], changing_y[:], changing_weight[:] = 0, 0, 0
        return False

    changed = jaxlr.fit(changing_X, changing_y, sample_weight=changing_weight, callback=zero_them, **settings).params.w
    np.testing.assert_array_equal(changed, untouched)


def test_the_old_keywords_still_work_for_one_release(seed_data):
    X, y = seed_data
    X, y = X[:1001], y[:1001]
    adam = optax.adam(0.01)
    whole = jaxlr.fit(X, y, key=jax.random.key(3), epochs=3, optimizer=adam)
    first = jaxlr.fit(X, y, key=jax.random.key(3), epochs=1, optimizer=adam)
    with pytest.warns(DeprecationWarning, match="`params` is deprecated"):
        rest = jaxlr.fit(X, y, key=jax.random.key(3), epochs=2, optimizer=adam,
                         params=first.params, opt_state=first.opt_state, initial_epoch=1)  # fmt: skip
    np.testing.assert_array_equal(rest.params.w, whole.params.w)
    with pytest.warns(DeprecationWarning, match="`device` is deprecated"):
        jaxlr.fit(X, y, key=jax.random.key(3), device="cpu")


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_run_continues_exactly_from_any_epoch(seed_data, engine):
    X, y = seed_data
    X, y = X[:1001], y[:1001]
    adam = optax.adam(0.01)
    whole = jaxlr.fit(X, y, key=jax.random.key(3), epochs=3, optimizer=adam, engine=engine)
    first = jaxlr.fit(X, y, key=jax.random.key(3), epochs=1, optimizer=adam, engine=engine)
    rest = jaxlr.fit(X, y, key=jax.random.key(3), epochs=2, optimizer=adam, engine=engine, state=first.state)
    np.testing.assert_array_equal(rest.params.w, whole.params.w)
    np.testing.assert_array_equal(rest.params.b, whole.params.b)
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)
    # The moving average carries on too: it is part of the state.
    np.testing.assert_array_equal(np.concatenate([first.moving_losses, rest.moving_losses]), whole.moving_losses)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_callback_sees_each_epoch_and_can_stop(seed_data, engine):
    X, y = seed_data
    seen = []

    def stop_after_two(epoch, result):
        seen.append((epoch, result.losses.shape[0]))
        return epoch == 1

    stopped = jaxlr.fit(X[:400], y[:400], key=jax.random.key(0), epochs=5, batch_size=8, engine=engine, callback=stop_after_two)
    assert seen == [(0, 50), (1, 50)]
    assert stopped.losses.shape == (100,)
    plain = jaxlr.fit(X[:400], y[:400], key=jax.random.key(0), epochs=2, batch_size=8, engine=engine)
    np.testing.assert_allclose(stopped.params.w, plain.params.w, atol=1e-6)
    np.testing.assert_allclose(stopped.moving_losses, plain.moving_losses, rtol=1e-6)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_divergence_stops_training_and_keeps_the_last_finite_params(seed_data, engine):
    X, y = seed_data
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, key=jax.random.key(42), lr=10.0, engine=engine)
    error = caught.value
    assert error.epoch == 0 and error.batch > 0
    assert "lr` (=10.0)" in str(error) and "standardize" in str(error)
    # The params are those of the lesson's own loop stopped before the batch
    # that diverged: the same batches, one `make_step` update each.
    init_key, shuffle_key = jax.random.split(jax.random.key(42))
    state = jaxlr.init_state(jaxlr.init_params(init_key, 2, 1))
    step = jaxlr.make_step(10.0)
    batches = jaxlr.batches(X, y, 4, key=jax.random.fold_in(shuffle_key, 0))
    for _, (X_b, y_b) in zip(range(error.batch), batches):
        state, loss = step(state, X_b, y_b)
    np.testing.assert_allclose(error.params.w, state.params.w, rtol=1e-4)
    np.testing.assert_allclose(error.params.b, state.params.b, rtol=1e-4)
    np.testing.assert_allclose(error.last_finite_loss, float(loss), rtol=1e-4)


def test_both_engines_stop_at_the_same_step(seed_data):
    X, y = seed_data
    errors = []
    for engine in ("fused", "loop"):
        with pytest.raises(jaxlr.TrainingDiverged) as caught:
            jaxlr.fit(X, y, key=jax.random.key(42), lr=10.0, engine=engine)
        errors.append(caught.value)
    assert (errors[0].epoch, errors[0].batch) == (errors[1].epoch, errors[1].batch)
    np.testing.assert_allclose(errors[0].params.w, errors[1].params.w, rtol=1e-5)
    np.testing.assert_allclose(errors[0].last_finite_loss, errors[1].last_finite_loss, rtol=1e-5)


@pytest.mark.parametrize("per_epoch", [False, True])
def test_a_divergence_in_a_later_epoch_is_reported_where_it_happened(per_epoch):
    # lr just past the stable limit: the error grows slowly and the loss
    # overflows only in a later epoch, inside a program spanning several.
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=400)
    settings = dict(key=jax.random.key(1), lr=1.05, batch_size=400, epochs=400)
    callback = (lambda epoch, result: False) if per_epoch else None
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, callback=callback, **settings)
    error = caught.value
    assert error.epoch > 0 and error.batch == 0
    # The run up to the epoch before is finite and its last loss is the one reported.
    before = jaxlr.fit(X, y, **{**settings, "epochs": error.epoch})
    assert np.isfinite(np.asarray(before.params.w)).all()
    np.testing.assert_allclose(error.last_finite_loss, float(before.losses[-1]), rtol=1e-6)
    np.testing.assert_array_equal(error.params.w, before.params.w)


def test_a_sweep_equals_one_fit_per_learning_rate(seed_data):
    X, y = seed_data
    X, y = X[:1000], y[:1000]
    lrs = [1e-3, 1e-2, 30.0]
    result = jaxlr.sweep(X, y, key=jax.random.key(5), lrs=lrs, batch_size=8)
    assert result.params.w.shape == (3, 2, 1) and result.losses.shape == (3, 250)
    for i, lr in enumerate(lrs[:2]):
        alone = jaxlr.fit(X, y, key=jax.random.key(5), lr=lr, batch_size=8)
        np.testing.assert_allclose(result.params.w[i], alone.params.w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.moving_losses[i], alone.moving_losses, rtol=1e-4, atol=1e-7)
    # lr=30 blows up; it is flagged and does not stop the others.
    assert np.asarray(result.diverged).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="`lrs` must all be finite and > 0"):
        jaxlr.sweep(X, y, key=jax.random.key(5), lrs=[0.1, -1.0])


def test_a_sweep_of_a_multi_output_model_equals_its_fits():
    X, y = jaxlr.synthetic_data(jax.random.key(3), num_examples=603, true_w=np.ones((4, 3)), true_b=(1.0, 0.0, -1.0))
    lrs = [3e-3, 2e-2]
    result = jaxlr.sweep(X, y, key=jax.random.key(4), lrs=lrs, batch_size=16, epochs=3)
    assert result.params.w.shape == (2, 4, 3) and result.params.b.shape == (2, 3)
    for i, lr in enumerate(lrs):
        alone = jaxlr.fit(X, y, key=jax.random.key(4), lr=lr, batch_size=16, epochs=3)
        np.testing.assert_allclose(result.params.w[i], alone.params.w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.params.b[i], alone.params.b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.losses[i], alone.losses, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_blow_up_on_the_last_step_is_caught_and_the_params_are_the_last_good_ones(engine):
    # One step of an absurd rate: the loss it saw was finite, the params it
    # left are not usable (their predictions overflow a squared loss).
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=100)
    settings = dict(key=jax.random.key(1), batch_size=100, engine=engine)
    start = jaxlr.fit(X, y, epochs=0, **settings).params
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, lr=1e30, epochs=1, **settings)
    np.testing.assert_array_equal(caught.value.params.w, start.w)
    np.testing.assert_array_equal(caught.value.params.b, start.b)
    assert (caught.value.epoch, caught.value.batch) == (0, 0)


def test_a_sweep_flags_a_blow_up_on_its_last_step_and_keeps_the_last_good_params():
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=100)
    result = jaxlr.sweep(X, y, key=jax.random.key(1), lrs=[1e30, 0.01], epochs=1, batch_size=100)
    assert np.asarray(result.diverged).tolist() == [True, False]
    start = jaxlr.fit(X, y, key=jax.random.key(1), epochs=0, batch_size=100).params
    np.testing.assert_array_equal(result.params.w[0], start.w)
    alone = jaxlr.fit(X, y, key=jax.random.key(1), lr=0.01, epochs=1, batch_size=100).params
    np.testing.assert_allclose(result.params.w[1], alone.w, rtol=1e-6)


def test_an_averaged_sweep_answers_a_diverged_run_with_the_params_fit_reports():
    # Run 0 diverges in its third epoch, after averaging began: like
    # `TrainingDiverged.params`, its answer is the last good params, not their average.
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=64)
    settings = dict(key=jax.random.key(1), epochs=3, batch_size=8, average=True)
    result = jaxlr.sweep(X, y, lrs=[1.3, 0.01], **settings)
    assert np.asarray(result.diverged).tolist() == [True, False]
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, lr=1.3, **settings)
    assert caught.value.epoch > 0
    np.testing.assert_allclose(result.params.w[0], caught.value.params.w, rtol=1e-5)
    np.testing.assert_allclose(result.params.b[0], caught.value.params.b, rtol=1e-5)
    alone = jaxlr.fit(X, y, lr=0.01, **settings).params  # the others still answer with their average
    np.testing.assert_allclose(result.params.w[1], alone.w, rtol=1e-5)


def test_a_rate_beyond_the_datas_precision_is_refused_by_name():
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=100)
    with pytest.raises(ValueError, match=r"`lr` \(=1e\+39\) must be finite in float32"):
        jaxlr.fit(X, y, key=jax.random.key(1), lr=1e39)
    with pytest.raises(ValueError, match="`lrs` must be finite in float32"):
        jaxlr.sweep(X, y, key=jax.random.key(1), lrs=[0.1, 1e39])


def _linnerud():
    """scikit-learn's linnerud table (20 rows, unscaled features, 3 targets), in float32."""
    table = pytest.importorskip("sklearn.datasets").load_linnerud()
    return table.data.astype(np.float32), table.target.astype(np.float32)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_loss_that_grows_a_millionfold_but_stays_finite_is_divergence(engine):
    # The lesson's settings on unscaled features (scikit-learn's linnerud
    # table): the loss climbs by ~10^22 in ten steps and never overflows.
    X, y = _linnerud()
    with pytest.raises(jaxlr.TrainingDiverged, match="grew past") as caught:
        jaxlr.fit(X, y, key=jax.random.key(0), engine=engine)
    error = caught.value
    first = float(jaxlr.fit(X, y, key=jax.random.key(0), lr=1e-30, epochs=1, engine=engine).losses[0])
    assert first < error.last_finite_loss <= jaxlr.train.LOSS_GROWTH * first
    # The params are those just before the first step past the limit.
    steps_before = error.epoch * 5 + error.batch
    assert int(error.state.step) == steps_before and steps_before > 0
    assert np.all(np.abs(np.asarray(error.params.w)) < 1e10)


def test_the_growth_limit_is_the_one_the_message_names_and_prints():
    # Starting params whose loss over every row (57.7) beats the first
    # batch's (57.2) and predicting zero's (30.7): the reference is theirs.
    X, y = jaxlr.synthetic_data(jax.random.key(0), 1000)
    init = jaxlr.Params(w=jnp.full((2, 1), 3.0), b=jnp.zeros(1))
    start = float(jaxlr.square_loss(jaxlr.net(init, X), y))
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, key=jax.random.key(1), init=init, epochs=2, lr=0.9, batch_size=4)
    said = str(caught.value)
    assert f"grew past {jaxlr.train.LOSS_GROWTH * start:.3g}" in said
    assert "the largest of its first value and those of predicting zero and of the starting params" in said


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_without_loss_growth_only_what_stops_being_finite_is_divergence(engine):
    # scikit-learn's rule (its SGDRegressor's): the same climb runs on until
    # the params themselves leave float32's safe range.
    X, y = _linnerud()
    with pytest.raises(jaxlr.TrainingDiverged, match="grew past") as grew:
        jaxlr.fit(X, y, key=jax.random.key(0), engine=engine)
    # Its two epochs end with weights of about 1e12: large, but finite.
    result = jaxlr.fit(X, y, key=jax.random.key(0), engine=engine, loss_growth=False)
    assert np.all(np.isfinite(np.asarray(result.params.w)))
    with pytest.raises(jaxlr.TrainingDiverged, match="stopped being finite") as overflowed:
        jaxlr.fit(X, y, key=jax.random.key(0), epochs=4, engine=engine, loss_growth=False)
    assert int(overflowed.value.state.step) > int(grew.value.state.step)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_run_that_grows_past_the_limit_and_then_overflows_is_reported_as_growth(engine):
    # lr 0.8 on the lesson's data: the loss passes the limit a few steps before
    # it overflows, within one block; the error names the rule that stopped it.
    X, y = jaxlr.synthetic_data(jax.random.key(3), num_examples=10_000)
    with pytest.raises(jaxlr.TrainingDiverged, match="grew past") as caught:
        jaxlr.fit(X, y, key=jax.random.key(1), lr=0.8, engine=engine)
    error = caught.value
    assert np.isfinite(error.last_finite_loss) and error.last_finite_loss < 1e30


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_the_diverged_error_carries_the_optimizer_state_of_its_params(engine):
    # Adam with eps=0 divides 0 by 0 on an all-zero feature at the first step.
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=64)
    X = np.asarray(X).copy()
    X[:, 1] = 0.0
    optimizer = optax.adam(0.01, eps=0.0)
    settings = dict(key=jax.random.key(1), batch_size=8, engine=engine)
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, optimizer=optimizer, epochs=2, **settings)
    error = caught.value
    start = jaxlr.fit(X, y, optimizer=optimizer, epochs=0, **settings)
    assert (error.epoch, error.batch) == (0, 0)
    np.testing.assert_array_equal(error.params.w, start.params.w)
    assert jax.tree.structure(error.opt_state) == jax.tree.structure(start.opt_state)
    for got, want in zip(jax.tree.leaves(error.opt_state), jax.tree.leaves(start.opt_state)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine, shuffle", [("fused", "host"), ("fused", "device"), ("loop", True)])
def test_each_epoch_has_an_order_of_its_own(engine, shuffle):
    # A rate too small to move the params: a step's loss names its batch.
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=64)
    result = jaxlr.fit(X, y, key=jax.random.key(1), epochs=3, batch_size=8, lr=1e-30, engine=engine, shuffle=shuffle)
    epochs = np.asarray(result.losses).reshape(3, 8)
    np.testing.assert_allclose(epochs.mean(axis=1), epochs[0].mean(), rtol=1e-5)  # the same rows each epoch
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_a_run_past_what_the_step_count_holds_is_refused_or_capped():
    X = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    y = X.sum(axis=1)
    with pytest.raises(ValueError, match=r"`epochs` \(=100000000\) .* at most 21474836 epochs"):
        jaxlr.fit(X, y, key=jax.random.key(0), epochs=10**8, batch_size=1)
    # With a stopping rule the budget is only capped: the rule ends the run long before.
    result = jaxlr.fit(X, y, key=jax.random.key(0), epochs=10**8, batch_size=1, tol=1e-3)
    assert 0 < int(result.state.epoch) < 1000


def test_fold_sizes_never_seen_reuse_the_program_of_their_bucket():
    """Rows are padded to a bucketed count: a new fold size in a bucket seen
    before compiles nothing. The sizes measured are not the one warmed on."""
    from benchmarks.harness import CompileCounter

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = X.sum(axis=1)
    settings = dict(key=jax.random.key(0), epochs=2, batch_size=1, lr=0.01)
    jaxlr.fit(X[:353], y[:353], **settings)  # 353 rows: the bucket of 360
    with CompileCounter() as compiles:
        for n in (355, 358):
            jaxlr.fit(X[:n], y[:n], **settings)
    assert compiles.count == 0


def test_every_number_of_a_run_comes_back_from_its_packing_under_its_own_name():
    from jaxlr.engines import core

    template = core.Numbers(rate=jaxlr.schedules.Rate(eta0=0.0))
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
    # A distinct value per field: a field packed in another's place comes back wrong.
    distinct = jax.tree.unflatten(
        jax.tree.structure(template),
        [i + 2 if isinstance(leaf, int) else i + 0.5 for i, leaf in enumerate(jax.tree.leaves(template))],
    )
    back = core.unpack(core.pack(distinct, np.float32))
    for path, sent, got in zip(paths, jax.tree.leaves(distinct), jax.tree.leaves(back)):
        assert float(got) == sent, jax.tree_util.keystr(path)
    assert back.average_start.dtype == back.stop.patience.dtype == jnp.int32  # counts stay counts


@pytest.mark.parametrize("engine", ["loop", "fused", "scan"])
def test_a_schedule_of_two_arguments_is_given_the_runs_total_updates(engine):
    """A rate that stops halfway through the run: 4 epochs of it are 2 epochs at the full rate."""
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X @ np.array([1.0, -2.0], np.float32)
    settings = dict(key=jax.random.key(0), batch_size=8, engine=engine)
    halfway = jaxlr.fit(X, y, epochs=4, schedule=lambda count, total: 0.05 * (count < total // 2), **settings)
    whole = jaxlr.fit(X, y, epochs=2, lr=0.05, **settings)
    np.testing.assert_allclose(halfway.params.w, whole.params.w, rtol=1e-6)
    if engine != "fused":
        return  # the total is the driver's, the same for every engine
    # Going on from a state: the total counts the updates made before as well.
    again = jaxlr.fit(X, y, epochs=2, state=halfway.state, schedule=lambda count, total: 0.05 * (count < total - 8),
                      **settings)  # fmt: skip
    once_more = jaxlr.fit(X, y, epochs=1, lr=0.05, state=halfway.state, **settings)
    np.testing.assert_allclose(again.params.w, once_more.params.w, rtol=1e-6)


@pytest.mark.parametrize(
    "engine, settings, named",
    [
        ("loop", dict(shuffle="device"), r"`engine` \(='loop'\) cannot run `shuffle` \(='device'\)"),
        ("loop", dict(streamed=True), r"`engine` \(='loop'\) cannot run data streamed from disk"),
        ("fused", dict(streamed=True, sample_weight=True), r"`engine` \(='fused'\) cannot run `sample_weight`"),
        ("auto", dict(streamed=True, sample_weight=True), r"`engine` \(='auto'\) cannot run `sample_weight`"),
        ("scan", dict(loss="huber"), r"`engine` \(='scan'\) cannot run `loss` \(='huber'\)"),
        ("scan", dict(penalty="l1"), r"`engine` \(='scan'\) cannot run an L1 `penalty`"),
    ],
)
def test_an_engine_refuses_by_name_what_it_cannot_run(tmp_path, engine, settings, named):
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    if settings.pop("streamed", False):
        np.save(tmp_path / "X.npy", X)
        X = np.load(tmp_path / "X.npy", mmap_mode="r")
    if settings.pop("sample_weight", False):
        settings["sample_weight"] = np.ones(64)
    with pytest.raises(ValueError, match=named):
        jaxlr.fit(X, y, key=jax.random.key(0), engine=engine, **settings)


def test_every_engine_says_what_it_cannot_run():
    from jaxlr.engines import plan

    assert set(plan.REFUSES) | {"auto"} == set(jaxlr.names.ENGINES)


def test_a_parameter_with_a_default_of_the_users_own_is_left_alone():
    """Only a required parameter, or one called `total` / `epsilon`, is given the run's value."""
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X.sum(axis=1)
    settings = dict(key=jax.random.key(0), epochs=1, batch_size=8)

    def own_scale(count, scale=2.0):
        return 0.01 * scale + 0 * count

    def with_total(count, total=None):
        return 0.02 * (count < total // 2)

    plain = jaxlr.fit(X, y, lr=0.02, **settings)
    np.testing.assert_array_equal(jaxlr.fit(X, y, schedule=own_scale, **settings).params.w, plain.params.w)
    halfway = jaxlr.fit(X, y, schedule=with_total, **settings)
    assert not np.allclose(halfway.params.w, plain.params.w)

    def loss_with_scale(yhat, target, scale=1.0):
        return scale * (yhat - target) ** 2

    def loss_with_epsilon(yhat, target, epsilon=None):
        return (yhat - target) ** 2 * (epsilon > 0.5)

    squared = jaxlr.fit(X, y, loss="squared", **settings)
    np.testing.assert_array_equal(jaxlr.fit(X, y, loss=loss_with_scale, **settings).params.w, squared.params.w)
    # epsilon 0.1 reaches it: the loss is zero, so nothing moves from the start
    start = jaxlr.fit(X, y, **{**settings, "epochs": 0}).params.w
    np.testing.assert_array_equal(jaxlr.fit(X, y, loss=loss_with_epsilon, epsilon=0.1, **settings).params.w, start)

    def keyword_epsilon(yhat, target, *, epsilon=1.0):
        return (yhat - target) ** 2 * (epsilon > 0.5)

    np.testing.assert_array_equal(jaxlr.fit(X, y, loss=keyword_epsilon, epsilon=0.1, **settings).params.w, start)


@pytest.mark.parametrize("schedule", ["optimal", lambda count: 0.01 + 0 * count])
def test_a_sweep_refuses_a_schedule_that_ignores_lr(schedule):
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`schedule` \(=.*\) sets the rates without `lr`"):
        jaxlr.sweep(X, X.sum(axis=1), key=jax.random.key(0), lrs=[0.01, 0.1], schedule=schedule)


def test_a_sweep_takes_fits_names_for_the_start_and_the_devices():
    X, y = jaxlr.synthetic_data(jax.random.key(0), 200)
    init = jaxlr.Params(jnp.ones((2, 1)), jnp.zeros(1))
    named = jaxlr.sweep(X, y, key=jax.random.key(1), lrs=[0.01, 0.1], init=init, devices="cpu")
    np.testing.assert_array_equal(named.params.w[0], jaxlr.fit(X, y, key=jax.random.key(1), lr=0.01, init=init).params.w)
    with pytest.warns(DeprecationWarning, match="sweep's `params` is deprecated"), \
            pytest.warns(DeprecationWarning, match="sweep's `device` is deprecated"):  # fmt: skip
        old = jaxlr.sweep(X, y, key=jax.random.key(1), lrs=[0.01, 0.1], params=init, device="cpu")
    np.testing.assert_array_equal(old.params.w, named.params.w)
    with pytest.raises(ValueError, match="give `init` or the old `params`, not both"):
        jaxlr.sweep(X, y, key=jax.random.key(1), lrs=[0.01], params=init, init=init)


def test_a_sweep_refuses_rows_read_from_disk_by_name(tmp_path):
    np.save(tmp_path / "X.npy", np.ones((20, 2), np.float32))
    with pytest.raises(TypeError, match=r"`X` \(=.*\) is read from disk in chunks, and a sweep trains on rows in memory"):
        jaxlr.sweep(np.load(tmp_path / "X.npy", mmap_mode="r"), np.ones(20, np.float32), key=jax.random.key(0), lrs=[0.1])


def test_a_sweep_refuses_the_adaptive_schedule_it_has_no_rule_to_cut():
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`schedule` \(='adaptive'\) .* a sweep runs none"):
        jaxlr.sweep(X, X.sum(axis=1), key=jax.random.key(0), lrs=[0.01, 0.1], schedule="adaptive")


@pytest.mark.parametrize("engine", ["fused", "loop", "scan"])
def test_averaging_switched_on_midway_averages_the_updates_from_there(engine):
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = X @ np.float32([1, 2, 3]) + 0.1
    run = functools.partial(jaxlr.fit, X, y, key=jax.random.key(0), lr=0.05, batch_size=4, engine=engine)
    plain = run(epochs=2)
    assert int(plain.state.step) == 100
    continued = run(epochs=2, average=True, state=plain.state)
    # One run whose average starts at update 101: what was asked of the second half.
    whole = run(epochs=4, average=101)
    np.testing.assert_allclose(continued.params.w, whole.params.w, rtol=1e-6)
    np.testing.assert_allclose(continued.params.b, whole.params.b, rtol=1e-6)
    # Continued again, the state's average goes on from update 101, where it began.
    assert int(continued.state.average_start) == 101
    again = run(epochs=2, average=True, state=continued.state)
    np.testing.assert_allclose(again.params.w, run(epochs=6, average=101).params.w, rtol=1e-6)
    # A start the state never averaged from is refused; a start still ahead begins afresh there.
    with pytest.raises(ValueError, match=r"`average` \(=5\) asks for the mean of the params from update 5 on, "
                       r"but `state` has made 200 updates and averages from update 101"):  # fmt: skip
        run(epochs=2, average=5, state=continued.state)
    np.testing.assert_allclose(run(epochs=2, average=250, state=continued.state).params.w,
                               run(epochs=6, average=250).params.w, rtol=1e-6)  # fmt: skip
    # Averaging on throughout carries on as one run does.
    averaged = run(epochs=2, average=True)
    np.testing.assert_allclose(run(epochs=2, average=True, state=averaged.state).params.w,
                               run(epochs=4, average=True).params.w, rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("record_steps", [True, False])
def test_every_engine_keeps_the_moving_average_alike(record_steps):
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = X @ np.float32([1, 2, 3]) + 0.1
    moving = {engine: float(jaxlr.fit(X, y, key=jax.random.key(0), epochs=2, lr=0.05, engine=engine,
                                      record_steps=record_steps).state.moving)
              for engine in ("loop", "fused", "scan")}  # fmt: skip
    # Kept only where the steps are recorded: a state then carries the curve on.
    assert all(np.isnan(v) != record_steps for v in moving.values()), moving
    if record_steps:
        np.testing.assert_allclose(list(moving.values()), moving["fused"], rtol=1e-5)


SHIFT, RATE = 0.0, 0.05  # read by the functions below when they are traced


def shifted_loss(yhat, y):
    return (yhat - y - SHIFT) ** 2


def global_rate(count):
    return RATE * jnp.ones_like(count, jnp.float32)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_loss_or_schedule_reading_a_global_trains_with_its_value_now(engine, monkeypatch):
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = X @ np.float32([1, 2, 3]) + 0.1
    run = functools.partial(jaxlr.fit, X, y, key=jax.random.key(0), epochs=3, engine=engine)
    before = run(loss=shifted_loss, lr=0.05)
    monkeypatch.setitem(globals(), "SHIFT", 5.0)
    after = run(loss=shifted_loss, lr=0.05)
    np.testing.assert_allclose(after.params.b - before.params.b, [5.0], atol=1e-4)
    moving = run(schedule=global_rate)
    monkeypatch.setitem(globals(), "RATE", 0.0)
    still = run(schedule=global_rate)  # every step of rate 0: the initial params
    np.testing.assert_array_equal(still.params.w, jaxlr.init_params(jax.random.split(jax.random.key(0))[0], 3, 1).w)
    assert not np.array_equal(moving.params.w, still.params.w)


@pytest.mark.parametrize("path", ["fused", "loop", "scan", "streamed", "sweep"])
def test_without_an_intercept_fresh_params_start_and_stay_at_b_zero(path, tmp_path):
    X = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    y = X @ np.float32([2, -1])  # through the origin
    settings = dict(key=jax.random.key(0), epochs=20, batch_size=8, fit_intercept=False)
    if path == "sweep":
        params = jaxlr.sweep(X, y, lrs=[0.01], **settings).params
    elif path == "streamed":
        np.save(tmp_path / "t.npy", np.column_stack([X, y]))
        params = jaxlr.fit(jaxlr.NpyStream(tmp_path / "t.npy", target=2), lr=0.01, **settings).params
    else:
        params = jaxlr.fit(X, y, lr=0.01, engine=path, **settings).params
    np.testing.assert_array_equal(np.ravel(params.b), [0.0])
    np.testing.assert_allclose(np.ravel(params.w), [2, -1], atol=1e-3)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_run_its_stopping_rule_ended_continues_without_the_rule(engine):
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = X @ np.float32([1, 2, 3]) + 0.1
    run = functools.partial(jaxlr.fit, X, y, key=jax.random.key(0), lr=0.01, batch_size=8, engine=engine)
    stopped = run(epochs=50, tol=1e-2, n_iter_no_change=1)
    ran = int(stopped.state.epoch)
    assert ran < 50
    # With the rule again, the run is over; without it, the epochs asked for run as one run would.
    assert int(run(epochs=5, tol=1e-2, n_iter_no_change=1, state=stopped.state).state.epoch) == ran
    continued = run(epochs=5, state=stopped.state)
    assert int(continued.state.epoch) == ran + 5
    np.testing.assert_array_equal(continued.params.w, run(epochs=ran + 5).params.w)


def test_averaging_switched_off_and_on_again_starts_afresh():
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = X @ np.float32([1, 2, 3]) + 0.1
    run = functools.partial(jaxlr.fit, X, y, key=jax.random.key(0), lr=0.05, batch_size=4)
    on = run(epochs=2, average=True)
    off = run(epochs=2, state=on.state)
    again = run(epochs=2, average=True, state=off.state)
    # The last two epochs' mean (from update 201), not one mixed with the first run's.
    np.testing.assert_allclose(again.params.w, run(epochs=6, average=201).params.w, rtol=1e-6)


@pytest.mark.parametrize("name", ["piecewise", "onecycle", "branching"])
def test_a_schedule_written_for_one_count_gives_every_engine_the_same_rates(name):
    # optax's piecewise schedules take an array of counts for one count, and a
    # function may branch on its count: each is asked one count at a time.
    schedule = {
        "piecewise": optax.piecewise_interpolate_schedule("linear", 0.05, {5: 0.5}),
        "onecycle": optax.linear_onecycle_schedule(10, 0.05),
        "branching": lambda count: jax.lax.cond(count < 5, lambda: 0.05, lambda: 0.005),
    }[name]
    X = np.random.default_rng(0).normal(size=(12, 2)).astype(np.float32)
    y = X @ np.float32([1.5, -1.0]) + 0.3
    w = {engine: jaxlr.fit(X, y, key=jax.random.key(0), epochs=3, batch_size=4, shuffle=False, schedule=schedule,
                           engine=engine).params.w for engine in ("loop", "fused", "scan")}  # fmt: skip
    np.testing.assert_allclose(w["fused"], w["loop"], rtol=1e-6)
    np.testing.assert_allclose(w["scan"], w["loop"], rtol=1e-5)
