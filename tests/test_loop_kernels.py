"""The XLA option jaxlr sets as it is imported: a training loop compiled as one kernel on a CPU."""

import ast
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxlr
from jaxlr import loop_kernels
from jaxlr.engines import auto, core

OPTION = f"--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold={loop_kernels.LOOP_BYTES}"

# Imports jaxlr in a fresh process after `prelude`; prints XLA_FLAGS and whether the option is in effect.
PROBE = """
import ast
import os
{prelude}
import jaxlr
print(repr(os.environ.get("XLA_FLAGS")), jaxlr.loop_kernels.in_effect())
"""


def _probe(prelude="", **env):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXLR_KEEP_XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], env={**base, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    flags, in_effect = done.stdout.rsplit(" ", 1)
    return ast.literal_eval(flags), in_effect.strip() == "True"


def test_importing_jaxlr_first_sets_the_option_beside_the_process_flags():
    assert _probe() == (OPTION, True)
    own = "--xla_force_host_platform_device_count=2"
    assert _probe(XLA_FLAGS=own) == (f"{own} {OPTION}", True)
    # JAX imported, but no backend started yet: XLA has not read its flags.
    assert _probe("import jax") == (OPTION, True)


@pytest.mark.parametrize("prelude, env, expected", [
    pytest.param("import jax; jax.numpy.zeros(1)", {}, (None, False), id="backend-already-started"),
    pytest.param("", {"JAXLR_KEEP_XLA_FLAGS": "1"}, (None, False), id="switched-off"),
    pytest.param("", {"JAXLR_KEEP_XLA_FLAGS": "0"}, (OPTION, True), id="switch-set-to-0"),
    pytest.param("", {"XLA_FLAGS": "--xla_backend_extra_options=xla_cpu_disable_loop_unrolling=true"},
                 ("--xla_backend_extra_options=xla_cpu_disable_loop_unrolling=true", False), id="own-backend-options"),
    pytest.param("", {"XLA_FLAGS": "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=100"},
                 ("--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=100", False), id="own-lower-value"),
    pytest.param("", {"XLA_FLAGS": "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=999999"},
                 ("--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=999999", True), id="own-higher-value"),
    # Inherited from a parent that imported jaxlr: in effect, though this process started JAX first.
    pytest.param("import jax; jax.numpy.zeros(1)", {"XLA_FLAGS": OPTION}, (OPTION, True), id="inherited"),
    # XLA takes the last value given.
    pytest.param("", {"XLA_FLAGS": f"{OPTION} --xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=100"},
                 (f"{OPTION} --xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=100", False),
                 id="given-twice"),
])  # fmt: skip
def test_the_process_choice_stands(prelude, env, expected):
    assert _probe(prelude, **env) == expected


def test_flags_replaced_after_the_import_are_the_ones_xla_reads():
    # A process may set XLA_FLAGS after importing jaxlr, before JAX starts: those are the flags that count.
    code = PROBE.format(prelude="").replace(
        "import jaxlr\n", "import jaxlr\nos.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n")
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXLR_KEEP_XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["'--xla_force_host_platform_device_count=2'", "False"], done.stderr[-2000:]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the option is the CPU backend's")
@pytest.mark.skipif(not loop_kernels.in_effect(), reason="this process started JAX before importing jaxlr")
def test_a_per_row_step_over_many_features_compiles_as_one_kernel():
    # At 100 features a step touches more than XLA's default 1 KiB: without
    # the option, its loop stays a series of kernel calls (a quarter of the speed).
    rng = np.random.default_rng(0)
    X = jaxlr.to_device(rng.normal(size=(64, 100)).astype(np.float32))
    y = jaxlr.to_device(rng.normal(size=(64, 1)).astype(np.float32))
    spec = core.Spec(loss=jaxlr.losses.resolve("squared"), batch_size=1, smooth=False)
    state = core.init_fit_state(jaxlr.init_params(jax.random.key(0), 100, 1), "sgd")
    numbers = core.pack(core.Numbers(rate=jaxlr.schedules.Rate(eta0=0.01)), np.float32)
    data = core.Data(X, y, None, core.on_device(np.int32(64)))
    orders = np.arange(64, dtype=np.int32)[None]
    compiled = core.program(spec, False, "host").lower(state, data, numbers, orders, np.int32(1), None).compile()
    assert 'xla_cpu_small_call="true"' in compiled.as_text()


def test_auto_reads_the_table_of_the_loops_in_use():
    # The two tables differ where the option changes which engine is faster.
    differing = [(d, B) for d in (10, 20, 50, 100, 300, 1000) for B in (1, 8, 64)
                 if auto.choose("cpu", d, B, supported=None, loops_as_kernels=True)[0]
                 != auto.choose("cpu", d, B, supported=None, loops_as_kernels=False)[0]]  # fmt: skip
    assert differing
    d, B = differing[0]
    chosen = auto.choose("cpu", d, B, supported=None)
    assert chosen == auto.choose("cpu", d, B, supported=None, loops_as_kernels=loop_kernels.in_effect())


def test_the_carry_packed_for_loops_run_kernel_by_kernel_trains_the_same(monkeypatch):
    # Plain SGD with L1 carries its state as one flat vector where loops run
    # kernel by kernel, and apart where a loop is one kernel: the same steps.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X @ rng.normal(size=6) + 0.3).astype(np.float32)
    settings = dict(key=jax.random.key(1), epochs=3, batch_size=1, lr=0.01, penalty="elasticnet", alpha=0.01,
                    l1_ratio=0.5, schedule="invscaling")  # fmt: skip
    runs = []
    for in_effect in (True, False):
        monkeypatch.setattr(loop_kernels, "in_effect", lambda value=in_effect: value)
        jaxlr.clear_caches()  # the compiled programs follow the layout
        assert core._carried_packed(core.Spec(loss=None, l1=True)) is not in_effect
        runs.append(jaxlr.fit(X, y, **settings))
    jaxlr.clear_caches()
    np.testing.assert_allclose(runs[0].params.w, runs[1].params.w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[0].epoch_losses, runs[1].epoch_losses, rtol=1e-5)
    assert np.count_nonzero(np.asarray(runs[0].params.w) == 0) == np.count_nonzero(np.asarray(runs[1].params.w) == 0)
