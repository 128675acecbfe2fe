"""`jaxlr.fit` against plain NumPy loops of the same algorithm: schedules,
penalties, averaging, losses, sample weights, the stopping rule, engines, resuming.

Every oracle below is written out here, in float64, one step at a time: a
batch's gradient of ``sum_i w_i l_i / (rows * outputs)`` plus the L2 term, the
schedule's rate for update t (counting from 1), the clipped cumulative L1
step after the update, the plain running mean of the iterates. With
``shuffle=False`` jaxlr takes the rows in their stored order every epoch, so
both walk the same path and must agree to float32 rounding.
"""

import math

import jax
import numpy as np
import pytest

import jaxlr

RTOL, ATOL = 1e-5, 1e-6  # float32 against float64

# ------------------------------------------------------------------ the oracle


def loss_and_slope(name, r, epsilon):
    """Per-entry loss and its derivative in the prediction, r = yhat - y (the lesson's scale)."""
    a = np.abs(r)
    if name == "squared":
        return r**2, 2 * r
    if name == "huber":
        inside = a <= epsilon
        return np.where(inside, r**2, 2 * epsilon * a - epsilon**2), np.where(inside, 2 * r, 2 * epsilon * np.sign(r))
    if name == "epsilon_insensitive":
        return np.maximum(0.0, a - epsilon), np.where(a > epsilon, np.sign(r), 0.0)
    if name == "squared_epsilon_insensitive":
        excess = np.maximum(0.0, a - epsilon)
        return excess**2, 2 * excess * np.sign(r)
    raise ValueError(name)


def rate_at(schedule, t, *, lr, alpha, power_t, drops):
    if schedule == "constant":
        return lr
    if schedule == "optimal":
        t0 = 1.0 / (math.sqrt(1.0 / math.sqrt(alpha)) * alpha)
        return 1.0 / (alpha * (t0 + t - 1))
    if schedule == "invscaling":
        return lr / t**power_t
    if schedule == "adaptive":
        return lr / 5**drops
    raise ValueError(schedule)


def oracle(X, y, w0, b0, *, epochs, lr=0.01, batch_size=1, loss="squared", epsilon=0.1, penalty=None,
           alpha=0.0001, l1_ratio=0.15, schedule="constant", power_t=0.25, average=None, sample_weight=None,
           fit_intercept=True, tol=None, patience=5):  # fmt: skip
    """Mini-batch SGD in plain loops, float64; rows 0..n-1 in order every epoch.

    Returns a dict: w, b (the iterate), iterates (after every update),
    epochs (run), drops (adaptive cuts), slopes_seen (every slope computed,
    to check a test reaches each branch of its loss).
    """
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64).reshape(len(X), -1)
    n, k = X.shape[0], y.shape[1]
    weight = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    l1_part = {None: 0.0, "l2": 0.0, "l1": 1.0, "elasticnet": l1_ratio}[penalty]
    l2 = 0.0 if penalty is None else (1 - l1_part) * alpha
    l1 = 0.0 if penalty is None else l1_part * alpha
    w = np.array(w0, np.float64).reshape(X.shape[1], k)
    b = np.array(b0, np.float64).reshape(k)
    owed, applied = 0.0, np.zeros_like(w)
    t, drops, best, stalled = 0, 0, -np.inf, 0
    iterates, residuals = [], []
    epoch = 0
    while epoch < epochs:
        objectives = []
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            Xb, yb, wb = X[rows], y[rows], weight[rows]
            m = Xb.shape[0]
            t += 1
            eta = rate_at(schedule, t, lr=lr, alpha=alpha, power_t=power_t, drops=drops)
            r = Xb @ w + b - yb
            residuals.append(r.ravel())
            entries, slope = loss_and_slope(loss, r, epsilon)
            objectives.append(entries.sum() / (m * k) + 0.5 * l2 * np.sum(w * w) + l1 * np.sum(np.abs(w)))
            weighted = wb[:, None] * slope / (m * k)
            grad_w = Xb.T @ weighted
            grad_b = weighted.sum(axis=0)
            # scikit-learn's L2 step: a shrink of w that stops at zero, then the loss's step.
            w = max(0.0, 1.0 - eta * l2) * w - eta * grad_w
            if fit_intercept:
                b = b - eta * grad_b
            if l1:
                owed += eta * l1
                before = w.copy()
                for j in np.ndindex(w.shape):
                    if w[j] > 0:
                        w[j] = max(0.0, w[j] - (owed + applied[j]))
                    elif w[j] < 0:
                        w[j] = min(0.0, w[j] + (owed - applied[j]))
                applied += w - before
            iterates.append((w.copy(), b.copy()))
        epoch += 1
        if tol is not None:
            score = -np.mean(objectives)
            stalled = stalled + 1 if score < best + tol else 0
            best = max(best, score)
            if stalled >= patience:
                now = rate_at(schedule, t + 1, lr=lr, alpha=alpha, power_t=power_t, drops=drops)
                if schedule == "adaptive" and now > 1e-6:
                    drops, stalled = drops + 1, 0
                else:
                    break
    return {"w": w, "b": b, "iterates": iterates, "epochs": epoch, "drops": drops,
            "residuals": np.concatenate(residuals)}  # fmt: skip


