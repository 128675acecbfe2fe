"""One epoch's order: jaxlr's keyed permutation against the shuffles it replaced.

The contenders take turns in one process, at each size: on the host, NumPy's
Fisher-Yates (the previous release's host shuffle) and `jaxlr.shuffle`'s
permutation; on the device (a CPU here unless JAX sees another), the sort of
random bits (the previous release's device shuffle) and the same keyed
permutation compiled. Each call draws a fresh epoch's order from its key.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import interleaved_rows
from jaxlr import shuffle
from jaxlr.data import key_words

OLD_HOST = "NumPy Fisher-Yates (previous host shuffle)"
NEW_HOST = "jaxlr.shuffle on the host"
OLD_DEVICE = "sort of random bits on the device (previous)"
NEW_DEVICE = "jaxlr.shuffle on the device"


def run(*, sizes=(10_000, 2_000_000), repeats=5):
    rows = []
    for n in sizes:
        words = key_words(jax.random.split(jax.random.key(0), 64))
        epochs = itertools.cycle(range(64))

        def old_host():
            w = words[next(epochs)]
            return np.random.Generator(np.random.SFC64(w.tolist())).permutation(n).astype(np.int32)

        def new_host():
            return shuffle.permutation_from_words(words[next(epochs)], n)

        @jax.jit
        def old_device(key):
            bits = jax.random.bits(key, (n,), jnp.uint32)
            return jnp.argsort(bits, stable=True).astype(jnp.int32)

        new_device_program = jax.jit(lambda w: shuffle.device_permutation(w, n, n))
        keys = jax.random.split(jax.random.key(0), 64)
        device_words = jnp.asarray(words)
        contenders = [
            (OLD_HOST, old_host, None),
            (NEW_HOST, new_host, None),
            (OLD_DEVICE, lambda: old_device(keys[next(epochs)]), None),
            (NEW_DEVICE, lambda: new_device_program(device_words[next(epochs)]), None),
        ]
        measured = interleaved_rows("shuffle", contenders, repeats=repeats)
        for row in measured:
            row.name = f"{row.name}, n = {n:,}"
            row.metrics["rows_per_s"] = n / row.seconds
        rows += measured
    return rows


def targets(rows):
    by = {r.name: r.seconds for r in rows if r.seconds}
    sizes = sorted({int(name.rsplit("= ", 1)[1].replace(",", "")) for name in by})
    checks = {}
    for n in sizes:
        at = lambda name: by[f"{name}, n = {n:,}"]  # noqa: E731
        checks[f"n = {n:,}: host time / Fisher-Yates <= 1"] = at(NEW_HOST) / at(OLD_HOST)
        checks[f"n = {n:,}: device time / sort <= 1"] = at(NEW_DEVICE) / at(OLD_DEVICE)
        checks[f"n = {n:,}: device time / host time (information)"] = at(NEW_DEVICE) / at(NEW_HOST)
    return checks
