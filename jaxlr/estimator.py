"""`SGDRegressor`: jaxlr's trainer behind scikit-learn's estimator of the same name.

Needs scikit-learn (the `sklearn` extra); jaxlr itself does not.
"""

from __future__ import annotations

import functools
import time
import warnings
from numbers import Integral, Real
from typing import Any, Optional

import jax
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.utils import assert_all_finite, check_random_state
from sklearn.utils._param_validation import Hidden, Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from jaxlr import losses, names, parallel, validate
from jaxlr.callbacks import validation_rows
from jaxlr.engines import core
from jaxlr.model import Params
from jaxlr.preprocessing import Standardizer
from jaxlr.train import TrainingDiverged, fit

# scikit-learn's losses in jaxlr's terms: the jaxlr loss, and the factor that
# turns it into scikit-learn's (which halves the squared and Huber losses).
_LOSSES = {
    "squared_error": ("squared", 0.5),
    "huber": ("huber", 0.5),
    "epsilon_insensitive": ("epsilon_insensitive", 1.0),
    "squared_epsilon_insensitive": ("squared_epsilon_insensitive", 1.0),
}


_OVERFLOW = (
    "Floating-point under-/overflow occurred at epoch #{epoch}. Scaling input data with "
    "StandardScaler or MinMaxScaler might help."
)


