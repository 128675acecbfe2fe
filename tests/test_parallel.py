"""Data parallelism: 8 simulated devices in one process, and 2 processes on 127.0.0.1.

XLA_FLAGS must be set before jax is imported, so each scenario runs in its own
Python process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxlr
from jaxlr.persist import load_model

MULTI_DEVICE = textwrap.dedent(
    """
    import json, jax, numpy as np, optax, jaxlr
    from jaxlr.engines import core
    from jaxlr import parallel, schedules
    assert jax.device_count() == 8
    # 1003 rows: the last batch of each epoch (11 rows) does not split over 8 devices.
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=1003)
    out = {}
    for name, make in [("sgd", lambda: None), ("adam", lambda: optax.adam(0.01))]:
        for engine in ("fused", "loop"):
            one = jaxlr.fit(X, y, key=jax.random.key(1), batch_size=16, epochs=2, engine=engine, optimizer=make())
            many = jaxlr.fit(X, y, key=jax.random.key(1), batch_size=16, epochs=2, engine=engine, optimizer=make(),
                             devices=8)
            out[f"{name}-{engine}"] = float(np.abs(np.asarray(one.params.w) - np.asarray(many.params.w)).max())
            out[f"{name}-{engine}-devices"] = len(many.params.w.sharding.device_set)
    # The compiled program splits each batch over the devices and all-reduces.
    mesh = parallel.data_mesh(8)
    spec = core.Spec(loss=jaxlr.losses.resolve("squared"), batch_size=16, sharding=parallel.by_rows(mesh))
    state = parallel.put_replicated(core.init_fit_state(jaxlr.init_params(jax.random.key(0), 2, 1), "sgd"), mesh)
    Xr, yr = parallel.put_replicated((core.pad_rows(np.asarray(X), 1008), core.pad_rows(np.asarray(y), 1008)), mesh)
    data = core.Data(Xr, yr, None, np.int32(1003))
    orders = parallel.put_replicated(np.arange(1008, dtype=np.int32)[None], mesh)
    packed = core.pack(core.Numbers(rate=schedules.Rate(0.001)), np.float32)
    text = core.program(spec, True, "host").lower(state, data, packed, orders, np.int32(1), None).compile().as_text()
    out["all_reduce"] = "all-reduce" in text
    out["per_device_batch"] = "f32[2,2]" in text  # 16 rows / 8 devices, 2 features
    try:
        jaxlr.fit(X, y, key=jax.random.key(1), batch_size=12, devices=8)
    except ValueError as err:
        out["error"] = str(err)
    print(json.dumps(out))
    """
)

MULTI_PROCESS = textwrap.dedent(
    """
    import json, sys, jax, numpy as np, jaxlr
    from jaxlr import parallel
    parallel.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    assert jax.process_count() == 2 and jax.device_count() == 4
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=1000)
    rows = parallel.local_rows(1000)  # each process reads only its own rows
    mesh = parallel.data_mesh(jax.devices())
    Xg = parallel.global_rows(np.asarray(X)[rows], mesh)
    yg = parallel.global_rows(np.asarray(y)[rows], mesh)
    result = jaxlr.fit(Xg, yg, key=jax.random.key(1), batch_size=16, epochs=2, devices=mesh)
    print(json.dumps({"w": parallel.host_value(result.params.w).ravel().tolist(),
                      "b": parallel.host_value(result.params.b).tolist(),
                      "rows": [rows.start, rows.stop]}))
    """
)


def _env(devices):
    from conftest import simulated_devices_env

    return simulated_devices_env(devices)


def test_eight_devices_take_the_same_steps_as_one():
    done = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=_env(8), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("sgd-fused", "sgd-loop", "adam-fused", "adam-loop"):
        assert out[name] < 1e-5, out
        assert out[f"{name}-devices"] == 8
    assert out["all_reduce"] and out["per_device_batch"]
    assert out["error"] == "`batch_size` (=12) must be divisible by the number of devices (=8)."


def _run_together(commands, *, timeout=600, **popen):
    """Runs the commands side by side; their exit statuses and (stdout, stderr). None is left running."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
                 for command in commands]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in processes], outputs


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_model_one_process_would():
    coordinator = f"127.0.0.1:{_free_port()}"
    statuses, outputs = _run_together([[sys.executable, "-c", MULTI_PROCESS, coordinator, str(i)] for i in range(2)],
                                      env=_env(2))  # fmt: skip
    for status, (out, err) in zip(statuses, outputs):
        assert status == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["rows"] for r in results] == [[0, 500], [500, 1000]]
    X, y = jaxlr.synthetic_data(jax.random.key(0), num_examples=1000)
    alone = jaxlr.fit(X, y, key=jax.random.key(1), batch_size=16, epochs=2)
    for r in results:
        np.testing.assert_allclose(r["w"], np.asarray(alone.params.w).ravel(), atol=1e-5)
        np.testing.assert_allclose(r["b"], np.asarray(alone.params.b), atol=1e-5)


