"""Memory that does not grow with the number of epochs."""

import subprocess
import sys
import textwrap

import pytest

# In a fresh process, whose peak resident memory (VmHWM) is its own, reset
# before each measured fit.
_PEAK = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    import jaxlr

    def peak_mb(fit, epochs):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the peak starts again from the memory in use now
        fit(epochs)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024

    n, epochs = int(sys.argv[1]), int(sys.argv[2])
    X = np.random.default_rng(0).standard_normal((n, 4), dtype=np.float32)
    y = X[:, :1] + 0.5
    for engine in ("fused", "loop"):
        fit = lambda e: jaxlr.fit(X, y, key=jax.random.key(0), epochs=e, batch_size=n // 4, lr=0.01,
                                  engine=engine, record_steps=False)
        fit(1)
        fit(epochs)  # everything compiled: what follows is what the epochs cost
        print(engine, peak_mb(fit, 1), peak_mb(fit, epochs))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_peak_memory_does_not_grow_with_the_number_of_epochs():
    # One epoch's order of 1M rows is 4 MB on the host and 4 MB on the
    # device; 16 epochs' would be 128 MB. The rows themselves are 16 MB.
    done = subprocess.run([sys.executable, "-c", _PEAK, "1000000", "16"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = {engine: (int(one), int(many)) for engine, one, many in (line.split() for line in done.stdout.splitlines())}
    assert set(peaks) == {"fused", "loop"}
    for engine, (one, many) in peaks.items():
        assert many - one < 64, f"{engine}: peak {one} MB after 1 epoch, {many} MB after 16"


_BUDGET = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    import jaxlr

    def peak_mb(fit):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        result = fit()
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024, int(result.state.epoch)

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 2), dtype=np.float32)
    y = X.sum(axis=1) + rng.standard_normal(20000, dtype=np.float32)
    for budget in (20, 5000, 20, 5000):  # the first two compile
        fit = lambda: jaxlr.fit(X, y, key=jax.random.key(0), epochs=budget, batch_size=1, lr=0.001, tol=1e-3)
        print(budget, *peak_mb(fit))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_peak_memory_follows_the_epochs_run_not_the_budget():
    """A stopping rule ends both runs after the same few epochs: a budget of
    5000 epochs must not hold buffers for 5000 epochs of 20 000 steps."""
    done = subprocess.run([sys.executable, "-c", _BUDGET], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (_, small, ran_small), (_, large, ran_large) = [map(int, line.split()) for line in done.stdout.splitlines()[2:]]
    assert ran_small == ran_large < 20
    assert large - small < 64, f"peak {small} MB with 20 epochs allowed, {large} MB with 5000"


_SHAPES = textwrap.dedent(
    """
    import jax, numpy as np
    import jaxlr

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    rng = np.random.default_rng(0)
    for d in range(1, 33):  # the caches hold 16 kinds of fit: full from 16 on
        X = rng.normal(size=(100, d)).astype(np.float32)
        jaxlr.fit(X, X.sum(axis=1), key=jax.random.key(0), epochs=1)
        if d in (20, 32):
            import ctypes, gc; gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
            print(rss_mb())
    jaxlr.clear_caches()
    print(rss_mb())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_compiled_programs_are_bounded_in_shapes_and_released_on_request():
    """Programs are cached by settings and shapes, a bounded number of them:
    12 more feature counts once the caches are full cost little (unbounded,
    each cost about 12 MB), and jaxlr.clear_caches() frees them."""
    done = subprocess.run([sys.executable, "-c", _SHAPES], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    at_20, at_32, cleared = map(int, done.stdout.split())
    assert at_32 - at_20 < 40, f"{at_20} MB after 20 feature counts, {at_32} MB after 32"
    assert cleared < at_32 - 50, f"{at_32} MB before jaxlr.clear_caches(), {cleared} MB after"
