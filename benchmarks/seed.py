"""The lesson's job: 10 000 x 2, batch 4, 2 epochs, lr 0.001, every contender in one process."""

import warnings

import jax
import numpy as np

import jaxlr
from benchmarks.harness import Row, available, interleaved_rows

TRUE_W, TRUE_B = np.array([2.0, -3.4]), 4.2
EPOCHS, BATCH, LR = 2, 4, 0.001


def run(*, num_examples=10_000, repeats=5):
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=num_examples)
    X_np, y_np = np.asarray(X), np.asarray(y)
    steps = EPOCHS * -(-num_examples // BATCH)
    key = jax.random.key(1)

    def error(w, b):
        return {"param_error": float(max(np.abs(np.ravel(w) - TRUE_W).max(), abs(float(np.ravel(b)[0]) - TRUE_B)))}

    def from_fit(result):
        return error(result.params.w, result.params.b)

    # Contenders take turns, so that each sees the same load on a shared
    # machine; the fast ones (about a millisecond) and the step-by-step loops
    # (a tenth of a second and more) in separate groups, so that the slow
    # ones neither starve the fast of runs nor flush their caches.
    fast = [
        ("jaxlr fused", lambda: jaxlr.fit(X, y, key=key), from_fit),
        ("numpy lstsq (closed form)", lambda: lstsq(X_np, y_np), lambda r: error(*r)),
        ("jaxlr.solve (closed form)", lambda: jaxlr.solve(X, y), lambda p: error(p.w, p.b)),
    ]
    slow = [
        ("jaxlr loop", lambda: jaxlr.fit(X, y, key=key, engine="loop"), from_fit),
        ("naive JAX loop (d2l style)", lambda: naive_jax(X_np, y_np), lambda r: error(*r)),
    ]
    skipped = []
    if available("sklearn"):
        fast.insert(1, ("scikit-learn SGDRegressor", lambda: sgd_regressor(X_np, y_np),
                        lambda m: error(m.coef_, m.intercept_)))  # fmt: skip
    else:
        skipped.append(Row("seed", "scikit-learn SGDRegressor", skipped="scikit-learn is not installed"))
    if available("torch"):
        slow.append(("PyTorch from scratch", lambda: torch_from_scratch(X_np, y_np), lambda r: error(*r)))
    else:
        skipped.append(Row("seed", "PyTorch from scratch", skipped="torch is not installed"))
    rows = (
        interleaved_rows("seed", fast, repeats=repeats, budget_s=3.0)
        + interleaved_rows("seed", slow, repeats=repeats, budget_s=6.0)
        + skipped
    )
    for row in rows:
        if row.seconds and row.name in ("jaxlr loop", "naive JAX loop (d2l style)", "PyTorch from scratch"):
            row.metrics["us_per_step"] = row.seconds / steps * 1e6
    return rows


def targets(rows):
    """The speed targets, as ratios from this run."""
    t = {r.name: r.seconds for r in rows if r.seconds}
    steps_loop = next((r.metrics["us_per_step"] for r in rows if r.name == "jaxlr loop"), None)
    checks = {}
    if "scikit-learn SGDRegressor" in t:
        checks["fused / SGDRegressor <= 0.5"] = t["jaxlr fused"] / t["scikit-learn SGDRegressor"]
    checks["naive / fused >= 100"] = t["naive JAX loop (d2l style)"] / t["jaxlr fused"]
    checks["loop us per step <= 15"] = steps_loop
    checks["naive / loop >= 3"] = t["naive JAX loop (d2l style)"] / t["jaxlr loop"]
    return checks


def naive_jax(X, y):
    """A jitted step fed from NumPy fancy indexing, the loss read back every step."""
    n, d = X.shape
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(d, 1)).astype(np.float32), rng.normal(size=(1,)).astype(np.float32)
    moving = None
    for epoch in range(EPOCHS):
        order = rng.permutation(n)
        for i in range(0, n, BATCH):
            rows = order[i : i + BATCH]
            w, b, loss = _naive_step(w, b, X[rows], y[rows])
            current = float(loss)  # the lesson's asscalar(): a host sync every step
            moving = current if moving is None else 0.99 * moving + 0.01 * current
    return np.asarray(w), np.asarray(b)


@jax.jit
def _naive_step(w, b, X, y):
    def loss(w, b):
        return ((X @ w + b[None, :] - y) ** 2).mean()

    value, (gw, gb) = jax.value_and_grad(loss, argnums=(0, 1))(w, b)
    return w - LR * gw, b - LR * gb, value


def sgd_regressor(X, y):
    from sklearn.linear_model import SGDRegressor

    model = SGDRegressor(
        learning_rate="constant", eta0=LR, max_iter=EPOCHS, tol=None, penalty=None, shuffle=True, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached: intended
        return model.fit(X, y[:, 0])


def lstsq(X, y):
    design = np.hstack([X, np.ones((X.shape[0], 1), X.dtype)])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return coef[:-1], coef[-1]


def torch_from_scratch(X, y):
    """The lesson in PyTorch: DataLoader shuffling, autograd, a hand-written SGD update."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.tensor(X), torch.tensor(y))  # copies: X may be a read-only view
    loader = DataLoader(data, batch_size=BATCH, shuffle=True)
    w = torch.randn(X.shape[1], 1, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    moving = None
    for epoch in range(EPOCHS):
        for X_batch, y_batch in loader:
            loss = ((X_batch @ w + b - y_batch) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for p in (w, b):
                    p -= LR * p.grad
                    p.grad.zero_()
            current = loss.item()
            moving = current if moving is None else 0.99 * moving + 0.01 * current
    return w.detach().numpy(), b.detach().numpy()
