"""`jaxlr.SGDRegressor` against scikit-learn: its estimator checks, its fitted
attributes and calls, and its SGDRegressor on the same data.

Compiling costs about a second per kind of model on a CPU, so most tests
share one: the diabetes data standardized (353 training rows, 10 features),
one row per step, the squared loss with L2.
"""

import warnings

import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")
import sklearn  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning  # noqa: E402
from sklearn.linear_model import SGDRegressor as SklearnSGDRegressor  # noqa: E402
from sklearn.model_selection import GridSearchCV, ShuffleSplit, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import jaxlr  # noqa: E402
from benchmarks.harness import CompileCounter  # noqa: E402

LOSSES = ["squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"]
PENALTIES = [None, "l2", "l1", "elasticnet"]


@pytest.fixture(scope="module")
def diabetes():
    """scikit-learn's diabetes data, 80/20, features and target standardized on the training rows."""
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(X_train)
    mean, std = y_train.mean(), y_train.std()
    return scaler.transform(X_train), scaler.transform(X_test), (y_train - mean) / std, (y_test - mean) / std


# ------------------------------------------------------------------ scikit-learn's checks


@parametrize_with_checks(
    [jaxlr.SGDRegressor(random_state=0)],
    expected_failed_checks=lambda estimator: {
        # scikit-learn expects its own SGDRegressor to fail this one too
        # (sklearn/utils/_test_common/instance_generator.py): stochastic
        # training with weights is not training on repeated rows.
        "check_sample_weight_equivalence_on_dense_data": "sample_weight is not equivalent to removing/repeating "
        "samples (scikit-learn's own SGDRegressor fails this check)",
    },
)
def test_passes_scikit_learns_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------------------------ fitted attributes and calls


def test_fitted_attributes_and_their_shapes(diabetes):
    X, _, y, _ = diabetes
    model = jaxlr.SGDRegressor(random_state=0)
    assert not hasattr(model, "coef_")
    model.fit(X, y)
    assert model.coef_.shape == (10,) and model.intercept_.shape == (1,)
    assert isinstance(model.n_iter_, int) and 1 <= model.n_iter_ < model.max_iter
    # One update per row: t_ counts them, plus one.
    assert model.t_ == model.n_iter_ * X.shape[0] + 1
    assert model.n_features_in_ == 10 and not hasattr(model, "feature_names_in_")
    np.testing.assert_allclose(model.predict(X[:5]), X[:5] @ model.coef_ + model.intercept_, rtol=1e-12)


def test_a_dataframe_gives_feature_names(diabetes):
    pandas = pytest.importorskip("pandas")
    X, _, y, _ = diabetes
    names = [f"f{i}" for i in range(10)]
    frame = pandas.DataFrame(X, columns=names)
    model = jaxlr.SGDRegressor(random_state=0).fit(frame, y)
    assert list(model.feature_names_in_) == names and model.n_features_in_ == 10
    plain = jaxlr.SGDRegressor(random_state=0).fit(X, y)
    np.testing.assert_array_equal(model.coef_, plain.coef_)
    np.testing.assert_allclose(model.predict(frame), plain.predict(X))


def test_two_partial_fits_equal_a_two_epoch_fit(diabetes):
    X, _, y, _ = diabetes
    stepwise = jaxlr.SGDRegressor(shuffle=False, random_state=0)
    stepwise.partial_fit(X, y)
    assert stepwise.n_iter_ == 1 and stepwise.t_ == X.shape[0] + 1
    stepwise.partial_fit(X, y)
    whole = jaxlr.SGDRegressor(max_iter=2, tol=None, shuffle=False, random_state=0).fit(X, y)
    np.testing.assert_allclose(stepwise.coef_, whole.coef_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stepwise.intercept_, whole.intercept_, rtol=1e-6, atol=1e-7)
    assert stepwise.t_ == whole.t_ == 2 * X.shape[0] + 1
    # The second epoch moved the model.
    once = jaxlr.SGDRegressor(shuffle=False, random_state=0).partial_fit(X, y)
    assert np.max(np.abs(once.coef_ - whole.coef_)) > 1e-3


