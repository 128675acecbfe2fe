"""The `jaxlr` command, end to end, in subprocesses."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxlr
from jaxlr import cli
from jaxlr.persist import load_model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # One compilation cache for the module's runs, never the user's own.
    return tmp_path_factory.mktemp("xla-cache")


def run_cli(*args, cwd, cache_dir, timeout=300):
    env = {**os.environ, "JAXLR_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "jaxlr", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def write_table(path, n=400, seed=0, header="id,a,b,c,label,price"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    y = X @ [1.5, -0.2, 0.03] + 7.0 + 0.1 * rng.normal(size=n)
    lines = [header] + [f"{i},{x[0]},{x[1]},{x[2]},row{i},{t}" for i, (x, t) in enumerate(zip(X, y))]
    path.write_text("\n".join(lines) + "\n")
    return X, y


def test_the_seed_job_prints_the_lessons_lines_and_the_result(tmp_path, cache_dir):
    done = run_cli("train", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    log = [line for line in lines if line.startswith("Epoch ")]
    assert [re.match(r"Epoch (\d), batch (\d+)\. Moving avg of loss: [\d.e+-]+$", l).groups() for l in log] == [
        (str(e), str(b)) for e in (0, 1) for b in (499, 999, 1499, 1999, 2499)
    ]
    assert any(line.startswith("learned w = [") and "true w = [2.0, -3.4]" in line for line in lines)
    assert any(line.startswith("learned b = ") and "true b = 4.2" in line for line in lines)
    assert any(line.startswith("final moving loss = ") for line in lines)
    assert any(line.startswith("elapsed = ") for line in lines)


def test_a_run_keeps_its_compiled_programs_and_repeats_for_its_seed(tmp_path):
    # The command leaves without the interpreter's teardown: what it wrote to
    # the compilation cache must be there, and a warm rerun must agree.
    cache = tmp_path / "cache"

    def results(seed):
        done = run_cli("train", "--quiet", "--seed", seed, cwd=tmp_path, cache_dir=cache)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if not line.startswith("elapsed")]

    first = results(7)
    assert len(list(cache.iterdir())) >= 3  # data, start and training programs
    assert results(7) == first
    assert results(8) != first


def test_train_save_predict_round_trip_matches_the_api(tmp_path, cache_dir):
    X, y = write_table(tmp_path / "table.csv")
    done = run_cli(
        "train", "--data", "table.csv", "--target", "price", "--features", "a,b,c", "--standardize",
        "--val-fraction", "0.25", "--epochs", "20", "--batch-size", "16", "--lr", "0.01",
        "--save", "model.npz", "--quiet", cwd=tmp_path, cache_dir=cache_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "validation MSE" in done.stdout and "Epoch" not in done.stdout
    model = load_model(tmp_path / "model.npz")
    assert model.feature_names == ("a", "b", "c") and model.target_names == ("price",)

    # The prediction table: columns in another order, no target, a text column.
    rng = np.random.default_rng(5)
    X_new = rng.normal(size=(7, 3))
    rows = [f"{c},{a},{b},x" for a, b, c in X_new]
    (tmp_path / "new.csv").write_text("c,a,b,note\n" + "\n".join(rows) + "\n")
    done = run_cli("predict", "--model", "model.npz", "--data", "new.csv", "--output", "preds.csv",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    predicted = np.loadtxt(tmp_path / "preds.csv", delimiter=",", skiprows=1)
    # The same model through the API: standardize, then the network.
    standardized = (X_new - model.x_mean) / model.x_scale
    expected = np.asarray(jaxlr.net(jaxlr.Params(*model.params), standardized.astype(np.float32)))[:, 0]
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)
    # And the fit itself is good: close to the closed form on the same data.
    w, b = model.coefficients()
    closed = np.linalg.lstsq(np.column_stack([X, np.ones(len(X))]), y, rcond=None)[0]
    # Each coefficient within 2 % of its own size (the smallest, 0.03, sits on a feature of scale 100).
    np.testing.assert_allclose(w[:, 0], closed[:3], rtol=0.02, atol=0)
    np.testing.assert_allclose(b, closed[3:], rtol=0.02, atol=0)


def test_solve_reports_json_and_saves(tmp_path, cache_dir):
    X, y = write_table(tmp_path / "table.csv")
    done = run_cli("solve", "--data", "table.csv", "--target", "5", "--features", "a,b,c", "--json",
                   "--save", "exact.npz", cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    design = np.hstack([X, np.ones((len(X), 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(report["w"], coef[:3], rtol=1e-3, atol=1e-4)
    assert report["target"] == "price" and report["model"] == "exact.npz"
    assert (tmp_path / "exact.npz").is_file()


def test_train_json_with_early_stopping_and_a_plot(tmp_path, cache_dir):
    write_table(tmp_path / "table.csv")
    done = run_cli(
        "train", "--data", "table.csv", "--target", "price", "--features", "a,b,c", "--standardize",
        "--val-fraction", "0.2", "--epochs", "200", "--batch-size", "32", "--lr", "0.05",
        "--optimizer", "momentum", "--early-stopping", "3", "--plot", "loss.png", "--json",
        cwd=tmp_path, cache_dir=cache_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole of stdout is one JSON object
    assert report["epochs_run"] < 200 and 0 <= report["best_epoch"] < report["epochs_run"]
    assert report["val_r2"] > 0.99
    import matplotlib.pyplot as plt

    image = plt.imread(tmp_path / "loss.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_npz_and_npy_tables(tmp_path, cache_dir):
    X, y = write_table(tmp_path / "unused.csv")
    np.savez(tmp_path / "data.npz", X=X, y=y)
    np.save(tmp_path / "matrix.npy", np.column_stack([X, y]))
    done = run_cli("solve", "--data", "data.npz", "--target", "y", "--json", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    from_npz = json.loads(done.stdout)["w"]
    done = run_cli("solve", "--data", "matrix.npy", "--target", "3", "--json", "--save", "m.npz",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout)["w"], from_npz, rtol=1e-6)
    np.save(tmp_path / "new.npy", X[:4])
    done = run_cli("predict", "--model", "m.npz", "--data", "new.npy", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "3" and len(done.stdout.splitlines()) == 5


@pytest.mark.parametrize("settings", [["--lr", "10"], ["--lr", "1e30", "--epochs", "1", "--batch-size", "10000"]],
                         ids=["early", "on the last step"])
def test_divergence_is_one_line_and_exit_status_1(tmp_path, cache_dir, settings):
    done = run_cli("train", *settings, "--save", "model.npz", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("jaxlr: error: training diverged at epoch 0")
    assert not (tmp_path / "model.npz").exists()


GOOD = ["--data", "table.csv", "--target", "price", "--features", "a,b,c"]
ERRORS = {
    "missing data file": (["train", "--data", "nope.csv", "--target", "price"], "does not exist"),
    "data directory": (["train", "--data", ".", "--target", "price"], "--data file '.' is a directory, not a file"),
    "model directory": (["predict", "--model", ".", "--data", "table.csv"], "model file '.' is a directory, not a file"),
    "no target": (["train", "--data", "table.csv"], "needs --target"),
    "unknown target": (["train", "--data", "table.csv", "--target", "cost"], "'cost' is not in table.csv"),
    "target index out of range": (["train", "--data", "table.csv", "--target", "9"], "out of range"),
    "non-numeric cell": (["train", "--data", "bad_cell.csv", "--target", "price"], "line 4, column 'b' holds 'oops'"),
    "empty cell": (["train", "--data", "empty_cell.csv", "--target", "price"], "line 3, column 'price' is empty"),
    "empty file": (["train", "--data", "empty.csv", "--target", "price"], "is empty"),
    "header only": (["train", "--data", "header.csv", "--target", "price"], "no data rows"),
    "ragged rows": (["train", "--data", "ragged.csv", "--target", "price"], "line 3 has 2 fields"),
    "duplicate columns": (["train", "--data", "dupes.csv", "--target", "price"], "duplicate column names: 'a'"),
    "nan in data": (["train", "--data", "nan.csv", "--target", "price"], "nan.csv: line 3, column 'b' is missing ('nan')"),
    "negative lr": (["train", *GOOD, "--lr", "-1"], "--lr: must be a finite number > 0"),
    "zero batch": (["train", *GOOD, "--batch-size", "0"], "--batch-size: must be a whole number >= 1"),
    "batch too large": (["train", *GOOD, "--batch-size", "5000"], "--batch-size (=5000) must be between 1 and"),
    "fractional epochs": (["train", *GOOD, "--epochs", "1.5"], "--epochs: must be a whole number >= 1"),
    "zero epochs": (["train", *GOOD, "--epochs", "0"], "--epochs: must be a whole number >= 1"),
    "bad fraction": (["train", *GOOD, "--val-fraction", "1.5"], "must be a number from 0 up to (not including) 1"),
    "bad engine": (["train", *GOOD, "--engine", "turbo"], "invalid choice: 'turbo'"),
    "early stopping alone": (["train", *GOOD, "--early-stopping", "2", "--val-fraction", "0"], "needs --val-fraction"),
    "resume alone": (["train", *GOOD, "--resume"], "--resume needs --checkpoint"),
    "checkpoint a file": (["train", *GOOD, "--checkpoint", "table.csv"], "--checkpoint 'table.csv' is a file; it names"),
    "missing save directory": (["train", *GOOD, "--save", "no/such/dir/m.npz"], "does not exist"),
    "missing model": (["predict", "--model", "none.npz", "--data", "table.csv"], "model file 'none.npz' does not exist"),
    "model not an npz": (["predict", "--model", "table.csv", "--data", "table.csv"], "table.csv is not a readable jaxlr model file (File is not a zip file)"),
    "truncated model": (["predict", "--model", "truncated.npz", "--data", "table.csv"], "not a readable jaxlr model file"),
    "old model format": (["predict", "--model", "old.npz", "--data", "table.csv"], "format version 0"),
    "wrong features": (["predict", "--model", "model.npz", "--data", "other.csv"], "lacks the model's feature column(s) 'c'"),
    "feature as target": (["predict", "--model", "model.npz", "--data", "table.csv", "--target", "a"],
                          "--target 'a' is one of the model's features"),
    "unknown option": (["train", "--colour", "red"], "unrecognized arguments: --colour red"),
}


@pytest.fixture(scope="module")
def error_dir(tmp_path_factory, cache_dir):
    d = tmp_path_factory.mktemp("errors")
    write_table(d / "table.csv")
    (d / "bad_cell.csv").write_text("a,b,price\n1,2,3\n4,5,6\n7,oops,9\n")
    (d / "empty_cell.csv").write_text("a,b,price\n1,2,3\n4,5,\n")
    (d / "empty.csv").write_text("")
    (d / "header.csv").write_text("a,b,price\n")
    (d / "ragged.csv").write_text("a,b,price\n1,2,3\n4,5\n")
    (d / "dupes.csv").write_text("a,a,price\n1,2,3\n")
    (d / "nan.csv").write_text("a,b,price\n1,2,3\n4,nan,6\n")
    (d / "other.csv").write_text("a,b,d\n1,2,3\n")
    done = run_cli("solve", *GOOD, "--save", "model.npz", cwd=d, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    data = (d / "model.npz").read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    with np.load(d / "model.npz") as archive:
        fields = dict(archive)
    np.savez(d / "old.npz", **{**fields, "format_version": np.array(0)})
    return d


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_user_errors_print_one_line_exit_2_and_write_nothing(case, error_dir, cache_dir):
    args, message = ERRORS[case]
    before = sorted(p.name for p in error_dir.iterdir())
    outputs = ["--save", "out.npz"] if args[0] in ("train", "solve") and "--save" not in args else []
    if args[0] == "predict":
        outputs = ["--output", "out.csv"]
    done = run_cli(*args, *outputs, cwd=error_dir, cache_dir=cache_dir)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("jaxlr: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in error_dir.iterdir()) == before


UNUSED = {  # an option given where it sets nothing: refused by name, with what would make it apply
    "--alpha 10": "--penalty is none (the default; scikit-learn's is l2): give --penalty l2, l1 or elasticnet",
    "--l1-ratio 0.9 --penalty l2": "--l1-ratio 0.9 is the L1 share of --penalty elasticnet, and --penalty is l2",
    "--power-t 0.9": "--power-t 0.9 is the exponent of --schedule invscaling, and --schedule is constant",
    "--epsilon 0.5": "--epsilon 0.5 is the margin of the huber and epsilon-insensitive losses, and --loss is squared",
    "--chunk-mb 8": "--chunk-mb 8 sets the size of the chunks --stream reads: give --stream",
    "--peer-timeout 5": "--peer-timeout 5.0 is how long processes wait for each other: give --coordinator",
    "--features a --categorical label": "column 'label' is named in --categorical but not in --features",
}
APPLIES = ["--alpha 10 --penalty l2", "--alpha 0.1 --schedule optimal", "--l1-ratio 0.9 --penalty elasticnet",
           "--power-t 0.9 --schedule invscaling", "--epsilon 0.5 --loss huber", "--peer-timeout 5 --coordinator h:1"]


@pytest.mark.parametrize("options", sorted(UNUSED))
def test_an_option_that_would_set_nothing_is_refused_by_name(tmp_path, capsys, options):
    write_table(tmp_path / "t.csv", n=50)
    args = ["train", "--data", str(tmp_path / "t.csv"), "--target", "price", "--save", str(tmp_path / "m.npz")]
    assert cli.main([*args, *options.split()]) == 2
    error = capsys.readouterr().err
    assert error.startswith("jaxlr: error: ") and error.count("\n") == 1 and UNUSED[options] in error
    assert list(tmp_path.iterdir()) == [tmp_path / "t.csv"]


@pytest.mark.parametrize("options", APPLIES)
def test_an_option_where_it_applies_is_not_refused(options):
    from jaxlr import commands

    args = cli._parser().parse_args(["train", "--data", "t.csv", "--target", "price", *options.split()])
    commands._settle_defaults(args)
    commands._refuse_what_does_not_apply(args)  # raises where it would refuse


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "jaxlr"
    if not script.exists():
        pytest.skip("jaxlr is not installed as a package here")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("jaxlr ")


def test_checkpoint_and_resume_from_the_command_line(tmp_path, cache_dir):
    write_table(tmp_path / "table.csv")
    common = ["train", *GOOD, "--standardize", "--batch-size", "16", "--lr", "0.01", "--json", "--quiet"]
    whole = run_cli(*common, "--epochs", "6", cwd=tmp_path, cache_dir=cache_dir)
    part = run_cli(*common, "--epochs", "3", "--checkpoint", "ckpt", "--checkpoint-every", "1",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    again = run_cli(*common, "--epochs", "6", "--checkpoint", "ckpt", cwd=tmp_path, cache_dir=cache_dir)
    rest = run_cli(*common, "--epochs", "6", "--checkpoint", "ckpt", "--resume", cwd=tmp_path, cache_dir=cache_dir)
    for done in (whole, part, rest):
        assert done.returncode == 0, done.stderr
    # Into a directory holding this run, without --resume or --overwrite: refused, in one line.
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "already holds checkpoints of this run" in again.stderr
    assert "give --resume to continue this run, or --overwrite" in again.stderr  # the options, not fit's arguments
    # The resumed run trained epochs 3 to 5 only, and ended where the whole run did.
    assert json.loads(part.stdout)["first_epoch"] == 0 and json.loads(rest.stdout)["first_epoch"] == 3
    assert json.loads(rest.stdout)["w"] == json.loads(whole.stdout)["w"]
    assert sorted(p.name[-12:] for p in (tmp_path / "ckpt").iterdir())[-1] == "00000006.npz"
    # Resuming into a missing directory is an error, unless asked to start afresh.
    missing = run_cli(*common, "--epochs", "2", "--checkpoint", "nope", "--resume", cwd=tmp_path, cache_dir=cache_dir)
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr and not (tmp_path / "nope").exists()
    assert "--checkpoint (='nope')" in missing.stderr and "give --resume-if-present" in missing.stderr
    fresh = run_cli(*common, "--epochs", "2", "--checkpoint", "nope", "--resume-if-present", "--checkpoint-every", "1",
                    cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["first_epoch"] == 0
    # A finished run resumed reports its final moving loss.
    finished = run_cli(*common, "--epochs", "2", "--checkpoint", "nope", "--resume", cwd=tmp_path, cache_dir=cache_dir)
    assert json.loads(finished.stdout)["final_moving_loss"] == json.loads(fresh.stdout)["final_moving_loss"] is not None


def test_stream_a_npy_table_from_disk(tmp_path, cache_dir, capsys):
    X, y = write_table(tmp_path / "unused.csv", n=2000)
    np.save(tmp_path / "big.npy", np.column_stack([X, y]).astype(np.float32))
    done = run_cli("train", "--data", "big.npy", "--target", "3", "--stream", "--chunk-mb", "1", "--epochs", "2",
                   "--batch-size", "16", "--lr", "1e-5", "--json", cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["features"] == ["0", "1", "2"] and report["rows"] == 2000 and report["epochs_run"] == 2
    done = run_cli("train", "--data", "big.npy", "--target", "3", "--stream", "--standardize",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 2 and "cannot go with --stream" in done.stderr
    # What chooses columns by name or kind is refused too: the stream reads every column it is given.
    for option, value in (("--drop", "1"), ("--categorical", "0")):
        status = cli.main(["train", "--data", str(tmp_path / "big.npy"), "--target", "3", "--stream", option, value])
        assert status == 2 and f"{option} needs the data in memory" in capsys.readouterr().err
    # A float32 file streams in float32: --x64 would set nothing. (In a process of its own: --x64 turns on
    # float64 in the process that parses it.)
    done = run_cli("train", "--data", "big.npy", "--target", "3", "--stream", "--x64", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 2 and "holds float32: save it as float64, or leave --x64 out" in done.stderr


@pytest.mark.parametrize("rows, held", [(5, 1), (25, 3)])
def test_a_validation_fraction_holds_out_rows_rounded_up_as_the_estimator_does(tmp_path, cache_dir, rows, held):
    write_table(tmp_path / "t.csv", n=rows)
    done = run_cli("solve", "--data", "t.csv", "--target", "price", "--val-fraction", "0.1", "--json",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["val_rows"] == held == jaxlr.callbacks.validation_rows(rows, 0.1)


def test_predict_on_a_matrix_takes_the_models_columns_by_position(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(200, 4))
    table[:, 3] = table[:, 0] - 2 * table[:, 2] + 0.5
    np.save(tmp_path / "t.npy", table)
    done = run_cli("solve", "--data", "t.npy", "--target", "3", "--features", "0,2", "--save", "m.npz",
                   cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = load_model(tmp_path / "m.npz")
    expected = model.predict(table[:, [0, 2]])
    for target in ([], ["--target", "3"]):
        done = run_cli("predict", "--model", "m.npz", "--data", "t.npy", *target, "--json", cwd=tmp_path,
                       cache_dir=cache_dir)  # fmt: skip
        assert done.returncode == 0, done.stderr
        np.testing.assert_allclose(json.loads(done.stdout)["predictions"], expected, rtol=1e-9)
    # A model's own column named as the target is refused, not replaced by the next column.
    done = run_cli("predict", "--model", "m.npz", "--data", "t.npy", "--target", "0", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 2 and "--target '0' is one of the model's features" in done.stderr, done.stderr


def test_an_lr_the_optimal_schedule_would_not_use_is_refused_and_none_is_recorded(tmp_path, capsys):
    write_table(tmp_path / "t.csv", n=200)
    common = ["train", "--data", str(tmp_path / "t.csv"), "--target", "price", "--schedule", "optimal", "--quiet"]
    assert cli.main([*common, "--lr", "5", "--save", str(tmp_path / "m.npz")]) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxlr: error: --lr 5.0 would set no rate: --schedule optimal takes its rates from --alpha. Leave --lr out.")
    assert not (tmp_path / "m.npz").exists()
    assert cli.main([*common, "--alpha", "1", "--epochs", "2", "--save", str(tmp_path / "m.npz")]) == 0
    settings = load_model(tmp_path / "m.npz").settings
    assert settings["schedule"] == "optimal" and settings["lr"] is None


def test_the_adaptive_schedule_cuts_the_rate_as_scikit_learns_rule_says(tmp_path, capsys):
    from jaxlr import commands

    write_table(tmp_path / "t.csv", n=200)
    common = ["train", "--data", str(tmp_path / "t.csv"), "--target", "price", "--lr", "0.05", "--epochs", "40",
              "--early-stopping", "0", "--quiet", "--json"]  # fmt: skip
    runs = {}
    for schedule in ("adaptive", "constant"):
        assert cli.main([*common, "--schedule", schedule]) == 0
        runs[schedule] = json.loads(capsys.readouterr().out)["w"]
    assert runs["adaptive"] != runs["constant"]  # it was the constant rate, the rate never cut
    from sklearn.linear_model import SGDRegressor

    assert (commands.ADAPTIVE_TOL, commands.ADAPTIVE_PATIENCE) == (SGDRegressor().tol, SGDRegressor().n_iter_no_change)


def test_a_constant_target_shows_its_r2_as_undefined(tmp_path, capsys):
    table = np.random.default_rng(0).normal(size=(100, 2))
    (tmp_path / "t.csv").write_text("a,b,t\n" + "".join(f"{a},{b},5\n" for a, b in table))
    assert cli.main(["solve", "--data", str(tmp_path / "t.csv"), "--target", "t", "--save", str(tmp_path / "m.npz")]) == 0
    assert "training MSE = 0, R^2 = undefined (the target is constant)" in capsys.readouterr().out
    assert cli.main(["predict", "--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "t.csv"),
                     "--output", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    assert "R^2 = undefined (the target is constant)" in capsys.readouterr().err


def test_resuming_with_fewer_epochs_names_the_commands_option(tmp_path, capsys):
    write_table(tmp_path / "t.csv", n=200)
    common = ["train", "--data", str(tmp_path / "t.csv"), "--target", "price", "--quiet",
              "--checkpoint", str(tmp_path / "ck")]  # fmt: skip
    assert cli.main([*common, "--epochs", "3"]) == 0
    capsys.readouterr()
    assert cli.main([*common, "--epochs", "2", "--resume"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("jaxlr: error: --epochs (=2) is fewer than the 3 epochs the checkpoint in") and "`" not in error
    # The run's key is the command's seed (which without a split changes nothing else).
    whole = [*common[:-1], str(tmp_path / "whole"), "--val-fraction", "0", "--epochs", "2"]
    assert cli.main(whole) == 0
    assert cli.main([*whole, "--seed", "1", "--resume"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "only of a run with another --seed" in error and "`" not in error


def test_a_command_run_from_python_leaves_the_processs_jax_settings_as_it_found_them(tmp_path):
    # --x64 and --no-cache set JAX for the command only: a notebook or script
    # that runs the command goes on in float32, with its compilation cache.
    script = (
        "import jax, jaxlr.train, json\n"
        "from jaxlr import cli\n"
        "seen, fit = [], jaxlr.train.fit\n"
        "jaxlr.train.fit = lambda *a, **k: (seen.append(jax.config.jax_enable_x64), fit(*a, **k))[1]\n"
        "settings = lambda: [jax.config.jax_enable_x64, jax.config.jax_enable_compilation_cache,"
        " jax.config.jax_compilation_cache_dir]\n"
        "before = settings()\n"
        "status = cli.main(['train', '--epochs', '1', '--x64', '--no-cache', '--quiet'])\n"
        "after = settings()\n"
        "with jax.enable_x64(False):\n"  # a block of the caller's own: --x64 still holds in the command
        "    status = status or cli.main(['train', '--epochs', '1', '--x64', '--quiet'])\n"
        "print(json.dumps([status, before, after, settings(), str(jax.numpy.ones(1).dtype), seen]))\n"
    )
    env = {**os.environ, "JAXLR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    status, before, after, at_end, dtype, seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 0 and seen == [True, True]  # each command trained in float64
    assert before[0] is False and before[1] is True  # the cache is on by default
    assert after == at_end == before and dtype == "float32"


@pytest.mark.parametrize("option, held_out", [([], 0), (["--early-stopping", "0"], 0), (["--early-stopping", "3"], 2)])
def test_early_stopping_asked_for_on_a_small_table_keeps_its_validation_split(tmp_path, capsys, option, held_out):
    # 14 rows are too few for the default split, which is then dropped with a
    # note; early stopping asked for by name (3 epochs of patience) keeps it,
    # where it failed in a matmul. Never stopping (0) is the default's way.
    rows = "".join(f"{i},{2 * i + 1}\n" for i in range(14))
    (tmp_path / "t.csv").write_text("x,y\n" + rows)
    status = cli.main(["train", "--data", str(tmp_path / "t.csv"), "--target", "y", "--epochs", "3", "--json",
                       "--no-cache", *option])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report.get("val_rows", 0) == held_out and report["rows"] == 14
