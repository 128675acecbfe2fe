"""Tables as people have them: typed columns through pyarrow, text and dates turned into features, Parquet."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from jaxlr import tables
from jaxlr.data import DataError
from jaxlr.persist import load_model
from jaxlr.tables import DAYS, load_table

from test_cli import run_cli

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla-cache")


def mixed_frame(n=1500, seed=0):
    """Numbers, a 5-level city, a customer ID and a date; the target depends on all but the ID."""
    rng = np.random.default_rng(seed)
    cities = np.array(["Paris", "Lyon", "Nice", "Lille", "Brest"])
    city = cities[rng.integers(0, 5, n)]
    day = rng.integers(0, 365, n)
    x1, x2 = rng.normal(size=n), 3 * rng.normal(size=n)
    effect = {"Paris": 50.0, "Lyon": 20.0, "Nice": 30.0, "Lille": -10.0, "Brest": 0.0}
    spend = 100 + 5 * x1 - 2 * x2 + np.array([effect[c] for c in city]) + 0.05 * day + rng.normal(size=n)
    date = pd.Timestamp("2023-01-01") + pd.to_timedelta(day, unit="D")
    return pd.DataFrame({"customer_id": rng.permutation(np.arange(10_000, 10_000 + n)), "date": date.strftime("%Y-%m-%d"),
                         "city": city, "x1": x1.round(5), "x2": x2.round(5), "spend": spend.round(4)})  # fmt: skip


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    frame = mixed_frame()
    frame.to_csv(d / "t.csv", index=False)
    parquet = frame.copy()
    parquet["date"] = pd.to_datetime(parquet["date"]).dt.date  # a date column, typed
    parquet.to_parquet(d / "t.parquet", index=False)
    held_out = mixed_frame(n=400, seed=1)
    held_out.to_csv(d / "new.csv", index=False)
    return d


def test_the_mixed_table_reaches_the_target_with_defaults_and_says_what_it_did_to_each_column(mixed, cache_dir):
    done = run_cli("train", "--data", "t.csv", "--target", "spend", "--save", "m.npz", "--json", cwd=mixed,
                   cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["val_r2"] >= 0.95
    uses = {c["column"]: c["use"] for c in report["columns"]}
    assert uses == {"customer_id": "left out", "date": DAYS, "city": "one-hot"}
    assert report["features"] == ["date", "city=Brest", "city=Lille", "city=Lyon", "city=Nice", "city=Paris", "x1", "x2"]
    for column in ("customer_id", "date", "city"):
        assert f"column '{column}'" in done.stderr  # one note each
    assert "identifier" in done.stderr

    # predict applies the stored encoding to a table it never saw: held-out R² as good.
    done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", "--json", "--output", "p.csv", cwd=mixed,
                   cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["r2"] >= 0.95


def test_parquet_trains_as_its_csv_does(mixed, cache_dir):
    reports = []
    for name in ("t.csv", "t.parquet"):
        done = run_cli("train", "--data", name, "--target", "spend", "--epochs", "20", "--json", cwd=mixed,
                       cache_dir=cache_dir)  # fmt: skip
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    csv_report, parquet_report = reports
    assert csv_report["features"] == parquet_report["features"]
    assert csv_report["columns"] == parquet_report["columns"]
    np.testing.assert_array_equal(csv_report["w"], parquet_report["w"])
    assert csv_report["b"] == parquet_report["b"]


def test_the_encoding_is_kept_in_the_model_file_and_unseen_values_become_zero_rows_with_a_note(tmp_path, cache_dir):
    rows = ["city,x,y"] + [f"{c},{x},{x + {'a': 10, 'b': 20, 'c': 30}[c]}" for x in range(10) for c in "abc"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    done = run_cli("solve", "--data", "t.csv", "--target", "y", "--save", "m.npz", "--quiet", cwd=tmp_path,
                   cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = load_model(tmp_path / "m.npz")
    assert [tuple(step) for step in model.encoding] == [("city", "one-hot", ("a", "b", "c")), ("x", "number", ())]
    (tmp_path / "new.csv").write_text("x,city,other\n1,b,q\n2,z,q\n")  # columns in another order, one extra
    done = run_cli("predict", "--model", "m.npz", "--data", "new.csv", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    predictions = [float(v) for v in done.stdout.splitlines()[1:]]
    assert predictions[0] == pytest.approx(21.0, abs=1e-3)
    table = load_table(tmp_path / "new.csv", encoding=model.encoding)
    np.testing.assert_array_equal(table.X, [[0, 1, 0, 1], [0, 0, 0, 2]])  # 'z': all-zero one-hot
    assert "1 row(s) hold values the model never saw ('z')" in done.stderr


def test_what_each_kind_of_column_becomes(tmp_path):
    n = 30
    frame = pd.DataFrame({
        "id": np.arange(n) + 7,  # an integer identifier
        "code": [f"C{i:03d}" for i in range(n)],  # text, a distinct value in every row
        "rate": [f"{i / 3:.1f}%" for i in range(n)],  # numbers written as text
        "hex": [str(i) if i < 10 else hex(i) for i in range(n)],  # pyarrow reads hexadecimal integers: a number
        "empty": [None] * n,
        "colour": ["red", "green", "blue"] * 10,
        "when": pd.date_range("2024-01-01", periods=n, freq="12h").strftime("%Y-%m-%d %H:%M:%S"),
        "flag": [True, False] * 15,
        "y": np.arange(n, dtype=float),
    })  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = load_table(tmp_path / "t.csv", target="y")
    uses = {c["column"]: c["use"] for c in table.columns}
    assert uses == {"id": "left out", "code": "left out", "rate": "left out", "hex": "number", "empty": "left out",
                    "colour": "one-hot", "when": DAYS}  # fmt: skip
    assert table.feature_names == ("hex", "colour=blue", "colour=green", "colour=red", "when", "flag")
    assert len(table.notes) == 7 and all("\n" not in note for note in table.notes)
    # (found past the first row, named by its line)
    assert "column 'hex' is read as numbers: hexadecimal integers (t.csv: line 12, '0xa' is 10)" in table.notes[3]
    np.testing.assert_array_equal(table.X[:, 0], np.arange(n))
    assert "'39.4%'" not in table.notes[2] and "'0.0%'" in " ".join(table.notes)  # the note shows a value
    np.testing.assert_allclose(table.X[:2, 4], [19723.0, 19723.5])  # days since 1970-01-01, noon as .5
    np.testing.assert_array_equal(table.X[:2, 5], [1.0, 0.0])
    # Asked for by name, a column is used or refused by name; never dropped in silence.
    forced = load_table(tmp_path / "t.csv", target="y", categorical=["rate"], drop=["colour", "when"])
    assert forced.feature_names[:2] == ("rate=0.0%", "rate=0.3%") and len(forced.feature_names) == n + 2
    assert {"column": "colour", "use": "left out", "why": "asked for (--drop)"} in forced.columns
    with pytest.raises(DataError, match=r"column 'rate' cannot be a feature: numbers written as text"):
        load_table(tmp_path / "t.csv", target="y", features=["rate"])
    with pytest.raises(DataError, match=r"column 'empty' cannot be a feature: empty in every row"):
        load_table(tmp_path / "t.csv", target="y", features=["empty"])
    few = load_table(tmp_path / "t.csv", target="y", max_categories=2)
    assert {c["column"]: c["use"] for c in few.columns}["colour"] == "left out"


def test_numbers_are_read_strictly_and_a_header_of_empty_names_stays_a_header(tmp_path):
    # (A cell of such a number among plain ones: `test_tables.REFUSED`.) Accounting negatives, and digits
    # grouped by no-break or thin spaces, as French and Swiss tables write them: numbers written as text.
    grouped = ["12\u00a0345,5", "(1\u202f234,00)", "(3.5)", "(1,234.50)"]
    rows = [f'"{cell}",{i},{i}' for i, cell in enumerate(grouped)]
    (tmp_path / "g.csv").write_text("x,z,y\n" + "\n".join(rows) + "\n", encoding="utf-8")
    table = load_table(tmp_path / "g.csv", target="y")
    assert table.feature_names == ("z",)
    assert {"column": "x", "use": "left out", "why": table.columns[0]["why"]} in table.columns
    assert table.columns[0]["why"].startswith("numbers written as text"), table.columns
    # But labels in parentheses and digits apart by plain spaces (postcodes, sizes) are text to encode.
    rows = [f'"{label}","{code}",{i}' for i, (label, code) in enumerate([("(1)", "75 001"), ("(2)", "75 002")] * 3)]
    (tmp_path / "l.csv").write_text("label,code,y\n" + "\n".join(rows) + "\n")
    assert load_table(tmp_path / "l.csv", target="y").feature_names == ("label=(1)", "label=(2)", "code=75 001",
                                                                         "code=75 002")  # fmt: skip
    # Mostly with separators: numbers written as text, left out as a whole (with a note), not one cell's error.
    (tmp_path / "s.csv").write_text('x,z,y\n"1,982.8",1,1\n982.5,2,2\n"2,100",3,3\n')
    assert load_table(tmp_path / "s.csv", target="y").feature_names == ("z",)
    (tmp_path / "h.csv").write_text(",,\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"the header row names no column 2, 3"):
        load_table(tmp_path / "h.csv", target="2")
    (tmp_path / "d.csv").write_text("when,y\n05/01/2024,1\n06/01/2024,2\n")
    with pytest.raises(DataError, match=r"column 'when' holds dates written as '05/01/2024'.*YYYY-MM-DD"):
        load_table(tmp_path / "d.csv", target="y")
    for written in ("2024-01", "5 Jan 2024", "Jan 5, 2024", "january 2024"):  # months, and months by name
        (tmp_path / "m.csv").write_text(f'when,y\n"{written}",1\n"{written}",2\n')
        with pytest.raises(DataError, match=f"column 'when' holds dates written as '{written}'"):
            load_table(tmp_path / "m.csv", target="y")
    (tmp_path / "c.csv").write_text("city,y\nParis,1\n,2\nLyon,3\n")
    with pytest.raises(DataError, match=r"c.csv: line 3, column 'city' is empty"):
        load_table(tmp_path / "c.csv", target="y")


def test_dates_as_text_in_parquet_are_read_as_a_csv_reads_them(tmp_path):
    pytest.importorskip("pyarrow.parquet")
    frame = pd.DataFrame({"d": [f"2024-01-0{i}" for i in range(1, 10)], "t": [f"2024-01-0{i} 12:00" for i in range(1, 10)],
                          "y": np.arange(9.0)})  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    from_csv, from_parquet = load_table(tmp_path / "t.csv", target="y"), load_table(tmp_path / "t.parquet", target="y")
    np.testing.assert_array_equal(from_parquet.X, from_csv.X)
    np.testing.assert_array_equal(from_parquet.X[:2], [[19723.0, 19723.5], [19724.0, 19724.5]])
    # A model trained on the CSV predicts from the Parquet file's text dates.
    again = load_table(tmp_path / "t.parquet", encoding=from_csv.encoding)
    np.testing.assert_array_equal(again.X, from_csv.X)
    frame.loc[4, "d"] = "2019-02-29"
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"row 4 \(counting from 0\), column 'd' holds '2019-02-29', which is not a date"):
        load_table(tmp_path / "bad.parquet", target="y")
    # Zones, as the CSV reader takes them: the times in UTC.
    zoned = pd.DataFrame({"d": ["2020-01-01T12:00:00Z", "2020-01-01T12:00:00+02:00", "2020-01-02"], "y": [1.0, 2, 3]})
    zoned.to_csv(tmp_path / "z.csv", index=False)
    zoned.to_parquet(tmp_path / "z.parquet")
    np.testing.assert_array_equal(load_table(tmp_path / "z.parquet", target="y").X[:, 0], [18262.5, 18262 + 10 / 24, 18263])
    np.testing.assert_array_equal(load_table(tmp_path / "z.csv", target="y").X[:, 0], [18262.5, 18262 + 10 / 24, 18263])


def test_a_column_whose_text_comes_after_the_first_block_is_judged_as_text(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "_PIECE_BYTES", 1 << 10)  # many pieces of a small file
    lines = ["x,y"] + [f"{i},{i}" for i in range(500)] + ["oops,1"]
    (tmp_path / "late.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 502, column 'x' holds 'oops', not a number"):
        load_table(tmp_path / "late.csv", target="y")


@pytest.mark.parametrize("piece_bytes", [8, 40, 1 << 10])
def test_a_csv_read_in_pieces_is_the_csv_read_whole(tmp_path, monkeypatch, piece_bytes):
    rows = ["when,city,x,y"] + [f"2024-01-{1 + i % 28:02d},{'AB'[i % 2]},{i / 7!r},{i % 5}" for i in range(200)]
    texts = {"t.csv": "\n".join(rows) + "\n", "crlf.csv": "\r\n".join(rows), "gz.csv.gz": "\n".join(rows) + "\n\n",
             "blank.csv": "\n\n\n" + rows[0] + "\n\n\n" + "\n".join(rows[1:]) + "\n"}  # blank lines before and after the header
    for name, text in texts.items():
        if name.endswith(".gz"):
            with gzip.open(tmp_path / name, "wt") as file:
                file.write(text)
        else:
            (tmp_path / name).write_bytes(text.encode())
    whole = {name: load_table(tmp_path / name, target="y") for name in texts}
    monkeypatch.setattr(tables, "_PIECE_BYTES", piece_bytes)  # pieces shorter than a line, too
    for name in texts:
        table = load_table(tmp_path / name, target="y")
        np.testing.assert_array_equal(table.X, whole[name].X)
        np.testing.assert_array_equal(table.y, whole[name].y)
        assert table.feature_names == whole[name].feature_names == whole["t.csv"].feature_names


def test_compressed_csv_and_parquet_nulls_are_named(tmp_path):
    with gzip.open(tmp_path / "t.csv.gz", "wt") as file:
        file.write("a,b,y\n1,2,3\n4,5,9\n")
    table = load_table(tmp_path / "t.csv.gz", target="y")
    np.testing.assert_array_equal(table.X, [[1, 2], [4, 5]])
    pd.DataFrame({"a": [1.0, None, 3.0], "y": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 1 \(counting from 0\), column 'a' is empty"):
        load_table(tmp_path / "n.parquet", target="y")


def test_without_pyarrow_a_csv_is_one_line_naming_the_extra_and_npy_still_reads(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n2,4\n3,6\n")
    np.save(tmp_path / "t.npy", np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]))
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from jaxlr import cli\n"
            "print(cli.main(['solve', '--data', 't.npy', '--target', '1', '--quiet', '--no-cache']))\n"
            "print(cli.main(['solve', '--data', 't.csv', '--target', 'y', '--quiet', '--no-cache']))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.stdout.split()[-2:] == ["0", "2"], done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "jaxlr: error: reading CSV and Parquet files needs pyarrow: pip install 'jaxlr[tables]'."
    )


def test_the_progress_bar_draws_on_a_terminal_that_reports_no_size(tmp_path):
    import os
    import pty

    pytest.importorskip("tqdm")
    code = ("from jaxlr.callbacks import Progress\n"
            "bar = Progress(3, delay=0)\n"
            "[bar(epoch, None) for epoch in range(3)]\n"
            "bar.close()\n")  # fmt: skip
    master, slave = pty.openpty()  # a fresh pseudo-terminal: 0 columns
    done = subprocess.run([sys.executable, "-c", code], stderr=slave, timeout=120)
    os.close(slave)
    drawn = os.read(master, 1 << 16)
    os.close(master)
    assert done.returncode == 0
    assert b"0/3 [" in drawn, drawn  # the bar was drawn (tqdm draws it again at most every 0.1 s)


def test_the_default_margin_fits_the_targets_spread_and_a_far_one_is_warned_about(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 3))
    y = X @ [150.0, -80.0, 40.0] + 1000 + 5 * rng.normal(size=1000)  # a spread of about 180
    np.savetxt(tmp_path / "wide.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,y", comments="", fmt="%.6g")
    runs = {}
    for name, extra in (("default", []), ("fixed", ["--epsilon", "0.1"])):
        done = run_cli("train", "--data", "wide.csv", "--target", "y", "--loss", "huber", "--save", f"{name}.npz",
                       "--json", *extra, cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[name] = (json.loads(done.stdout), done.stderr)
    report, stderr = runs["default"]
    assert report["val_r2"] > 0.99 and stderr == ""
    epsilon = load_model(tmp_path / "default.npz").settings["epsilon"]
    assert epsilon == pytest.approx(0.1 * np.std(y), rel=0.1)  # a tenth of the training target's spread
    report, stderr = runs["fixed"]
    assert report["val_r2"] < 0.9  # Huber with steps of 0.1 on a spread of 180: far from learnt
    assert stderr.startswith("jaxlr: warning: the huber margin --epsilon 0.1 is far below the residuals' size")
    assert stderr.count("\n") == 1


def test_a_tiny_table_trains_every_epoch_and_a_tiny_split_is_named_in_the_warning(tmp_path, cache_dir):
    def table(n, seed):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, 3)) * [1, 10, 100]
        y = X @ [3, -0.2, 0.01] + 50 + 2 * rng.normal(size=n)
        np.savetxt(tmp_path / f"t{n}.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,y", comments="",
                   fmt="%.6g")  # fmt: skip

    table(10, 0)  # a default split of one row stopped after 6 epochs, keeping the first (training R² 0.04)
    done = run_cli("train", "--data", "t10.csv", "--target", "y", "--json", cwd=tmp_path, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["epochs_run"] == 200 and "best_epoch" not in report and report["train_r2"] > 0.8
    assert done.stderr.startswith("jaxlr: note: 10 rows are too few for the default validation split: a fraction of "
                                  "0.1 holds out 1, fewer than the 20 rows that judge early stopping")  # fmt: skip
    table(15, 0)  # asked for: two validation rows, negative R² there
    done = run_cli("train", "--data", "t15.csv", "--target", "y", "--val-fraction", "0.1", "--early-stopping", "5",
                   "--json", cwd=tmp_path, cache_dir=cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["val_rows"] == 2
    assert "a larger --val-fraction (validation R^2 on 2 rows is mostly noise)" in done.stderr


def test_help_shows_zero_defaults_solves_own_defaults_and_the_bare_command():
    from jaxlr import cli

    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices
    train = " ".join(commands["train"].format_help().split())
    solve = " ".join(commands["solve"].format_help().split())
    assert "shuffling (default: 0)" in train and "no averaging) (default: 0)" in train
    assert "0 for none (default: 0.0)" in solve and "0.1 with --data" not in solve
    assert "0 for none (default: 0.1 with --data, 0.0 for the lesson's job" in train
    assert "x the training target's standard deviation with --data" in train
    assert "With no command, jaxlr runs `jaxlr train`" in parser.format_help()