def test_warm_start_continues_from_coef(diabetes):
    X, _, y, _ = diabetes
    settings = dict(max_iter=2, tol=None, shuffle=False, random_state=0)
    warm = jaxlr.SGDRegressor(warm_start=True, **settings).fit(X, y)
    first_coef, first_intercept = warm.coef_.copy(), warm.intercept_.copy()
    warm.fit(X, y)
    # A warm fit is a fresh fit (t_ restarts) from the previous coef_.
    restarted = jaxlr.SGDRegressor(**settings).fit(X, y, coef_init=first_coef, intercept_init=first_intercept)
    np.testing.assert_allclose(warm.coef_, restarted.coef_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(warm.intercept_, restarted.intercept_, rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(warm.coef_ - first_coef)) > 1e-4
    # Without warm_start a second fit starts from zero again.
    cold = jaxlr.SGDRegressor(**settings).fit(X, y)
    cold.fit(X, y)
    np.testing.assert_array_equal(cold.coef_, first_coef)


@pytest.mark.parametrize("edit", ["in place", "rebound"])
@pytest.mark.parametrize("goes_on", ["partial_fit", "warm fit"])
def test_training_goes_on_from_weights_the_caller_set(diabetes, edit, goes_on):
    X, _, y, _ = diabetes
    settings = dict(max_iter=2, tol=None, shuffle=False, random_state=0, warm_start=goes_on == "warm fit")

    def trained(estimator, targets):
        model = estimator(**settings).fit(X, targets)
        if edit == "in place":
            model.coef_[...] = 0.5
            model.intercept_[...] = -1.0
        else:
            model.coef_, model.intercept_ = np.full_like(model.coef_, 0.5), np.full_like(model.intercept_, -1.0)
        return model.partial_fit(X[:3], targets[:3]) if goes_on == "partial_fit" else model.fit(X, targets)

    ours, theirs = trained(jaxlr.SGDRegressor, y), trained(SklearnSGDRegressor, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=1e-5)
    assert np.max(np.abs(ours.coef_ - 0.5)) > 1e-3  # trained on from the edit
    # Each output of a multi-output model goes on from its own row of coef_.
    both = trained(jaxlr.SGDRegressor, np.column_stack([y, -y]))
    np.testing.assert_allclose(both.coef_[0], ours.coef_, atol=1e-5)
    np.testing.assert_allclose(both.coef_[1], trained(jaxlr.SGDRegressor, -y).coef_, atol=1e-5)


def test_targets_written_as_text_are_read_as_numbers_as_scikit_learn_reads_them(diabetes):
    X, _, y, _ = diabetes
    settings = dict(max_iter=2, tol=None, random_state=0)
    plain = jaxlr.SGDRegressor(**settings).fit(X, y)
    for text in (y.astype(str), y.astype("S32")):
        np.testing.assert_array_equal(jaxlr.SGDRegressor(**settings).fit(X, text).coef_, plain.coef_)
        jaxlr.SGDRegressor(**settings).fit(X, y).partial_fit(X, text)
    with pytest.raises(ValueError, match="`y` holds text that is not a number"):
        jaxlr.SGDRegressor().fit(X, np.array(["a"] * len(y)))
    with pytest.raises(ValueError, match="Input y contains NaN"):  # as scikit-learn says it of numbers
        jaxlr.SGDRegressor().fit(X, np.where(np.arange(len(y)) == 3, "nan", y.astype(str)))


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="float32 training")
@pytest.mark.parametrize("call", ["fit", "partial_fit", "edited, warm fit", "edited, partial_fit"])
def test_an_intercept_starting_beyond_float32s_reach_of_ys_mean_is_refused_as_such(call):
    X = np.random.RandomState(0).randn(200, 3)
    y = X @ [1.0, 2.0, 3.0] + (2e19 if call in ("fit", "partial_fit") else 5.0)
    model = jaxlr.SGDRegressor(warm_start=True, max_iter=2, tol=None)
    if call.startswith("edited"):
        model.fit(X, y).intercept_ = np.array([1e20])  # it was the overflow of epoch #20, or blamed y
    with pytest.raises(ValueError, match=r"the intercept starts (2e\+19|1e\+20) from the mean of `y`"):
        (model.partial_fit if call.endswith("partial_fit") else model.fit)(X, y)
    jaxlr.SGDRegressor(max_iter=2, tol=None).fit(X, y, intercept_init=np.mean(y))  # a start near it trains


def test_partial_fit_names_its_own_epoch_when_it_overflows():
    X = np.random.RandomState(0).randn(200, 3)
    model = jaxlr.SGDRegressor(random_state=0).fit(X, X.sum(axis=1))
    model.partial_fit(X, X.sum(axis=1))
    with pytest.raises(ValueError, match=r"overflow occurred at epoch #1\."):
        model.set_params(eta0=100.0, learning_rate="constant").partial_fit(X * 1e10, X.sum(axis=1))


@pytest.mark.parametrize("devices", ["a device", "a list of devices"])
def test_a_model_placed_on_devices_clones_pickles_and_cross_validates(diabetes, devices):
    import copy
    import pickle

    from sklearn.base import clone

    from jaxlr import estimator

    X, _, y, _ = diabetes
    devices = jax.devices()[0] if devices == "a device" else jax.devices()[:1]
    model = jaxlr.SGDRegressor(devices=devices, max_iter=2, tol=None, random_state=0).fit(X, y)
    for again in (clone(model), copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert again.devices == devices
    assert model.devices is devices  # pickling changed nothing of the model's own
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).partial_fit(X, y).coef_,
                                  clone(model).fit(X, y).partial_fit(X, y).coef_)  # fmt: skip
    assert cross_val_score(model, X, y, cv=2).shape == (2,)
    # The rest of scikit-learn's clone stays: a routed fit request, for one.
    with sklearn.config_context(enable_metadata_routing=True):
        requested = clone(jaxlr.SGDRegressor(devices=devices).set_fit_request(sample_weight=True))
        assert requested.get_metadata_routing().fit.requests["sample_weight"] is True and requested.devices == devices
    # A pickle naming a device this process lacks trains on the default one, and says so.
    state = {**model.__getstate__(), "devices": estimator._DeviceName(("gpu", 7))}
    with pytest.warns(UserWarning, match="`devices` named gpu device 7, which this process lacks"):
        model.__setstate__(state)
    assert model.devices is None


