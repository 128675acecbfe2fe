import os
import jax
import numpy as np
import optax
import pytest

import jaxlr
from conftest import TRANSFORMS


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_sgd_matches_optax_sgd_over_several_steps(seed_data, transform):
    X, y = seed_data
    params = ours = jaxlr.init_params(jax.random.key(1), 2)
    reference = optax.sgd(0.05)
    opt_state = reference.init(params)

    def grads_at(p, i):
        return jax.grad(lambda q: jaxlr.square_loss(jaxlr.net(q, X[i : i + 8]), y[i : i + 8]))(p)

    sgd = transform(jaxlr.sgd)
    for i in range(0, 80, 8):
        ours = sgd(ours, grads_at(ours, i), 0.05)
        updates, opt_state = reference.update(grads_at(params, i), opt_state)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(ours.w, params.w, rtol=1e-6)
    np.testing.assert_allclose(ours.b, params.b, rtol=1e-6)


def test_the_step_never_retraces_across_batches(seed_data):
    X, y = seed_data
    traces = []

    def counting_loss(yhat, target):
        traces.append(1)  # runs only while tracing
        return jaxlr.square_loss(yhat, target)

    step = jaxlr.make_step(0.001, loss=counting_loss)
    state = jaxlr.init_state(jaxlr.init_params(jax.random.key(0), 2))
    for X_batch, y_batch in jaxlr.batches(X[:400], y[:400], 4, key=jax.random.key(1)):
        state, _ = step(state, X_batch, y_batch)
    assert len(traces) == 1


def test_a_step_lowers_the_loss_on_its_batch(seed_data):
    X, y = seed_data
    step = jaxlr.make_step(0.01)
    state = jaxlr.init_state(jaxlr.init_params(jax.random.key(0), 2))
    new_state, before = step(state, X[:64], y[:64])
    after = jaxlr.square_loss(jaxlr.net(new_state.params, X[:64]), y[:64])
    assert float(after) < float(before)


def test_an_optax_optimizer_replaces_sgd_and_carries_its_state(seed_data):
    X, y = seed_data
    adam = optax.adam(0.05)
    params = jaxlr.init_params(jax.random.key(0), 2)
    state = jaxlr.init_state(params, adam)
    step = jaxlr.make_step(optimizer=adam)
    opt_state = adam.init(params)
    for i in range(0, 40, 8):
        state, _ = step(state, X[i : i + 8], y[i : i + 8])
        grads = jax.grad(lambda p: jaxlr.square_loss(jaxlr.net(p, X[i : i + 8]), y[i : i + 8]))(params)
        updates, opt_state = adam.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(state.params.w, params.w, rtol=1e-5)
    assert int(state.opt_state[0].count) == 5


def test_make_step_refuses_a_bad_learning_rate_and_optimizer():
    with pytest.raises(ValueError, match=r"`lr` \(=-0.1\)"):
        jaxlr.make_step(-0.1)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        jaxlr.make_step(optimizer="adam")


def test_fresh_optax_objects_equal_in_value_share_one_compiled_program():
    # A new optax.adam(0.01) per fit must neither compile again nor keep
    # growing memory (each compiled program holds megabytes).
    from jaxlr.engines import core

    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=64)

    def one_fit():
        jaxlr.fit(X, y, key=jax.random.key(1), epochs=1, batch_size=8, optimizer=optax.adam(0.01))

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("reads the resident set size from /proc")

    def rss_mb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    for _ in range(20):
        one_fit()
    misses, rss = core.program.cache_info().misses, rss_mb()
    for _ in range(200):
        one_fit()
        assert core.program.cache_info().misses == misses
    assert rss_mb() - rss < 30
    # Other hyperparameters are another program.
    jaxlr.fit(X, y, key=jax.random.key(1), epochs=1, batch_size=8, optimizer=optax.adam(0.02))
    assert core.program.cache_info().misses == misses + 1


def test_the_l1_debt_keeps_growing_over_millions_of_tiny_steps():
    """4 million steps owing 1e-8 each: 0.04 in all, which float32 summed plainly stalls short of."""
    from jaxlr import penalties

    w = jax.numpy.zeros((1, 1), np.float32)

    def step(state, _):
        return penalties.l1_step(w, state, np.float32(1e-8))[1], None

    state, _ = jax.lax.scan(step, penalties.l1_init(w), None, length=4_000_000)
    assert float(state.owed) == pytest.approx(0.04, rel=1e-4)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_without_an_intercept_an_optax_rule_that_decays_weights_leaves_b_alone(engine):
    X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = X @ np.float32([2, -1]) + 1
    start = jaxlr.Params(np.zeros((2, 1), np.float32), np.full(1, 0.5, np.float32))
    result = jaxlr.fit(X, y, key=jax.random.key(0), epochs=3, optimizer=optax.adamw(0.01, weight_decay=0.5),
                       fit_intercept=False, init=start, engine=engine)  # fmt: skip
    np.testing.assert_array_equal(result.params.b, [0.5])
    assert np.abs(result.params.w).max() > 0.01  # the weights did train
