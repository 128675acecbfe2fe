"""Bad input is refused before any work, with the argument and its value named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlr

X_OK = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
Y_OK = X_OK @ np.array([[1.0], [2.0]], np.float32)
KEY = jax.random.key(0)


def with_nan(array, row, col=0, value=np.nan):
    array = array.copy()
    array[row, col] = value
    return array


BAD_DATA = {
    "X 1-D": (X_OK[:, 0], Y_OK, ValueError, r"`X` must be 2-D .* got shape \(20,\)\. Use X\.reshape\(-1, 1\)"),
    "X 3-D": (X_OK[:, :, None], Y_OK, ValueError, r"`X` must be 2-D .* got shape \(20, 2, 1\)"),
    "X scalar": (np.float32(1.0), Y_OK, ValueError, r"`X` must be 2-D .* got shape \(\)"),
    "rows differ": (X_OK, Y_OK[:19], ValueError, r"`y` has 19 rows but `X` has 20"),
    "y 3-D": (X_OK, Y_OK[:, :, None], ValueError, r"`y` must be 1-D or 2-D .* got shape \(20, 1, 1\)"),
    "no examples": (X_OK[:0], Y_OK[:0], ValueError, r"`X` \(shape \(0, 2\)\) has no examples"),
    "no features": (X_OK[:, :0], Y_OK, ValueError, r"`X` \(shape \(20, 0\)\) has no features"),
    "NaN in X": (with_nan(with_nan(X_OK, 3), 7), Y_OK, ValueError, r"`X` has NaN or inf in 2 row\(s\); the first is row 3"),
    "inf in y": (X_OK, with_nan(Y_OK, 5, value=-np.inf), ValueError, r"`y` has NaN or inf in 1 row\(s\); the first is row 5"),
    "strings": (X_OK.astype(str), Y_OK, TypeError, r"`X` has dtype <U\d+; jaxlr trains on real numbers"),
    "objects": (X_OK.astype(str).astype(object), Y_OK, TypeError, r"`X` has dtype object and holds .*, not a number"),
    "complex": (X_OK.astype(np.complex64), Y_OK, TypeError, r"`X` has dtype complex64"),
    "complex y": (X_OK, Y_OK.astype(np.complex64), TypeError, r"`y` has dtype complex64"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
@pytest.mark.parametrize("entry", ["fit", "solve", "batches"])
def test_bad_data_is_refused(case, entry):
    X, y, error, message = BAD_DATA[case]
    call = {
        "fit": lambda: jaxlr.fit(X, y, key=KEY),
        "solve": lambda: jaxlr.solve(X, y),
        "batches": lambda: jaxlr.batches(X, y, 4, key=KEY),
    }[entry]
    with pytest.raises(error, match=message):
        call()


def test_nan_in_a_device_array_is_found_too():
    with pytest.raises(ValueError, match=r"`X` has NaN or inf in 1 row\(s\); the first is row 3"):
        jaxlr.fit(jnp.asarray(with_nan(X_OK, 3)), Y_OK, key=KEY)


def test_bool_and_int_features_are_cast_to_float():
    X = (X_OK > 0).astype(np.int64)
    result = jaxlr.fit(X, Y_OK, key=KEY, epochs=1)
    assert result.params.w.dtype == jnp.float32
    assert jaxlr.fit(X > 0, Y_OK, key=KEY, epochs=1).params.w.dtype == jnp.float32


BAD_SETTINGS = {
    "batch_size 0": ({"batch_size": 0}, ValueError, r"`batch_size` \(=0\) must be between 1 and the number of examples \(=20\)"),
    "batch_size negative": ({"batch_size": -3}, ValueError, r"`batch_size` \(=-3\) must be between 1"),
    "batch_size float": ({"batch_size": 2.5}, TypeError, r"`batch_size` \(=2.5\) must be an integer"),
    "batch_size too big": ({"batch_size": 21}, ValueError, r"`batch_size` \(=21\) must be between 1 and the number of examples \(=20\)"),
    "batch_size bool": ({"batch_size": True}, TypeError, r"`batch_size` \(=True\) must be an integer"),
    "epochs negative": ({"epochs": -1}, ValueError, r"`epochs` \(=-1\) must be at least 0"),
    "epochs float": ({"epochs": 1.5}, TypeError, r"`epochs` \(=1.5\) must be an integer"),
    "lr zero": ({"lr": 0.0}, ValueError, r"`lr` \(=0.0\) must be a finite number in \(0.0, inf\)"),
    "lr negative": ({"lr": -0.1}, ValueError, r"`lr` \(=-0.1\)"),
    "lr nan": ({"lr": float("nan")}, ValueError, r"`lr` \(=nan\)"),
    "lr inf": ({"lr": float("inf")}, ValueError, r"`lr` \(=inf\)"),
    "lr string": ({"lr": "0.1"}, TypeError, r"`lr` \(='0.1'\) must be a real number"),
    "smoothing zero": ({"smoothing": 0.0}, ValueError, r"`smoothing` \(=0.0\) must be a finite number in \(0.0, 1.0\]"),
    "smoothing above one": ({"smoothing": 1.5}, ValueError, r"`smoothing` \(=1.5\)"),
    "engine": ({"engine": "gpu"}, ValueError, r"`engine` \(='gpu'\) must be one of 'fused', 'loop'"),
    "init shapes": ({"init": jaxlr.Params(jnp.zeros((3, 1)), jnp.zeros(1))}, ValueError,
                    r"`init` has w \(3, 1\) and b \(1,\), but the data needs w \(2, 1\) and b \(1,\)"),
    "init type": ({"init": (jnp.zeros((2, 1)), jnp.zeros(1))}, TypeError, r"`init` .* must be jaxlr.Params"),
    "optimizer name": ({"optimizer": "adamw"}, ValueError, r"`optimizer` \(='adamw'\) must be one of 'sgd', 'momentum', 'nesterov', 'adam'"),
    "optimizer object": ({"optimizer": 3}, TypeError, r"`optimizer` \(=3\) must be None .* or an optax.GradientTransformation"),
    "callback": ({"callback": 3}, TypeError, r"`callback` \(=3\) must be a function"),
    "devices": ({"devices": "tpu9"}, ValueError, r"`devices` \(='tpu9'\) names no available JAX platform"),
    "loss": ({"loss": "absolute"}, ValueError, r"`loss` \(='absolute'\) must be one of 'squared', 'huber'"),
    "penalty": ({"penalty": "l3"}, ValueError, r"`penalty` \(='l3'\) must be one of None, 'l2', 'l1', 'elasticnet'"),
    "alpha": ({"penalty": "l2", "alpha": -1.0}, ValueError, r"`alpha` \(=-1.0\) must be a finite number in \[0.0, inf\)"),
    "l1_ratio": ({"penalty": "elasticnet", "l1_ratio": 1.5}, ValueError, r"`l1_ratio` \(=1.5\) must be a finite number in \[0.0, 1.0\]"),
    "schedule": ({"schedule": "cosine"}, ValueError, r"`schedule` \(='cosine'\) must be one of 'constant', 'optimal'"),
    "optimal without alpha": ({"schedule": "optimal", "alpha": 0.0}, ValueError, r"`alpha` \(=0.0\) must be > 0 with schedule='optimal'"),
    "sample_weight shape": ({"sample_weight": np.ones(3)}, ValueError, r"`sample_weight` has shape \(3,\); it needs one weight per row, \(20,\)"),
    "sample_weight negative": ({"sample_weight": -np.ones(20)}, ValueError, r"`sample_weight` must be finite and >= 0"),
    "sample_weight one bad": ({"sample_weight": np.where(np.arange(20) == 17, np.nan, 1.0)}, ValueError,
                              r"`sample_weight` must be finite and >= 0: 1 weight\(s\) are not, the first nan at row 17"),
    "sample_weight all zero": ({"sample_weight": np.zeros(20)}, ValueError, r"`sample_weight` is 0 for every one of the 20 rows"),
    "overwrite text": ({"overwrite": "False"}, TypeError, r"`overwrite` \(='False'\)"),
    "verbose text": ({"verbose": "no"}, TypeError, r"`verbose` \(='no'\)"),
    "verbose without steps": ({"verbose": True, "record_steps": False}, ValueError, r"`verbose` prints the steps' moving loss"),
    "checkpoint_every alone": ({"checkpoint_every": 2}, ValueError, r"`checkpoint_every` \(=2\) .* needs `checkpoint`"),
    "lr with optax": ({"optimizer": optax.sgd(0.1), "lr": 0.1}, ValueError, r"`lr` \(=0.1\) would set no rate: the optax `optimizer` carries its own"),
    "lr with optimal": ({"schedule": "optimal", "lr": 0.1}, ValueError, r"`lr` \(=0.1\) would set no rate: schedule='optimal' takes its rates from `alpha`"),
    "lr with a function": ({"schedule": optax.constant_schedule(0.1), "lr": 0.1}, ValueError, r"`lr` \(=0.1\) would set no rate: the `schedule` .* is the rate itself"),
    "adaptive without tol": ({"schedule": "adaptive"}, ValueError, r"`schedule` \(='adaptive'\) cuts the rate when the stopping rule .* `tol` \(=None\) turns off"),
    "schedule of several rates": ({"schedule": lambda count: jnp.array([0.01, 0.02])}, ValueError,
                                  r"`schedule` \(=<lambda>\) must return one rate, a number, for a step count, not shape \(2,\)"),
    "schedule of text": ({"schedule": lambda count: "x"}, ValueError, r"`schedule` \(=<lambda>\) failed on a step count"),
    "tol": ({"tol": float("nan")}, ValueError, r"`tol` \(=nan\)"),
    "tol negative": ({"tol": -1.0}, ValueError, r"`tol` \(=-1.0\) must be a finite number in \[0.0, inf\)"),
    "n_iter_no_change": ({"tol": 0.1, "n_iter_no_change": 0}, ValueError, r"`n_iter_no_change` \(=0\) must be at least 1"),
    "average": ({"average": -2}, ValueError, r"`average` \(=-2\) must be at least 0"),
    "shuffle": ({"shuffle": "yes"}, ValueError, r"`shuffle` \(='yes'\) must be one of True, False, 'host', 'device'"),
    "state": ({"state": (1, 2)}, TypeError, r"`state` \(=\(1, 2\)\) must be a jaxlr.FitState"),
    "validation weights": ({"validation": (X_OK[:5], Y_OK[:5], np.ones(3)), "tol": 0.0}, ValueError,
                           r"the validation rows' `sample_weight` has shape \(3,\); it needs one weight per row, \(5,\)"),
    "validation items": ({"validation": (X_OK, Y_OK, None, None), "tol": 0.0}, TypeError,
                         r"`validation` must be a pair \(X_val, y_val\) or a triple"),
    "unknown keyword": ({"learning_rate": 0.1}, TypeError, r"unexpected keyword argument 'learning_rate'"),
    "validation without tol": ({"validation": (X_OK, Y_OK)}, ValueError, r"`validation` is scored by the stopping rule"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_refused(case):
    settings, error, message = BAD_SETTINGS[case]
    with pytest.raises(error, match=message):
        jaxlr.fit(X_OK, Y_OK, key=KEY, **settings)


def test_a_setting_is_refused_after_its_equal_of_another_type_was_accepted():
    # Checked settings are remembered, and 1 == True == 1.0: the type is part of what is remembered.
    jaxlr.fit(X_OK, Y_OK, key=KEY, epochs=1, batch_size=1, lr=1e-3)
    for settings, message in [({"batch_size": True}, r"`batch_size` \(=True\) must be an integer"),
                              ({"epochs": 1.0}, r"`epochs` \(=1.0\) must be an integer"),
                              ({"lr": 1e-3 + 0j}, r"`lr` \(=.*\) must be a real number")]:  # fmt: skip
        with pytest.raises(TypeError, match=message):
            jaxlr.fit(X_OK, Y_OK, key=KEY, **{"epochs": 1, "batch_size": 1, "lr": 1e-3, **settings})


def test_a_state_of_other_dtypes_or_structure_is_checked_as_it_comes():
    # A state fit returned is taken as it is; any other is checked, and cast where it may be.
    first = jaxlr.fit(X_OK, Y_OK, key=KEY, epochs=1)
    as_float64 = jax.tree.map(lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype == np.float32 else a, first.state)
    np.testing.assert_array_equal(jaxlr.fit(X_OK, Y_OK, key=KEY, epochs=2, state=as_float64).params.w,
                                  jaxlr.fit(X_OK, Y_OK, key=KEY, epochs=2, state=first.state).params.w)  # fmt: skip
    adam = jaxlr.fit(X_OK, Y_OK, key=KEY, epochs=1, optimizer="adam")
    for other in (adam.state, first.state._replace(opt_state=())):  # the second has the same leaves, not the same tree
        with pytest.raises(ValueError, match="`state` holds the state of another optimizer"):
            jaxlr.fit(X_OK, Y_OK, key=KEY, epochs=1, state=other)
    with pytest.raises(ValueError, match=r"`state` has w \(2, 1\) and b \(1,\), but the data needs w \(3, 1\)"):
        jaxlr.fit(np.ones((20, 3), np.float32), Y_OK, key=KEY, epochs=1, state=first.state)


@pytest.mark.parametrize("key", [0, None, np.array([1, 2, 3], np.uint32), "seed", jax.random.split(KEY, 2)])
def test_a_key_that_is_not_a_prng_key_is_refused(key):
    with pytest.raises(TypeError, match=r"`key` .* must be a single PRNG key, e.g. jax.random.key\(0\)"):
        jaxlr.fit(X_OK, Y_OK, key=key)


def test_nothing_is_traced_before_the_checks_pass():
    traces = []
    step_loss = lambda yhat, y: (traces.append(1), 0.5 * (yhat - y) ** 2)[1]  # noqa: E731
    with pytest.raises(ValueError):
        jaxlr.fit(X_OK, Y_OK, key=jax.random.key(0), loss=step_loss, lr=-1.0)
    with pytest.raises(ValueError):
        jaxlr.sweep(X_OK, Y_OK, key=jax.random.key(0), loss=step_loss, lrs=[0.1, -1.0])
    assert traces == []
    # And the list does fill when the settings are good: the check above can fail.
    jaxlr.fit(X_OK, Y_OK, key=jax.random.key(0), loss=step_loss, epochs=1)
    assert traces


def test_an_optimizer_state_of_other_shapes_is_refused_by_name():
    import warnings

    X, y = np.ones((8, 2), np.float32), np.ones(8, np.float32)
    other = jaxlr.fit(np.ones((8, 3), np.float32), y, key=jax.random.key(0), optimizer="adam", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match=r"`opt_state` holds an optimizer state of shape \(3, 1\)"):
            jaxlr.fit(X, y, key=jax.random.key(0), optimizer="adam", opt_state=other.opt_state)
    with pytest.raises(ValueError, match=r"`state` holds an optimizer state of shape \(3, 1\)"):
        jaxlr.fit(X, y, key=jax.random.key(0), optimizer="adam",
                  state=other.state._replace(params=jaxlr.Params(np.zeros((2, 1), np.float32), np.zeros(1, np.float32))))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(penalty="l2", alpha=1e300), r"`alpha` \(=1e\+300\) must be finite in float32"),
        (dict(loss="huber", epsilon=1e300), r"`epsilon` \(=1e\+300\) must be finite in float32"),
        (dict(init="nan"), r"`init` holds NaN"),
    ],
)
def test_a_setting_its_precision_cannot_hold_is_a_setting_error_not_divergence(settings, message):
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    if settings.get("init") == "nan":
        settings = dict(init=jaxlr.Params(np.full((2, 1), np.nan, np.float32), np.zeros(1, np.float32)))
    with pytest.raises(ValueError, match=message):
        jaxlr.fit(X, X.sum(axis=1), key=jax.random.key(0), **settings)


def test_batches_checks_the_weights_length():
    X = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match=r"`sample_weight` has shape \(9,\)"):
        jaxlr.batches(X, np.zeros(10), 4, key=jax.random.key(0), sample_weight=np.ones(9))


def test_resume_if_present_keeps_unreadable_checkpoints_of_this_run(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    y = X.sum(axis=1)
    jaxlr.fit(X, y, key=jax.random.key(0), epochs=1, checkpoint=tmp_path)
    files = sorted(tmp_path.iterdir())
    for file in files:
        file.write_bytes(b"damaged")
    with pytest.raises(jaxlr.checkpoint.CheckpointError, match="none is readable"):
        jaxlr.fit(X, y, key=jax.random.key(0), epochs=2, checkpoint=tmp_path, resume="if_present")
    assert all(file.read_bytes() == b"damaged" for file in files)


def test_early_stopping_and_the_metrics_weigh_the_validation_rows():
    from types import SimpleNamespace

    from jaxlr.callbacks import EarlyStopping
    from jaxlr.metrics import host_metrics

    X_val = np.array([[0.0], [1.0], [2.0]])
    y_val = np.array([[1.0], [3.0], [100.0]])  # the last row, of weight 0, is noise
    weight = np.array([1.0, 3.0, 0.0])
    rule = EarlyStopping(1, X_val, y_val, weight)
    exact = SimpleNamespace(params=jaxlr.Params(np.array([[2.0]]), np.array([1.0])))
    off = SimpleNamespace(params=jaxlr.Params(np.array([[2.0]]), np.array([2.0])))
    assert rule(0, exact) is False and rule.best == 0.0  # the noisy row does not count
    assert rule(1, off) is True and rule.best_epoch == 0
    # The metrics as scikit-learn's with the same weights: (1 * 1 + 3 * 1) / 4 for the MSE.
    metrics = host_metrics(X_val * 2.0 + 2.0, y_val, weight=weight)
    assert metrics["mse"] == 1.0
    mean = (1.0 * 1 + 3.0 * 3) / 4
    assert metrics["r2"] == 1 - 4.0 / (1 * (1 - mean) ** 2 + 3 * (3 - mean) ** 2)