def test_weights_of_another_shape_are_refused_by_name(diabetes):
    X, _, y, _ = diabetes
    model = jaxlr.SGDRegressor(max_iter=1, tol=None).fit(X, y)
    model.coef_ = np.zeros(3)
    with pytest.raises(ValueError, match=r"`coef_` and `intercept_` have shapes \(3,\) and \(1,\), where the model's "
                                         r"are \(10,\) and \(1,\)"):  # fmt: skip
        model.partial_fit(X, y)


def test_early_stopping_stops_before_max_iter(diabetes):
    X, X_test, y, y_test = diabetes
    model = jaxlr.SGDRegressor(early_stopping=True, n_iter_no_change=3, max_iter=1000, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(X, y)
    assert model.n_iter_ < 1000
    assert model.score(X_test, y_test) > 0.25


def test_reaching_max_iter_with_tol_warns_and_without_tol_does_not(diabetes):
    X, _, y, _ = diabetes
    with pytest.warns(ConvergenceWarning, match="Maximum number of iteration reached"):
        jaxlr.SGDRegressor(max_iter=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = jaxlr.SGDRegressor(max_iter=2, tol=None, random_state=0).fit(X, y)
    assert model.n_iter_ == 2


def test_coef_init_and_intercept_init_are_the_starting_point(diabetes):
    X, _, y, _ = diabetes
    start = np.linspace(-1.0, 1.0, 10)
    # A tiny rate: one epoch barely moves the model away from where it started.
    settings = dict(max_iter=1, tol=None, learning_rate="constant", eta0=1e-7, random_state=0)
    model = jaxlr.SGDRegressor(**settings).fit(X, y, coef_init=start, intercept_init=3.0)
    np.testing.assert_allclose(model.coef_, start, atol=1e-3)
    np.testing.assert_allclose(model.intercept_, [3.0], atol=1e-3)
    assert np.max(np.abs(model.coef_ - start)) > 0  # it did train
    with pytest.raises(ValueError, match="Provided coef_init does not match dataset"):
        jaxlr.SGDRegressor(**settings).fit(X, y, coef_init=np.zeros(3))


def test_a_divergent_rate_raises_scikit_learns_error(diabetes):
    # Like scikit-learn, slopes are capped at 1e12, so only an absurd rate
    # overflows; scikit-learn raises the same error on the same settings.
    from sklearn.linear_model import SGDRegressor

    X, _, y, _ = diabetes
    settings = dict(learning_rate="constant", eta0=1e300, max_iter=5, tol=None, random_state=0)
    for model in (jaxlr.SGDRegressor(**settings), SGDRegressor(**settings)):
        with pytest.raises(ValueError, match="Floating-point under-/overflow"):
            model.fit(X, y)
    # A large but finite rate moves the weights far and stays finite, in both.
    settings["eta0"] = 10.0
    assert np.isfinite(jaxlr.SGDRegressor(**settings).fit(X, y).coef_).all()
    assert np.isfinite(SGDRegressor(**settings).fit(X, y).coef_).all()


def test_random_state_fixes_the_run(diabetes):
    X, _, y, _ = diabetes
    first = jaxlr.SGDRegressor(random_state=3).fit(X, y)
    again = jaxlr.SGDRegressor(random_state=3).fit(X, y)
    other = jaxlr.SGDRegressor(random_state=4).fit(X, y)
    np.testing.assert_array_equal(first.coef_, again.coef_)
    np.testing.assert_array_equal(first.intercept_, again.intercept_)
    assert not np.array_equal(first.coef_, other.coef_)


# ------------------------------------------------------------------ against scikit-learn


# Every loss with no penalty and with the elastic net, and every penalty with
# the default loss: the benchmark's practice case runs all sixteen pairs.
@pytest.mark.parametrize("loss, penalty", sorted({*((loss, p) for loss in LOSSES for p in (None, "elasticnet")),
                                                  *(("squared_error", p) for p in PENALTIES)}, key=str))
def test_test_set_r2_is_scikit_learns(diabetes, loss, penalty):
    X, X_test, y, y_test = diabetes
    settings = dict(loss=loss, penalty=penalty, alpha=0.01, l1_ratio=0.5)
    ours, theirs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for seed in range(3):
            ours.append(jaxlr.SGDRegressor(random_state=seed, **settings).fit(X, y).score(X_test, y_test))
            theirs.append(SklearnSGDRegressor(random_state=seed, **settings).fit(X, y).score(X_test, y_test))
    assert np.mean(theirs) > 0.25  # both learned something: the comparison means something
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.02, (ours, theirs)


def test_adam_reaches_a_good_fit_with_an_unscaled_target():
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = jaxlr.SGDRegressor(optimizer="adam", max_iter=100, random_state=0).fit(X, y)
        # Its intercept starts at the target's mean (152), not at zero: a tiny rate leaves it there.
        still = jaxlr.SGDRegressor(optimizer="adam", max_iter=1, eta0=1e-7, random_state=0).fit(X, y)
    assert model.score(X, y) > 0.4
    np.testing.assert_allclose(still.intercept_, [y.mean()], rtol=1e-5)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_target_far_from_zero_fits_as_well_as_in_scikit_learn(early_stopping):
    # In float32 an intercept near 1e7 cannot take steps below 1: it stalled
    # wherever the rate fell under that (R² -21 with early stopping).
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 3))
    y = X @ [40.0, -25.0, 60.0] + 5 * rng.normal(size=2000)
    for offset in (1e7, -3e8):
        settings = dict(random_state=0, early_stopping=early_stopping)
        ours = jaxlr.SGDRegressor(**settings).fit(X, y + offset)
        theirs = SklearnSGDRegressor(**settings).fit(X, y + offset)
        assert ours.score(X, y + offset) > theirs.score(X, y + offset) - 0.01 > 0.98, offset