def naive_average(iterates, start):
    """The mean of the iterates after updates start, start + 1, ... (t counts from 1)."""
    kept = iterates[start - 1 :]
    return np.mean([w for w, _ in kept], axis=0), np.mean([b for _, b in kept], axis=0)


# ------------------------------------------------------------------ data and runs
#
# Compiling a training program costs about a second on a CPU, the run itself
# milliseconds: the tests share a few shapes (40 rows, 3 features, batches of
# 1 or 6) and return no per-step losses, so that each kind of run compiles once.


def problem(seed=0, n=40, true_w=(1.5, -2.0, 0.5), noise=0.1, scale=0.5):
    rng = np.random.default_rng(seed)
    true_w = np.asarray(true_w, np.float64)
    X = rng.normal(size=(n, true_w.size)) * scale
    y = X @ true_w + 0.3 + noise * rng.normal(size=n)
    return X.astype(np.float32), y.astype(np.float32)


def start_for(d, k=1):
    w0 = np.linspace(0.2, -0.2, d * k).reshape(d, k).astype(np.float32)
    return jaxlr.Params(w=w0, b=np.full(k, 0.05, np.float32))


def run(X, y, **settings):
    """jaxlr.fit from `start_for`, one row per step (the oracle's default), rows in their stored order."""
    settings = {"init": start_for(X.shape[1]), "batch_size": 1, "record_steps": False, **settings}
    return jaxlr.fit(X, y, key=jax.random.key(0), shuffle=False, **settings)


def oracle_for(X, y, **settings):
    init = settings.pop("init", None) or start_for(X.shape[1])
    return oracle(X, y, np.asarray(init.w), np.asarray(init.b), **settings)


def assert_same_params(params, w, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(params.w), w, rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(params.b), b, rtol=rtol, atol=atol)


