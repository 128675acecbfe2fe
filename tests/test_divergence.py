"""The divergence rule, the same on every path: what it catches, what it must not, and what it leaves."""

import jax
import numpy as np
import pytest

import jaxlr

ENGINES = ["fused", "loop"]


def unstable_problem(n=200, d=5):
    # Per-sample steps of 0.25 on 5 standard-normal features: |x|^2 ~ 5 > 2 / 0.25, so SGD blows up.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X.sum(1) + rng.normal(size=n)).astype(np.float32)


def overflowing_problem():
    # Batches of 5 at lr 1.6: the loss passes the growth limit, then stops
    # being finite, within one block of epochs.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(301, 3)).astype(np.float32)
    return X, np.column_stack([X @ [1.0, 2.0, 3.0], X[:, 0]]).astype(np.float32)


@pytest.mark.parametrize("engine", [*ENGINES, "scan"])
@pytest.mark.parametrize("problem", ["unstable", "overflowing"])
def test_growth_is_caught_whether_or_not_steps_are_recorded(engine, problem):
    """Without the steps' losses, the rule still sees each epoch's largest
    loss, and names the same cause (the growth, not a loss that stopped
    being finite)."""
    X, y = unstable_problem() if problem == "unstable" else overflowing_problem()
    settings = dict(epochs=1, lr=0.25, batch_size=1) if problem == "unstable" else dict(epochs=5, lr=1.6, batch_size=5)
    where, said = [], []
    for record_steps in (True, False):
        with pytest.raises(jaxlr.TrainingDiverged) as caught:
            jaxlr.fit(X, y, key=jax.random.key(1), engine=engine, record_steps=record_steps, **settings)
        where.append((caught.value.epoch, caught.value.batch))
        said.append(str(caught.value))
        assert np.abs(np.asarray(caught.value.params.w)).max() < 1e6
    assert where[0] == where[1]
    assert said[0] == said[1] and "the loss grew past" in said[0], said


def test_continuing_from_the_error_state_trains():
    X, y = unstable_problem()
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, key=jax.random.key(1), epochs=1, lr=0.25, batch_size=1)
    result = jaxlr.fit(X, y, key=jax.random.key(1), epochs=2, lr=0.01, batch_size=1, state=caught.value.state)
    assert np.isfinite(np.asarray(result.params.w)).all()
    assert int(result.state.epoch) == 2


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("first_batch", ["zero rows", "zero weights"])
def test_an_untypical_first_batch_is_no_reference(engine, first_batch):
    """At lr 1e-12 nothing moves: a first batch whose loss is near 0 must not
    make the ordinary loss of the starting params look like divergence."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(400, 3)) * 1e4).astype(np.float32)
    y = rng.normal(size=400).astype(np.float32)
    weight = None
    if first_batch == "zero rows":
        X[:4] = 0
    else:
        weight = np.ones(400, np.float32)
        weight[:4] = 0
    for record_steps in (True, False):
        result = jaxlr.fit(X, y, key=jax.random.key(1), epochs=2, lr=1e-12, batch_size=4, shuffle=False,
                           engine=engine, record_steps=record_steps, sample_weight=weight)  # fmt: skip
        assert np.isfinite(np.asarray(result.params.w)).all()


def test_a_loss_of_one_number_is_refused_before_training():
    X, y = unstable_problem()
    with pytest.raises(ValueError, match=r"`loss` .* one loss per entry"):
        jaxlr.fit(X, y, key=jax.random.key(0), loss=lambda yhat, target: ((yhat - target) ** 2).mean())


def test_a_schedule_of_one_number_gives_every_step_that_rate():
    optax = pytest.importorskip("optax")
    X, y = unstable_problem()
    settings = dict(key=jax.random.key(0), epochs=2, batch_size=8, shuffle=False)
    given = jaxlr.fit(X, y, schedule=optax.constant_schedule(0.01), **settings)
    named = jaxlr.fit(X, y, lr=0.01, **settings)
    np.testing.assert_array_equal(np.asarray(given.params.w), np.asarray(named.params.w))


def test_growth_past_a_million_times_the_reference_is_divergence():
    """The bound is a number the docs promise, written here, not read back from the code."""
    X, y = unstable_problem(n=400, d=3)
    # Just past the edge of stability: the loss grows by a small factor a step, so
    # where it stops tells a bound of 1e6 from one of 1e9.
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, y, key=jax.random.key(1), epochs=20, lr=0.45, batch_size=1)
    reference = max(float(np.mean(y**2)), 1.0)
    assert "1e+06 times" in str(caught.value)
    assert caught.value.last_finite_loss <= 1e6 * reference * 10


def test_two_user_losses_are_two_programs():
    """Compiled programs are keyed by the function, not by its name ('<lambda>')."""
    X, y = unstable_problem()
    settings = dict(key=jax.random.key(0), epochs=1, lr=0.01, batch_size=8)
    square = jaxlr.fit(X, y, loss=lambda yhat, target: (yhat - target) ** 2, **settings)
    absolute = jaxlr.fit(X, y, loss=lambda yhat, target: abs(yhat - target), **settings)
    named = jaxlr.fit(X, y, loss="squared", **settings)
    np.testing.assert_array_equal(np.asarray(square.params.w), np.asarray(named.params.w))
    assert np.abs(np.asarray(absolute.params.w) - np.asarray(square.params.w)).max() > 1e-4


@pytest.mark.parametrize(
    "settings, advice",
    [
        (dict(lr=10.0), "Lower `lr` (=10.0)"),
        (dict(schedule="optimal", alpha=1e-4), "Raise `alpha` (=0.0001)"),
        (dict(schedule=lambda count: 10.0 + 0 * count), "Lower the rates of the `schedule`"),
    ],
)
def test_the_advice_names_what_sets_the_step_size(settings, advice):
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) * 3
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X, X.sum(axis=1) * 100, key=jax.random.key(0), epochs=3, **settings)
    assert advice in str(caught.value) and ("`lr`" in str(caught.value)) == ("lr" in settings)
