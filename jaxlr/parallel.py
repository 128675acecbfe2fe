"""Data parallelism on JAX's own runtime: many devices (SPMD) and many processes.

Training stays the same program. Each global batch is split along its rows
over a one-axis device mesh, the params are replicated, and XLA inserts the
all-reduce of the gradients; with the same key, the run takes the same steps
as on one device. Across processes (hosts), `jax.distributed` connects them,
each process contributes only its own rows, and every process runs the same
program on the global arrays.
"""

import json
import math
import socket
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlr import validate


def data_mesh(devices):
    """A one-axis mesh from `devices`: None, a count, a list of devices, or a Mesh."""
    if devices is None or isinstance(devices, Mesh):
        if isinstance(devices, Mesh) and len(devices.axis_names) != 1:
            raise ValueError(f"`devices` mesh has axes {devices.axis_names}; jaxlr needs a one-axis mesh.")
        return devices
    if isinstance(devices, (list, tuple)):
        return Mesh(np.array(devices), ("data",))
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > jax.device_count():
        raise ValueError(
            f"`devices` (={devices}) is more than the {jax.device_count()} device(s) JAX sees. On a CPU, "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before importing jax."
        )
    count = validate.check_int("devices", devices, low=1, high=jax.device_count(), high_name="the number of devices")
    return Mesh(np.array(jax.devices()[:count]), ("data",))


def platform(device=None, mesh=None) -> str:
    """The platform the rows train on: "cpu", "gpu", "tpu", ..."""
    if device is not None:
        return device.platform
    if mesh is not None:
        return mesh.devices.flat[0].platform
    return jax.default_backend()


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def by_rows(mesh):
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def put_replicated(tree, mesh):
    """Every leaf of `tree` copied whole to every device of `mesh`, across processes too."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # Each process holds the same values (same key, same data), so each
    # contributes them as its local copy of a replicated global array.
    return jax.tree.map(lambda a: _global(sharding, a), tree)


def _global(sharding, value):
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return value
    return jax.make_array_from_process_local_data(sharding, np.asarray(value))


def host_value(array):
    """A NumPy copy of a replicated (or fully addressable) array, in any process."""
    return np.asarray(_local(array))


def host_values(tree):
    """`host_value` of every leaf of `tree`, the copies off an accelerator
    started together (each read on its own would wait for its own copy)."""
    leaves, structure = jax.tree.flatten(tree)
    if jax.process_count() > 1:  # (only then can an array be partly another process's)
        leaves = [_local(leaf) for leaf in leaves]
    # A CPU array is read in place: starting a copy of it costs more than the
    # read (`jax.device_get` spends about 200 µs on 20 small ones).
    if jax.default_backend() != "cpu":
        for leaf in leaves:
            if isinstance(leaf, jax.Array):
                leaf.copy_to_host_async()
    return jax.tree.unflatten(structure, [np.asarray(leaf) for leaf in leaves])


def _local(array):
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return array.addressable_data(0)
    return array


# ------------------------------------------------------------------ several processes


def initialize(coordinator, num_processes, process_id, *, timeout=60.0, settings=None):
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    On CPUs the processes exchange gradients through gloo; on GPUs JAX uses
    NCCL by itself. The processes first meet at the coordinator's address,
    each waiting at most `timeout` seconds for the others: JAX's own wait
    would end the process with a crash report instead of naming who is missing.

    Args:
        coordinator: "host:port" of process 0, the same for every process.
        num_processes: how many processes take part.
        process_id: this process's index, from 0 to num_processes - 1.
        timeout: seconds to wait for the other processes.
        settings: what must be the same in every process, by name, as a
            dict of values JSON can write (e.g. a command's options). Process
            0 compares every process's with its own.

    Raises:
        TimeoutError: not every process arrived in time; the message names
            the missing ones (or the coordinator).
        ValueError: a process was started with other settings than process
            0; every process raises it, naming the first setting that differs.
    """
    num_processes = validate.check_int("num_processes", num_processes, low=1)
    process_id = validate.check_int(
        "process_id", process_id, low=0, high=num_processes - 1, high_name="num_processes - 1"
    )
    timeout = validate.check_real("timeout", timeout, low=0.0)
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"`coordinator` (={coordinator!r}) must be HOST:PORT, e.g. 10.0.0.1:4321.")
    if num_processes > 1:
        meet(host, int(port), num_processes, process_id, timeout, settings)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
        initialization_timeout=max(1, math.ceil(timeout)),
    )  # fmt: skip


def meet(host, port, num_processes, process_id, timeout, settings=None):
    """Waits until every process of the run has reached process 0 at host:port.

    Process 0 listens; every other process connects, says who it is and
    what its settings are, and waits for the word to go. When `timeout`
    runs out first, every process that can raises TimeoutError naming the
    processes that did not come; when a process's settings differ from
    process 0's, every process raises ValueError naming the first that
    differs (runs that differ would train different models, or wait for
    each other's steps forever). The port is let go before JAX's
    coordination service takes it.
    """
    deadline = time.monotonic() + timeout
    settings = json.dumps(settings or {})  # in the caller's order: the first difference named is the first there
    if process_id == 0:
        _gather(port, num_processes, deadline, timeout, f"{host}:{port}", settings)
    else:
        _report_to(host, port, num_processes, process_id, deadline, timeout, settings)