def far_apart(a, b, by=1e-3):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) > by


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize("schedule, batch_size, settings", [
    ("constant", 1, dict(lr=0.05)),
    ("constant", 6, dict(lr=0.05)),  # the last batch of each epoch has 4 rows
    ("optimal", 1, dict(alpha=0.1, penalty="l2")),
    ("invscaling", 6, dict(lr=0.2, power_t=0.4)),
])  # fmt: skip
def test_each_schedule_follows_its_formula(schedule, batch_size, settings):
    X, y = problem()
    result = run(X, y, epochs=3, batch_size=batch_size, schedule=schedule, **settings)
    expected = oracle_for(X, y, epochs=3, batch_size=batch_size, schedule=schedule, **settings)
    assert_same_params(result.params, expected["w"], expected["b"])
    assert int(result.state.step) == 3 * -(-40 // batch_size)
    if schedule != "constant":  # the rates differ enough to tell the schedules apart
        constant = oracle_for(X, y, epochs=3, batch_size=batch_size, lr=rate_at(
            schedule, 1, lr=settings.get("lr"), alpha=settings.get("alpha"), power_t=0.4, drops=0))  # fmt: skip
        assert far_apart(constant["w"], expected["w"])


def test_the_schedules_rates_are_scikit_learns_formulas():
    rate = jaxlr.schedules.Rate(eta0=0.2, power_t=0.3, t0=jaxlr.schedules.optimal_t0(0.01), alpha=0.01)
    for t in (1, 2, 10, 1000):
        for name in ("constant", "optimal", "invscaling"):
            got = float(jaxlr.schedules.rate(name, rate, np.int32(t), np.int32(0)))
            want = rate_at(name, t, lr=0.2, alpha=0.01, power_t=0.3, drops=0)
            np.testing.assert_allclose(got, want, rtol=1e-6)
        got = float(jaxlr.schedules.rate("adaptive", rate, np.int32(t), np.int32(3)))
        np.testing.assert_allclose(got, 0.2 / 125, rtol=1e-6)
    # scikit-learn's t0 for alpha = 1e-4: 1 / (alpha * sqrt(1 / sqrt(alpha))) = 1000.
    np.testing.assert_allclose(jaxlr.schedules.optimal_t0(1e-4), 1e3, rtol=1e-12)


def test_adaptive_divides_the_rate_by_five_when_the_rule_stalls():
    X, y = problem()
    result = run(X, y, epochs=60, lr=0.1, schedule="adaptive", tol=1e-3, n_iter_no_change=3)
    expected = oracle_for(X, y, epochs=60, lr=0.1, schedule="adaptive", tol=1e-3, patience=3)
    assert expected["drops"] >= 2  # the cut happens, more than once
    assert int(result.state.stop.drops) == expected["drops"]
    assert int(result.state.epoch) == expected["epochs"]
    assert_same_params(result.params, expected["w"], expected["b"])
    # Without the cuts, the same epochs at the first rate end elsewhere.
    constant = oracle_for(X, y, epochs=expected["epochs"], lr=0.1)
    assert far_apart(constant["w"], expected["w"], by=1e-4)


# ------------------------------------------------------------------ penalties


@pytest.mark.parametrize("penalty, batch_size, alpha, l1_ratio", [
    ("l2", 6, 0.3, 0.15),
    ("elasticnet", 1, 0.2, 0.4),
    ("l2", 1, 60.0, 0.15),  # lr * alpha = 3: the shrink stops at zero, as scikit-learn's
])  # fmt: skip
def test_l2_and_elastic_net_match_the_oracle(penalty, batch_size, alpha, l1_ratio):
    X, y = problem()
    settings = dict(epochs=4, lr=0.05, batch_size=batch_size, penalty=penalty, alpha=alpha, l1_ratio=l1_ratio)
    result = run(X, y, **settings)
    expected = oracle_for(X, y, **settings)
    assert_same_params(result.params, expected["w"], expected["b"])
    assert far_apart(oracle_for(X, y, **{**settings, "penalty": None})["w"], expected["w"])


def test_l1_sets_the_weights_of_irrelevant_features_to_exactly_zero():
    # y depends on features 0 and 1 only; features 2..4 are noise.
    X, y = problem(true_w=(2.0, -1.5, 0.0, 0.0, 0.0), noise=0.05, scale=1.0)
    settings = dict(epochs=10, lr=0.02, penalty="l1", alpha=0.1)
    result = run(X, y, **settings)
    expected = oracle_for(X, y, **settings)
    assert_same_params(result.params, expected["w"], expected["b"])
    w = np.asarray(result.params.w)[:, 0]
    assert np.all(w[2:] == 0.0), w
    assert np.all(expected["w"][2:, 0] == 0.0)
    assert abs(w[0]) > 1.0 and abs(w[1]) > 1.0
    # The L1 bookkeeping: u is the total owed, lr * alpha per update.
    np.testing.assert_allclose(float(result.state.l1.owed), 10 * 40 * 0.02 * 0.1, rtol=1e-5)


# ------------------------------------------------------------------ averaging


@pytest.mark.parametrize("average", [True, 25])
@pytest.mark.parametrize("penalty", [None, "elasticnet"])
def test_averaged_sgd_is_the_mean_of_the_iterates(average, penalty):
    X, y = problem()
    settings = dict(epochs=2, lr=0.1, schedule="invscaling", penalty=penalty, alpha=0.05)
    result = run(X, y, average=average, **settings)
    expected = oracle_for(X, y, **settings)
    w, b = naive_average(expected["iterates"], 1 if average is True else average)
    assert_same_params(result.params, w, b)
    assert far_apart(w, expected["w"])  # the average is not the last iterate
    # The state keeps the iterate itself, to continue from.
    assert_same_params(result.state.params, expected["w"], expected["b"])


def test_before_averaging_starts_the_result_is_the_iterate():
    X, y = problem()
    result = run(X, y, epochs=1, lr=0.1, schedule="invscaling", average=100)  # 40 updates < 100
    expected = oracle_for(X, y, epochs=1, lr=0.1, schedule="invscaling")
    assert_same_params(result.params, expected["w"], expected["b"])


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("loss, batch_size, epsilon", [
    ("huber", 1, 0.3),
    ("epsilon_insensitive", 6, 0.2),
    ("squared_epsilon_insensitive", 1, 0.2),
])  # fmt: skip
def test_each_loss_matches_the_oracle(loss, batch_size, epsilon):
    X, y = problem()
    settings = dict(epochs=3, lr=0.05, batch_size=batch_size, loss=loss, epsilon=epsilon)
    result = run(X, y, **settings)
    expected = oracle_for(X, y, **settings)
    assert_same_params(result.params, expected["w"], expected["b"])
    # The run met residuals on both sides of epsilon: both branches of the loss count.
    r = np.abs(expected["residuals"])
    assert np.sum(r < 0.9 * epsilon) > 5 and np.sum(r > 1.1 * epsilon) > 5


def test_a_residual_exactly_at_the_margin_moves_nothing_as_in_scikit_learn():
    # 0.5 and 0.25 are exact in float32: the residuals sit on the margin itself.
    X = np.zeros((2, 1), np.float32)
    y = np.array([0.5, -0.5], np.float32)
    for loss in ("epsilon_insensitive", "squared_epsilon_insensitive"):
        result = jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, lr=0.1, batch_size=1, loss=loss, epsilon=0.5,
                           init=jaxlr.Params(np.zeros((1, 1), np.float32), np.zeros(1, np.float32)))  # fmt: skip
        assert float(result.params.b[0]) == 0.0, loss
    slope = jax.grad(lambda b: jaxlr.losses.epsilon_insensitive(b, 0.25, 0.25))(0.0)
    assert float(slope) == 0.0