@pytest.mark.parametrize("num_rows", [400, 401])
def test_the_same_command_trains_the_same_model_on_one_or_two_processes(tmp_path, num_rows):
    # The table's own defaults: a validation split, early stopping, standardized
    # features and target; with sample weights. 400 rows leave 360 training rows,
    # shared between the processes; 401 leave 361, which go whole to each.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(num_rows, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, 1000.0]
    y = X @ [1.0, -2.0, 0.05] + 300.0 + 0.5 * rng.normal(size=num_rows)
    weight = rng.uniform(0.1, 2.0, size=num_rows)
    # An identifier column, left out with a note: process 0 gives it, process 1 does not.
    rows = ["id,a,b,c,y,w"] + [f"r{i},{a},{b},{c},{t},{u}" for i, ((a, b, c), t, u) in enumerate(zip(X, y, weight))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    common = ["-m", "jaxlr", "train", "--data", "t.csv", "--target", "y", "--sample-weight", "w", "--json", "--no-cache"]
    env = _env(1)
    alone = subprocess.run([sys.executable, *common, "--save", "alone.npz"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    coordinator = f"127.0.0.1:{_free_port()}"
    statuses, outputs = _run_together([
        [sys.executable, *common, "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i),
         "--save", "m.npz"] for i in range(2)], cwd=tmp_path, env=env)  # fmt: skip
    assert statuses == [0, 0], [err[-2000:] for _, err in outputs]
    assert "jaxlr: note: " in outputs[0][1] and "jaxlr: note: " in alone.stderr
    assert outputs[1][0] == "" and "jaxlr:" not in outputs[1][1]  # process 1 trains but stays quiet
    report, alone_report = json.loads(outputs[0][0]), json.loads(alone.stdout)
    assert report["epochs_run"] == alone_report["epochs_run"] < 200  # early stopping ended both alike
    one, two = load_model(tmp_path / "alone.npz"), load_model(tmp_path / "m.npz")
    np.testing.assert_allclose(np.asarray(two.params.w), np.asarray(one.params.w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(two.params.b), np.asarray(one.params.b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(two.predict(X), one.predict(X), rtol=1e-6)


@pytest.mark.parametrize(
    "options, messages",
    [
        ([["--lr", "0.01"], ["--lr", "0.02"]],
         ["process 1 was started with --lr 0.02, process 0 with --lr 0.01: start every process with the same settings."]),
        ([["--epochs", "5"], []], ["process 1 was started with --epochs 2, process 0 with --epochs 5"]),
        ([[], ["--x64"]], ["process 1 was started with --x64, process 0 without --x64"]),
        ([["--data", "t.csv"], ["--data", "u.csv"]],
         ["process 1 read another table from --data than process 0 (its rows, targets or weights differ)"]),
        ([[], ["--features", "b,a"]], ["process 1 chose other columns than process 0"]),
        # 30 rows: the default batch is all of them, which one process gives by hand as 32.
        ([["--data", "s.csv", "--batch-size", "32"], ["--data", "s.csv"]],
         ["process 1 settled --batch-size at 30, process 0 at 32: one was given it"]),
        ([[], ["--data", "nosuch.csv"]],
         ["process 1 stopped on an error reading or splitting --data", "--data file 'nosuch.csv' does not exist."]),
        ([["--data", "t.csv"], ["--target", "y"]], ["process 1 was started without --data, process 0 with --data"]),
        # The same meaning, said otherwise: trained alike, and both end well.
        ([["--target", "2", "--lr", "0.01"], ["--lr", "1e-2"]], [None]),
        # Without early stopping, only process 0 prints progress lines: its programs must still be the others'.
        ([["--val-fraction", "0"], ["--val-fraction", "0"]], [None]),
    ],
)  # fmt: skip
def test_processes_started_with_different_settings_or_tables_are_refused(tmp_path, options, messages):
    # Different settings train different models, or wait forever for each
    # other's steps (another number of epochs); every process says so and ends.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = X @ [1.0, 2.0] + 1.0
    for name, target, rows in (("t.csv", y, 400), ("u.csv", y + (np.arange(400) == 7), 400), ("s.csv", y, 30)):
        (tmp_path / name).write_text("a,b,y\n" + "".join(f"{a},{b},{t}\n" for (a, b), t in zip(X[:rows], target)))
    coordinator = f"127.0.0.1:{_free_port()}"
    statuses, outputs = _run_together([
        [sys.executable, "-m", "jaxlr", "train", "--no-cache", "--epochs", "2", "--coordinator", coordinator,
         "--num-processes", "2", "--process-id", str(i),
         *(["--data", "t.csv"] if "--data" not in own and own[-2:] != ["--target", "y"] else []),
         *(["--target", "y"] if "--target" not in own else []), *own, "--save", "m.npz"]
        for i, own in enumerate(options)], timeout=300, cwd=tmp_path, env=_env(1))  # fmt: skip
    for i, (status, (_, err)) in enumerate(zip(statuses, outputs)):
        message = messages[min(i, len(messages) - 1)]
        if message is None:
            assert status == 0, err[-2000:]
            continue
        assert status == 2, err[-2000:]
        assert err.strip().splitlines()[-1].startswith(f"jaxlr: error: {message}"), err[-2000:]
    assert (tmp_path / "m.npz").exists() == (messages == [None])


def test_what_process_0_names_as_differing_is_what_json_tells_apart():
    from jaxlr.parallel import _differing, _written

    assert _written({"a": 1}) != _written({"a": True}) and _written({"a": None}) != _written({})
    assert _differing(1, {"a": True}, {"a": 1}) == ("process 1 was started with a, process 0 with a 1: "
                                                     "start every process with the same settings.")  # fmt: skip
    assert _differing(2, {}, {"a": 0}).startswith("process 2 was started without a, process 0 with a 0")
    # In process 0's order: its first option that differs is named first.
    assert _differing(1, {"z": 1, "b": 2}, {"z": 0, "b": 3}).startswith("process 1 was started with z 1,")
