"""How jaxlr starts: `import jaxlr` loads nothing, and the command reads its table while JAX loads."""

import json
import subprocess
import sys

import numpy as np
import pytest

from test_cli import run_cli


def _python(code, tmp_path):
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_jaxlr_loads_nothing_and_each_name_loads_on_first_use(tmp_path):
    _python(
        """
import importlib, sys
import jaxlr, jaxlr.cli
assert "jax" not in sys.modules, "importing jaxlr or its command's parser imported JAX"
module = importlib.import_module("jaxlr.solve")  # the submodule: the package's name `solve` stays the function
assert jaxlr.solve is module.solve and callable(jaxlr.solve)
for name in jaxlr.__all__:
    assert getattr(jaxlr, name) is not None, name
assert set(jaxlr.__all__) <= set(dir(jaxlr))
for name in ("model", "train", "data", "optim", "metrics", "engines", "callbacks", "preprocessing", "persist"):
    assert getattr(jaxlr, name).__name__ == f"jaxlr.{name}"  # the lesson's modules, as attributes
from jaxlr import fit, SGDRegressor  # noqa: F401
""",
        tmp_path,
    )


def test_solve_reads_its_table_ahead_and_solve_and_predict_import_no_jax(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = X @ [1.0, -2.0, 0.5] + 3.0
    np.savetxt(tmp_path / "t.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,y", comments="")
    out = _python(
        """
import json, sys, threading
from jaxlr import cli, tables

reads = []
real = tables.load_table

def load_table(*args, **kwargs):
    reads.append(threading.current_thread().name)
    return real(*args, **kwargs)

cli.load_table = tables.load_table = load_table  # the read ahead's, and the command's
status = cli.main(["solve", "--data", "t.csv", "--target", "y", "--json", "--save", "m.npz"])
status += cli.main(["predict", "--model", "m.npz", "--data", "t.csv", "--output", "p.csv"])
status += cli.main(["solve", "--data", "t.csv", "--target", "y", "--val-fraction", "0.25", "--quiet"])
print(json.dumps({"status": status, "reads": reads, "jax": "jax" in sys.modules}))
""",
        tmp_path,
    )
    result = json.loads(out.splitlines()[-1])
    # solve read once, ahead; predict read in turn; none needed JAX, a held-out split included.
    assert result == {"status": 0, "reads": ["jaxlr-read-ahead", "MainThread", "jaxlr-read-ahead"], "jax": False}


@pytest.mark.parametrize("options", [[], ["--no-standardize", "--target-scaling", "none"], ["--val-fraction", "0.25"]])
def test_solve_gives_the_least_squares_of_its_training_rows_in_float64(tmp_path, options):
    # A timestamp-like feature and a target far from zero: float32 would lose both.
    rng = np.random.default_rng(1)
    t = 1.7e9 + rng.uniform(0, 1e4, size=800)
    u = rng.normal(size=800)
    y = 3e-3 * (t - 1.7e9) - 2.0 * u + 1e6 + 0.01 * rng.normal(size=800)
    np.savetxt(tmp_path / "t.csv", np.column_stack([t, u, y]), delimiter=",", header="t,u,y", comments="", fmt="%.17g")
    done = run_cli("solve", "--data", "t.csv", "--target", "y", "--json", "--save", "m.npz", *options,
                   cwd=tmp_path, cache_dir=tmp_path / "cache")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    if "--val-fraction" not in options:
        design = np.column_stack([t - t.mean(), u, np.ones(800)])
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        # The model file holds float32 params of the standardized features: about 1e-7 of each.
        np.testing.assert_allclose(report["w"], coef[:2], rtol=1e-6)
        np.testing.assert_allclose(report["b"], coef[2] - coef[0] * t.mean(), rtol=1e-6)
    else:
        assert report["val_rows"] == 200 and report["val_r2"] > 0.999
    # The model file predicts as the fit does, far from zero included.
    np.savetxt(tmp_path / "new.csv", np.column_stack([t[:50], u[:50]]), delimiter=",", header="t,u", comments="",
               fmt="%.17g")  # fmt: skip
    done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    predicted = np.array(done.stdout.split()[1:], float)
    np.testing.assert_allclose(predicted, y[:50], atol=0.1)  # noise 0.01; float32 holds 1e6 to 0.06
    assert report["train_r2"] > 0.999


def test_a_model_file_predicts_a_target_near_1e9_to_its_noise(tmp_path):
    # float32 holds 1e9 only to 64: the params in the target's units are kept in float64.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    y = X @ [1.0, 2.0, 3.0] + 1e9 + 20.0 + 0.5 * rng.normal(size=2000)  # float32: 1e9 or 1e9 + 64
    np.savetxt(tmp_path / "t.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,y", comments="", fmt="%.17g")
    for command in (["solve"], ["train", "--epochs", "30"]):
        done = run_cli(*command, "--data", "t.csv", "--target", "y", "--save", "m.npz", "--quiet",
                       cwd=tmp_path, cache_dir=tmp_path / "cache")  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = run_cli("predict", "--model", "m.npz", "--data", "t.csv", "--output", "p.csv",
                       cwd=tmp_path, cache_dir=tmp_path / "cache")  # fmt: skip
        assert done.returncode == 0, done.stderr
        predicted = np.loadtxt(tmp_path / "p.csv", skiprows=1)
        assert np.mean((predicted - y) ** 2) < 0.3, command  # the noise's variance is 0.25
