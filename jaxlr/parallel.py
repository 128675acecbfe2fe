"""Data parallelism on JAX's own runtime: many devices (SPMD) and many processes.

Training stays the same program. Each global batch is split along its rows
over a one-axis device mesh, the params are replicated, and XLA inserts the
all-reduce of the gradients; with the same key, the run takes the same steps
as on one device. Across processes (hosts), `jax.distributed` connects them,
each process contributes only its own rows, and every process runs the same
program on the global arrays.
"""

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
    count = validate.check_int("devices", devices, low=1, high=jax.device_count(), high_name="the number of devices")
    return Mesh(np.array(jax.devices()[:count]), ("data",))


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
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        array = array.addressable_data(0)
    return np.asarray(array)


# ------------------------------------------------------------------ several processes


def initialize(coordinator, num_processes, process_id):
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    On CPUs the processes exchange gradients through gloo; on GPUs JAX uses
    NCCL by itself.

    Args:
        coordinator: "host:port" of process 0, the same for every process.
        num_processes: how many processes take part.
        process_id: this process's index, from 0 to num_processes - 1.
    """
    num_processes = validate.check_int("num_processes", num_processes, low=1)
    process_id = validate.check_int(
        "process_id", process_id, low=0, high=num_processes - 1, high_name="num_processes - 1"
    )
    if ":" not in str(coordinator):
        raise ValueError(f"`coordinator` (={coordinator!r}) must be HOST:PORT, e.g. 10.0.0.1:4321.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


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
