import jax
import jax.numpy as jnp
import warnings

import numpy as np
import pytest

import jaxlr


def _lstsq_with_intercept(X, y):
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    design = np.hstack([X, np.ones((X.shape[0], 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return coef[:-1], coef[-1]


def test_solve_matches_numpy_lstsq():
    X, y = jaxlr.synthetic_data(
        jax.random.key(0), num_examples=300, true_w=np.ones((5, 2)), true_b=[1.0, -1.0], noise=0.5
    )
    params = jaxlr.solve(X, y)
    w, b = _lstsq_with_intercept(X, y)
    np.testing.assert_allclose(params.w, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params.b, b, rtol=1e-4, atol=1e-5)


def test_solve_recovers_the_seed_truth(seed_data):
    params = jaxlr.solve(*seed_data)
    np.testing.assert_allclose(np.asarray(params.w).ravel(), [2.0, -3.4], atol=1e-3)
    np.testing.assert_allclose(params.b, [4.2], atol=1e-3)


def test_solve_runs_in_float64_under_x64():
    rng = np.random.default_rng(0)
    # Ill conditioned: two nearly equal columns far from the origin. The
    # normal equations lose about twice the digits that the SVD does.
    base = rng.normal(size=(200, 1)) + 1000.0
    X = np.hstack([base, base + 1e-4 * rng.normal(size=(200, 1))])
    y = X @ np.array([[1.0], [2.0]]) + 3.0
    with jax.enable_x64(True):
        params = jaxlr.solve(X, y)
        assert params.w.dtype == jnp.float64
        w, b = _lstsq_with_intercept(X, y)
        np.testing.assert_allclose(params.w, w, rtol=1e-6)
        np.testing.assert_allclose(params.b, b, rtol=1e-6)


def test_mse_and_r2_against_direct_formulas():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 2))
    yhat = y + 0.3 * rng.normal(size=(50, 2))
    assert np.isclose(float(jaxlr.mse(yhat, y)), np.mean((yhat - y) ** 2), rtol=1e-5)
    per_output = 1 - ((y - yhat) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert np.isclose(float(jaxlr.r2(yhat, y)), per_output.mean(), rtol=1e-5)
    assert float(jaxlr.r2(y, y)) == 1.0


def test_r2_of_a_constant_target():
    from jaxlr.metrics import host_metrics

    y = np.ones((5, 1))
    assert float(jaxlr.r2(y, y)) == 1.0
    assert float(jaxlr.r2(y + 1, y)) == 0.0
    # The command's metrics score it the same, and say why.
    assert host_metrics(y, y)["r2"] == 1.0 and host_metrics(y + 1, y)["r2"] == 0.0
    assert "r2_undefined" in host_metrics(y, y) and "r2_undefined" not in host_metrics(y, y + np.arange(5)[:, None])


def test_r2_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        jaxlr.r2(np.ones((5, 1)), np.ones(5))


def _timestamp_table(n=500):
    # A feature near 1.7e9 whose spread (1000 s) is a few float32 steps (128) wide.
    rng = np.random.default_rng(0)
    t = 1.7e9 + np.arange(n) * 2.0
    y = 0.01 * (t - 1.7e9) + 3.0 + 0.5 * rng.normal(size=n)
    return t[:, None], y


def test_solve_centres_float64_input_before_it_is_rounded_to_float32():
    X, y = _timestamp_table()
    params = jaxlr.solve(X, y)
    assert params.w.dtype == jnp.float32
    t = X[:, 0] - X[:, 0].mean()  # the reference, centred in float64
    w = t @ (y - y.mean()) / (t @ t)
    # Cast to float32 first, the slope came out 0.0037 against 0.00996.
    np.testing.assert_allclose(params.w.ravel(), w, rtol=1e-4)


def test_standardizer_can_centre_without_scaling():
    X, y = _timestamp_table()
    scaler = jaxlr.Standardizer.fit(X, features="center")
    np.testing.assert_array_equal(scaler.x_scale, [1.0])
    centred = scaler.transform(X)
    assert abs(centred.mean()) < 1e-6 and centred.std() > 100
    # Centred in float64, the float32 copy keeps the spacing of the rows (2 s).
    np.testing.assert_allclose(np.diff(centred.astype(np.float32)[:, 0]), 2.0)
    with pytest.raises(ValueError, match=r"`features` \(='centre'\) must be"):
        jaxlr.Standardizer.fit(X, features="centre")


@pytest.mark.parametrize("offset", [1e8, 1e9, 3e9])
def test_r2_of_a_target_far_from_zero_is_the_centred_one(offset):
    from jaxlr.metrics import RunningMetrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 2))
    y = (offset + 100 * (x @ [1.0, 2.0]) + 37 * rng.normal(size=5000))[:, None]
    A = np.column_stack([x, np.ones(5000)])
    predictions = A @ np.linalg.lstsq(A, y, rcond=None)[0]
    residual = y - predictions
    want = 1 - float(np.sum(residual**2)) / float(np.sum((y - y.mean()) ** 2))
    running = RunningMetrics()
    for start in range(0, 5000, 1234):  # in chunks, as the command reads a stream
        running.add(predictions[start : start + 1234], y[start : start + 1234])
    assert running.result()["r2"] == pytest.approx(want, abs=1e-9)


def test_solve_warns_when_float32_params_cannot_hold_the_fit():
    t = 1.7e9 + np.arange(5000, dtype=np.float64)[:, None]
    y = 0.5 * (t[:, 0] - 1.7e9) + np.random.default_rng(0).normal(size=5000) * 0.01
    with pytest.warns(UserWarning, match="rounded"):
        jaxlr.solve(t, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxlr.solve(t - 1.7e9, y)  # centred: float32 holds it


def _nearly_dependent(eps, n=3000, seed=2):
    rng = np.random.default_rng(seed)
    x, z, u = rng.normal(size=(3, n))
    X = np.column_stack([x, x + eps * z, u])  # two columns eps apart
    return X, (z + u + 1e-3 * rng.normal(size=n))[:, None]


@pytest.mark.parametrize("eps", [1e-8, 1e-6, 1e-3])
def test_host_least_squares_fits_as_well_as_lstsq_however_close_two_columns_are(eps):
    from jaxlr.preprocessing import least_squares

    X, y = _nearly_dependent(eps)
    w, b = least_squares(X, y)
    design = np.column_stack([X, np.ones(len(X))])
    best = np.mean((design @ np.linalg.lstsq(design, y, rcond=None)[0] - y) ** 2)
    assert np.mean((X @ w + b - y) ** 2) <= best * (1 + 1e-6)


def test_host_least_squares_gives_one_hot_levels_beside_the_intercept_finite_weights():
    # Each row's levels sum to one, as the intercept's column does: exactly
    # dependent columns, whose weights NumPy's lstsq keeps small.
    from jaxlr.preprocessing import least_squares

    rng = np.random.default_rng(5)
    n = 20_000
    x, level = rng.normal(size=n), rng.integers(0, 3, n)
    X = np.column_stack([np.eye(3)[level], x])
    y = (2 * x + 3 * (level == 1) + 0.1 * rng.normal(size=n))[:, None]
    w, b = least_squares(X, y)
    design = np.column_stack([X, np.ones(n)])
    np.testing.assert_allclose(X @ w + b, design @ np.linalg.lstsq(design, y, rcond=None)[0], atol=1e-9)
    assert np.abs(w).max() < 10 and np.abs(b).max() < 10  # 8e9 each when rounding was taken for signal


def test_host_least_squares_factors_the_rows_in_blocks_as_the_normal_equations_solve(monkeypatch):
    from jaxlr import preprocessing

    rng = np.random.default_rng(3)
    X = rng.normal(size=(1001, 4)) * [1.0, 10.0, 0.1, 1e3] + [0.0, 5.0, -2.0, 1.7e9]
    y = X @ [[1.0, 2.0], [-0.5, 0.0], [3.0, 1.0], [1e-3, 2e-3]] + 4.0 + 0.01 * rng.normal(size=(1001, 2))
    normal = preprocessing.least_squares(X, y)
    monkeypatch.setattr(preprocessing, "_GRAM_CONDITION", 0.0)  # the rows' QR, whatever the conditioning
    monkeypatch.setattr(preprocessing, "_BLOCK_BYTES", 8 * 6 * 100)  # blocks of 100 rows
    monkeypatch.setattr(preprocessing, "_QR_ROWS", 30)
    factored = preprocessing.least_squares(X, y)
    np.testing.assert_allclose(factored[0], normal[0], rtol=1e-9)
    np.testing.assert_allclose(factored[1], normal[1], rtol=1e-9)
    w, b = preprocessing.least_squares(X[:3], y[:3])  # fewer rows than features: an exact fit
    np.testing.assert_allclose(X[:3] @ w + b, y[:3], atol=1e-6)


@pytest.mark.parametrize("factored", [False, True])
def test_host_least_squares_weighs_each_row_as_numpy_does_on_rows_scaled_by_the_root_of_their_weight(
    monkeypatch, factored
):
    from jaxlr import preprocessing

    rng = np.random.default_rng(7)
    n = 1001
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 1e3] + [0.0, 5.0, 1.7e6]
    weight = rng.uniform(0, 3, n)
    weight[:50] = 0  # rows that count for nothing
    # Noise that grows where the weight is small: the weighted fit differs from the plain one.
    y = X @ [[1.0], [-0.5], [1e-3]] + 4.0 + rng.normal(size=(n, 1)) * (1 + 5 * (weight < 1))[:, None]
    if factored:
        monkeypatch.setattr(preprocessing, "_GRAM_CONDITION", 0.0)
        monkeypatch.setattr(preprocessing, "_BLOCK_BYTES", 8 * 5 * 100)
    w, b = preprocessing.least_squares(X, y, weight)
    root = np.sqrt(weight)[:, None]
    design = np.column_stack([X, np.ones(n)])
    want = np.linalg.lstsq(design * root, y * root, rcond=None)[0]
    np.testing.assert_allclose(np.append(w, b), want.ravel(), rtol=1e-7)
    plain_w, _ = preprocessing.least_squares(X, y)
    assert np.abs(plain_w - w).max() > 1e-3  # the weights changed the answer
    with pytest.raises(ValueError, match="`weight` has no row of positive weight"):
        preprocessing.least_squares(X, y, np.zeros(n))
    for bad in (-weight, np.full(n, np.nan), weight[:-1]):
        with pytest.raises(ValueError, match=r"`weight` must hold one finite weight >= 0 per row"):
            preprocessing.least_squares(X, y, bad)
