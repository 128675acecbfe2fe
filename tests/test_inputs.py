"""Inputs of every shape a user may hand over: read correctly, or refused with a clear message."""

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from jaxlr.data import DataError, NpyStream

KEY = jax.random.key(0)
X_OK = np.random.default_rng(0).normal(size=(20, 2))
Y_OK = X_OK @ np.array([1.0, 2.0]) + 0.5


def test_a_pandas_nullable_integer_frame_is_read_as_numbers():
    pd = pytest.importorskip("pandas")
    ints = np.arange(40).reshape(20, 2) % 7
    frame = pd.DataFrame({"a": pd.array(ints[:, 0], dtype="Int64"), "b": pd.array(ints[:, 1], dtype="Int64")})
    np.testing.assert_allclose(jaxlr.solve(frame, Y_OK).w, jaxlr.solve(ints.astype(float), Y_OK).w)
    frame.loc[3, "b"] = pd.NA
    with pytest.raises(ValueError, match=r"`X` has NaN or inf in 1 row\(s\); the first is row 3"):
        jaxlr.fit(frame, Y_OK, key=KEY)


def test_bfloat16_features_are_real_numbers():
    X = jnp.asarray(X_OK, jnp.bfloat16)
    params = jaxlr.solve(X, jnp.asarray(Y_OK, jnp.float32))
    assert params.w.dtype == jnp.float32
    np.testing.assert_allclose(params.w.ravel(), [1.0, 2.0], atol=0.05)


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 here")
def test_long_double_features_train_as_float64_ones_would():
    X, y = np.asarray(X_OK, np.longdouble), np.asarray(Y_OK, np.longdouble)
    wide, plain = (jaxlr.fit(a, b, key=KEY, epochs=2) for a, b in ((X, y), (X_OK, Y_OK)))
    np.testing.assert_array_equal(wide.params.w, plain.params.w)
    X[4, 1] = 1e39
    with pytest.raises(ValueError, match=r"`X` holds a value in row 4 \(counting from 0\) beyond the range of float32"):
        jaxlr.fit(X, y, key=KEY)


def test_values_beyond_float32_are_one_error_without_numpy_warnings():
    X = X_OK.copy()
    X[4, 1] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from the cast would fail here
        with pytest.raises(ValueError, match=r"`X` holds a value in row 4 \(counting from 0\) beyond the range of float32"):
            jaxlr.fit(X, Y_OK, key=KEY)
        # solve scales float64 input before the cast, so it can take it.
        assert np.isfinite(np.asarray(jaxlr.solve(X, Y_OK).w)).all()


def test_a_raw_memmap_streams_by_its_own_layout(tmp_path):
    matrix = np.column_stack([X_OK, Y_OK]).astype(np.float32)
    matrix.tofile(tmp_path / "raw.bin")  # no .npy header
    X = np.memmap(tmp_path / "raw.bin", dtype=np.float32, mode="r", shape=(20, 3))
    stream = NpyStream.from_memmap(X, Y_OK)
    got_X, got_y = stream.read(0, 20)
    np.testing.assert_array_equal(got_X, matrix)
    np.testing.assert_allclose(got_y[:, 0], Y_OK, rtol=1e-6)
    result = jaxlr.fit(X, Y_OK, key=KEY, epochs=1, batch_size=4)
    assert result.params.w.shape == (3, 1)


def test_streamed_columns_are_checked_like_a_tables(tmp_path):
    np.save(tmp_path / "m.npy", np.column_stack([X_OK, Y_OK]).astype(np.float32))
    with pytest.raises(ValueError, match=r"`features` \(=7\) must be between 0 and the last column \(=2\)"):
        NpyStream(tmp_path / "m.npy", target=2, features=[0, 7])
    with pytest.raises(DataError, match="column '2' cannot be both the target and a feature"):
        NpyStream(tmp_path / "m.npy", target=2, features=[0, 2])
    assert NpyStream(tmp_path / "m.npy", target=2, features=[1]).x_columns == [1]