def test_several_targets(diabetes):
    X, _, y, _ = diabetes
    Y = np.column_stack([y, X @ np.linspace(-1.0, 1.0, 10) + 0.5])
    model = jaxlr.SGDRegressor(random_state=0).fit(X, Y)
    assert model.coef_.shape == (2, 10) and model.intercept_.shape == (2,)
    predicted = model.predict(X)
    assert predicted.shape == (X.shape[0], 2)
    np.testing.assert_allclose(predicted, X @ model.coef_.T + model.intercept_, rtol=1e-12)
    # The second target is exactly linear: its model predicts it well.
    residual = predicted[:, 1] - Y[:, 1]
    assert np.mean(residual**2) < 0.05 * np.var(Y[:, 1])


def test_each_target_gets_the_model_it_would_get_alone(diabetes):
    # "y may have several columns (one model each, trained together)": with
    # the same rows in the same order and no stopping rule, each column's
    # model is the one a fit to that column alone gives.
    X, _, y, _ = diabetes
    Y = np.column_stack([y, X @ np.linspace(-1.0, 1.0, 10) + 0.5])
    settings = dict(max_iter=2, tol=None, shuffle=False, penalty=None, random_state=0)
    together = jaxlr.SGDRegressor(**settings).fit(X, Y)
    for j in range(2):
        alone = jaxlr.SGDRegressor(**settings).fit(X, Y[:, j])
        np.testing.assert_allclose(together.coef_[j], alone.coef_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.intercept_[j], alone.intercept_[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ compiling once


def test_new_folds_seeds_and_hyperparameters_compile_nothing():
    X, y = load_diabetes(return_X_y=True)

    def pipeline(**settings):
        return make_pipeline(StandardScaler(), jaxlr.SGDRegressor(**settings))

    # Warm-up: the five folds' programs, and a fit on all 442 rows (the grid's
    # refit; rows are padded to a bucketed count, and 442 is in another bucket
    # than the folds' 353 or 354).
    first = cross_val_score(pipeline(random_state=0), X, y, cv=5)
    pipeline(random_state=0).fit(X, y)
    with CompileCounter() as compiles:
        second = cross_val_score(pipeline(random_state=1), X, y, cv=5)
    assert compiles.count == 0
    assert not np.array_equal(first, second) and np.mean(second) > 0.4
    grid = GridSearchCV(pipeline(random_state=0), {"sgdregressor__alpha": [1e-4, 1e-2],
                                                   "sgdregressor__eta0": [0.01, 0.003]}, cv=5)  # fmt: skip
    with CompileCounter() as compiles:
        grid.fit(X, y)
    assert compiles.count == 0
    assert grid.best_score_ > 0.4


# ------------------------------------------------------------------ where scikit-learn's test_sgd.py found differences

# scikit-learn's own tests' small table: unscaled, six rows.
TINY_X = np.array([[-2, -1], [-1, -1], [-1, -2], [1, 1], [1, 2], [2, 1]], np.float64)
TINY_Y = np.array([1, 1, 1, 2, 2, 2], np.float64)


def test_the_optimal_rate_on_a_tiny_unscaled_table_fits_where_scikit_learn_does():
    # The "optimal" rate starts at about 3 here: the weights swing up to 1e12
    # (the capped slopes keep them finite) before the rate decays. scikit-learn
    # fits; so must the estimator, which counts only weights that stop being
    # finite as divergence, not a loss that climbed a millionfold.
    settings = dict(learning_rate="optimal", alpha=0.01, shuffle=False, max_iter=5, tol=None, random_state=42)
    theirs = SklearnSGDRegressor(**settings).fit(TINY_X, TINY_Y)
    ours = jaxlr.SGDRegressor(**settings).fit(TINY_X, TINY_Y)
    assert np.max(np.abs(theirs.coef_)) > 1e9  # the transient is there
    assert np.all(np.isfinite(ours.coef_)) and ours.n_iter_ == 5
    # `fit` keeps its growth rule unless told otherwise.
    rows = dict(key=jax.random.key(0), epochs=5, batch_size=1, shuffle=False, schedule="optimal",
                alpha=0.01, penalty="l2", max_slope=1e12)  # fmt: skip
    with pytest.raises(jaxlr.TrainingDiverged, match="grew past"):
        jaxlr.fit(TINY_X, TINY_Y, **rows)
    assert np.all(np.isfinite(jaxlr.fit(TINY_X, TINY_Y, loss_growth=False, **rows).params.w))


@pytest.mark.parametrize("engine", ["fused", "scan"])
def test_a_capped_slope_is_capped_before_the_rows_weight_scales_it(monkeypatch, engine):
    # Steps swing the weights to 1e11 and the slopes past scikit-learn's cap
    # of 1e12: its cap holds the row's own slope, which the weight then scales.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = X @ rng.normal(size=4) + 3 + 0.3 * rng.normal(size=200)
    weight = rng.uniform(0.2, 0.9, 200)  # (below 1: slopes past the cap that, weighted, fall within it)
    settings = dict(learning_rate="optimal", alpha=0.01, shuffle=False, max_iter=3, tol=None)
    theirs = SklearnSGDRegressor(**settings).fit(X, y, sample_weight=weight)
    real_fit = jaxlr.estimator.fit
    monkeypatch.setattr(jaxlr.estimator, "fit", lambda *a, **k: real_fit(*a, **{**k, "engine": engine}))
    with jax.enable_x64(True):
        ours = jaxlr.SGDRegressor(**settings).fit(X, y, sample_weight=weight)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-6)


@pytest.mark.parametrize("averages", [(10, True), (60, True), (True, 10)])
def test_average_changed_between_partial_fit_calls_counts_as_scikit_learns(averages):
    # scikit-learn's running mean counts from the `average` set at each call.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ [1.0, 2.0, 3.0] + 0.5
    fitted = []
    for estimator in (SklearnSGDRegressor, jaxlr.SGDRegressor):
        model = estimator(eta0=0.01, learning_rate="constant", tol=None, shuffle=False)
        for average in averages:
            model.set_params(average=average).partial_fit(X, y)
        fitted.append(model.coef_)
    with jax.enable_x64(True):
        np.testing.assert_allclose(fitted[1], fitted[0], rtol=1e-5)


def test_a_model_pickled_before_its_state_recorded_an_average_start_goes_on():
    model = jaxlr.SGDRegressor(average=True, tol=None, max_iter=2, random_state=0).fit(TINY_X, TINY_Y)
    model._state = model._state._replace(average_start=None)  # as such a pickle loads
    model.partial_fit(TINY_X, TINY_Y)
    assert np.all(np.isfinite(model.predict(TINY_X)))


def test_each_output_of_a_multi_output_model_caps_its_slope_as_scikit_learn_caps_one():
    Y = np.c_[TINY_Y, [3.0, 1.0, 2.0, 2.0, 5.0, 2.0]]
    settings = dict(learning_rate="optimal", alpha=0.01, shuffle=False, max_iter=5, tol=None)
    with jax.enable_x64(True):
        ours = jaxlr.SGDRegressor(**settings).fit(TINY_X, Y)
    for column in range(2):
        theirs = SklearnSGDRegressor(**settings).fit(TINY_X, Y[:, column])
        assert np.max(np.abs(theirs.coef_)) > 1e9  # through the capped transient
        np.testing.assert_allclose(ours.coef_[column], theirs.coef_, rtol=1e-8)


def test_an_l2_step_past_zero_stops_at_zero_as_scikit_learns(diabetes):
    # alpha * eta0 = 5: scikit-learn's shrink max(0, 1 - eta * alpha) sets the
    # weights to zero before each step instead of flipping and growing them.
    X, _, y, _ = diabetes
    settings = dict(alpha=50.0, eta0=0.1, learning_rate="constant", shuffle=False, max_iter=3, tol=None)
    theirs = SklearnSGDRegressor(**settings).fit(X, y)
    with jax.enable_x64(True):
        ours = jaxlr.SGDRegressor(**settings).fit(X, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("settings", [dict(penalty="l1", alpha=0.05), dict(learning_rate="adaptive", tol=10.0)])
def test_each_partial_fit_starts_its_l1_bookkeeping_and_adaptive_rate_afresh_as_scikit_learns(diabetes, settings):
    X, _, y, _ = diabetes
    settings = dict(shuffle=False, eta0=0.05, **settings)
    theirs, ours = SklearnSGDRegressor(**settings), jaxlr.SGDRegressor(**settings)
    with jax.enable_x64(True):
        for rows in (slice(0, 100), slice(100, 200), slice(0, 100)):
            theirs.partial_fit(X[rows], y[rows])
            ours.partial_fit(X[rows], y[rows])
            np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-10, atol=1e-13)


def test_l1_ratio_none_is_accepted_unless_the_penalty_is_elasticnet():
    settings = dict(penalty="l1", max_iter=5, tol=None, random_state=0)
    unset = jaxlr.SGDRegressor(l1_ratio=None, **settings).fit(TINY_X, TINY_Y)
    np.testing.assert_array_equal(unset.coef_, jaxlr.SGDRegressor(l1_ratio=0.7, **settings).fit(TINY_X, TINY_Y).coef_)
    with pytest.raises(ValueError, match="l1_ratio must be set when penalty is 'elasticnet'"):
        jaxlr.SGDRegressor(penalty="elasticnet", l1_ratio=None).fit(TINY_X, TINY_Y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coef_and_intercept_have_the_inputs_dtype(dtype):
    model = jaxlr.SGDRegressor(max_iter=5, tol=None).fit(TINY_X.astype(dtype), TINY_Y.astype(dtype))
    assert model.coef_.dtype == dtype and model.intercept_.dtype == dtype
    model.coef_ *= 2  # writable, as scikit-learn's


def test_a_column_vector_y_is_ravelled_with_a_warning():
    settings = dict(max_iter=5, tol=None, shuffle=False)
    flat = jaxlr.SGDRegressor(**settings).fit(TINY_X, TINY_Y)
    with pytest.warns(DataConversionWarning, match="A column-vector y was passed"):
        column = jaxlr.SGDRegressor(**settings).fit(TINY_X, TINY_Y[:, None])
    assert column.coef_.shape == (2,) and column.intercept_.shape == (1,)
    assert column.predict(TINY_X).shape == (6,)
    np.testing.assert_array_equal(column.coef_, flat.coef_)
    with pytest.warns(DataConversionWarning):
        column.partial_fit(TINY_X, TINY_Y[:, None])


def test_negative_sample_weights_are_refused_by_name():
    weights = np.array([1.0, 1.0, -0.5, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"`sample_weight` has 1 negative value\(s\), the first -0.5 at row 2"):
        jaxlr.SGDRegressor().fit(TINY_X, TINY_Y, sample_weight=weights)
    with pytest.raises(ValueError, match="`sample_weight` has 1 negative"):
        jaxlr.SGDRegressor().partial_fit(TINY_X, TINY_Y, sample_weight=weights)


def test_early_stopping_scores_the_validation_rows_with_their_weights():
    # scikit-learn scores each epoch by the validation rows' weighted R². With
    # the same rows in the same order (no shuffling, no penalty, float64), the
    # estimator stops at the same epoch with the same weights; unweighted, it
    # would stop at epoch 6.
    X, y = load_diabetes(return_X_y=True)
    X, y = StandardScaler().fit_transform(X), (y - y.mean()) / y.std()
    weights = np.random.RandomState(0).uniform(0, 3, size=len(y))
    settings = dict(early_stopping=True, penalty=None, shuffle=False, tol=1e-4, max_iter=200, random_state=0,
                    learning_rate="constant", eta0=0.01, validation_fraction=0.2)  # fmt: skip
    theirs = SklearnSGDRegressor(**settings).fit(X, y, sample_weight=weights)
    with jax.enable_x64(True):
        ours = jaxlr.SGDRegressor(**settings).fit(X, y, sample_weight=weights)
    assert ours.n_iter_ == theirs.n_iter_ == 40
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-9, atol=1e-12)
    # Zero weights on every validation row leave nothing to score.
    validation_rows = next(ShuffleSplit(test_size=0.2, random_state=0).split(X))[1]
    weights[validation_rows] = 0
    for model in (jaxlr.SGDRegressor(**settings), SklearnSGDRegressor(**settings)):
        with pytest.raises(ValueError, match="The sample weights for validation set are all zero"):
            model.fit(X, y, sample_weight=weights)
    # Weight only on the validation rows: nothing would train (scikit-learn trains on zeros).
    only_validation = np.zeros(len(y))
    only_validation[validation_rows] = 1.0
    with pytest.raises(ValueError, match=r"`sample_weight` is 0 on every one of the \d+ rows left for training once "
                                         r"validation_fraction=0.2 held out"):
        jaxlr.SGDRegressor(**settings).fit(X, y, sample_weight=only_validation)


def test_one_validation_row_never_stops_training_as_in_scikit_learn(diabetes):
    # R² on one row is undefined (scikit-learn's is NaN), so no epoch counts
    # as stalled: all max_iter epochs run, where a constant score would stop
    # after n_iter_no_change + 1.
    X, _, y, _ = diabetes
    settings = dict(early_stopping=True, validation_fraction=0.1, max_iter=20, random_state=0)
    with pytest.warns(ConvergenceWarning):
        ours = jaxlr.SGDRegressor(**settings).fit(X[:10], y[:10])
    with pytest.warns(ConvergenceWarning):
        theirs = SklearnSGDRegressor(**settings).fit(X[:10], y[:10])
    assert ours.n_iter_ == theirs.n_iter_ == 20


def test_n_iter_counts_the_last_call_only(diabetes):
    # scikit-learn's n_iter_ is the epochs of the last call: 1 after each
    # partial_fit, and a warm-started fit's own epochs, never a running total.
    X, _, y, _ = diabetes
    model = jaxlr.SGDRegressor(random_state=0)
    for _ in range(3):
        model.partial_fit(X, y)
        assert model.n_iter_ == 1
    warm = jaxlr.SGDRegressor(warm_start=True, max_iter=3, tol=None, random_state=0).fit(X, y)
    warm.fit(X, y)
    assert warm.n_iter_ == 3 and warm.t_ == 3 * X.shape[0] + 1
    model.set_params(max_iter=2, tol=None).fit(X, y)
    assert model.n_iter_ == 2


def test_errors_name_the_estimators_own_parameters():
    model = jaxlr.SGDRegressor(warm_start=True, max_iter=2, tol=None).fit(TINY_X, TINY_Y)
    with pytest.raises(ValueError, match=r"`warm_start` \(=True\) continues from `coef_`, fitted to 2 features, but X has 3"):
        model.fit(np.column_stack([TINY_X, TINY_X[:, 0]]), TINY_Y)
    model = jaxlr.SGDRegressor().partial_fit(TINY_X, TINY_Y).set_params(optimizer="adam")
    with pytest.raises(ValueError, match=r"`optimizer` \(='adam'\) is not the one this model was trained with \('sgd'\)"):
        model.partial_fit(TINY_X, TINY_Y)
    for name, value in (("coef_init", [np.nan, 0.0]), ("intercept_init", np.inf)):
        with pytest.raises(ValueError, match=f"`{name}` has NaN or inf"):
            jaxlr.SGDRegressor().fit(TINY_X, TINY_Y, **{name: value})
    with pytest.raises(ValueError, match="early_stopping should be False with partial_fit"):
        jaxlr.SGDRegressor(early_stopping=True).partial_fit(TINY_X, TINY_Y)


@pytest.mark.skipif(jax.config.read("jax_enable_x64"), reason="float64 training holds the values")
def test_values_beyond_float32_are_named_as_such_not_as_nan():
    X = TINY_X.copy()
    X[4, 0] = 1e39
    with pytest.raises(ValueError, match=r"`X` holds a value in row 4 \(counting from 0\) beyond the range of float32"):
        jaxlr.SGDRegressor().fit(X, TINY_Y)
    y = TINY_Y.copy()
    y[[2, 5]] = -1e39
    with pytest.raises(ValueError, match=r"`y` holds a value in row 2 \(counting from 0\) beyond the range of float32"):
        jaxlr.SGDRegressor().fit(TINY_X.astype(np.float32), y)


def test_a_float64_table_is_cast_once_and_trained_on_in_place(monkeypatch):
    # One float32 copy of the table, 64-byte aligned, so that fit uses it on
    # a CPU as it is instead of copying it again to the device.
    import jaxlr.arrays

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400_000, 12))  # past fit's padding threshold (16 MiB once cast)
    y = X @ rng.standard_normal(12)
    casts = []  # every host copy jaxlr allocates
    real_empty = jaxlr.arrays.aligned_empty
    monkeypatch.setattr(jaxlr.arrays, "aligned_empty", lambda *a, **k: casts.append(real_empty(*a, **k)) or casts[-1])
    jaxlr.SGDRegressor(max_iter=1, tol=None, random_state=0).fit(X, y)
    copies = [cast for cast in casts if cast.shape == X.shape]
    assert len(copies) == 1 and copies[0].dtype == np.float32 and jaxlr.data.is_aligned(copies[0])


