"""The `jaxlr` command on tables of one's own: defaults, reports, messages, start-up and memory."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxlr
from jaxlr import cli
from jaxlr.persist import load_model

from test_cli import run_cli


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """scikit-learn's diabetes table (target mean 152) and a clean linear one far from zero."""
    from sklearn.datasets import load_diabetes

    d = tmp_path_factory.mktemp("tables")
    diabetes = load_diabetes()
    names = ",".join(diabetes.feature_names)
    rows = np.column_stack([diabetes.data, diabetes.target])
    np.savetxt(d / "houses.csv", rows, delimiter=",", header=f"{names},price", comments="", fmt="%.10g")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 5)) * [1.0, 3.0, 0.5, 10.0, 2.0] + [0.0, 5.0, -3.0, 50.0, 1.0]
    y = X @ [1.0, -2.0, 0.5, 3.0, -1.5] + 400.0 + 0.1 * rng.normal(size=4000)
    np.savetxt(d / "linear.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,d,e,y", comments="", fmt="%.10g")
    return d


README_RECIPE = ["--standardize", "--val-fraction", "0.2", "--epochs", "50", "--batch-size", "32", "--lr", "0.01",
                 "--optimizer", "adam", "--early-stopping", "5"]  # fmt: skip


def test_the_readme_recipe_and_the_defaults_learn_tables_far_from_zero(tables, cache_dir):
    reports = {}
    for name, target in (("houses", "price"), ("linear", "y")):
        done = run_cli("train", "--data", f"{name}.csv", "--target", target, *README_RECIPE, "--json",
                       cwd=tables, cache_dir=cache_dir)  # fmt: skip
        assert done.returncode == 0 and done.stderr == "", done.stderr
        reports[name] = json.loads(done.stdout)
    assert reports["houses"]["val_r2"] > 0.3  # scikit-learn's SGDRegressor pipeline: about 0.33
    assert reports["linear"]["val_r2"] > 0.99
    assert abs(reports["linear"]["b"] - 400.0) < 1.0

    # No options at all: standardized, started at the mean, stopped early on held-out rows.
    done = run_cli("train", "--data", "houses.csv", "--target", "price", "--save", "m.npz", cwd=tables,
                   cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    val_r2 = float(next(line for line in lines if line.startswith("validation MSE")).rsplit("= ", 1)[1])
    assert val_r2 > 0.3
    assert any(line.startswith("early stopping: stopped after ") for line in lines), lines
    settings = load_model(tables / "m.npz").settings
    assert settings["standardize"] is True and settings["target_scaling"] == "scale"
    assert settings["val_fraction"] == 0.1 and settings["early_stopping"] == 5 and settings["lr"] == 0.01


def test_the_defaults_train_a_table_with_a_category_that_one_row_holds(tmp_path, capsys):
    # Standardized, the one "Monaco" row's indicator stood at about sqrt(8000)
    # = 89: the default rate's steps on it diverged (seeds 0 and 1).
    rng = np.random.default_rng(7)
    n = 8000
    sqft = rng.uniform(500, 4000, n).round()
    city = rng.choice(["Paris", "Lyon", "Nice", "Lille"], n).astype(object)
    city[123] = "Monaco"
    effect = {"Paris": 2e5, "Lyon": 8e4, "Nice": 1.2e5, "Lille": 3e4, "Monaco": 9e5}
    price = 5e4 + 250 * sqft + np.array([effect[c] for c in city]) + rng.normal(0, 2e4, n)
    (tmp_path / "t.csv").write_text("sqft,city,price\n" + "".join(f"{a},{c},{p:.2f}\n" for a, c, p in zip(sqft, city, price)))
    assert cli.main(["train", "--data", str(tmp_path / "t.csv"), "--target", "price", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["val_r2"] > 0.99
    # A flag that one row holds, coded -1/+1 (a 0/1 one-hot column comes of the text above).
    flag = np.where(np.arange(n) == 123, 1, -1)
    (tmp_path / "f.csv").write_text("sqft,flag,price\n" + "".join(f"{a},{f},{p:.2f}\n" for a, f, p in zip(sqft, flag, price)))
    assert cli.main(["train", "--data", str(tmp_path / "f.csv"), "--target", "price", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["val_r2"] > 0.6


def test_columns_of_two_values_are_scaled_by_their_distance_not_their_spread():
    X = np.zeros((1000, 5))
    X[5, 0] = 1.0  # a rare category
    X[::2, 1] = 1.0  # a balanced flag
    X[5, 2] = 2.0  # a rare flag coded 0/2
    X[:, 3], X[7, 3] = -1.0, 1.0  # and one coded -1/+1
    X[5, 4], X[6, 4] = 1.0, 2.0  # three values: scaled by its spread
    scaler = jaxlr.Standardizer.fit(X)
    np.testing.assert_array_equal(scaler.x_scale[:4], [1.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(scaler.x_mean[:4], [0.001, 0.5, 0.002, -0.998])
    assert scaler.x_scale[4] == pytest.approx(X[:, 4].std())
    # So the rare rows stand within 1 of zero once standardized, however the flag is coded.
    assert np.abs(scaler.transform(X)[:, :4]).max() <= 1.0


def test_a_model_worse_than_the_mean_is_one_warning_line_that_says_what_to_try(tmp_path, cache_dir):
    # Noise against noise, 30 features for 30 training rows: the fit is pure overfitting.
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 31))
    np.savetxt(tmp_path / "noise.csv", rows, delimiter=",", comments="", fmt="%.8g",
               header=",".join([f"x{j}" for j in range(30)] + ["y"]))  # fmt: skip
    done = run_cli("train", "--data", "noise.csv", "--target", "y", "--no-standardize", "--target-scaling", "none",
                   "--val-fraction", "0.25", "--early-stopping", "0", "--epochs", "200", "--lr", "0.05", "--json",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["val_r2"] < 0 < report["train_r2"]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("jaxlr: warning: the model predicts worse than the target's mean (training R^2 = ")
    assert "--standardize" in done.stderr and "--target-scaling scale" in done.stderr and "--lr" in done.stderr


def test_the_advice_for_a_streamed_table_names_only_what_a_stream_takes(capsys):
    import argparse

    from jaxlr import commands

    args = argparse.Namespace(command="train", stream=True, standardize=False, target_scaling="none", lr=0.1, json=False)
    commands._warn_if_worse_than_the_mean({"train_r2": -0.5, "epochs_run": 3}, args)
    warning = capsys.readouterr().err
    assert "worse than the target's mean" in warning and "--lr" in warning
    assert "--standardize" not in warning and "--target-scaling" not in warning


def test_help_shows_every_default_and_every_option_explains_itself():
    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help text"
    text = commands["train"].format_help()
    for shown in ("200 with --data, 2 for the lesson's job", "0.01 with --data, 0.001 for the lesson's job",
                  "32 with --data, 4 for the lesson's job", "(default: sgd)", "--no-standardize",
                  "(default: 60.0)"):  # fmt: skip
        assert shown in " ".join(text.split()), shown


def test_predict_on_the_training_table_ignores_its_target_and_reports_the_error(tables, cache_dir):
    done = run_cli("train", "--data", "houses.csv", "--target", "price", "--save", "m.npz", "--quiet",
                   cwd=tables, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = load_model(tables / "m.npz")
    table = np.loadtxt(tables / "houses.csv", delimiter=",", skiprows=1)
    expected = model.predict(table[:, :-1])[:, 0]
    mse = float(np.mean((expected - table[:, -1]) ** 2))
    r2 = 1 - mse / float(np.var(table[:, -1]))

    to_stdout = run_cli("predict", "--model", "m.npz", "--data", "houses.csv", cwd=tables, cache_dir=cache_dir)
    assert to_stdout.returncode == 0, to_stdout.stderr
    np.testing.assert_allclose(np.loadtxt(to_stdout.stdout.splitlines()[1:]), expected, rtol=1e-6)
    assert to_stdout.stderr.startswith(f"against price: MSE = {mse:.4g}, R^2 = {r2:.4f}")
    as_json = run_cli("predict", "--model", "m.npz", "--data", "houses.csv", "--output", "p.csv", "--json",
                      cwd=tables, cache_dir=cache_dir)  # fmt: skip
    report = json.loads(as_json.stdout)
    assert report["target"] == "price" and report["rows"] == 442
    np.testing.assert_allclose([report["mse"], report["r2"]], [mse, r2], rtol=1e-6)
    np.testing.assert_allclose(np.loadtxt(tables / "p.csv", skiprows=1), expected, rtol=1e-6)


def test_divergence_advice_fits_the_run_and_plots_take_their_format_from_the_name(tables, cache_dir):
    done = run_cli("train", "--data", "linear.csv", "--target", "y", "--lr", "1000", "--save", "m2.npz",
                   cwd=tables, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("jaxlr: error: training diverged"), done.stderr
    assert "standardize" not in done.stderr and "--lr" in done.stderr
    done = run_cli("train", "--lr", "10", cwd=tables, cache_dir=cache_dir)  # the lesson's job: raw features
    assert done.returncode == 1 and "standardize the features" in done.stderr

    for name, magic in (("curve.pdf", b"%PDF"), ("curve.svg", b"<svg")):
        done = run_cli("train", "--data", "houses.csv", "--target", "price", "--epochs", "5", "--quiet",
                       "--plot", name, cwd=tables, cache_dir=cache_dir)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert magic in (tables / name).read_bytes()[:400]
    done = run_cli("train", "--data", "houses.csv", "--target", "price", "--plot", "curve.jpg",
                   cwd=tables, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 2 and "must end in .png, .pdf or .svg" in done.stderr
    assert not (tables / "curve.jpg").exists()


def test_progress_without_a_terminal_is_bounded_and_the_report_says_early_stopping_did_not_stop(tables, cache_dir):
    done = run_cli("train", "--data", "houses.csv", "--target", "price", "--epochs", "300", "--early-stopping",
                   "1000", cwd=tables, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stdout.splitlines() if line.startswith("Epoch ")]
    assert 10 <= len(progress) <= 21 and progress[-1].startswith("Epoch 300/300."), progress
    assert "early stopping: did not stop, all 300 epochs ran; kept epoch " in done.stdout


def test_python_warnings_become_one_line(monkeypatch, capsys):
    import warnings

    from jaxlr import commands

    def warns(args):
        warnings.warn("checkpoint-00000003.npz is damaged:\n  skipped", UserWarning)
        return 0

    monkeypatch.setattr(commands, "_solve", warns)
    assert cli.main(["solve"]) == 0
    assert capsys.readouterr().err == "jaxlr: warning: checkpoint-00000003.npz is damaged: skipped\n"


def test_a_reader_that_goes_away_loses_no_model(tmp_path, cache_dir):
    env = {**os.environ, "JAXLR_CACHE_DIR": str(cache_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxlr", "train", "--engine", "loop", "--epochs", "3", "--save", "m.npz"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stdout.readline().startswith(b"Epoch 0")
    process.stdout.close()  # as `| head -1` does
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert err == b"" and (tmp_path / "m.npz").is_file()


def test_a_peer_that_never_starts_is_named_within_the_timeout(tmp_path, cache_dir):
    from test_parallel import _free_port

    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{i},{2 * i}\n" for i in range(8)))
    common = ["train", "--data", "t.csv", "--target", "y", "--coordinator", f"127.0.0.1:{_free_port()}",
              "--num-processes", "3", "--peer-timeout", "1"]  # fmt: skip
    first = run_cli(*common, "--process-id", "0", cwd=tmp_path, cache_dir=cache_dir, timeout=60)
    assert first.returncode == 2, first.stderr
    assert first.stderr.count("\n") == 1 and first.stderr.startswith("jaxlr: error: process(es) 1, 2 of 3 did not join")
    alone = run_cli(*common, "--process-id", "2", cwd=tmp_path, cache_dir=cache_dir, timeout=60)
    assert alone.returncode == 2
    assert alone.stderr.startswith("jaxlr: error: the coordinator, process 0, did not answer"), alone.stderr


def test_across_processes_an_engine_is_refused_by_the_plans_reason_before_joining(tmp_path, cache_dir):
    from test_parallel import _free_port

    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{i},{2 * i}\n" for i in range(8)))
    common = ["train", "--data", "t.csv", "--target", "y", "--coordinator", f"127.0.0.1:{_free_port()}",
              "--num-processes", "2", "--process-id", "0", "--peer-timeout", "1"]  # fmt: skip
    for engine, reason in (("loop", "several processes: the loop feeds batches from one host (fused and auto can)"),
                           ("scan", "several `devices`: the scan engine runs on one")):  # fmt: skip
        done = run_cli(*common, "--engine", engine, cwd=tmp_path, cache_dir=cache_dir, timeout=60)
        assert (done.returncode, done.stderr) == (2, f"jaxlr: error: --engine {engine} cannot run {reason}.\n")
    # auto picks among the engines that can: it goes on to wait for the other process.
    done = run_cli(*common, "--engine", "auto", cwd=tmp_path, cache_dir=cache_dir, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("jaxlr: error: process(es) 1 of 2 did not join"), done.stderr


def test_more_devices_than_there_are_names_the_flag_that_makes_them():
    X, y = np.ones((8, 2)), np.ones(8)
    with pytest.raises(ValueError, match="XLA_FLAGS=--xla_force_host_platform_device_count=64"):
        jaxlr.fit(X, y, key=jax.random.key(0), devices=64)
    with pytest.raises(ValueError, match="XLA_FLAGS=--xla_force_host_platform_device_count=64"):
        jaxlr.parallel.data_mesh(64)


def test_the_estimators_without_scikit_learn_say_what_to_install():
    code = ("import sys; sys.modules['sklearn'] = None; import jaxlr\n"
            "for name in ('SGDRegressor', 'LinearRegressor'):\n"
            "    try: getattr(jaxlr, name)\n"
            "    except ModuleNotFoundError as err: print(err)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [
        f"jaxlr.{name} needs scikit-learn: pip install 'jaxlr[sklearn]'." for name in ("SGDRegressor", "LinearRegressor")
    ], done.stderr


# ------------------------------------------------------------------ memory

PEAK = """
import sys
from jaxlr import cli
status = cli.main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(status, int(peak.split()[1]) * 1024, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def big_table(tmp_path_factory):
    """A 200 MB .npy table: 5 000 000 rows of 9 features and a target far from zero."""
    path = tmp_path_factory.mktemp("big") / "big.npy"
    rng = np.random.default_rng(0)
    table = np.empty((5_000_000, 10), np.float32)
    table[:, :9] = rng.standard_normal((5_000_000, 9), np.float32)
    table[:, 9] = table[:, :9] @ np.arange(1, 10, dtype=np.float32) + 100
    np.save(path, table)
    return path


def peak_bytes(*args, cwd, cache_dir):
    env = {**os.environ, "JAXLR_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", PEAK, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    status, peak = done.stderr.splitlines()[-1].split()
    assert status == "0", done.stderr
    return int(peak), done.stdout


def test_a_table_in_memory_trains_within_twice_its_size_and_a_streamed_one_as_the_readme_says(big_table, cache_dir):
    size = big_table.stat().st_size
    assert size >= 200e6
    peak, out = peak_bytes("train", "--data", big_table.name, "--target", "9", "--epochs", "1", "--batch-size",
                           "4096", "--json", cwd=big_table.parent, cache_dir=cache_dir)  # fmt: skip
    assert json.loads(out)["val_r2"] > 0.99
    assert peak <= 2 * size + 0.4e9, f"peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB table"
    chunk = 64 << 20
    peak, out = peak_bytes("train", "--data", big_table.name, "--target", "9", "--stream", "--chunk-mb", "64",
                           "--epochs", "1", "--batch-size", "4096", "--lr", "0.001", "--json",
                           cwd=big_table.parent, cache_dir=cache_dir)  # fmt: skip
    assert json.loads(out)["rows"] == 5_000_000
    assert peak <= 0.4e9 + 4 * chunk, f"streamed peak RSS {peak / 1e6:.0f} MB"  # the README's bound
    peak, out = peak_bytes("solve", "--data", big_table.name, "--target", "9", "--json", cwd=big_table.parent,
                           cache_dir=cache_dir)  # fmt: skip
    np.testing.assert_allclose(json.loads(out)["w"], np.arange(1, 10), rtol=1e-5)
    assert peak <= 2 * size + 0.4e9, f"solve: peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB table"


@pytest.mark.parametrize("x64", [False, True])
def test_a_large_table_is_solved_in_blocks_as_lstsq_solves_it(monkeypatch, x64):
    import importlib

    solve_module = importlib.import_module("jaxlr.solve")  # the module, not the function of that name
    monkeypatch.setattr(solve_module, "_IN_BLOCKS_BYTES", 0)
    monkeypatch.setattr(importlib.import_module("jaxlr.preprocessing"), "_BLOCK_BYTES", 8 * 4 * 50)  # least squares on blocks of 50 rows
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1003, 3)) @ [[1.0, 0.9, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 1e3]] + [5.0, -5.0, 1e4]
    y = X @ [[2.0], [-1.0], [0.003]] + 7.0 + rng.normal(size=(1003, 1))
    design = np.column_stack([X, np.ones(len(X))])
    w, b = np.split(np.linalg.lstsq(design, y, rcond=None)[0], [3])
    with jax.enable_x64(x64):
        params = jaxlr.solve(X if x64 else X.astype(np.float32), y if x64 else y.astype(np.float32))
    rtol = 1e-9 if x64 else 2e-3
    np.testing.assert_allclose(np.asarray(params.w, np.float64), w, rtol=rtol)
    np.testing.assert_allclose(np.asarray(params.b, np.float64), b[0], rtol=rtol)


def test_sample_weights_also_weigh_the_validation_rows_and_the_reported_metrics(tmp_path, cache_dir):
    # Rows of weight 0 are noise: training ignores them, and so must the
    # held-out score, early stopping and the reported R² (unweighted, the
    # noise made a good model look worse than the mean).
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(size=n)
    noise_row = rng.random(n) < 0.3
    y = np.where(noise_row, 200 * rng.normal(size=n), 2 * x + 1 + 0.1 * rng.normal(size=n))
    weight = np.where(noise_row, 0.0, 1.0)
    rows = "".join(f"{float(a)!r},{w},{float(t)!r}\n" for a, w, t in zip(x, weight, y))
    (tmp_path / "w.csv").write_text("x,weight,y\n" + rows)
    done = run_cli("train", "--data", "w.csv", "--target", "y", "--sample-weight", "weight", "--json", "--quiet",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = trained = json.loads(done.stdout)
    np.testing.assert_allclose(report["w"], [2.0], atol=0.05)
    assert report["train_r2"] > 0.99 and report["val_r2"] > 0.99, report
    assert "worse than" not in done.stderr
    # Weights are relative: in another unit (x 100), the same model, where the steps grew 100-fold and diverged.
    (tmp_path / "w100.csv").write_text("x,weight,y\n" + "".join(
        f"{float(a)!r},{100 * w},{float(t)!r}\n" for a, w, t in zip(x, weight, y)))  # fmt: skip
    done = run_cli("train", "--data", "w100.csv", "--target", "y", "--sample-weight", "weight", "--json", "--quiet",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout)["w"], trained["w"], rtol=1e-5)
    # solve weighs the rows' squares by them, as train weighs its steps.
    done = run_cli("solve", "--data", "w.csv", "--target", "y", "--sample-weight", "weight", "--json", "--quiet",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    np.testing.assert_allclose(report["w"], [2.0], atol=0.02)
    assert report["train_r2"] > 0.99 and report["metrics_weighted_by"] == "weight", report

    # One row of weight 1, which training keeps: no held-out row could score the model.
    (tmp_path / "one.csv").write_text("x,weight,y\n" + "".join(f"{float(a)!r},{int(i == 0)},{float(t)!r}\n"
                                                                for i, (a, t) in enumerate(zip(x[:200], y[:200]))))  # fmt: skip
    done = run_cli("train", "--data", "one.csv", "--target", "y", "--sample-weight", "weight", "--quiet",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 2 and "every validation row has weight 0" in done.stderr, done.stderr
    (tmp_path / "zero.csv").write_text("x,weight,y\n" + "".join(f"{float(a)!r},0,{float(t)!r}\n" for a, t in zip(x[:200], y[:200])))
    for command, split in (("train", ()), ("solve", ("--val-fraction", "0"))):  # train holds out rows by default
        done = run_cli(command, "--data", "zero.csv", "--target", "y", "--sample-weight", "weight", *split,
                       cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
        assert done.returncode == 2 and done.stderr.strip() == (
            "jaxlr: error: --sample-weight: every row has weight 0 (200 rows): nothing to fit."), done.stderr


def test_weights_near_the_largest_float_scale_to_a_mean_of_one_without_overflowing():
    from jaxlr.commands import _relative

    np.testing.assert_allclose(_relative(np.array([1e308, 5e307, 0.0])), [2.0, 1.0, 0.0])