def test_x_and_y_on_different_devices_are_refused_by_name():
    script = textwrap.dedent(
        """
        import jax, numpy as np, jaxlr
        X = jax.device_put(np.ones((8, 2), np.float32), jax.devices()[0])
        y = jax.device_put(np.ones((8, 1), np.float32), jax.devices()[1])
        for call in (lambda: jaxlr.fit(X, y, key=jax.random.key(0)), lambda: jaxlr.solve(X, y)):
            try:
                call()
            except ValueError as err:
                print(err)
        """
    )
    from conftest import simulated_devices_env

    env = simulated_devices_env(2)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("`X` is on cpu:0 but `y` is on cpu:1" in l for l in lines), lines


def test_a_target_too_large_for_float32_is_not_blamed_on_the_learning_rate():
    y = 1e19 + 1e16 * Y_OK  # its squares overflow float32 before any step
    with pytest.raises(jaxlr.TrainingDiverged) as caught:
        jaxlr.fit(X_OK, y, key=KEY, epochs=1, batch_size=4)
    message = str(caught.value)
    assert "too large for the loss to be computed in float32" in message and "Lower `lr`" not in message
    assert "centre and scale the target" in message


def test_settings_a_run_would_ignore_are_refused_by_name():
    X = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    y = X @ np.array([1.0, 2.0], np.float32) + 5
    key = jax.random.key(0)
    # A string is not read by its truth ("False" is true): named, not trained with an intercept.
    for name in ("fit_intercept", "record_steps", "loss_growth"):
        with pytest.raises(TypeError, match=f"`{name}` \\(='False'\\) must be True or False"):
            jaxlr.fit(X, y, key=key, epochs=1, **{name: "False"})
    with pytest.raises(TypeError, match="`fit_intercept` \\(='no'\\)"):
        jaxlr.sweep(X, y, key=key, lrs=[0.01], fit_intercept="no")
    first = jaxlr.fit(X, y, key=key, epochs=1)
    with pytest.raises(ValueError, match="give `init` .* or `state` .*, not both"):
        jaxlr.fit(X, y, key=key, epochs=1, state=first.state, init=first.params)
    with pytest.raises(ValueError, match="`validation` is scored by the stopping rule, which `tol` \\(=None\\) turns off"):
        jaxlr.fit(X, y, key=key, epochs=1, validation=(X, y))
    with pytest.raises(ValueError, match="`validation` \\(X_val, y_val\\): `y` has 5 rows but `X` has 40"):
        jaxlr.fit(X, y, key=key, epochs=1, tol=0.0, validation=(X, y[:5]))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="`chunk_bytes` sets how a table streamed"):
        jaxlr.fit(X, y, key=key, epochs=1, chunk_bytes=10)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="give `devices` .* or the old `device`"):
        jaxlr.fit(X, y, key=key, epochs=1, device=jax.devices()[0], devices=1)


@pytest.mark.parametrize("case", ["plain", "fortran", "strided", "big-endian", "float16", "float32", "mixed",
                                  "y column", "y outputs", "nan in y", "inf in X", "beyond float32"])  # fmt: skip
def test_a_small_table_is_cast_and_checked_as_the_general_path_does(case):
    from jaxlr import validate

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 4)), rng.normal(size=6)
    X, y = {
        "plain": (X, y), "fortran": (np.asfortranarray(X), y), "strided": (X[:, ::2], y),
        "big-endian": (X.astype(">f8"), y.astype(">f8")), "float16": (X.astype(np.float16), y),
        "float32": (X.astype(np.float32), y.astype(np.float32)), "mixed": (X.astype(np.float32), y),
        "y column": (X, y[:, None]), "y outputs": (X, np.c_[y, 2 * y]), "nan in y": (X, np.r_[y[:5], np.nan]),
        "inf in X": (np.where(X > 1, np.inf, X), y), "beyond float32": (X * 1e39, y),
    }[case]  # fmt: skip
    general, small = [], []
    for out, check in ((general, lambda: validate._checked_pair(X, y, validate.as_array)),
                       (small, lambda: validate.training_arrays(X, y))):  # fmt: skip
        try:
            out.extend(check())
        except ValueError as err:
            out.append(str(err))
    assert len(small) == len(general)
    for a, b in zip(small, general):
        if isinstance(b, str):
            assert a == b
        else:
            assert a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous
            np.testing.assert_array_equal(a, b)
