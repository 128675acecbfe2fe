"""The `jaxlr` command on awkward tables and files, in subprocesses (grouped: each run costs seconds)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxlr.persist import load_model


def run_cli(*args, cwd, cache_dir):
    env = {**os.environ, "JAXLR_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "jaxlr", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip


def one_error(done, message):
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("jaxlr: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr, done.stderr


def test_a_timestamp_table_from_pandas_with_a_bom_and_a_quoted_target(tmp_path):
    cache = tmp_path / "cache"
    # A feature near 1.7e9 that spans a few float32 steps; the target's name holds a comma.
    rng = np.random.default_rng(0)
    t = 1.7e9 + np.arange(400) * 2.0
    y = 0.01 * (t - 1.7e9) + 3.0 + 0.5 * rng.normal(size=400)
    rows = "".join(f"{i},{float(a)!r},{float(b)!r}\n" for i, (a, b) in enumerate(zip(t, y)))
    (tmp_path / "ts.csv").write_bytes(('\ufeff,t,"price,usd"\n' + rows).encode())  # as DataFrame.to_csv with a BOM
    done = run_cli("solve", "--data", "ts.csv", "--target", "price,usd", "--json", "--save", "m.npz",
                   cwd=tmp_path, cache_dir=cache)  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("jaxlr: note: ")]
    assert len(notes) == 1 and "row index" in notes[0], done.stderr
    report = json.loads(done.stdout)
    assert report["features"] == ["t"]
    centred = t - t.mean()
    np.testing.assert_allclose(report["w"], [centred @ (y - y.mean()) / (centred @ centred)], rtol=1e-4)
    assert report["train_r2"] > 0.9  # 0.36 when the timestamps were rounded to float32 first

    (tmp_path / "new.csv").write_text("t\n1700000100.0\n1700000300.0\n")
    for clobbered in ("m.npz", "new.csv", "./new.csv"):
        before = (tmp_path / Path(clobbered).name).read_bytes()
        done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", "--output", clobbered,
                       cwd=tmp_path, cache_dir=cache)  # fmt: skip
        one_error(done, "would be overwritten")
        assert (tmp_path / Path(clobbered).name).read_bytes() == before
    # --save replaces a model file, never another file (a table, say).
    before = (tmp_path / "new.csv").read_bytes()
    done = run_cli("solve", "--data", "ts.csv", "--target", "price,usd", "--save", "new.csv", cwd=tmp_path, cache_dir=cache)
    one_error(done, r"--save 'new.csv' exists and is not a model file this jaxlr reads; it would be overwritten")
    assert (tmp_path / "new.csv").read_bytes() == before
    done = run_cli("solve", "--data", "ts.csv", "--target", "price,usd", "--save", "m.npz", cwd=tmp_path, cache_dir=cache)
    assert done.returncode == 0, done.stderr
    done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", "--output", "preds.csv",
                   cwd=tmp_path, cache_dir=cache)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "preds.csv", newline="") as file:
        header, *values = list(csv.reader(file))
    assert header == ["price,usd"]
    expected = load_model(tmp_path / "m.npz").predict(np.array([[1700000100.0], [1700000300.0]]))
    np.testing.assert_allclose(np.array(values, float), expected)


def test_predict_scores_rows_whose_target_is_left_blank(tmp_path):
    cache = tmp_path / "cache"
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    y = X @ [1.0, -2.0] + 0.5
    (tmp_path / "d.csv").write_text("a,b,price\n" + "".join(f"{a!r},{b!r},{t!r}\n" for (a, b), t in zip(X.tolist(), y.tolist())))
    done = run_cli("solve", "--data", "d.csv", "--target", "price", "--save", "m.npz", cwd=tmp_path, cache_dir=cache)
    assert done.returncode == 0, done.stderr
    new_rows = [[0.5, 1.0], [-1.0, 0.25]]
    for blanks in ("", "n/a"):  # an empty column, then one of text
        (tmp_path / "new.csv").write_text("a,b,price\n" + "".join(f"{a},{b},{blanks}\n" for a, b in new_rows))
        done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", cwd=tmp_path, cache_dir=cache)
        assert done.returncode == 0, done.stderr
        assert "every row is predicted" in done.stderr and "--drop" not in done.stderr, done.stderr
        predicted = np.array(done.stdout.splitlines()[1:], float)
        np.testing.assert_allclose(predicted, np.array(new_rows) @ [1.0, -2.0] + 0.5, atol=1e-6)
        # A target asked for by name is one to score against: it must hold numbers.
        done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", "--target", "price", cwd=tmp_path,
                       cache_dir=cache)  # fmt: skip
        assert done.returncode == 2 and "'price'" in done.stderr and "every row is predicted" not in done.stderr


def test_npz_without_target_overflow_and_streamed_columns(tmp_path):
    cache = tmp_path / "cache"
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2))
    y = X @ [1.0, -2.0] + 0.5
    np.savez(tmp_path / "d.npz", X=X, y=y)
    done = run_cli("solve", "--data", "d.npz", "--json", cwd=tmp_path, cache_dir=cache)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout)["w"], [1.0, -2.0], rtol=1e-4)

    rows = "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, y))
    (tmp_path / "huge.csv").write_text("a,b,y\n" + rows.replace(f"{X[3, 1]},", "1e39,", 1))
    # Standardized (the default) in float64 first, such a column trains; centred only, it cannot fit float32.
    done = run_cli("train", "--data", "huge.csv", "--target", "y", "--quiet", "--no-standardize", cwd=tmp_path,
                   cache_dir=cache)  # fmt: skip
    one_error(done, "beyond the range of float32")  # and no RuntimeWarning lines before it

    np.save(tmp_path / "m.npy", np.column_stack([X, y]).astype(np.float32))
    done = run_cli("train", "--data", "m.npy", "--stream", "--target", "2", "--features", "0,7",
                   cwd=tmp_path, cache_dir=cache)  # fmt: skip
    one_error(done, "--features (=7) must be between 0 and the last column (=2)")
    done = run_cli("train", "--data", "m.npy", "--stream", "--target", "2", "--features", "0,2",
                   cwd=tmp_path, cache_dir=cache)  # fmt: skip
    one_error(done, "column '2' cannot be both the target and a feature")


def test_ctrl_c_while_the_command_starts_exits_130_in_one_line(tmp_path):
    script = Path(sys.executable).parent / "jaxlr"
    if not script.exists():
        pytest.skip("jaxlr is not installed as a package here")
    env = {**os.environ, "JAXLR_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([str(script), "train", "--epochs", "100000", "--quiet"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.3)  # while JAX is being imported (a second or more)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err == "jaxlr: interrupted\n", err


def test_one_file_for_two_outputs_is_refused_before_any_work(tmp_path):
    table = tmp_path / "t.csv"
    rows = np.random.default_rng(0).normal(size=(40, 2))
    np.savetxt(table, np.column_stack([rows, rows @ [1.0, 2.0]]), delimiter=",", header="a,b,t", comments="")
    done = run_cli("train", "--data", str(table), "--target", "t", "--epochs", "1", "--save", "s.png",
                   "--plot", "s.png", cwd=tmp_path, cache_dir=tmp_path / "cache")  # fmt: skip
    one_error(done, "--plot 's.png' is also the --save file")
    assert not (tmp_path / "s.png").exists()


def test_a_full_disk_names_the_file_it_could_not_write_and_leaves_nothing(tmp_path):
    import errno

    from jaxlr.persist import atomic_write

    def full(file):
        file.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")  # as the kernel says it: no file named

    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write(tmp_path / "m.npz", full)
    assert caught.value.filename == str(tmp_path / "m.npz") and list(tmp_path.iterdir()) == []
