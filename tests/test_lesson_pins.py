"""The lesson's names and numbers stay: the seed job gives the same results release after release.

The pinned values were computed by this release's `fit`, both engines giving
them to the last printed digit. They changed once, on purpose, when every
engine took up one keyed shuffle (`jaxlr.shuffle`): the orders are new, the
step and its moving average are the lesson's. A change that alters them
changes what the notebook and the README print: it must be deliberate.
"""

import jax
import numpy as np
import pytest

import jaxlr


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_the_seed_job_gives_its_pinned_numbers(seed_data, engine):
    X, y = seed_data
    result = jaxlr.fit(X, y, key=jax.random.key(42), engine=engine)
    np.testing.assert_allclose(np.asarray(result.params.w).ravel(), [1.9999467, -3.4000015], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(result.params.b), [4.1998343], rtol=1e-6)
    np.testing.assert_allclose(result.moving_losses[-1], 9.615568e-05, rtol=1e-4)
    assert result.losses.shape == (5000,)
    # The first step, the first of the second epoch, and the last.
    np.testing.assert_allclose(result.losses[[0, 2500, 4999]], [5.3745213, 2.4045428e-04, 7.9156787e-05], rtol=1e-5)


def test_the_lessons_step_is_the_fused_programs_first_step(seed_data):
    X, y = seed_data
    key = jax.random.key(42)
    result = jaxlr.fit(X, y, key=key, epochs=1, shuffle=False)
    init_key = jax.random.split(key)[0]
    state = jaxlr.init_state(jaxlr.init_params(init_key, 2))
    step = jaxlr.make_step(0.001)
    losses = []
    for X_b, y_b in jaxlr.batches(X, y, 4, key=None, shuffle=False):
        state, value = step(state, X_b, y_b)
        losses.append(float(value))
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5)
    np.testing.assert_allclose(result.params.w, state.params.w, rtol=1e-5)
    np.testing.assert_allclose(result.params.b, state.params.b, rtol=1e-5)
