"""`LinearRegressor`: jaxlr's trainer as a scikit-learn estimator.

Needs scikit-learn (the `sklearn` extra); jaxlr itself does not.
"""

import jax
import numpy as np
import optax
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxlr.train import fit

_OPTIMIZERS = ("sgd", "momentum", "adam")


class LinearRegressor(RegressorMixin, BaseEstimator):
    """Linear regression trained by mini-batch SGD (or momentum, or Adam) in JAX.

    Args:
        lr: learning rate.
        epochs: passes over the data in `fit`.
        batch_size: rows per step; cut to the number of rows when larger.
        optimizer: "sgd" (jaxlr's hand-written update), "momentum" or "adam"
            (from optax).

    Features are standardized internally, with the mean and standard
    deviation of the data of the first `fit` (or `partial_fit`), so that one
    learning rate suits data of any scale; `coef_` and `intercept_` are in
    the original units.
        random_state: int, numpy RandomState, or None: fixes initialisation
            and shuffling.

    Attributes:
        coef_: array of shape (n_features,), or (n_targets, n_features).
        intercept_: float, or array of shape (n_targets,).
        loss_curve_: mean training loss of each epoch.
        n_iter_: epochs run so far.
        n_features_in_: number of features seen in `fit`.

    Example:
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> model = make_pipeline(StandardScaler(), LinearRegressor(random_state=0))
        >>> model.fit(X, y).score(X, y)
    """

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

    def fit(self, X, y):
        """Trains from a fresh start for `epochs` epochs. Returns self."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        self._start(y)
        return self._train(X, y, self.epochs)

    def partial_fit(self, X, y):
        """Trains one more epoch from the current parameters (a fresh start if unfitted)."""
        first = not hasattr(self, "_state")
        X, y = validate_data(
            self, X, y, reset=first, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32]
        )
        if first:
            self._start(y)
        elif _num_outputs(y) != self._num_outputs:
            raise ValueError(
                f"`y` has {_num_outputs(y)} output(s); the data fitted before had {self._num_outputs}."
            )
        return self._train(X, y, 1)

    def predict(self, X):
        """Predictions of shape (n_samples,), or (n_samples, n_targets)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, np.float64) @ self.coef_.T + self.intercept_

    def _start(self, y):
        """Forgets any earlier training."""
        self._seed = check_random_state(self.random_state).randint(2**31 - 1)
        self._one_output = y.ndim == 1
        self._num_outputs = _num_outputs(y)
        self.n_iter_, self.loss_curve_, self._state = 0, [], None

    def _train(self, X, y, epochs):
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"`optimizer` (={self.optimizer!r}) must be one of {', '.join(_OPTIMIZERS)}.")
        optimizer = {
            "sgd": None,
            "momentum": optax.sgd(self.lr, momentum=0.9),
            "adam": optax.adam(self.lr),
        }[self.optimizer]
        batch_size = self.batch_size
        if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
            batch_size = min(int(batch_size), X.shape[0])
        if self._state is None:
            # SGD's stable step size depends on the features' scale; training
            # on standardized features makes `lr` mean the same for any data.
            self._x_mean = X.mean(axis=0)
            spread = X.std(axis=0)
            self._x_scale = np.where(spread > 0, spread, 1.0)
            params = opt_state = None
        else:
            params, opt_state = self._state
        result = fit(
            (X - self._x_mean) / self._x_scale, y, key=jax.random.key(self._seed), epochs=epochs,
            lr=self.lr, batch_size=batch_size,
            optimizer=optimizer, params=params, opt_state=opt_state, initial_epoch=self.n_iter_,
        )  # fmt: skip
        self._state = (result.params, result.opt_state)
        losses = np.asarray(result.losses).reshape(epochs, -1) if epochs else np.zeros((0, 1))
        self.loss_curve_ = self.loss_curve_ + losses.mean(axis=1).tolist()
        self.n_iter_ += epochs
        # Back to the original units: w / scale, and b absorbs the centring.
        w = np.asarray(result.params.w, np.float64) / self._x_scale[:, None]
        b = np.asarray(result.params.b, np.float64) - self._x_mean @ w
        self.coef_ = w[:, 0] if self._one_output else w.T
        self.intercept_ = float(b[0]) if self._one_output else b
        return self


def _num_outputs(y):
    return 1 if y.ndim == 1 else y.shape[1]
