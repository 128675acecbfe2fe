"""What a practitioner runs: scikit-learn's model selection, accuracy on real tables, batch-1 speed.

Every group sets `jaxlr.SGDRegressor` (or `jaxlr.fit`) against scikit-learn's
`SGDRegressor` in one process, the contenders taking turns:

- 5-fold `cross_val_score` of ``make_pipeline(StandardScaler(), SGDRegressor())``
  on scikit-learn's diabetes table, warm;
- `GridSearchCV` of the same pipeline over alpha x eta0 (3 x 3), cv=5, warm;
- held-out test R² on 20 % of tables bundled with scikit-learn (diabetes,
  linnerud's three targets fitted one by one, targets as they come) and of a
  synthetic one (`make_regression`, noisy, target at unit scale), standardized
  features, every loss x penalty with the defaults otherwise, each library's
  R² averaged over random states. These rows' `seconds` is the wall time of
  the table's whole comparison (compilations included); `sklearn_seed_noise`
  is how far scikit-learn's own average moves with other random states (the
  floor under any difference);
- one epoch at batch size 1 over a synthetic float32 table, in rows per
  second: `jaxlr.fit` given the NumPy table (copied to the device by each
  fit) and given it on the device already.

`vs_sklearn` is a jaxlr row's median over its own group's scikit-learn row's.
"""

import itertools
import time
import warnings

import jax
import numpy as np

import jaxlr
from benchmarks.harness import CompileCounter, Row, available, interleaved_rows

LOSSES = ("squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive")
PENALTIES = (None, "l2", "l1", "elasticnet")
SETTINGS = tuple(itertools.product(LOSSES, PENALTIES))
GRID = {"sgdregressor__alpha": (1e-4, 1e-3, 1e-2), "sgdregressor__eta0": (0.003, 0.01, 0.03)}
TABLES = ("diabetes", "linnerud", "make_regression")
CV = "cross_val_score (5-fold)"
SEARCH = "GridSearchCV (3 x 3, 5-fold)"
BATCH_ONE = ("jaxlr.fit, batch 1 (NumPy X)", "jaxlr.fit, batch 1 (X on the device)",
             "scikit-learn SGDRegressor, batch 1")  # fmt: skip


