import re

import numpy as np
import pytest

from jaxlr.data import DataError
from jaxlr.preprocessing import least_squares
from jaxlr.tables import load_table
from jaxlr.persist import Model, ModelFileError, load_model, save_model
from jaxlr.model import Params


def test_csv_target_by_name_or_index_and_an_identifier_left_out_with_a_note(tmp_path):
    (tmp_path / "t.csv").write_text("id,name,x,z,y\n1,a,0.5,2,10\n2,b,1.5,4,20\n")
    by_name = load_table(tmp_path / "t.csv", target="y")
    by_index = load_table(tmp_path / "t.csv", target=4)
    # Two rows: 'name' has a distinct value in each, and is left out as an identifier, with a note.
    assert by_name.feature_names == by_index.feature_names == ("id", "x", "z")
    assert [c["column"] for c in by_name.columns] == ["name"] and "identifier" in by_name.notes[0]
    np.testing.assert_array_equal(by_name.X, [[1, 0.5, 2], [2, 1.5, 4]])
    np.testing.assert_array_equal(by_name.y, [[10], [20]])
    chosen = load_table(tmp_path / "t.csv", target="y", features=["z", "2"])
    assert chosen.feature_names == ("z", "x")


def test_a_requested_text_column_is_one_hot_encoded_or_refused_by_name(tmp_path):
    (tmp_path / "t.csv").write_text("name,rate,y\na,1%,1\n")
    table = load_table(tmp_path / "t.csv", target="y", features=["name"])
    assert table.feature_names == ("name=a",) and table.columns[0]["use"] == "one-hot"
    with pytest.raises(DataError, match=r"column 'rate' cannot be a feature: numbers written as text"):
        load_table(tmp_path / "t.csv", target="y", features=["rate"])


def test_target_cannot_be_a_feature(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="both the target and a feature"):
        load_table(tmp_path / "t.csv", target="y", features=["y"])