def test_the_losses_have_the_lessons_scale():
    r = np.array([-2.0, -0.05, 0.0, 0.05, 0.5, 3.0], np.float32)
    y = np.zeros_like(r)
    for name in ("squared", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"):
        got = np.asarray(jaxlr.losses.LOSSES[name](r, y, 0.1))
        np.testing.assert_allclose(got, loss_and_slope(name, r.astype(np.float64), 0.1)[0], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ sample weights


@pytest.mark.parametrize("schedule, penalty, batch_size", [
    ("invscaling", "l2", 1),
    ("constant", None, 6),  # a zero-weight row still counts in its batch's row count
])  # fmt: skip
def test_sample_weights_scale_each_rows_step(schedule, penalty, batch_size):
    X, y = problem()
    weight = np.tile([1.0, 0.0, 2.5, 0.5], 10).astype(np.float32)
    settings = dict(epochs=3, lr=0.05, batch_size=batch_size, schedule=schedule, penalty=penalty, alpha=0.1)
    result = run(X, y, sample_weight=weight, **settings)
    expected = oracle_for(X, y, sample_weight=weight, **settings)
    assert_same_params(result.params, expected["w"], expected["b"])
    assert far_apart(oracle_for(X, y, **settings)["w"], expected["w"])


def test_a_zero_weight_row_is_a_step_that_moves_nothing():
    # Constant rate, no penalty, one row per step: a zero-weight row's update
    # is zero, so the run equals one on the other rows alone. (With a
    # schedule or a penalty it would not: the row still advances t and decays w.)
    X, y = problem()
    weight = np.tile([1.0, 0.0, 1.0, 1.0, 0.0], 8).astype(np.float32)
    result = run(X, y, sample_weight=weight, epochs=3, lr=0.05)
    kept = weight > 0
    dropped = oracle_for(X[kept], y[kept], epochs=3, lr=0.05)
    assert_same_params(result.params, dropped["w"], dropped["b"])
    assert int(result.state.step) == 3 * 40  # every row was a step


def test_integer_weights_equal_duplicated_rows_at_convergence():
    X, y = problem(n=30, noise=0.5)
    counts = np.tile([1, 2, 3], 10)
    # Full-batch gradient descent: the weighted least-squares solution.
    result = run(X, y, sample_weight=counts.astype(np.float32), batch_size=30, epochs=800, lr=0.2)
    X_dup = np.repeat(X, counts, axis=0).astype(np.float64)
    y_dup = np.repeat(y, counts).astype(np.float64)
    solution = np.linalg.lstsq(np.hstack([X_dup, np.ones((len(X_dup), 1))]), y_dup, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(result.params.w)[:, 0], solution[:-1], atol=1e-4)
    np.testing.assert_allclose(float(result.params.b[0]), solution[-1], atol=1e-4)
    # Weighted least squares is not plain least squares on these rows.
    plain = np.linalg.lstsq(np.hstack([X, np.ones((30, 1))]).astype(np.float64), y.astype(np.float64), rcond=None)[0]
    assert far_apart(plain, solution, by=1e-2)


# ------------------------------------------------------------------ engines


# Elastic net holds both the L2 term and the L1 step: with no penalty, every
# part of the step is covered without running all sixteen pairs.
@pytest.mark.parametrize("penalty", [None, "elasticnet"])
@pytest.mark.parametrize("loss", ["squared", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"])
def test_fused_and_loop_engines_agree(loss, penalty):
    X, y = problem()
    settings = dict(epochs=3, lr=0.05, batch_size=6, loss=loss, epsilon=0.2, penalty=penalty, alpha=0.05,
                    schedule="invscaling", init=start_for(3))  # fmt: skip
    fused = jaxlr.fit(X, y, key=jax.random.key(5), engine="fused", record_steps=False, **settings)
    loop = jaxlr.fit(X, y, key=jax.random.key(5), engine="loop", **settings)
    np.testing.assert_allclose(fused.params.w, loop.params.w, atol=1e-5)
    np.testing.assert_allclose(fused.params.b, loop.params.b, atol=1e-5)
    # Both shuffled: the rows in their stored order give another run.
    in_order = oracle_for(X, y, **{name: value for name, value in settings.items() if name != "init"})
    assert far_apart(np.asarray(fused.params.w), in_order["w"], by=1e-4)


# ------------------------------------------------------------------ stopping and resuming


def test_tol_stops_early_where_the_oracle_stops():
    X, y = problem()
    result = run(X, y, epochs=500, lr=0.05, tol=1e-3, n_iter_no_change=4, record_steps=True)
    expected = oracle_for(X, y, epochs=500, lr=0.05, tol=1e-3, patience=4)
    assert expected["epochs"] < 500
    assert bool(result.state.stop.done)
    assert int(result.state.epoch) == expected["epochs"]
    assert result.epoch_losses.shape == (expected["epochs"],)
    assert result.losses.shape == (expected["epochs"] * 40,)
    assert_same_params(result.params, expected["w"], expected["b"])
    # Without tol the whole budget runs.
    assert int(run(X, y, epochs=50, lr=0.05).state.epoch) == 50


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_a_resumed_penalised_averaged_run_equals_the_uninterrupted_one(engine):
    X, y = problem(seed=2)
    settings = dict(key=jax.random.key(11), lr=0.1, batch_size=4, penalty="elasticnet", alpha=0.05, l1_ratio=0.5,
                    average=15, schedule="invscaling", power_t=0.3, engine=engine)  # fmt: skip
    whole = jaxlr.fit(X, y, epochs=2, **settings)
    first = jaxlr.fit(X, y, epochs=1, **settings)  # 10 updates: averaging starts at update 15, in the next part
    rest = jaxlr.fit(X, y, epochs=1, state=first.state, **settings)
    assert int(rest.state.step) == int(whole.state.step) == 20
    for got, want in [(rest.params, whole.params), (rest.state.params, whole.state.params),
                      (rest.state.average, whole.state.average), (rest.state.l1, whole.state.l1)]:  # fmt: skip
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.concatenate([first.losses, rest.losses]), whole.losses, rtol=1e-6)
    # The second part did not start afresh: from the same params with a fresh state it is another run.
    fresh = jaxlr.fit(X, y, epochs=1, init=first.state.params, **settings)
    assert far_apart(fresh.params.w, whole.params.w, by=1e-5)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_record_steps_false_keeps_only_each_epochs_mean(engine):
    # fit's docstring: "record_steps: False returns no per-step losses (only each epoch's mean)".
    X, y = problem()
    settings = dict(key=jax.random.key(3), epochs=3, batch_size=6, lr=0.05, init=start_for(3), engine=engine)
    recorded = jaxlr.fit(X, y, **settings)
    quiet = jaxlr.fit(X, y, record_steps=False, **settings)
    np.testing.assert_array_equal(quiet.params.w, recorded.params.w)
    assert recorded.losses.shape == (21,) and recorded.epoch_losses.shape == (3,)
    assert quiet.losses.shape == (0,)
    np.testing.assert_allclose(quiet.epoch_losses, recorded.epoch_losses, rtol=1e-6)
