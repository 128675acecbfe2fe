"""`jaxlr.SGDRegressor` and the ways people use it, against scikit-learn's `SGDRegressor`.

Each group times the two estimators in one process, taking turns, with the
same settings and the same float64 table (as people have them):

- one shuffled epoch of per-sample SGD (squared loss, constant rate 0.001,
  `max_iter=1, tol=None`) over `num_rows` rows at d = 10, 100 and 300;
- 100 `partial_fit` calls of 4 rows x 20;
- `partial_fit` over 20 chunks of `chunk_rows` x 20;
- `warm_start`: five alphas, each fit going on from the last, 5 epochs each;
- elastic net, Huber, `average=True` and sample weights: 5 epochs each.

The workflows' tables have `chunk_rows` rows x 20. `vs_sklearn` is jaxlr's
time over scikit-learn's in the same group: below 1, jaxlr is faster.
"""

import warnings

import numpy as np

from benchmarks.harness import Row, available, interleaved_rows

EPOCH = {"max_iter": 1, "tol": None, "learning_rate": "constant", "eta0": 0.001, "random_state": 0}
FIVE_EPOCHS = {"max_iter": 5, "tol": None, "random_state": 0}
WIDTHS = (10, 100, 300)
# The target for each group: jaxlr's time over scikit-learn's at most this.
EPOCH_BAR = {10: 1 / 1.5, 100: 1 / 1.5, 300: 1 / 1.2}


def _table(num_rows, num_features, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_rows, num_features))
    y = X @ rng.standard_normal(num_features) + 0.5 + 0.1 * rng.standard_normal(num_rows)
    return X, y


def _workflows(X, y, weight):
    """name -> fit(SGDRegressor) for each workflow on the table (X, y)."""
    small_X, small_y = X[:400], y[:400]
    chunks = np.array_split(np.arange(len(X)), 20)

    def small_calls(estimator):
        model = estimator(**EPOCH)
        for start in range(0, 400, 4):
            model.partial_fit(small_X[start : start + 4], small_y[start : start + 4])
        return model

    def in_chunks(estimator):
        model = estimator(**EPOCH)
        for rows in chunks:
            model.partial_fit(X[rows], y[rows])
        return model

    def warm_start(estimator):
        model = estimator(warm_start=True, **FIVE_EPOCHS)
        for alpha in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5):
            model.set_params(alpha=alpha).fit(X, y)
        return model

    return {
        "100 partial_fit calls of 4 rows": small_calls,
        "partial_fit over 20 chunks": in_chunks,
        "warm_start over 5 alphas": warm_start,
        "elastic net": lambda estimator: estimator(penalty="elasticnet", l1_ratio=0.5, **FIVE_EPOCHS).fit(X, y),
        "Huber": lambda estimator: estimator(loss="huber", **FIVE_EPOCHS).fit(X, y),
        "average": lambda estimator: estimator(average=True, **FIVE_EPOCHS).fit(X, y),
        "sample_weight": lambda estimator: estimator(**FIVE_EPOCHS).fit(X, y, sample_weight=weight),
    }


def run(*, num_rows=200_000, chunk_rows=20_000, widths=WIDTHS, repeats=3, budget_s=2.0):
    if not available("sklearn"):
        return [Row("estimator", "scikit-learn not installed", 0.0)]
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDRegressor as TheirSGDRegressor

    from jaxlr import SGDRegressor as OurSGDRegressor

    groups = {}
    for d in widths:
        X, y = _table(num_rows, d)
        groups[f"one epoch, batch 1, d = {d}"] = (lambda X, y: lambda estimator: estimator(**EPOCH).fit(X, y))(X, y)
    X, y = _table(chunk_rows, 20, seed=1)
    weight = np.random.default_rng(2).uniform(0.5, 2.0, chunk_rows)
    groups.update(_workflows(X, y, weight))

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for group, work in groups.items():
            theirs, ours = interleaved_rows("estimator", [
                (f"scikit-learn: {group}", lambda: work(TheirSGDRegressor), None),
                (f"jaxlr: {group}", lambda: work(OurSGDRegressor), None),
            ], repeats=repeats, budget_s=budget_s)  # fmt: skip
            ours.metrics["vs_sklearn"] = ours.seconds / theirs.seconds
            if group.startswith("one epoch"):
                for row in (theirs, ours):
                    row.metrics["rows_per_s"] = num_rows / row.seconds
            rows += [theirs, ours]
    return rows


def targets(rows):
    checks = {}
    for row in rows:
        if not row.name.startswith("jaxlr: "):
            continue
        group = row.name.removeprefix("jaxlr: ")
        if group.startswith("one epoch"):
            d = int(group.rsplit("= ", 1)[1])
            bar = EPOCH_BAR.get(d, 1 / 1.5)
            checks[f"{group}: jaxlr / scikit-learn time <= {bar:.2f} (rows/s >= {1 / bar:.1f} x)"] = row.metrics["vs_sklearn"]
        else:
            checks[f"{group}: jaxlr / scikit-learn time <= 1"] = row.metrics["vs_sklearn"]
    return checks