def test_model_files_round_trip_and_refuse_damage(tmp_path):
    model = Model(
        params=Params(w=np.array([[1.0], [2.0]], np.float32), b=np.array([0.5], np.float32)),
        x_mean=np.array([1.0, 2.0]), x_scale=np.array([2.0, 4.0]),
        feature_names=("a", "b"), target_names=("t",), settings={"lr": 0.1},
    )  # fmt: skip
    save_model(tmp_path / "m.npz", model)
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.feature_names == ("a", "b") and loaded.settings == {"lr": 0.1}
    X = np.array([[3.0, 6.0]])
    np.testing.assert_allclose(loaded.predict(X), [[1.0 * 1.0 + 2.0 * 1.0 + 0.5]])
    w, b = loaded.coefficients()
    np.testing.assert_allclose(X @ w + b, loaded.predict(X))
    # numpy alone reads it, without pickle
    with np.load(tmp_path / "m.npz", allow_pickle=False) as raw:
        assert int(raw["format_version"]) == 1 and str(raw["jaxlr_version"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(ModelFileError, match="lacks"):
        load_model(tmp_path / "other.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "m.npz", "other.npz"]  # no temporaries left


@pytest.mark.parametrize("blank", ["", "NA"])
def test_a_numeric_columns_type_does_not_depend_on_its_first_row(tmp_path, blank):
    # A blank first cell once made the column text, and it was dropped without a word.
    (tmp_path / "first.csv").write_text(f"x,z,y\n{blank},1,1\n2,3,2\n")
    (tmp_path / "later.csv").write_text(f"x,z,y\n2,3,2\n{blank},1,1\n")
    what = "is empty" if not blank else "is missing ('NA')"
    with pytest.raises(DataError, match=rf"first.csv: line 2, column 'x' {re.escape(what)}"):
        load_table(tmp_path / "first.csv", target="y")
    with pytest.raises(DataError, match=rf"later.csv: line 3, column 'x' {re.escape(what)}"):
        load_table(tmp_path / "later.csv", target="y")
    # Left out explicitly, the column is not read at all.
    assert load_table(tmp_path / "first.csv", target="y", features=["z"]).feature_names == ("z",)


def test_a_column_of_numbers_and_text_is_refused_in_either_order(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\noops,1\n2,2\n")
    (tmp_path / "b.csv").write_text("x,y\n2,2\noops,1\n")
    for name, line in (("a.csv", 2), ("b.csv", 3)):
        with pytest.raises(DataError, match=rf"line {line}, column 'x' holds 'oops', not a number"):
            load_table(tmp_path / name, target="y")


def test_non_finite_cells_are_reported_by_their_line(tmp_path):
    # Blank lines are skipped but counted: the line is the file's, for an editor.
    (tmp_path / "t.csv").write_text("a,b,y\n1,2,3\n\n4,nan,6\n7,8,inf\n")
    with pytest.raises(DataError, match=r"line 4, column 'b' is missing \('nan'\)"):
        load_table(tmp_path / "t.csv", target="y")
    with pytest.raises(DataError, match=r"line 5, column 'y' holds 'inf', not a finite number"):
        load_table(tmp_path / "t.csv", target="y", features=["a"])
    np.save(tmp_path / "m.npy", np.array([[1.0, 2.0], [np.nan, 3.0]]))
    with pytest.raises(DataError, match=r"row 1 \(counting from 0\), column 0 holds nan"):
        load_table(tmp_path / "m.npy", target=1)


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    (tmp_path / "t.csv").write_bytes("y,x\n1,2\n3,5\n".encode("utf-8-sig"))
    table = load_table(tmp_path / "t.csv", target="y")
    assert table.target_name == "y" and table.feature_names == ("x",)


@pytest.mark.parametrize("index_name", ["", "Unnamed: 0"])
def test_a_pandas_index_column_is_left_out_with_a_note(tmp_path, index_name):
    (tmp_path / "t.csv").write_text(f"{index_name},x,y\n0,1.5,1\n1,2.5,2\n2,0.5,0\n")
    table = load_table(tmp_path / "t.csv", target="y")
    assert table.feature_names == ("x",)
    np.testing.assert_array_equal(table.X, [[1.5], [2.5], [0.5]])
    assert len(table.notes) == 1 and "row index" in table.notes[0] and "\n" not in table.notes[0]
    plain = load_table(tmp_path / "t.csv", target="y", features=["0", "x"])  # asked for by index: kept
    assert plain.feature_names == (index_name, "x") and plain.notes == ()


def test_a_nameless_first_column_of_measurements_is_a_feature_and_labels_of_dates_are_not(tmp_path):
    # Only row labels (integers, text or dates) are taken for pandas' index.
    (tmp_path / "m.csv").write_text(",x,y\n2.04,1.5,1\n-0.31,2.5,2\n0.77,0.5,0\n")
    table = load_table(tmp_path / "m.csv", target="y")
    assert table.feature_names == ("", "x") and table.notes == ()
    np.testing.assert_array_equal(table.X[:, 0], [2.04, -0.31, 0.77])
    for labels in (["2024-01-01", "2024-01-02", "2024-01-03"], [0, 1, 0]):  # (pd.concat restarts an index)
        rows = "".join(f"{label},{x},{i}\n" for i, (label, x) in enumerate(zip(labels, [1.5, 2.5, 0.5])))
        (tmp_path / "d.csv").write_text(",x,y\n" + rows)
        table = load_table(tmp_path / "d.csv", target="y")
        assert table.feature_names == ("x",) and "row index" in table.notes[0]


def test_a_date_column_that_holds_no_dates_where_the_model_reads_one_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("when,x,y\n2024-01-01,1.5,1\n2024-01-02,2.5,2\n2024-01-05,0.5,0\n")
    encoding = load_table(tmp_path / "t.csv", target="y").encoding
    for written in ("03/05/2001", "11445"):
        (tmp_path / "new.csv").write_text(f"when,x\n{written},1.0\n")
        with pytest.raises(DataError, match=f"new.csv: column 'when' holds '{written}', not a date"):
            load_table(tmp_path / "new.csv", encoding=encoding)


# A table refused: (its text, load_table's arguments, the error), each error
# naming the line and giving only advice that the column allows.
REFUSED = {
    "an empty target cell": ("x,y\n1,1\n2,\n3,3\n", {}, r"line 3, column 'y' is empty; fill or drop the row\.$"),
    "an empty feature cell": ("x,y\n1,1\n2,2\n,3\n", {}, r"line 4, column 'x' is empty; fill or drop the row, or --drop x\.$"),
    "text among numbers": ("x,y\n1,1\nn/k,2\n3,3\n", {}, r"line 3, column 'x' holds 'n/k', not a number \(.*--drop x, or --categorical x"),
    "a number with underscores": ("x,y\n1,1\n1_000,2\n3,3\n", {}, r"line 3, column 'x' holds '1_000', a number written as text"),
    "an accounting negative": ("x,y\n1.5,1\n(2.25),2\n3,3\n", {}, r"line 3, column 'x' holds '\(2.25\)', a number written as text"),
    "a negative weight": ("x,w,y\n1,1,1\n2,-0.5,2\n3,1,3\n", {"weight": "w"}, r"line 3, column 'w' holds '-0.5': a sample weight must be >= 0\.$"),
    "a blank spreadsheet row": ("x,c,y\n1,a,1\n\n2,b,2\n,,\n", {}, r"t.csv: line 5 holds nothing but separators"),
    "a day that does not exist": ("d,y\n2024-01-01,1\n2019-02-29,2\n2024-01-03,3\n", {},
                                  r"line 3, column 'd' holds '2019-02-29', which is not a date \(YYYY-MM-DD, .*--drop d\.$"),
    # Excel's export where the decimal separator is a comma: semicolons between the columns.
    "semicolons and decimal commas": ("sqm;y\n168,2;1883865,04\n100,5;200000,5\n", {},
                                      r"line 2 has 3 fields but the header has 1 \(the file separates its columns with semicolons, "
                                      r"and its decimal commas split the lines"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_table_is_refused_by_line_with_the_advice_its_column_allows(tmp_path, case):
    text, arguments, message = REFUSED[case]
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_table(tmp_path / "t.csv", target="y", **arguments)


def test_finite_cells_whose_sum_overflows_pass_the_finiteness_check(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1e308,1\n1e308,2\n1,3\n")
    table = load_table(tmp_path / "t.csv", target="y")
    assert table.X[0, 0] == 1e308
    # Their mean and spread are not: least squares (and the command's solve) refuse them by name.
    with pytest.raises(ValueError, match=r"`X` column 0 \(counting from 0\) holds values too large"):
        least_squares(table.X, table.y)


@pytest.mark.parametrize("command", ["train", "solve"])
@pytest.mark.parametrize("column", ["x", "y"])
def test_the_command_names_a_column_too_large_for_its_statistics(tmp_path, capsys, command, column):
    from jaxlr import cli

    cells = {"a": [1, 2, 3, 4], "x": [1e200, 2e200, 3e200, 4e200] if column == "x" else [1, 0, 1, 0],
             "y": [1e200, 3e200, 2e200, 4e200] if column == "y" else [1, 3, 2, 4]}  # fmt: skip
    (tmp_path / "t.csv").write_text("a,x,y\n" + "".join(f"{a},{x},{y}\n" for a, x, y in zip(*cells.values())))
    assert cli.main([command, "--data", str(tmp_path / "t.csv"), "--target", "y", "--quiet"]) == 2
    assert capsys.readouterr().err == f"jaxlr: error: column {column!r} holds values too large for its mean and " \
        "spread to be computed in float64 (beyond about 1e150 in size), or values that are not finite: rescale them.\n"


def test_a_npz_table_takes_y_as_its_target_without_being_told(tmp_path):
    X, y = np.arange(6.0).reshape(3, 2), np.array([1.0, 2.0, 3.0])
    np.savez(tmp_path / "d.npz", X=X, y=y, unused=np.zeros(5))
    for target in (None, "y"):
        table = load_table(tmp_path / "d.npz", target=target)
        np.testing.assert_array_equal(table.y, y[:, None])
        assert table.target_name == "y"
    with pytest.raises(DataError, match=r"target of a .npz table is its array y.*got 'price'"):
        load_table(tmp_path / "d.npz", target="price")
    np.savez(tmp_path / "x_only.npz", X=X)
    assert load_table(tmp_path / "x_only.npz").y is None
    with pytest.raises(DataError, match="no array named y"):
        load_table(tmp_path / "x_only.npz", target="y")


def test_a_npz_table_is_read_member_by_member_and_checked(tmp_path):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 2)})
    with zipfile.ZipFile(tmp_path / "crafted.npz", "w") as zf:
        zf.writestr("X.npy", header.getvalue() + np.ones(4).tobytes())
    with pytest.raises(DataError, match=r"X declares shape \(1000000000000, 2\)"):
        load_table(tmp_path / "crafted.npz")
    np.lib.format.write_array_header_1_0(header := io.BytesIO(), {"descr": "<f8", "fortran_order": False, "shape": (10**12, 2)})
    (tmp_path / "crafted.npy").write_bytes(header.getvalue() + np.ones(4).tobytes())
    with pytest.raises(DataError, match=r"crafted.npy is damaged: its header declares float64 \(1000000000000, 2\)"):
        load_table(tmp_path / "crafted.npy", target=1)


@pytest.mark.parametrize("bad_row", [2, 3500])  # in the sample read first, and far past it
def test_a_csv_that_is_not_utf8_is_refused_naming_the_line_not_half_read(tmp_path, bad_row):
    rng = np.random.default_rng(0)
    rows = [f"{rng.normal()!r},{'Lyon' if i % 2 else 'Paris'},{rng.normal()!r}" for i in range(4000)]
    rows[bad_row] = rows[bad_row].replace("Lyon", "Orléans").replace("Paris", "Orléans")
    (tmp_path / "latin.csv").write_bytes(("x,city,y\n" + "\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=f"line {bad_row + 2}.* is not UTF-8 text: .*save the file as UTF-8"):
        load_table(tmp_path / "latin.csv", target="y")
    (tmp_path / "wide.csv").write_bytes(("x,city,y\n" + "\n".join(rows[:50]) + "\n").encode("utf-16"))
    with pytest.raises(DataError, match="line 1 is not UTF-8 text"):
        load_table(tmp_path / "wide.csv", target="y")
    # A Parquet file's binary column is binary data, left out with a note, whatever its bytes.
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "blob": [b"\xff", b"ok", None], "y": [1.0, 2.0, 4.0]}),
                   tmp_path / "b.parquet")  # fmt: skip
    table = load_table(tmp_path / "b.parquet", target="y")
    assert table.feature_names == ("x",) and "'blob' is left out: of type binary" in table.notes[0]


def test_a_semicolon_separated_file_is_named_as_such(tmp_path):
    (tmp_path / "semi.csv").write_text("a;b;price\n1;2;3\n4;5;6\n")
    with pytest.raises(DataError, match="separates its columns with semicolons; jaxlr reads them separated by commas"):
        load_table(tmp_path / "semi.csv", target="price")


def test_a_feature_given_twice_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,price\n1,2,3\n4,5,6\n7,8,10\n")
    for twice in (["a", "a"], ["a", "0"]):  # by name, and by name and index
        with pytest.raises(DataError, match="column 'a' is given twice as a feature"):
            load_table(tmp_path / "t.csv", target="price", features=twice)
    np.savez(tmp_path / "t.npz", X=np.ones((3, 2)), y=np.ones(3))
    with pytest.raises(DataError, match="given twice as a feature"):
        load_table(tmp_path / "t.npz", features=["0", "0"])


def test_a_comma_ending_every_line_adds_no_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,price,\n1,2,3,\n4,5,6,\n7,8,10,\n")
    table = load_table(tmp_path / "t.csv", target="price")
    assert table.feature_names == ("a", "b") and "no name and is empty in every row" in table.notes[0]
    # A nameless column that holds values is still the header's fault.
    (tmp_path / "u.csv").write_text("a,b,price,\n1,2,3,\n4,5,6,9\n")
    with pytest.raises(DataError, match="the header row names no column 4"):
        load_table(tmp_path / "u.csv", target="price")
    (tmp_path / "w.csv").write_text("a,b,price\n1,2,3\n  \t\n4,5,6\n")  # a line of spaces
    with pytest.raises(DataError, match=r"w.csv: line 3 holds nothing but spaces or tabs"):
        load_table(tmp_path / "w.csv", target="price")
    (tmp_path / "v.csv").write_text("a,b,price\n1,2,3,\n4,5,6,\n")  # a comma on the data lines only
    with pytest.raises(DataError, match=r"line 2 has 4 fields but the header has 3 \(its last field is empty: does a comma end"):
        load_table(tmp_path / "v.csv", target="price")


def test_a_column_named_with_a_comma_is_chosen_in_quotes(tmp_path):
    from jaxlr.cli import UsageError, column_list, column_name

    (tmp_path / "t.csv").write_text('"size, m2",rooms,price\n50,2,3\n70,3,6\n90,3,10\n')
    assert column_list('"size, m2", rooms') == ["size, m2", "rooms"]
    assert column_list("a,,b ") == ["a", "b"] and column_list(None) == []
    table = load_table(tmp_path / "t.csv", target="price", features=column_list('"size, m2",rooms'))
    assert table.feature_names == ("size, m2", "rooms")
    # Unquoted, the name splits in two: the error says how to quote it.
    with pytest.raises(DataError, match=r"columns are: 'size, m2', rooms, price \(a name holding a comma is given in double quotes"):
        load_table(tmp_path / "t.csv", target="price", features=column_list("size, m2,rooms"))
    assert column_list('"size, m2" ,rooms') == ["size, m2", "rooms"]  # a space after the quote
    assert column_name('"size, m2"') == "size, m2" and column_name("size, m2") == "size, m2"
    with pytest.raises(UsageError, match="names 2 columns where one is wanted"):
        column_name('"size, m2",rooms')
