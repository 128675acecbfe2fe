"""Which engine is fastest where: fused against scan over features x batch size, and each one's error.

For each (features d, batch size) one warm epoch over the same float32 table
(targets from a random linear model plus noise, lr chosen stable for it),
the contenders taking turns: the fused engine (one sequential step after
another) and the scan engine (the same steps in parallel time). At batch 1,
scikit-learn's `SGDRegressor` (one epoch, constant rate) runs beside them.
`engine="auto"` chooses from the table this case prints (`jaxlr.engines.auto`);
its row says what it chose.

Accuracy rows: on a few problems of the oracle tests, the largest relative
error ``|p - p64| / max(1, |p64|)`` of each engine's float32 params against a
float64 sequential run of the same steps.
"""

import warnings

import jax
import numpy as np

import jaxlr
from benchmarks.harness import Row, available, interleaved_rows
from jaxlr.engines import auto

FEATURES = (10, 50, 100)
BATCHES = (1, 8, 64, 1024)


def run(*, num_rows=100_000, features=FEATURES, batches=BATCHES, repeats=5, budget_s=2.0, accuracy=True):
    rows = []
    rng = np.random.default_rng(0)
    for d in features:
        X = rng.normal(size=(num_rows, d)).astype(np.float32)
        y = (X @ rng.normal(size=d) / np.sqrt(d) + 0.1 * rng.normal(size=num_rows)).astype(np.float32)
        X_dev, y_dev = jax.device_put(X), jax.device_put(y.reshape(-1, 1))
        for B in batches:
            lr = 0.1 / (d + 1)
            contenders = []
            for engine in ("fused", "scan", "auto"):
                def fit(engine=engine, B=B, lr=lr):
                    return jaxlr.fit(X_dev, y_dev, key=jax.random.key(0), epochs=1, lr=lr, batch_size=B,
                                     engine=engine, record_steps=False).params.w  # fmt: skip
                contenders.append((f"d={d}, batch {B}: {engine}", fit, None))
            if B == 1 and available("sklearn"):
                from sklearn.linear_model import SGDRegressor

                model = SGDRegressor(max_iter=1, tol=None, learning_rate="constant", eta0=lr / 2, alpha=0.0,
                                     random_state=0)  # fmt: skip

                def sklearn_fit(model=model, X=X, y=y):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        return model.fit(X, y).coef_

                contenders.append((f"d={d}, batch {B}: scikit-learn SGDRegressor", sklearn_fit, None))
            measured = interleaved_rows("engines", contenders, repeats=repeats, budget_s=budget_s)
            fastest = min((r for r in measured if r.name.endswith(("fused", "scan"))), key=lambda r: r.seconds)
            chosen, why = auto.choose(jax.default_backend(), d, B, supported=None)
            for row in measured:
                row.metrics["rows_per_s"] = num_rows / row.seconds
                row.metrics["vs_fused"] = row.seconds / measured[0].seconds
                if row.name.endswith("auto"):
                    row.metrics["auto_chose"] = chosen
                    row.metrics["fastest"] = fastest.name.rsplit(" ", 1)[-1]
            rows.extend(measured)
    if accuracy:
        rows.extend(_accuracy())
    return rows


def _accuracy():
    """Each engine's float32 params against a float64 sequential run (the oracle of tests/test_scan.py)."""
    if not available("pytest"):
        return [Row("engines", "accuracy", skipped="the oracle lives in the tests, which need pytest")]
    from tests.test_scan import oracle, problem, stable_rate

    rows = []
    for d, n, B, rule in ((2, 10_000, 4, "sgd"), (64, 4_000, 1, "momentum"), (128, 20_000, 300, "nesterov"),
                          (5, 8_192, 4096, "sgd")):  # fmt: skip
        X, y, w0, b0 = problem(d, n, d)
        lr = stable_rate(X, B, 0.1)
        expected = oracle(X, y, w0, b0, epochs=2, lr=lr, batch_size=B, rule=rule)
        expected = np.concatenate([p.reshape(-1) for p in expected])
        row = Row("engines", f"accuracy d={d}, batch {B}, {rule}")
        for engine in ("loop", "fused", "scan"):
            result = jaxlr.fit(X, y, key=jax.random.key(0), init=jaxlr.Params(w0, b0), epochs=2, lr=lr,
                               batch_size=B, optimizer=rule, shuffle=False, engine=engine)  # fmt: skip
            got = np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in result.params])
            row.metrics[f"{engine}_error"] = float(np.max(np.abs(got - expected) / np.maximum(1, np.abs(expected))))
        rows.append(row)
    return rows


def targets(rows):
    checks = {}
    for row in rows:
        if row.name.endswith("auto") and row.seconds:
            checks[f"{row.name.rsplit(':', 1)[0]}: auto chose the fastest"] = (
                row.metrics["auto_chose"] == row.metrics["fastest"]
            )
        if row.name.startswith("accuracy"):
            checks[f"{row.name}: scan error <= 1e-5"] = row.metrics["scan_error"]
    for row in rows:
        if row.name.endswith("scikit-learn SGDRegressor") and row.seconds:
            prefix = row.name.rsplit(":", 1)[0]
            scan = next(r for r in rows if r.name == f"{prefix}: scan")
            checks[f"{prefix}: scan rows/s / scikit-learn's >= 2"] = row.seconds / scan.seconds
    return checks
