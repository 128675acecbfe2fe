"""Standardization: features (and optionally the target) to mean 0 and spread 1;
and the float64 least squares of a host table, which it keeps well conditioned.

SGD's stable step size depends on the data's scale; on standardized data one
learning rate suits any table. Statistics are computed in float64 on the host
before anything is cast to float32, and a model trained on standardized data
is turned back into the original units with `to_original`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxlr.params import Params


class Standardizer(NamedTuple):
    """Per-column means and scales of X (and of y; zeros and ones when left alone).

    Attributes:
        x_mean, x_scale: arrays of shape (d,).
        y_mean, y_scale: arrays of shape (k,).
    """

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray

    @classmethod
    def fit(cls, X, y=None, *, features: bool | str = True, target: str | None = None) -> "Standardizer":
        """Statistics of X (and y), taken in float64 whatever the input's dtype.

        Args:
            X: array of shape (n, d).
            y: array of shape (n, k), needed when `target` is set.
            features: True (or "scale") standardizes the features, "center"
                only subtracts their means, False leaves them as they are.
                A column of two values (one-hot, or a flag however coded:
                0/1, 0/2, -1/+1) is divided by the distance between them,
                not by its spread: divided by its spread, the value that few
                rows hold would stand about sqrt(n / rows) from zero, and so
                would SGD's steps on those rows (scikit-learn's recipes
                leave one-hot columns unscaled, as this does 0/1 ones).
                Centring alone is what float32 training needs of columns
                far from zero (a timestamp near 1.7e9 rounds to a multiple
                of 128 in float32; its distance from the mean does not).
            target: None leaves y alone, "center" subtracts its mean, "scale"
                also divides by its standard deviation.
        """
        if features not in (True, False, "center", "scale"):
            raise ValueError(f"`features` (={features!r}) must be True, False, 'center' or 'scale'.")
        X = np.asarray(X)
        d = X.shape[1]
        x_mean, x_scale = np.zeros(d), np.ones(d)
        if features:
            # In float64, a block of rows at a time: no float64 copy of a large table.
            x_mean, spread = _moments(X, "X")
            if features != "center":
                two_valued, distance = _two_valued(X)
                x_scale = np.where(two_valued, distance, spread)
        k = 1 if y is None else np.asarray(y).reshape(len(X), -1).shape[1]
        y_mean, y_scale = np.zeros(k), np.ones(k)
        if target is not None:
            if target not in ("center", "scale"):
                raise ValueError(f"`target` (={target!r}) must be None, 'center' or 'scale'.")
            y_mean, y_spread = _moments(np.asarray(y).reshape(len(X), -1), "y")
            if target == "scale":
                y_scale = y_spread
        return cls(x_mean, x_scale, y_mean, y_scale)

    def transform(self, X, *, dtype=np.float64, out=None):
        """(X - x_mean) / x_scale, worked out in float64 and stored as `dtype`.

        Args:
            X: array of shape (n, d).
            dtype: the result's dtype.
            out: an array of shape (n, d) and that dtype to write into (X
                itself, to standardize in place).
        """
        X = np.asarray(X)
        if out is None:
            out = np.empty(X.shape, dtype)
        for start in range(0, X.shape[0], _BLOCK_ROWS):
            block = X[start : start + _BLOCK_ROWS]
            out[start : start + _BLOCK_ROWS] = (block.astype(np.float64) - self.x_mean) / self.x_scale
        return out

    def transform_target(self, y):
        y = np.asarray(y, np.float64)
        return (y.reshape(len(y), -1) - self.y_mean) / self.y_scale

    def inverse(self, X):
        return np.asarray(X, np.float64) * self.x_scale + self.x_mean

    def inverse_target(self, y):
        """Values of the scaled target (predictions) in the target's own units, in float64."""
        return np.asarray(y, np.float64) * self.y_scale + self.y_mean

    def target_part(self) -> "Standardizer":
        """The target's scaling alone, the features left as they are."""
        return self._replace(x_mean=np.zeros_like(self.x_mean), x_scale=np.ones_like(self.x_scale))

    def to_original(self, params: Params) -> Params:
        """Params of the model on standardized data, as a model of the original data."""
        w = np.asarray(params.w, np.float64) / self.x_scale[:, None] * self.y_scale[None, :]
        b = np.asarray(params.b, np.float64) * self.y_scale + self.y_mean - self.x_mean @ w
        return Params(w, b)

    def to_standardized(self, params: Params) -> Params:
        """The inverse of `to_original`: a model of the original data, on standardized data."""
        w = np.asarray(params.w, np.float64)
        b = (np.asarray(params.b, np.float64) + self.x_mean @ w - self.y_mean) / self.y_scale
        return Params(w * self.x_scale[:, None] / self.y_scale[None, :], b)


# Rows per block: the float64 temporaries of a large table stay a few MB.
_BLOCK_ROWS = 1 << 14
# Bytes of float64 rows per block of `least_squares` (scaled at once), and
# the rows of each QR within a block.
_BLOCK_BYTES = 16 << 20
_QR_ROWS = 2048
# Above this condition number of the scaled Gram matrix (1 / sqrt of float64's
# epsilon), even one correction of the normal equations leaves errors larger
# than the fit's own: `least_squares` then factors the rows instead.
_GRAM_CONDITION = 1e8