def test_many_partial_fits_keep_the_state_on_the_device_and_equal_one_long_fit(diabetes):
    from jaxlr.train import _check_state

    X, _, y, _ = diabetes
    X, y = X[:40], y[:40]
    model = jaxlr.SGDRegressor(random_state=0, shuffle=False, learning_rate="constant", eta0=0.01)
    for _ in range(50):
        before = model._state if hasattr(model, "coef_") else None
        model.partial_fit(X, y)
    # The state fit returned is what the next call continues from, not a copy of it.
    kept = _check_state(before, "sgd", X.shape[1], 1, before.params.w.dtype)
    assert all(a is b for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(before)))
    whole = jaxlr.SGDRegressor(random_state=0, shuffle=False, learning_rate="constant", eta0=0.01, max_iter=50,
                               tol=None).fit(X, y)  # fmt: skip
    np.testing.assert_allclose(model.coef_, whole.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.intercept_, whole.intercept_, rtol=1e-5, atol=1e-6)


def test_with_float64_on_a_float32_table_trains_in_float32_as_fit_does():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, 2.0, 3.0] + 0.5
    with jax.enable_x64(True):
        model = jaxlr.SGDRegressor(random_state=0).fit(X.astype(np.float32), y.astype(np.float32))
        alike = jaxlr.fit(X.astype(np.float32), y.astype(np.float32), key=jax.random.key(0), epochs=1)
        assert model._state.params.w.dtype == alike.params.w.dtype == np.float32
        assert jaxlr.SGDRegressor(random_state=0).fit(X, y)._state.params.w.dtype == np.float64


