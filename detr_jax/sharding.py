"""The device mesh and global arrays.

One `Mesh` with a single 'data' axis over every device of every host: the
train state is replicated, batches are split on 'data'. Hosts hand in their
own rows (`to_global`) and read every host's rows back (`to_host`) or their
own (`local_rows`).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = 'data'  # the mesh's one axis, which batches are split over


def make_mesh(devices=None):
    """A 'data' mesh over `devices` (default: every global device)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (BATCH_AXIS,))


def replicated(mesh):
    return NamedSharding(mesh, P())


def data_sharded(mesh):
    """Split on the leading (batch) axis over 'data'."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def to_global(batch, mesh):
    """This host's numpy rows {key: [local B, ...]} -> global jax.Arrays
    [global B, ...] sharded on 'data'."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def local_rows(x, mesh):
    """This host's rows of a global array split on 'data' (a jax.Array on
    its devices: nothing is gathered; the array itself with one process)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils
    return multihost_utils.global_array_to_host_local_array(x, mesh, P(BATCH_AXIS))


def to_host(x):
    """A global array -> numpy on every host (all hosts' rows)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
