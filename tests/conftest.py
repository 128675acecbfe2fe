import atexit
import os
import shutil
import tempfile

import jax
import pytest

# `import jaxlr` keeps compiled programs on disk; the suite keeps them in a
# directory of its own (one per worker, its subprocesses included), never the user's.
if "JAXLR_CACHE_DIR" not in os.environ:
    os.environ["JAXLR_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlr-test-xla-")
    atexit.register(shutil.rmtree, os.environ["JAXLR_CACHE_DIR"], ignore_errors=True)

# (n, 1) against (n,) silently broadcasts to (n, n): the classic linear
# regression bug. Strict mode turns any implicit rank promotion into an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def seed_data():
    """The lesson's data set: 10 000 rows, y = 2 x0 - 3.4 x1 + 4.2 + 0.01 noise."""
    import jaxlr

    return jaxlr.synthetic_data(jax.random.key(0))


TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def simulated_devices_env(devices: int) -> dict:
    """The environment of a subprocess that sees `devices` simulated CPU devices.

    The collectives' timeouts are raised from XLA's 40 s: on a loaded 2-core
    machine, 8 device threads can take that long to meet at an all-reduce,
    and a test must not fail because the machine is busy.
    """
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_cpu_collective_timeout_seconds=1800 "
        "--xla_cpu_collective_call_terminate_timeout_seconds=1800",
        JAX_PLATFORMS="cpu",
    )
    return env