def test_each_parameter_takes_the_values_scikit_learns_takes():
    """Its parameter constraints are scikit-learn's, but where the README's table says otherwise."""
    ours, theirs = jaxlr.SGDRegressor._parameter_constraints, SklearnSGDRegressor._parameter_constraints
    # A StrOptions prints its set in the process's hash order: compared as a set.
    shown = lambda constraints: [frozenset(c.options) if hasattr(c, "options") else str(c) for c in constraints]  # noqa: E731
    differ = {name for name in set(ours) & set(theirs) if shown(ours[name]) != shown(theirs[name])}
    # average: ints from 1 either way, written [1, inf) against (0, inf); the
    # passive-aggressive rates "pa1" and "pa2" are not jaxlr's.
    assert differ == {"average", "learning_rate"}
    assert set(theirs) <= set(ours)


def test_a_nan_is_found_in_the_pass_that_casts_the_table_and_named_by_the_callers_row():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), rng.normal(size=60)
    X[41, 1] = np.nan
    for method in ("fit", "partial_fit"):
        with pytest.raises(ValueError, match=r"`X` has NaN or inf in 1 row\(s\); the first is row 41 \(counting from 0\)"):
            getattr(jaxlr.SGDRegressor(random_state=0), method)(X, y)
    # Early stopping splits the rows first: scikit-learn's check, before the split, names no row at all.
    with pytest.raises(ValueError, match="Input X contains NaN"):
        jaxlr.SGDRegressor(random_state=0, early_stopping=True).fit(X, y)


