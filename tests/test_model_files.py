"""Crafted and damaged model files and checkpoints: each refused in one line or read correctly, in bounded memory."""

import io
import json
import tracemalloc
import warnings
import zipfile

import jax
import numpy as np
import pytest

import jaxlr
from jaxlr import checkpoint
from jaxlr.engines import core
from jaxlr.model import Params
from jaxlr.persist import Model, ModelFileError, load_model, save_model

MODEL = Model(
    params=Params(w=np.array([[1.5], [-2.0]], np.float32), b=np.array([0.25], np.float32)),
    x_mean=np.array([1.0, 2.0]), x_scale=np.array([2.0, 4.0]),
    feature_names=("a", "b"), target_names=("t",), settings={"lr": 0.1},
)  # fmt: skip
X_NEW = np.array([[3.0, 6.0], [0.0, -1.0]])


def npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=True)
    return buffer.getvalue()


def claiming(shape, array):
    """A .npy whose header claims `shape` but which holds `array`'s bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                  "fortran_order": False, "shape": shape})  # fmt: skip
    return buffer.getvalue() + array.tobytes()


def archive(members, compress=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            zf.writestr(name + ".npy", data, compress_type=kind)
    return buffer.getvalue()


def members_of(path):
    with zipfile.ZipFile(path) as zf:
        return {name[:-4]: zf.read(name) for name in zf.namelist()}


CRAFTED_MODEL = {
    "w claims 10^12 rows": {"w": claiming((10**12, 1), np.ones(2, np.float32))},
    "names claim 10^12 entries": {"feature_names": claiming((10**12,), np.array(["a", "b"]))},
    "w holds pickled objects": {"w": npy(np.array([[object()], [1]], dtype=object))},
    "w is complex": {"w": npy(np.ones((2, 1), np.complex64))},
    "w has the wrong shape": {"w": npy(np.ones((3, 1), np.float32))},
    "b is 2-D": {"b": npy(np.ones((1, 1), np.float32))},
    "w holds NaN": {"w": npy(np.array([[np.nan], [1.0]], np.float32))},
    "x_scale is zero": {"x_scale": npy(np.zeros(2))},
    "names are numbers": {"feature_names": npy(np.arange(2))},
    "format_version is text": {"format_version": npy(np.array("1"))},
    "format_version is 2-D": {"format_version": npy(np.ones((2, 2), int))},
    "settings is a JSON list": {"settings": npy(np.array("[1, 2]"))},
    "settings is not JSON": {"settings": npy(np.array("{"))},
    "settings is a number": {"settings": npy(np.array(3.0))},
    "w's bytes are cut short": {"w": npy(MODEL.params.w)[:-3]},
    "w is not a .npy": {"w": b"\x00" * 200},
    "w inflates past its header": {"w": npy(MODEL.params.w) + b"\x00" * 4096},
}


def _check_refused_or_equal(path):
    try:
        loaded = load_model(path)
    except ModelFileError as err:
        assert "\n" not in str(err) and str(err).startswith(path.name), str(err)
        return "refused"
    np.testing.assert_array_equal(loaded.predict(X_NEW), MODEL.predict(X_NEW))
    assert loaded.feature_names == MODEL.feature_names and loaded.target_names == MODEL.target_names
    # settings are optional (a record of training, not needed to predict): a
    # flip in the directory's copy of their name leaves a model without them.
    assert loaded.settings in (MODEL.settings, {})
    return "loaded"


def test_crafted_model_files_are_refused_in_one_line_within_bounded_memory(tmp_path):
    save_model(tmp_path / "good.npz", MODEL)
    good = members_of(tmp_path / "good.npz")
    # An unused member of 128 MB of zeros, deflated to a fraction of a megabyte.
    with zipfile.ZipFile(tmp_path / "junk.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in good.items():
            zf.writestr(name + ".npy", data)
        with zf.open("junk.npy", "w", force_zip64=True) as member:
            member.write(claiming((32 << 20,), np.zeros(0, np.float32)))
            for _ in range(8):
                member.write(bytes(16 << 20))
    (tmp_path / "fortran.npz").write_bytes(archive({**good, "w": npy(np.asfortranarray(MODEL.params.w.T).T)}))
    for i, (case, override) in enumerate(CRAFTED_MODEL.items()):
        (tmp_path / f"crafted{i}.npz").write_bytes(archive({**good, **override}, compress={"w"} if "inflates" in case else ()))
    data = (tmp_path / "good.npz").read_bytes()
    rng = np.random.default_rng(0)
    for i in range(150):  # flipped bytes and cut files
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), size=rng.integers(1, 4)):
            damaged[position] ^= int(rng.integers(1, 256))
        (tmp_path / f"flipped{i}.npz").write_bytes(bytes(damaged))
    for i, end in enumerate(rng.integers(0, len(data), size=20)):
        (tmp_path / f"cut{i}.npz").write_bytes(data[:end])

    tracemalloc.start()
    try:
        outcomes = {path.name: _check_refused_or_equal(path) for path in sorted(tmp_path.iterdir())}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak  # the 128 MB member was never read, no claimed shape allocated
    assert outcomes["good.npz"] == outcomes["junk.npz"] == outcomes["fortran.npz"] == "loaded"
    assert all(outcomes[f"crafted{i}.npz"] == "refused" for i in range(len(CRAFTED_MODEL))), outcomes
    assert all(outcomes[f"cut{i}.npz"] == "refused" for i in range(20))
    assert sum(outcomes[f"flipped{i}.npz"] == "refused" for i in range(150)) > 50


def test_model_file_messages_name_what_is_wrong(tmp_path):
    good = members_of(save_model(tmp_path / "good.npz", MODEL) or tmp_path / "good.npz")
    expected = {
        "w claims 10^12 rows": r"w has shape \(1000000000000, 1\) but 2 features and 1 target\(s\) need \(2, 1\)",
        "names claim 10^12 entries": r"feature_names declares shape \(1000000000000,\) .* but the archive holds 8 bytes for it",
        "w holds pickled objects": r"w holds object values",
        "settings is a JSON list": r"its settings are not a JSON object",
        "format_version is text": r"format_version holds <U1 values",
    }
    for case, message in expected.items():
        (tmp_path / "m.npz").write_bytes(archive({**good, **CRAFTED_MODEL[case]}))
        with pytest.raises(ModelFileError, match=rf"^m\.npz (is damaged: |is inconsistent: ){message}"):
            load_model(tmp_path / "m.npz")


def _state():
    return jax.tree.map(np.asarray, core.init_fit_state(jaxlr.init_params(jax.random.key(0), 2, 1), "sgd"))


CRAFTED_CHECKPOINT = {
    "a state leaf claims 10^12 rows": {"state_0": claiming((10**12, 1), np.ones(2, np.float32))},
    "settings is a JSON list": {"settings": npy(np.array("[1, 2]"))},
    "settings is not JSON": {"settings": npy(np.array("{"))},
    "epoch is 2-D": {"epoch": npy(np.ones((2, 2), int))},
    "format_version is text": {"format_version": npy(np.array("two"))},
    "a leaf holds pickled objects": {"state_0": npy(np.array([[object()], [1]], dtype=object))},
    "a leaf is missing": {"state_0": None},
}


def test_crafted_checkpoints_are_skipped_with_a_one_line_warning(tmp_path):
    state = _state()
    saved = checkpoint.Checkpoint(epoch=3, state=state, key_words=np.array([0, 1], np.uint32), settings={"lr": 0.1})
    (tmp_path / "good").mkdir()
    path = checkpoint.save(tmp_path / "good", saved)
    good = members_of(path)
    run = checkpoint.run_name(saved.key_words, saved.settings)
    loaded = checkpoint.latest(tmp_path / "good", state, run)
    assert loaded.epoch == 3 and loaded.settings == {"lr": 0.1}
    for case, override in CRAFTED_CHECKPOINT.items():
        directory = tmp_path / case.replace(" ", "_")
        directory.mkdir()
        members = {name: data for name, data in {**good, **override}.items() if data is not None}
        (directory / path.name).write_bytes(archive(members))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert checkpoint.latest(directory, state, run) is None, case
        assert len(caught) == 1 and "\n" not in str(caught[0].message), (case, [str(w.message) for w in caught])


def test_saving_over_a_private_model_file_keeps_it_private(tmp_path):
    path = tmp_path / "m.npz"
    save_model(path, MODEL)
    path.chmod(0o600)
    save_model(path, MODEL._replace(settings={"lr": 0.2}))
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_model(path).settings == {"lr": 0.2}


def test_saving_writes_through_a_link_and_into_a_pipe_without_replacing_them(tmp_path):
    import os
    import threading

    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    target.write_bytes(b"old")
    link.symlink_to(target.name)
    save_model(link, MODEL)
    assert link.is_symlink() and os.readlink(link) == target.name  # the link stays a link...
    assert load_model(target).settings == MODEL.settings  # ...and the file it names holds the model

    pipe = tmp_path / "pipe.npz"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()
    save_model(pipe, MODEL)
    reader.join(timeout=60)
    assert pipe.is_fifo()  # not replaced by a regular file
    (tmp_path / "received.npz").write_bytes(received[0])
    assert load_model(tmp_path / "received.npz").settings == MODEL.settings