class SGDRegressor(RegressorMixin, BaseEstimator):
    """Linear regression by stochastic gradient descent: scikit-learn's `SGDRegressor`, in JAX.

    The same parameters, defaults and meanings as
    `sklearn.linear_model.SGDRegressor`, the same update (one row per step by
    default), schedules, penalties, stopping rule and fitted attributes, so
    that switching is a change of import. Each `fit` runs as one compiled
    program; it compiles once per kind of model (loss, penalty, schedule,
    optimizer, batch size, number of features and outputs) and is reused for
    new data, new folds, new seeds and new values of every number
    (alpha, eta0, tol, ...).

    Computation is in float32 (float64 with `jax_enable_x64`); with
    `shuffle=False` in float64 it takes scikit-learn's steps, and lands on its
    weights to rounding. The README's scikit-learn section tables where it
    differs (X must be dense; y may have several columns; no negative sample
    weights; no "pa1"/"pa2" rates; ...); scikit-learn's own tests of its
    SGDRegressor run on it in ``tests/test_sklearn_sgd.py``.

    jaxlr's own parameters, on top:

    Args:
        batch_size: rows per step (1, scikit-learn's). With larger batches a
            step follows the batch's mean gradient, the schedule advances once
            per batch, and `t_` counts batches.
        optimizer: "sgd" (scikit-learn's update), "momentum", "nesterov" or
            "adam", with `eta0` and the schedule as their learning rate. With
            "momentum", "nesterov" or "adam", a fresh fit starts the intercept
            at the mean of the target, since an adaptive step of about eta0
            would need many epochs to carry it there.
        devices: where to train (see `jaxlr.fit`): a device, a platform
            name, or devices to split each batch over.

    y may have several columns (one model each, trained together); one
    column, (n, 1), is ravelled with a warning, as scikit-learn's.

    Attributes:
        coef_: array of shape (n_features,), or (n_targets, n_features).
        intercept_: array of shape (1,), or (n_targets,).
        n_iter_: epochs run by the last `fit` (1 after `partial_fit`).
        t_: updates made so far, plus one.
        n_features_in_, feature_names_in_: as scikit-learn sets them.

    Example:
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> model = make_pipeline(StandardScaler(), SGDRegressor(random_state=0))
        >>> model.fit(X, y).score(X, y)
    """

    _num_outputs: int
    _one_output: bool
    _standard: tuple
    _state: Any
    _shift: Optional[np.ndarray]  # the targets' mean, taken out while training in float32

    _parameter_constraints: dict = {
        "loss": [StrOptions(set(_LOSSES))],
        "penalty": [StrOptions({name for name in names.PENALTIES if name}), None],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "l1_ratio": [Interval(Real, 0, 1, closed="both"), None],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "shuffle": ["boolean"],
        "verbose": ["verbose"],
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "learning_rate": [StrOptions(set(names.SCHEDULES))],
        "eta0": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, None, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "average": [Interval(Integral, 1, None, closed="left"), "boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "optimizer": [StrOptions(set(names.RULES))],
        "devices": [Hidden(object), None],
    }

    def __init__(
        self,
        loss: str = "squared_error",
        *,
        penalty: Optional[str] = "l2",
        alpha: float = 0.0001,
        l1_ratio: float = 0.15,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: Optional[float] = 1e-3,
        shuffle: bool = True,
        verbose: int = 0,
        epsilon: float = 0.1,
        random_state: Any = None,
        learning_rate: str = "invscaling",
        eta0: float = 0.01,
        power_t: float = 0.25,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 5,
        warm_start: bool = False,
        average: Any = False,
        batch_size: int = 1,
        optimizer: str = "sgd",
        devices: Any = None,
    ):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.average = average
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.devices = devices

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def __sklearn_clone__(self):
        # JAX's devices cannot be deep-copied, as scikit-learn's clone copies
        # parameters, and need not be: they name the hardware, which the
        # clone shares. The rest (metadata requests, output settings) is
        # scikit-learn's own clone's.
        devices = self.devices
        if _device_names(devices) is devices:  # no JAX device among them
            return super().__sklearn_clone__()
        self.devices = None
        try:
            twin = super().__sklearn_clone__()
        finally:
            self.devices = devices
        twin.devices = devices
        return twin

    def __getstate__(self):
        state = dict(super().__getstate__())  # (Python's own is the instance's __dict__ itself)
        # JAX's devices do not pickle: their platform and number do.
        state["devices"] = _device_names(state.get("devices"))
        return state

    def __setstate__(self, state):
        super().__setstate__({**state, "devices": _named_devices(state.get("devices"))})

    # ------------------------------------------------------------------ public

    def fit(self, X, y, coef_init=None, intercept_init=None, sample_weight=None) -> "SGDRegressor":
        """Trains from a fresh start (or from `coef_` with `warm_start`) for up to `max_iter` epochs.

        Args:
            X: array of shape (n_samples, n_features).
            y: array of shape (n_samples,), or (n_samples, n_targets).
            coef_init: starting coef_, shape like coef_ (ignored on a warm start).
            intercept_init: starting intercept_.
            sample_weight: array of shape (n_samples,): each row's weight.

        Returns:
            self.
        """
        self._validate_params()
        self._check_settings()
        # Finiteness is `fit`'s to check, in the pass that casts the table, naming the first bad row;
        # early stopping first splits the rows, whose numbers would no longer be the caller's.
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True,
                             order="C", accept_sparse=False, ensure_all_finite=bool(self.early_stopping))  # fmt: skip
        y = _as_targets(y)
        sample_weight = self._checked_weights(sample_weight, X)
        warm = self.warm_start and hasattr(self, "coef_")
        if warm:
            if _num_outputs(y) != self._num_outputs:
                raise ValueError(f"`y` has {_num_outputs(y)} output(s); the model was fitted to {self._num_outputs}.")
            if self._standard[0].shape[0] != X.shape[1]:
                raise ValueError(
                    f"`warm_start` (=True) continues from `coef_`, fitted to {self._standard[0].shape[0]} features, "
                    f"but X has {X.shape[1]}: set warm_start=False to fit afresh."
                )
            # scikit-learn goes on from coef_ and intercept_ as they are now
            # (without averaging, where they are the weights trained on).
            coef, intercept = self._edited_weights() or self._standard
        else:
            self._num_outputs, self._one_output = _num_outputs(y), y.ndim == 1
            coef, intercept = self._starting_point(X, y, coef_init, intercept_init, sample_weight)
        validation, tol = None, self.tol
        if self.early_stopping:
            X, y, sample_weight, validation = self._validation_split(X, y, sample_weight)
            if validation[0].shape[0] < 2 or tol is None:
                # scikit-learn's validation score, R², is NaN on one row: an
                # epoch then never counts as stalled, and all max_iter run (as
                # without a tol). The rows stay held out, as scikit-learn's do.
                validation, tol = None, None
        self._state = None
        self.t_ = 1.0
        start = time.perf_counter()
        self._run(X, y, sample_weight, epochs=self.max_iter, init=Params(coef, intercept), validation=validation,
                  tol=tol, shuffle=bool(self.shuffle))  # fmt: skip
        if self.verbose:
            print(f"Convergence after {self.n_iter_} epochs took {time.perf_counter() - start:.2f} seconds")
        if self.tol is not None and self.tol > -np.inf and self.n_iter_ == self.max_iter:
            warnings.warn(
                "Maximum number of iteration reached before convergence. Consider increasing max_iter to "
                "improve the fit.",
                ConvergenceWarning,
                stacklevel=2,
            )
        if self.power_t < 0:
            warnings.warn(
                "Negative values for `power_t` are deprecated in version 1.8 and will raise an error in 1.10. "
                "Use values in the range [0.0, inf) instead.",
                FutureWarning,
                stacklevel=2,
            )
        return self

    def partial_fit(self, X, y, sample_weight=None) -> "SGDRegressor":
        """One more epoch over (X, y), continuing from where training stands (a fresh start if unfitted)."""
        first = not hasattr(self, "coef_")
        if first:
            self._validate_params()
            self._check_settings()
            if self.early_stopping:
                raise ValueError("early_stopping should be False with partial_fit")
        if first or not _validated_already(self, X, y):
            X, y = validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32], multi_output=True,
                                 y_numeric=True, order="C", accept_sparse=False, ensure_all_finite=False)  # fmt: skip
        y = _as_targets(y)
        sample_weight = self._checked_weights(sample_weight, X)
        if first:
            self._num_outputs, self._one_output = _num_outputs(y), y.ndim == 1
            coef, intercept = self._starting_point(X, y, None, None, sample_weight)
            self._state, self.t_ = None, 1.0
            init: Optional[Params] = Params(coef, intercept)
        else:
            if _num_outputs(y) != self._num_outputs:
                raise ValueError(f"`y` has {_num_outputs(y)} output(s); the model was fitted to {self._num_outputs}.")
            if self._state is not None and self._optimizer != self.optimizer:
                raise ValueError(
                    f"`optimizer` (={self.optimizer!r}) is not the one this model was trained with "
                    f"({self._optimizer!r}): partial_fit continues that training; call fit to start afresh."
                )
            # Weights the caller set in coef_ or intercept_ are trained on from
            # there, as scikit-learn's are (without averaging).
            init = self._edited_weights()
        # Like scikit-learn, one call is one epoch with its stopping rule
        # (and its adaptive learning rate) starting afresh. Its order is drawn
        # on the device: for one epoch, the host's draw costs more per call.
        self._run(X, y, sample_weight, epochs=1, init=init, validation=None, tol=None,
                  shuffle="device" if self.shuffle else False)  # fmt: skip
        return self

    def predict(self, X):
        """Predictions of shape (n_samples,), or (n_samples, n_targets)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32], accept_sparse=False)
        return np.asarray(X, np.float64) @ self.coef_.T + self.intercept_

    # ------------------------------------------------------------------ private

    def _check_settings(self):
        if self.learning_rate == "optimal" and self.alpha == 0:
            raise ValueError("alpha must be > 0 since learning_rate is 'optimal'. alpha is used to compute the "
                             "optimal learning rate.")  # fmt: skip
        if self.early_stopping and self.validation_fraction * 1.0 <= 0:
            raise ValueError("validation_fraction must be in (0, 1).")
        if self.penalty == "elasticnet" and self.l1_ratio is None:
            raise ValueError("l1_ratio must be set when penalty is 'elasticnet'")

    def _checked_weights(self, sample_weight, X):
        if sample_weight is None:  # as scikit-learn's check makes them, at a twentieth of its cost
            return np.ones(X.shape[0])
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        negative = np.flatnonzero(sample_weight < 0)
        if negative.size:
            first = negative[0]
            raise ValueError(
                f"`sample_weight` has {negative.size} negative value(s), the first "
                f"{float(sample_weight[first]):g} at row {first}: jaxlr's SGDRegressor takes weights >= 0 "
                "only (scikit-learn's also takes negative ones, which turn a row's step uphill)."
            )
        return sample_weight

    def _starting_point(self, X, y, coef_init, intercept_init, sample_weight):
        d, k = X.shape[1], self._num_outputs
        coef = np.zeros((d, k))
        if coef_init is not None:
            given = _starting_values("coef_init", coef_init, d * k)
            coef = given.reshape(k, d).T if given.ndim == 2 else given.reshape(d, k)
        intercept = np.zeros(k)
        if intercept_init is not None:
            intercept = _starting_values("intercept_init", intercept_init, k).reshape(-1)
        elif self.optimizer != "sgd" and self.fit_intercept:
            # An adaptive step moves b by about eta0 per update: start it at the
            # target's mean instead of making it travel there.
            targets = y.reshape(len(y), -1)
            intercept = np.average(targets, axis=0, weights=sample_weight if sample_weight.sum() > 0 else None)
        return coef, intercept

    def _validation_split(self, X, y, sample_weight):
        n = X.shape[0]
        rng = check_random_state(self.random_state)
        order = rng.permutation(n)
        num_val = validation_rows(n, self.validation_fraction)
        if not 0 < num_val < n:
            raise ValueError(
                f"Splitting {n} samples into a train set and a validation set with validation_fraction="
                f"{self.validation_fraction!r} led to an empty set ({n - num_val} and {num_val} samples). Please "
                "either change validation_fraction, increase number of samples, or disable early_stopping."
            )
        val, train = order[:num_val], np.sort(order[num_val:])
        if not np.any(sample_weight[val] > 0):
            raise ValueError(
                "The sample weights for validation set are all zero, consider using a different random state."
            )
        if not np.any(sample_weight[train] > 0):
            # scikit-learn trains on them all the same, and nothing moves but the L2 shrink.
            raise ValueError(
                f"`sample_weight` is 0 on every one of the {len(train)} rows left for training once "
                f"validation_fraction={self.validation_fraction!r} held out {num_val}: nothing would train. Lower "
                "validation_fraction, use another random_state, or disable early_stopping."
            )
        # The validation R² weighs the rows as training does (scikit-learn's score with their weights).
        weights = () if np.all(sample_weight[val] == 1) else (sample_weight[val],)
        return X[train], y[train], sample_weight[train], (X[val], y[val], *weights)

    def _run(self, X, y, sample_weight, *, epochs, init, validation, tol, shuffle):
        name, factor = _LOSSES[self.loss]
        seed = _seed(self.random_state)
        state = self._state
        dtype = validate.training_dtype(X.dtype)  # as `fit` takes it
        if state is not None and init is not None:
            # Edited weights replace the state's, which goes on from them.
            shift = getattr(self, "_shift", None)
            b = np.asarray(init.b, np.float64) - (0.0 if shift is None else shift)
            kept = state.params.w.dtype
            _check_start_near(init.b, 0.0 if shift is None else shift, y, kept)
            state = state._replace(params=Params(*(core.on_device(np.asarray(p, kept)) for p in (init.w, b))))
            init = None
        if state is not None:
            # A call of its own: the stopping rule, the adaptive rate and the
            # L1 bookkeeping start afresh, as scikit-learn's do.
            if self._afresh is None:
                self._afresh = _afresh(state)
            state = state._replace(**self._afresh)
            # scikit-learn's running mean counts from the `average` set now,
            # whatever the calls before it were given (and a model pickled
            # before the state recorded a start has none).
            state = state._replace(average_start=core.on_device(np.int32(int(self.average))))
        n = X.shape[0]
        if state is None:
            self._shift = self._target_shift(y, dtype)
        shift = getattr(self, "_shift", None)  # a model pickled before the shift had none
        targets = np.asarray(y).reshape(n, -1)
        if shift is not None:
            targets = targets - shift
            if init is not None:
                _check_start_near(init.b, shift, y, dtype)
                init = Params(init.w, np.asarray(init.b, np.float64) - shift)
            if validation is not None:
                validation = (validation[0], np.asarray(validation[1]).reshape(len(validation[1]), -1) - shift,
                              *validation[2:])  # fmt: skip
        weights = None if np.all(sample_weight == 1) else sample_weight
        # scikit-learn's adaptive rate is cut by its stopping rule: without a
        # tol (and in partial_fit) the rate stays eta0.
        schedule = "constant" if self.learning_rate == "adaptive" and tol is None else self.learning_rate
        key = np.array([0, seed], np.uint32)  # jax.random.key(seed)'s words, without its dispatch
        try:
            result = fit(
                # `fit` casts a float64 table once (a large one 64-byte aligned,
                # which JAX then uses in place on a CPU), and refuses values beyond float32.
                X, targets, key=key, epochs=epochs,
                # (scikit-learn's 'optimal' rates come from alpha, without eta0)
                lr=None if self.learning_rate == "optimal" else self.eta0, batch_size=min(self.batch_size, n),
                optimizer=self.optimizer,
                # jaxlr averages the loss over the outputs too; summed over them,
                # each column trains as a model of its own would.
                loss=losses.scaled(name, factor * self._num_outputs), epsilon=self.epsilon, penalty=self.penalty, alpha=self.alpha,
                l1_ratio=0.0 if self.l1_ratio is None else self.l1_ratio, schedule=schedule, power_t=self.power_t,
                average=int(self.average), sample_weight=weights, tol=tol,
                n_iter_no_change=self.n_iter_no_change, validation=validation, shuffle=shuffle,
                fit_intercept=self.fit_intercept, record_steps=bool(self.verbose), devices=self.devices,
                # scikit-learn's rule: only weights that stop being finite have
                # diverged, not a transient climb of the loss.
                # (per column: the loss summed over the k outputs is k times steeper)
                max_slope=1e12 * self._num_outputs, loss_growth=False, engine="auto",
                init=None if init is None else Params(np.asarray(init.w, dtype), np.asarray(init.b, dtype)),
                state=state,
            )  # fmt: skip
        except TrainingDiverged as err:
            # Counted from this call's first epoch, as scikit-learn's are (partial_fit's is #1).
            first = 0 if state is None else int(parallel.host_value(state.epoch))
            raise ValueError(_OVERFLOW.format(epoch=err.epoch - first + 1)) from None
        except ValueError:
            with np.errstate(over="ignore"):
                if not np.isfinite(np.asarray(self.eta0, dtype)):  # fit refuses a rate its precision cannot hold
                    raise ValueError(_OVERFLOW.format(epoch=1)) from None
            raise
        final = result.state
        # One read of all the host needs: each read of a device value waits on its own.
        epochs_before, epoch, step, standard, answer = parallel.host_values(
            (0 if state is None else state.epoch, final.epoch, final.step, final.params, result.params))
        if state is None:
            self._afresh = None  # made by the first call that continues this run
        self._state, self._optimizer = final, self.optimizer
        self.n_iter_ = int(epoch) - int(epochs_before)
        self.t_ = float(int(step) + 1)
        if self.verbose and result.epoch_losses is not None:
            for i, value in enumerate(np.asarray(result.epoch_losses), start=1):
                print(f"-- Epoch {i}\nAvg. loss: {float(value):.6f}")
        if shift is not None:
            standard = (standard[0], np.asarray(standard[1], np.float64) + shift)
            answer = (answer[0], np.asarray(answer[1], np.float64) + shift)
        self._standard = tuple(np.asarray(p, np.float64) for p in standard)
        # In the input's precision, as scikit-learn's (float32 X: float32 coef_).
        w, b = (np.array(p, X.dtype) for p in answer)  # writable copies, as scikit-learn's
        self.coef_ = w[:, 0] if self._one_output else np.ascontiguousarray(w.T)
        self.intercept_ = b.reshape(-1)
        # What training wrote: an edit made since is where scikit-learn's next call starts.
        self._written = (self.coef_.copy(), self.intercept_.copy())

    def _edited_weights(self) -> Optional[Params]:
        """coef_ and intercept_ in the trained layout (d, k) and (k,) where
        the caller changed them since training wrote them, which scikit-learn
        then trains on from; None where they are as written, or where the
        model averages (scikit-learn's goes on from its own last iterate)."""
        written = getattr(self, "_written", None)  # (a model pickled before it was kept: as written)
        if self.average or written is None:
            return None
        coef, intercept = np.asarray(self.coef_), np.asarray(self.intercept_)
        if coef.shape == written[0].shape and intercept.shape == written[1].shape and np.array_equal(
                coef, written[0]) and np.array_equal(intercept, written[1]):  # fmt: skip
            return None
        (d, k), shapes = self._standard[0].shape, (written[0].shape, written[1].shape)
        if (coef.shape, intercept.shape) != shapes:
            raise ValueError(f"`coef_` and `intercept_` have shapes {coef.shape} and {intercept.shape}, where the "
                             f"model's are {shapes[0]} and {shapes[1]}: training cannot go on from them.")  # fmt: skip
        w = np.asarray(coef, np.float64).reshape(k, d).T
        return Params(w, np.asarray(intercept, np.float64).reshape(k))

    def _target_shift(self, y, dtype):
        """What a float32 run subtracts from the targets (and from the
        intercept it starts at), given back in `intercept_`; None for none.

        Every loss reads a row through its residual ``x·w + b - y``, which
        the shift leaves as it is: the steps are scikit-learn's. But the
        intercept then ends near zero instead of near the targets' mean,
        where float32 resolves its small late steps: with targets around
        1e7, a step below 1 would not move it at all.
        """
        if not self.fit_intercept or np.dtype(dtype).itemsize > 4:
            return None
        mean = np.mean(np.asarray(y, np.float64).reshape(len(y), -1), axis=0)
        return mean if np.any(mean != 0) else None


def _afresh(state) -> dict:
    """The stopping rule's and the L1 step's memory as a new run starts them,
    for `state`'s shapes: a `partial_fit` call starts both afresh, as
    scikit-learn's does. Made once a `fit`, on the first call that needs them,
    and kept on the device, shared by every model of these shapes (a
    transfer costs tens of µs each): a later call copies none of them again."""
    fresh = lambda a, value=0: core.on_device(np.full(a.shape, value, a.dtype))  # noqa: E731
    return {"stop": jax.tree.map(fresh, state.stop)._replace(best=fresh(state.stop.best, -np.inf)),
            "l1": jax.tree.map(fresh, state.l1)}  # fmt: skip


def _validated_already(estimator, X, y) -> bool:
    """Whether `validate_data` would hand X and y back unchanged, with no
    warning and no error: C-ordered float tables of the fitted width, finite
    targets, no feature names. Its checks cost a third of a small
    `partial_fit` call; X's finiteness is `fit`'s to check."""
    return (
        type(X) is np.ndarray and type(y) is np.ndarray and X.dtype in _FLOATS and y.dtype.kind == "f"
        and X.ndim == 2 and y.ndim in (1, 2) and y.size > 0 and X.flags.c_contiguous and 0 < X.shape[0] == y.shape[0]
        and X.shape[1] == estimator.n_features_in_ and not hasattr(estimator, "feature_names_in_")
        and bool(np.isfinite(y).all())
    )  # fmt: skip


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _seed(random_state) -> int:
    """The seed drawn from `random_state` as scikit-learn draws one (an int
    gives the same seed each time, so it is drawn once: seeding a
    RandomState costs 0.1 ms, a tenth of a small `partial_fit` call)."""
    if isinstance(random_state, Integral):
        return _seed_of(int(random_state))
    return check_random_state(random_state).randint(0, 2**31 - 1)


@functools.lru_cache(maxsize=64)
def _seed_of(random_state: int) -> int:
    return check_random_state(random_state).randint(0, 2**31 - 1)


def _num_outputs(y) -> int:
    return 1 if y.ndim == 1 else y.shape[1]


class _DeviceName(tuple):
    """A JAX device in a pickle: (platform, id)."""


def _device_names(devices):
    """`devices` with each JAX device as its name, which pickles."""
    if isinstance(devices, jax.Device):
        return _DeviceName((devices.platform, devices.id))
    if isinstance(devices, (list, tuple)) and any(isinstance(d, jax.Device) for d in devices):
        return type(devices)(_device_names(d) for d in devices)
    return devices


def _named_devices(devices):
    """`_device_names` undone, in this process: a device it lacks is left to
    JAX's default, with a warning."""
    if isinstance(devices, _DeviceName):
        platform, number = devices
        found = [d for d in _platform_devices(platform) if d.id == number]
        if found:
            return found[0]
        warnings.warn(f"`devices` named {platform} device {number}, which this process lacks: training goes to "
                      "JAX's default device (set_params(devices=...) to choose).", stacklevel=3)  # fmt: skip
        return None
    if isinstance(devices, (list, tuple)) and any(isinstance(d, _DeviceName) for d in devices):
        named = [_named_devices(d) for d in devices]
        return None if any(d is None for d in named) else type(devices)(named)
    return devices


def _platform_devices(platform):
    try:
        return jax.devices(platform)
    except RuntimeError:  # no such backend here
        return []


def _check_start_near(b, shift, y, dtype):
    """Refuses a starting intercept `b` too far from y's mean `shift` for
    `dtype` to hold the distance: training in float32 starts from their
    difference, which must stay below the divergence bound. Targets beyond
    `dtype` itself are left for `fit`, which names their row."""
    bound = float(np.sqrt(np.finfo(dtype).max))
    far = np.max(np.abs(np.asarray(b, np.float64) - shift))
    if not far <= bound and np.all(np.abs(y) <= np.finfo(dtype).max):
        raise ValueError(
            f"the intercept starts {far:.3g} from the mean of `y` ({float(np.max(np.abs(shift))):.3g} in size), "
            f"beyond the {bound:.2g} that training in {np.dtype(dtype).name} holds. Start it nearer (intercept_init, "
            "or intercept_ set by hand), rescale y, or compute in float64 (jax.config.update('jax_enable_x64', True))."
        )


def _as_targets(y):
    """y of shape (n, 1) as (n,), warning as scikit-learn's SGDRegressor does;
    other shapes as they are. Numbers written as text are read as numbers,
    as scikit-learn reads them."""
    if y.dtype.kind in "US":
        try:
            y = y.astype(np.float64)
        except ValueError as err:
            raise ValueError(f"`y` holds text that is not a number ({err}).") from None
        assert_all_finite(y, input_name="y")  # as scikit-learn's check of numbers says it, before any mean of them
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
            "(n_samples, ), for example using ravel().",
            DataConversionWarning,
            stacklevel=3,
        )
        return y[:, 0]
    return y