def _gather(port, num_processes, deadline, timeout, address, settings):
    arrived, settings_of, ours = {}, {}, json.loads(settings)
    refusal = None
    with socket.create_server(("", port)) as server:
        try:
            while len(arrived) < num_processes - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                server.settimeout(left)
                try:
                    peer, _ = server.accept()
                except socket.timeout:
                    break
                peer.settimeout(max(1.0, left))
                try:
                    words = peer.makefile("r").readline().split(maxsplit=3)
                    theirs = json.loads(words[3])
                except (OSError, IndexError, ValueError):
                    peer.close()  # gone, or not one of ours
                    continue
                if words[0] != "jaxlr" or not all(w.isdigit() for w in words[1:3]) or not isinstance(theirs, dict):
                    peer.close()  # not one of ours
                    continue
                count, who = int(words[1]), int(words[2])
                if count != num_processes or who in arrived or not 0 < who < num_processes:
                    problem = f"says --num-processes {count}" if count != num_processes else "came twice"
                    refusal = f"process {who} {problem}; process 0 runs {num_processes} processes."
                    arrived[-len(arrived) - 1] = peer  # told too, then let go
                    break
                arrived[who], settings_of[who] = peer, theirs
            missing = [i for i in range(1, num_processes) if i not in arrived]
            refusal = refusal or next((_differing(who, settings_of[who], ours) for who in sorted(settings_of)
                                       if _written(settings_of[who]) != _written(ours)), None)  # fmt: skip
            if refusal:
                word = f"refused {refusal}\n".encode()
            elif missing:
                word = ("missing " + ",".join(map(str, missing)) + "\n").encode()
            else:
                word = b"go\n"
            for peer in arrived.values():
                try:
                    peer.sendall(word)
                except OSError:
                    pass
            for peer in arrived.values():  # they hang up first: the port is free at once
                peer.settimeout(5.0)
                try:
                    peer.recv(1)
                except OSError:
                    pass
        finally:
            for peer in arrived.values():
                peer.close()
    if refusal:
        raise ValueError(refusal)
    if missing:
        raise TimeoutError(
            f"process(es) {_names(missing)} of {num_processes} did not join the run at {address} within "
            f"{timeout:g} s; start each with the same --coordinator and --num-processes, or wait longer "
            "(--peer-timeout)."
        )


def _written(settings):
    """Settings as JSON writes them: 1 and True, or None and a missing name, differ."""
    return {name: json.dumps(value) for name, value in settings.items()}


def _differing(who, theirs, ours):
    """What tells process `who`'s settings from process 0's: the first that
    differs, in process 0's order (then the names only process `who` has)."""
    names = [*ours, *(name for name in theirs if name not in ours)]
    mine, others = _written(ours), _written(theirs)
    name = next(name for name in names if mine.get(name) != others.get(name))
    return (f"process {who} was started {_setting(name, theirs)}, process 0 {_setting(name, ours)}: "
            "start every process with the same settings.")  # fmt: skip


def _setting(name, settings):
    """A setting as a command line says it: "with --lr 0.01", "with --x64", "without --x64"."""
    value = settings.get(name)
    if value is None or value is False:
        return f"without {name}"
    if value is True:
        return f"with {name}"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"with {name} {value}"


def _report_to(host, port, num_processes, process_id, deadline, timeout, settings):
    address = f"{host}:{port}"
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the coordinator, process 0, did not answer at {address} within {timeout:g} s; "
                    "start it with the same --coordinator, or wait longer (--peer-timeout)."
                ) from None
            time.sleep(0.1)
    with connection:
        connection.sendall(f"jaxlr {num_processes} {process_id} {settings}\n".encode())
        # Process 0 answers by its own deadline; allow for its later start.
        connection.settimeout(timeout + 10.0)
        try:
            word = connection.makefile("r").readline().strip()
        except OSError:
            word = ""
    if word == "go":
        return
    if word.startswith("refused "):
        raise ValueError(word.removeprefix("refused "))
    if word.startswith("missing "):
        missing = [int(i) for i in word.split()[1].split(",")]
        raise TimeoutError(
            f"process(es) {_names(missing)} of {num_processes} did not join the run at {address} within "
            f"process 0's {timeout:g} s."
        )
    raise ValueError(f"process 0 at {address} refused process {process_id} or went away; see its error.")


def every_process(values):
    """Every process's `values` (a 1-D float64 array of the same length in each), as rows in process order."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64)))


def _names(ids):
    return ", ".join(map(str, ids))


def local_rows(num_rows):
    """The slice of rows this process reads: an equal share, in process order."""
    share, extra = divmod(num_rows, jax.process_count())
    if extra:
        raise ValueError(
            f"the data's {num_rows} rows do not split evenly over {jax.process_count()} processes; "
            f"drop {extra} row(s) or change the number of processes."
        )
    start = jax.process_index() * share
    return slice(start, start + share)


def global_rows(local, mesh):
    """A global array, split by rows over `mesh`, from this process's rows `local`."""
    return jax.make_array_from_process_local_data(by_rows(mesh), np.asarray(local))