def run(*, num_rows=200_000, num_features=100, num_tables=3, num_settings=16, num_seeds=5, budget_s=2.0,
        repeats=5):  # fmt: skip
    if not available("sklearn"):
        return [Row("practice", "every contender", skipped="scikit-learn is not installed")]
    from sklearn.linear_model import SGDRegressor

    X, Y, _ = _table("diabetes")
    rows = _model_selection(X, Y[:, 0], SGDRegressor, repeats, budget_s)
    settings = SETTINGS
    if num_settings < len(SETTINGS):  # evenly spread, from the default (squared_error, l2)
        settings = SETTINGS[1 :: len(SETTINGS) // num_settings][:num_settings]
    for name in TABLES[:num_tables]:
        rows.append(_agreement(name, settings, num_seeds, SGDRegressor))
    return rows + _batch_one(num_rows, num_features, SGDRegressor, repeats, budget_s)


def targets(rows):
    by = {r.name: r for r in rows if r.seconds}
    if not by:
        return {}
    checks = {}
    for group in (CV, SEARCH):
        ours = by[f"jaxlr {group}"].metrics
        checks[f"{group}: jaxlr / scikit-learn <= 1"] = ours["vs_sklearn"]
        checks[f"{group}: warm jaxlr compilations == 0"] = ours["compilations"]
    for row in rows:
        if row.name.startswith("test R²"):
            checks[f"{row.name}: max |jaxlr - scikit-learn| <= 0.01"] = row.metrics["max_abs_dR2"]
    checks["batch 1: jaxlr rows/s (NumPy X)"] = by[BATCH_ONE[0]].metrics["rows_per_s"]
    checks["batch 1: scikit-learn rows/s"] = by[BATCH_ONE[2]].metrics["rows_per_s"]
    checks["batch 1: jaxlr / scikit-learn rows/s (information)"] = (
        by[BATCH_ONE[0]].metrics["rows_per_s"] / by[BATCH_ONE[2]].metrics["rows_per_s"]
    )
    return checks


# ------------------------------------------------------------------ model selection


def _model_selection(X, y, SGDRegressor, repeats, budget_s):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def quiet(fn):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return fn()

        return run

    # error_score="raise": a failed fit should stop the benchmark, not score NaN.
    def scores(estimator):
        return quiet(lambda: cross_val_score(make_pipeline(StandardScaler(), estimator()), X, y, cv=5,
                                             error_score="raise"))  # fmt: skip

    def search(estimator):
        return quiet(lambda: GridSearchCV(make_pipeline(StandardScaler(), estimator()), GRID, cv=5,
                                          error_score="raise").fit(X, y))  # fmt: skip

    def best(grid):
        chosen = ", ".join(f"{k.split('__')[1]}={v:g}" for k, v in grid.best_params_.items())
        return {"mean_r2": float(grid.best_score_), "best": chosen}

    def mean(scores):
        return {"mean_r2": float(np.mean(scores))}

    rows = []
    for group, contender, metrics in ((CV, scores, mean), (SEARCH, search, best)):
        ours, theirs = interleaved_rows(
            "practice",
            [(f"jaxlr {group}", contender(jaxlr.SGDRegressor), metrics),
             (f"scikit-learn {group}", contender(SGDRegressor), metrics)],
            repeats=repeats, budget_s=budget_s,
        )  # fmt: skip
        with CompileCounter() as compiles:  # warm: new folds, seeds and values compile nothing
            contender(jaxlr.SGDRegressor)()
        ours.metrics["compilations"] = compiles.count
        ours.metrics["vs_sklearn"] = ours.seconds / theirs.seconds
        rows += [ours, theirs]
    return rows


# ------------------------------------------------------------------ accuracy


def _table(name):
    """(X, Y, the targets' names) with Y of shape (n, k)."""
    from sklearn import datasets

    if name == "diabetes":
        X, y = datasets.load_diabetes(return_X_y=True)
    elif name == "linnerud":
        data = datasets.load_linnerud()
        return data.data, data.target, list(data.target_names)
    else:
        # Diabetes's shape, so that the two tables share compiled programs; the
        # target at unit scale, where every loss converges within max_iter.
        X, y = datasets.make_regression(n_samples=442, n_features=10, n_informative=6, noise=20.0,
                                        random_state=0)  # fmt: skip
        y = (y - y.mean()) / y.std()
    return X, y[:, None], [None]


def _agreement(name, settings, num_seeds, SGDRegressor):
    """Test R² of jaxlr and scikit-learn on a 20 % hold-out, per target, loss and penalty."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, Y, target_names = _table(name)
    X_train, X_test, Y_train, Y_test = train_test_split(X, Y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

    def mean_r2(estimator, seeds, loss, penalty, j):
        models = (estimator(loss=loss, penalty=penalty, random_state=seed) for seed in seeds)
        return float(np.mean([m.fit(X_train, Y_train[:, j]).score(X_test, Y_test[:, j]) for m in models]))

    start = time.perf_counter()
    found, noise = [], 0.0
    with warnings.catch_warnings(), CompileCounter() as compiles:
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached, on both sides
        for j, target in enumerate(target_names):
            for loss, penalty in settings:
                ours = mean_r2(jaxlr.SGDRegressor, range(num_seeds), loss, penalty, j)
                theirs = mean_r2(SGDRegressor, range(num_seeds), loss, penalty, j)
                others = mean_r2(SGDRegressor, range(num_seeds, 2 * num_seeds), loss, penalty, j)
                noise = max(noise, abs(others - theirs))
                label = f"{loss}/{penalty}" + (f" ({target})" if target else "")
                found.append((abs(ours - theirs), label, ours, theirs))
    seconds = time.perf_counter() - start
    found.sort(reverse=True)
    worst = "; ".join(f"{label} {ours:.4g} vs {theirs:.4g}" for _, label, ours, theirs in found[:3])
    targets = f", {len(target_names)} targets" if len(target_names) > 1 else ""
    title = f"test R²: {name} ({len(settings)} settings x {num_seeds} seeds{targets})"
    row = Row("practice", title, seconds)
    row.metrics = {"max_abs_dR2": found[0][0], "sklearn_seed_noise": noise, "worst": worst,
                   "compilations": compiles.count}  # fmt: skip
    return row


# ------------------------------------------------------------------ throughput


def _batch_one(num_rows, num_features, SGDRegressor, repeats, budget_s):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((num_rows, num_features), dtype=np.float32)
    y = (X @ rng.standard_normal(num_features, dtype=np.float32) + np.float32(0.5)
         + np.float32(0.1) * rng.standard_normal(num_rows, dtype=np.float32))  # fmt: skip
    X_dev, y_dev = jaxlr.to_device(X), jaxlr.to_device(y)
    key = jax.random.key(0)
    spread = float(np.var(y))

    def train_r2(w, b):
        residual = X @ np.asarray(w, np.float32).reshape(-1) + np.float32(np.ravel(b)[0]) - y
        return {"train_r2": 1.0 - float(np.mean(residual.astype(np.float64) ** 2)) / spread}

    def sklearn_epoch():
        # Constant rate, one epoch, no stopping rule: the plain per-row loop.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter reached: intended
            return SGDRegressor(max_iter=1, tol=None, learning_rate="constant", eta0=1e-3, penalty=None,
                                random_state=0).fit(X, y)  # fmt: skip

    def from_fit(result):
        return train_r2(result.params.w, result.params.b)

    rows = interleaved_rows(
        "practice",
        [(BATCH_ONE[0], lambda: jaxlr.fit(X, y, key=key, batch_size=1, epochs=1, lr=1e-3), from_fit),
         (BATCH_ONE[1], lambda: jaxlr.fit(X_dev, y_dev, key=key, batch_size=1, epochs=1, lr=1e-3), from_fit),
         (BATCH_ONE[2], sklearn_epoch, lambda m: train_r2(m.coef_, m.intercept_))],
        repeats=repeats, budget_s=budget_s,
    )  # fmt: skip
    for row in rows:
        row.metrics["rows_per_s"] = num_rows / row.seconds
    for row in rows[:2]:
        row.metrics["vs_sklearn"] = row.seconds / rows[2].seconds
    return rows
