"""Every path x every setting: the float64 reference's params, or a refusal naming the setting.

The matrix is generated from `tests/conformance.py`: adding a setting there
runs it through every path.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conformance as cf

# float32 training against a float64 reference over 3 epochs of 7 steps.
TOLERANCE = 2e-4


def check_cell(path, name, outcome):
    """`outcome` is (w, b) or the error a path raised."""
    refused = cf.ALWAYS_REFUSED.get(name) or cf.REFUSED.get(path, lambda s: None)(cf.SETTINGS[name])
    if refused is not None:
        assert isinstance(outcome, Exception), f"{path} ran {name}, which it should refuse by `{refused}`"
        # The refusal names one of the cell's own settings.
        named = [s for s in cf.SETTINGS[name] if f"`{s}`" in str(outcome) or f"'{s}'" in str(outcome)]
        assert named, f"{path} x {name}: the refusal names none of the cell's settings: {outcome}"
        return
    if isinstance(outcome, Exception):
        raise outcome
    w, b = outcome
    want_w, want_b = cf.expected(name)
    scale = 1 + np.abs(np.append(want_w, want_b)).max()
    np.testing.assert_allclose(np.append(w, b), np.append(want_w, want_b), atol=TOLERANCE * scale, rtol=0,
                               err_msg=f"{path} x {name}")  # fmt: skip


def run(path, name, tmp_path):
    try:
        return cf.run_path(path, name, tmp_path)
    except (ValueError, TypeError) as err:
        return err


CELLS = [
    pytest.param(path, name, id=f"{path}-{name}")
    for path in ("loop", "fused", "scan", "streamed", "sweep")
    for name in cf.SETTINGS
    if (path, name) not in cf.NOT_APPLICABLE
]


@pytest.mark.parametrize("path, name", CELLS)
def test_cell(path, name, tmp_path):
    check_cell(path, name, run(path, name, tmp_path))


def test_the_reference_is_not_fooled_by_its_own_settings():
    """Each setting moves the reference's answer: a cell whose setting were
    ignored by both a path and the reference would otherwise pass."""
    plain = np.append(*cf.expected("plain"))
    for name in cf.SETTINGS:
        if name in ("plain", "record_steps_off", "optax_sgd", "optax_with_l1", "optax_with_schedule"):
            continue  # these promise the plain run's answer (optax.sgd(0.02) is plain SGD at lr 0.02)
        moved = np.abs(np.append(*cf.expected(name)) - plain).max()
        assert moved > 50 * TOLERANCE, f"{name} barely moves the reference ({moved:.2g})"


def test_eight_devices_conform():
    """The devices path, for every cell, in a process with 8 simulated devices."""
    from conftest import simulated_devices_env

    env = simulated_devices_env(8)
    here = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(here / "conformance.py")], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert set(results) == set(cf.SETTINGS)
    for name, got in results.items():
        outcome = ValueError(got["error"]) if "error" in got else (np.array(got["w"]), got["b"])
        check_cell("devices", name, outcome)