def _two_valued(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which columns hold exactly two distinct values, and the distance
    between each column's least and largest value; a block of rows at a time."""
    low = np.min(A, axis=0).astype(np.float64) if A.shape[0] else np.zeros(A.shape[1])
    high = np.max(A, axis=0).astype(np.float64) if A.shape[0] else np.zeros(A.shape[1])
    found = high > low
    for i in range(0, A.shape[0], _BLOCK_ROWS):
        if not found.any():
            break
        block = A[i : i + _BLOCK_ROWS]
        found &= np.all((block == low) | (block == high), axis=0)
    return found, high - low


def _moments(A: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations, in float64, in two passes over row blocks."""
    n = A.shape[0]
    blocks = range(0, n, _BLOCK_ROWS)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = sum(A[i : i + _BLOCK_ROWS].astype(np.float64).sum(axis=0) for i in blocks) / n
        square = sum(((A[i : i + _BLOCK_ROWS].astype(np.float64) - mean) ** 2).sum(axis=0) for i in blocks)
    spread = np.sqrt(square / n)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(spread))):
        raise ColumnTooLarge(name, int(np.argmax(~(np.isfinite(mean) & np.isfinite(spread)))))
    return mean, np.where(spread > 0, spread, 1.0)  # a constant column stays as it is


class ColumnTooLarge(ValueError):
    """A column whose mean or spread float64 cannot hold; `array` ("X" or
    "y") and `column` say which, for a caller that knows the columns' names."""

    def __init__(self, array: str, column: int, shown: str = ""):
        self.array, self.column = array, column
        shown = shown or f"`{array}` column {column} (counting from 0)"
        super().__init__(f"{shown} holds values too large for its mean and spread to be computed in float64 "
                         "(beyond about 1e150 in size), or values that are not finite: rescale them.")  # fmt: skip


def least_squares(X, y, weight=None):
    """Least squares with an intercept on a host table, in float64, with memory for a block of rows.

    The columns are centred and scaled to unit spread first, which removes
    the conditioning that comes from units alone. Then, on a well
    conditioned table, the normal equations corrected once ("corrected
    semi-normal equations": the Gram matrix and X'y summed a block of rows at
    a time, solved by SVD, the solution refined by solving again for the
    residual's part). Where the Gram matrix's condition number passes
    `_GRAM_CONDITION` (columns nearly dependent), forming it lost too much,
    and the rows with their targets beside them are instead reduced a block
    at a time to one triangular factor R ("tall and skinny" QR), whose square
    part is solved against its last columns by SVD: as accurate as an SVD of
    the whole table, and three to four times slower than the normal equations.
    Exactly dependent columns (one-hot levels beside the intercept) get the
    least-norm weights in the standardized units, with NumPy's cut-off for
    the whole table's singular values.

    Args:
        X: array of shape (n, d), any float dtype.
        y: array of shape (n, k).
        weight: optional array of shape (n,), each row's weight (>= 0) in the
            sum of squares; the rows are then centred on their weighted means,
            where the weighted problem's intercept passes.

    Returns:
        (w, b): float64 NumPy arrays of shapes (d, k) and (k,), in the table's units.
    """
    n, d = X.shape
    k = y.shape[1]
    rows = max(d + k, _BLOCK_BYTES // (8 * (d + k)))
    scaler = Standardizer.fit(X, y, features=True, target="center")
    x_center, y_center = np.zeros(d), np.zeros(k)
    if weight is not None:
        weight = np.asarray(weight, np.float64)
        if weight.shape != (n,) or not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise ValueError(f"`weight` must hold one finite weight >= 0 per row ({n},); got shape {weight.shape}"
                             + ("" if weight.shape != (n,) else ", with a negative or non-finite one") + ".")  # fmt: skip
        total = weight.sum()
        if not total > 0:
            raise ValueError("`weight` has no row of positive weight: least squares needs one.")
        for i in range(0, n, rows):
            x_center += weight[i : i + rows] @ scaler.transform(X[i : i + rows]) / total
            y_center += weight[i : i + rows] @ scaler.transform_target(y[i : i + rows]) / total

    def scaled_blocks():
        for i in range(0, n, rows):
            Xs, ys = scaler.transform(X[i : i + rows]), scaler.transform_target(y[i : i + rows])
            if weight is None:
                yield Xs, ys
            else:  # rows scaled by the root of their weight: their squares then count that much
                root = np.sqrt(weight[i : i + rows])[:, None]
                yield (Xs - x_center) * root, (ys - y_center) * root

    gram, xty = np.zeros((d, d)), np.zeros((d, k))
    for Xs, ys in scaled_blocks():
        gram += Xs.T @ Xs
        xty += Xs.T @ ys
    if np.linalg.cond(gram) <= _GRAM_CONDITION:
        w = np.linalg.lstsq(gram, xty, rcond=None)[0]
        correction = np.zeros((d, k))
        for Xs, ys in scaled_blocks():
            correction += Xs.T @ (ys - Xs @ w)
        w = w + np.linalg.lstsq(gram, correction, rcond=None)[0]
    else:
        factor = np.zeros((0, d + k))
        for Xs, ys in scaled_blocks():
            block = np.concatenate([Xs, ys], axis=1)
            # A few thousand rows at a time: a factorization that stays in
            # cache runs about five times faster than one of a whole block.
            step = max(d + k, _QR_ROWS)
            for j in range(0, block.shape[0], step):
                factor = np.linalg.qr(np.concatenate([factor, block[j : j + step]]), mode="r")
        square = np.zeros((d, d + k))
        square[: min(d, factor.shape[0])] = factor[:d]  # fewer rows than features: zero rows below
        # Singular values below NumPy's own cut-off for the whole table (its
        # rounding over n rows) are dependence, not signal: one-hot levels
        # beside an intercept would otherwise get weights of 1e10 and more.
        w = np.linalg.lstsq(square[:, :d], square[:, d:], rcond=np.finfo(np.float64).eps * max(n, d + 1))[0]
    original = scaler.to_original(Params(w, y_center - x_center @ w))
    return original.w, original.b
