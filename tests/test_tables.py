import numpy as np
import pytest

from jaxlr.data import DataError, load_table
from jaxlr.persist import Model, ModelFileError, load_model, save_model
from jaxlr.model import Params


def test_csv_target_by_name_or_index_and_text_columns_skipped(tmp_path):
    (tmp_path / "t.csv").write_text("id,name,x,z,y\n1,a,0.5,2,10\n2,b,1.5,4,20\n")
    by_name = load_table(tmp_path / "t.csv", target="y")
    by_index = load_table(tmp_path / "t.csv", target=4)
    assert by_name.feature_names == by_index.feature_names == ("id", "x", "z")
    np.testing.assert_array_equal(by_name.X, [[1, 0.5, 2], [2, 1.5, 4]])
    np.testing.assert_array_equal(by_name.y, [[10], [20]])
    chosen = load_table(tmp_path / "t.csv", target="y", features=["z", "2"])
    assert chosen.feature_names == ("z", "x")


def test_a_requested_text_column_names_its_line(tmp_path):
    (tmp_path / "t.csv").write_text("name,y\na,1\n")
    with pytest.raises(DataError, match=r"line 2, column 'name' holds 'a', not a number"):
        load_table(tmp_path / "t.csv", target="y", features=["name"])


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
