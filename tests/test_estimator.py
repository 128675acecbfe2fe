"""`jaxlr.LinearRegressor`, the earlier scikit-learn estimator, kept for one release (deprecated)."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
pytestmark = pytest.mark.filterwarnings("ignore:LinearRegressor is deprecated:DeprecationWarning")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import jaxlr  # noqa: E402
from jaxlr.data import load_table  # noqa: E402


@parametrize_with_checks([jaxlr.LinearRegressor(random_state=0)])
def test_passes_scikit_learns_estimator_checks(estimator, check):
    check(estimator)


def test_fits_a_table_within_one_percent_of_the_closed_form(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)) * [1.0, 3.0, 0.5, 20.0] + [2.0, -1.0, 0.0, 100.0]
    y = X @ [0.7, -1.2, 2.0, 0.05] + 3.0 + 0.5 * rng.normal(size=600)
    lines = ["f1,f2,f3,f4,target"] + [",".join(map(str, [*row, t])) for row, t in zip(X, y)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    table = load_table(tmp_path / "table.csv", target="target")

    model = jaxlr.LinearRegressor(lr=0.01, epochs=60, batch_size=32, random_state=0).fit(table.X, table.y[:, 0])
    exact = jaxlr.solve(table.X, table.y)
    mse_sgd = np.mean((model.predict(table.X) - table.y[:, 0]) ** 2)
    mse_exact = float(jaxlr.mse(jaxlr.net(exact, table.X.astype(np.float32)), table.y))
    assert mse_sgd <= 1.01 * mse_exact
    assert model.coef_.shape == (4,) and isinstance(model.intercept_, float)
    assert model.n_features_in_ == 4 and len(model.loss_curve_) == 60


def test_partial_fit_continues_from_the_current_parameters():
    X, y = jaxlr.synthetic_data(__import__("jax").random.key(0), num_examples=500)
    X, y = np.asarray(X), np.asarray(y)[:, 0]
    stepwise = jaxlr.LinearRegressor(lr=0.01, batch_size=10, random_state=3, optimizer="adam")
    for _ in range(3):
        stepwise.partial_fit(X, y)
    whole = jaxlr.LinearRegressor(lr=0.01, batch_size=10, random_state=3, optimizer="adam", epochs=3).fit(X, y)
    np.testing.assert_allclose(stepwise.coef_, whole.coef_, rtol=1e-6)
    assert stepwise.n_iter_ == 3 and len(stepwise.loss_curve_) == 3
    assert stepwise.loss_curve_[2] < stepwise.loss_curve_[0]


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_a_target_far_from_zero_fits_as_one_near_it(offset):
    X = np.random.RandomState(0).randn(500, 3)
    y = X @ [1.0, 2.0, 3.0]
    near = jaxlr.LinearRegressor(random_state=0).fit(X, y)
    far = jaxlr.LinearRegressor(random_state=0).fit(X, y + offset)  # R² 0.82 at 1e6: its intercept stalled
    np.testing.assert_allclose(far.coef_, near.coef_, atol=1e-5)
    np.testing.assert_allclose(far.intercept_, near.intercept_ + offset, atol=1e-5 * offset)


def test_multi_output_targets():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    W = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]])
    Y = X @ W + [1.0, -2.0]
    model = jaxlr.LinearRegressor(lr=0.05, epochs=100, random_state=0).fit(X, Y)
    assert model.predict(X).shape == (300, 2)
    np.testing.assert_allclose(model.coef_, W.T, atol=1e-3)
    np.testing.assert_allclose(model.intercept_, [1.0, -2.0], atol=1e-3)


def test_works_in_a_pipeline_with_cross_validation():
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, 2.0, 3.0] + 0.1 * rng.normal(size=200)
    scores = cross_val_score(make_pipeline(StandardScaler(), jaxlr.LinearRegressor(random_state=0)), X, y, cv=3)
    assert np.all(scores > 0.99)


def test_a_bad_optimizer_name_is_refused_at_fit():
    model = jaxlr.LinearRegressor(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"'optimizer' parameter of LinearRegressor must be a str among"):
        model.fit(np.ones((4, 1)), np.ones(4))


def test_it_says_it_is_deprecated():
    with pytest.warns(DeprecationWarning, match="use jaxlr.SGDRegressor"):
        jaxlr.LinearRegressor(epochs=1).fit(np.ones((4, 1)), np.ones(4))
