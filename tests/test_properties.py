"""Properties that hold for every shape, batch size and dtype (hypothesis, derandomized)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlr

FAST = settings(max_examples=40, deadline=None, derandomize=True)
SLOW = settings(max_examples=8, deadline=None, derandomize=True)  # each example compiles


@st.composite
def problems(draw, max_n=60):
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    batch_size = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32]))
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * 3).astype(dtype)
    y = (rng.normal(size=(n, k)) * 3).astype(dtype)
    return X, y, batch_size, seed


@FAST
@given(problems(max_n=200))
def test_the_generator_partitions_the_rows(problem):
    X, y, batch_size, seed = problem
    rows = np.arange(X.shape[0], dtype=np.float64)[:, None]
    seen = np.concatenate([yb[:, 0] for _, yb in jaxlr.batches(X, rows, batch_size, key=jax.random.key(seed))])
    assert sorted(seen.astype(int).tolist()) == list(range(X.shape[0]))


@FAST
@given(problems())
def test_a_step_keeps_shapes_and_the_loss_is_never_negative(problem):
    X, y, batch_size, seed = problem
    state = jaxlr.init_state(jaxlr.init_params(jax.random.key(seed), X.shape[1], y.shape[1]))
    step = jaxlr.make_step(0.01)
    # The problem's own dtype (int32 rows too): the step must keep the params' dtype whatever comes in.
    new_state, loss = step(state, X[:batch_size], y[:batch_size])
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)
    assert jax.tree.map(lambda a: a.dtype, new_state) == jax.tree.map(lambda a: a.dtype, state)
    assert float(loss) >= 0.0


@SLOW
@given(problems(max_n=40), st.integers(1, 2))
def test_the_fused_engine_equals_the_loop(problem, epochs):
    X, y, batch_size, seed = problem
    runs = [
        jaxlr.fit(X, y, key=jax.random.key(seed), epochs=epochs, batch_size=batch_size, lr=0.01, engine=engine)
        for engine in ("fused", "loop")
    ]
    np.testing.assert_allclose(runs[0].params.w, runs[1].params.w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runs[0].params.b, runs[1].params.b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runs[0].losses, runs[1].losses, rtol=1e-5, atol=1e-5)


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 3))
def test_solve_agrees_with_numpy_lstsq(seed, d, k):
    rng = np.random.default_rng(seed)
    n = 5 * d + 10
    X = rng.normal(size=(n, d))  # well conditioned with high probability
    y = X @ rng.normal(size=(d, k)) + rng.normal(size=k) + 0.1 * rng.normal(size=(n, k))
    params = jaxlr.solve(X, y)
    coef = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(params.w, coef[:-1], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(params.b, coef[-1], rtol=1e-3, atol=1e-3)


@st.composite
def risky_runs(draw):
    n = 24  # one shape: the examples share their compiled programs
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    X = (rng.normal(size=(n, 2)) * draw(st.sampled_from([1.0, 1e3]))).astype(np.float32)
    y = (X @ [1.0, -2.0] + rng.normal(size=n) * draw(st.sampled_from([1.0, 1e3]))).astype(np.float32)
    lr = 10.0 ** draw(st.floats(-4, 37))
    return X, y, lr


def _sound(params):
    bound = np.sqrt(np.finfo(np.float32).max)
    return all(np.all(np.abs(np.asarray(p)) <= bound) for p in params)


@SLOW
@given(risky_runs())
def test_no_fit_or_sweep_returns_unusable_params_without_saying_so(run):
    # Any rate from harmless to absurd, on scaled or unscaled rows: either the
    # run raises (sweep: flags the run), or its params are finite and usable.
    X, y, lr = run
    settings = dict(key=jax.random.key(0), epochs=2, batch_size=4)  # the loop engine's guard has tests of its own
    try:
        result = jaxlr.fit(X, y, lr=lr, **settings)
    except jaxlr.TrainingDiverged as error:
        assert _sound(error.params)
    else:
        assert _sound(result.params)
    swept = jaxlr.sweep(X, y, lrs=[lr, 1e-3], **settings)
    for i in range(2):
        assert _sound(jax.tree.map(lambda p: p[i], swept.params))
        if not swept.diverged[i]:
            assert np.all(np.abs(np.asarray(swept.losses[i])) < np.inf)