def test_later_partial_fits_check_their_input_as_scikit_learns_do(diabetes):
    # Later calls skip scikit-learn's validation where it would hand the arrays back
    # unchanged: every other input still meets it, with its warnings and its errors.
    pandas = pytest.importorskip("pandas")
    X, _, y, _ = diabetes
    X, y = X[:40], y[:40]
    for estimator in (jaxlr.SGDRegressor, SklearnSGDRegressor):
        named = estimator(random_state=0).partial_fit(pandas.DataFrame(X, columns=[f"f{i}" for i in range(10)]), y)
        with pytest.warns(UserWarning, match="X does not have valid feature names"):
            named.partial_fit(X, y)
        model = estimator(random_state=0).partial_fit(X, y)
        with pytest.raises(ValueError, match="Input y contains NaN"):
            model.partial_fit(X, np.where(np.arange(40) == 3, np.nan, y))
        with pytest.raises(ValueError, match="X has 9 features, but"):
            model.partial_fit(np.ascontiguousarray(X[:, :9]), y)
        with pytest.raises(ValueError, match="inconsistent numbers of samples"):
            model.partial_fit(X, y[:39])
        with pytest.raises(ValueError, match="0 sample"):
            model.partial_fit(X[:0], y[:0])
        with pytest.raises(ValueError, match=r"Found array with 0 feature\(s\) \(shape=\(40, 0\)\)"):
            model.partial_fit(X, np.empty((40, 0)))
    # Fortran-ordered rows and integer targets train as their C-ordered float twins.
    twins = [jaxlr.SGDRegressor(random_state=0, shuffle=False).partial_fit(X, y) for _ in range(2)]
    twins[0].partial_fit(np.asfortranarray(X), np.round(y * 10).astype(int))
    twins[1].partial_fit(X, np.round(y * 10).astype(float))
    np.testing.assert_array_equal(twins[0].coef_, twins[1].coef_)


def test_a_warm_started_averaged_fit_averages_its_own_iterates_from_the_last_one():
    # scikit-learn's second warm fit keeps part of the first's lazy average
    # (README's table); its fresh fit from the last iterate is the reference.
    X, y = load_diabetes(return_X_y=True)
    settings = dict(average=True, shuffle=False, max_iter=3, tol=None, random_state=0, eta0=0.01)
    first = SklearnSGDRegressor(**settings).fit(X, y)
    reference = SklearnSGDRegressor(**settings).fit(X, y, coef_init=first._standard_coef,
                                                     intercept_init=first._standard_intercept)  # fmt: skip
    with jax.enable_x64(True):
        ours = jaxlr.SGDRegressor(warm_start=True, **settings)
        ours.fit(X, y)
        ours.fit(X, y)
    np.testing.assert_allclose(ours.coef_, reference.coef_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, rtol=1e-10)