def _starting_values(name: str, value, size: int) -> np.ndarray:
    given = np.asarray(value, np.float64)
    if given.size != size:
        raise ValueError(f"Provided {name} does not match dataset.")
    if not np.all(np.isfinite(given)):
        raise ValueError(f"`{name}` has NaN or inf: the starting point must be finite.")
    return given


class LinearRegressor(RegressorMixin, BaseEstimator):
    """Deprecated: use `SGDRegressor`, scikit-learn's parameters with jaxlr's extras.

    Mini-batch SGD (or momentum, Nesterov, Adam) with a constant learning
    rate `lr` for `epochs` epochs, on features it standardizes itself (with
    the statistics of the first `fit` or `partial_fit`); `coef_` and
    `intercept_` are in the original units, `loss_curve_` holds each epoch's
    mean loss. A `batch_size` larger than the data is cut to its size.
    """

    _parameter_constraints: dict = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "optimizer": [StrOptions(set(names.RULES))],
        "random_state": ["random_state"],
    }

    def __init__(self, lr=0.01, epochs=100, batch_size=32, optimizer="sgd", random_state=None):
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y) -> "LinearRegressor":
        """Trains from a fresh start for `epochs` epochs. Returns self."""
        warnings.warn("LinearRegressor is deprecated; use jaxlr.SGDRegressor.", DeprecationWarning, stacklevel=2)
        self._validate_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        self._start(X, y)
        return self._train(X, y, self.epochs)

    def partial_fit(self, X, y) -> "LinearRegressor":
        """Trains one more epoch from the current parameters (a fresh start if unfitted)."""
        first = not hasattr(self, "_state")
        if first:
            self._validate_params()
        X, y = validate_data(self, X, y, reset=first, multi_output=True, y_numeric=True,
                             dtype=[np.float64, np.float32])  # fmt: skip
        if first:
            self._start(X, y)
        elif _num_outputs(y) != self._num_outputs:
            raise ValueError(f"`y` has {_num_outputs(y)} output(s); the data fitted before had {self._num_outputs}.")
        return self._train(X, y, 1)

    def predict(self, X):
        """Predictions of shape (n_samples,), or (n_samples, n_targets)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, np.float64) @ self.coef_.T + self.intercept_

    def _start(self, X, y):
        self._seed = _seed(self.random_state)
        self._one_output, self._num_outputs = y.ndim == 1, _num_outputs(y)
        # The target centred too: float32 resolves the late steps of an
        # intercept near zero, not of one near a mean of 1e6.
        self._scaler = Standardizer.fit(X, np.asarray(y).reshape(len(y), -1), target="center")
        self.n_iter_, self.loss_curve_, self._state = 0, [], None

    def _train(self, X, y, epochs):
        dtype = validate.training_dtype(X.dtype)
        X = np.asarray(self._scaler.transform(X), dtype)
        result = fit(
            X, np.asarray(self._scaler.transform_target(y), dtype), key=np.array([0, self._seed], np.uint32), epochs=epochs,
            lr=self.lr, batch_size=min(self.batch_size, X.shape[0]), optimizer=self.optimizer, state=self._state,
        )  # fmt: skip
        self._state = result.state
        self.loss_curve_ = self.loss_curve_ + np.asarray(result.epoch_losses, np.float64).tolist()
        self.n_iter_ += epochs
        params = self._scaler.to_original(result.params)
        self.coef_ = params.w[:, 0] if self._one_output else params.w.T
        self.intercept_ = float(params.b[0]) if self._one_output else params.b
        return self
