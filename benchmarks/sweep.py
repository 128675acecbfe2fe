"""64 learning rates of the lesson's job: one vmapped program against 64 separate fits."""

import warnings

import jax
import numpy as np

import jaxlr
from benchmarks.harness import CompileCounter, Row, available, interleaved_rows


def run(*, num_examples=10_000, num_rates=64, repeats=5):
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=num_examples)
    X_np, y_np = np.asarray(X), np.asarray(y)[:, 0]
    key = jax.random.key(1)
    lrs = np.logspace(-4, -1, num_rates)
    jaxlr.train._sweep_program.cache_clear()

    def best(result):
        final = np.asarray(result.moving_losses)[:, -1]
        return {"best_lr": float(lrs[np.nanargmin(final)]), "diverged": int(np.asarray(result.diverged).sum())}

    contenders = [
        (f"jaxlr.sweep ({num_rates} lrs, one program)", lambda: jaxlr.sweep(X, y, key=key, lrs=lrs), best),
        ("one jaxlr fused fit", lambda: jaxlr.fit(X, y, key=key), None),
        (f"{num_rates} jaxlr fused fits", lambda: [jaxlr.fit(X, y, key=key, lr=float(lr)) for lr in lrs], None),
    ]
    skipped = []
    if available("sklearn"):
        from sklearn.linear_model import SGDRegressor

        def sklearn_fits():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [
                    SGDRegressor(learning_rate="constant", eta0=lr, max_iter=2, tol=None, penalty=None,
                                 random_state=0).fit(X_np, y_np)  # fmt: skip
                    for lr in lrs
                ]

        contenders.append((f"{num_rates} SGDRegressor fits", sklearn_fits, None))
    else:
        skipped.append(Row("sweep", f"{num_rates} SGDRegressor fits", skipped="scikit-learn is not installed"))
    rows = interleaved_rows("sweep", contenders, repeats=repeats, budget_s=5.0) + skipped
    with CompileCounter() as compiles:  # warm: a sweep compiles nothing more
        jax.block_until_ready(jaxlr.sweep(X, y, key=key, lrs=lrs).params)
    rows[0].metrics["compilations"] = compiles.count
    return rows


def targets(rows):
    sweep, one = rows[0].seconds, rows[1].seconds
    return {"sweep / one fit <= 10": sweep / one, "warm compilations == 0": rows[0].metrics["compilations"]}
