"""The device mesh a training stage runs on: data parallel over a ``data`` axis, large tables row-sharded over a
``model`` axis, every array placed with an explicit :class:`jax.sharding.NamedSharding`.

A stage's ``[<stage>.train]`` section chooses it (:class:`~jaxfair.training.trainer.TrainConfig`):

* ``devices``: how many local devices the stage trains on. ``1`` is one device, exactly as before (the trainer then
  places nothing and builds no mesh). ``0`` (the default) means every local device of an accelerator platform (GPU,
  TPU) and one device on a CPU machine: the CPU devices jaxfair splits a machine into (:mod:`jaxfair.cpu_devices`)
  serve the probes, and training on them would change every result by float rounding for no speed (two CPU "devices"
  share the same cores).
* ``model_axis``: how many of those devices form the ``model`` axis (the rest, ``devices / model_axis``, the ``data``
  axis). Every parameter matrix with at least :data:`TABLE_ROWS` rows (user and item embedding tables) is split by
  rows over it; smaller arrays are replicated. Optimizer states have their parameters' shapes, so the same rule
  gives them their parameters' sharding.

Each epoch's batches (stacked ``(num_batches, B, ...)``) are split over the ``data`` axis along ``B``, which must be
divisible by its size (:class:`MeshError` otherwise; batches are padded to ``B``, never dropped). The inputs are
placed with these shardings and the epoch program constrains the state to its shardings on the way in and out
(:func:`epochs_on`), so XLA (GSPMD) inserts the collectives: the same program as on one device, summed in another
order, so results equal one device's to float rounding (``tests/test_mesh.py``).

Several hosts: :func:`initialize_distributed` starts ``jax.distributed`` from the environment before anything else,
and each process then builds its addressable shards of every global array from the host copy it computes (every
process draws the same batches from the same seed), :func:`place` with ``jax.make_array_from_callback``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfair.config import ConfigError

TABLE_ROWS = 1024  # parameter matrices with at least this many rows are row-sharded over the model axis
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class MeshError(ConfigError):
    """A mesh request this machine or this stage cannot meet (the message names the key to change)."""


def device_count(devices: int) -> int:
    """The devices a stage trains on: ``devices`` itself, or for 0 every device of an accelerator and 1 on CPU."""
    available = jax.device_count()
    if devices == 0:
        return available if jax.default_backend() != "cpu" else 1
    if devices > available:
        raise MeshError(f"train.devices = {devices}, but this process sees {available} device(s) "
                        f"({jax.default_backend()}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                        "before JAX starts")
    return devices


def make_mesh(devices: int, model_axis: int = 1) -> Mesh | None:
    """A ``(data, model)`` mesh over the first :func:`device_count` devices, or None for one device."""
    count = device_count(devices)
    if model_axis < 1 or count % model_axis:
        raise MeshError(f"train.model_axis = {model_axis} must divide the {count} devices of the mesh")
    if count == 1:
        return None
    grid = np.asarray(jax.devices()[:count]).reshape(count // model_axis, model_axis)
    return Mesh(grid, ("data", "model"))


def param_spec(leaf, mesh: Mesh) -> PartitionSpec:
    """Row-sharded over ``model`` for a matrix of at least :data:`TABLE_ROWS` rows that divide evenly, else
    replicated."""
    shape = np.shape(leaf)
    rows = mesh.shape["model"]
    if rows > 1 and len(shape) >= 2 and shape[0] >= TABLE_ROWS and shape[0] % rows == 0:
        return PartitionSpec("model")
    return PartitionSpec()


def state_shardings(tree, mesh: Mesh):
    """The :class:`NamedSharding` of every leaf of a train state (or a carry holding one)."""
    return jax.tree.map(lambda leaf: NamedSharding(mesh, param_spec(leaf, mesh)), tree)


def batch_shardings(batches, mesh: Mesh, batch_axis: int = 1):
    """Stacked batches ``(num_batches, B, ...)`` split along ``B`` over the ``data`` axis."""
    data = mesh.shape["data"]

    def spec(leaf):
        shape = np.shape(leaf)
        if len(shape) <= batch_axis:
            return NamedSharding(mesh, PartitionSpec())
        if shape[batch_axis] % data:
            raise MeshError(f"batch_size {shape[batch_axis]} is not divisible by the {data} devices of the data "
                            "axis; choose a batch_size that is, or fewer devices")
        return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), "data"))

    return jax.tree.map(spec, batches)


def epochs_on(mesh: Mesh | None, step, end_epoch, state):
    """A stage's epoch program and placements on ``mesh``: ``(state, run_epoch, place_batches)``. With no mesh (one
    device) the state and the host batches go in as they are; on a mesh the state is placed by
    :func:`state_shardings`, each epoch's batches by :func:`batch_shardings`, and the epoch program
    (:func:`~jaxfair.training.step.make_epoch_fn`) constrains the state to its shardings on the way in and out."""
    from jaxfair.training.step import make_epoch_fn

    if mesh is None:
        return state, make_epoch_fn(step, end_epoch), lambda batches: batches
    shardings = state_shardings(state, mesh)
    run_epoch = make_epoch_fn(step, end_epoch, constrain=lambda s: jax.lax.with_sharding_constraint(s, shardings))
    return place(state, shardings), run_epoch, lambda batches: place(batches, batch_shardings(batches, mesh))


def place(tree, shardings):
    """Put host (or single-device) arrays onto their shardings; each process builds only its addressable shards."""

    def one(leaf, sharding):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        if jax.process_count() == 1:
            return jax.device_put(leaf, sharding)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def initialize_distributed() -> bool:
    """``jax.distributed.initialize()`` when the environment names a coordinator (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; on a TPU slice or under SLURM JAX finds them itself when
    ``JAXFAIR_DISTRIBUTED=1``). Must run before JAX starts its backend. Returns whether it initialised."""
    wanted = os.environ.get("JAXFAIR_DISTRIBUTED") == "1" or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if not wanted:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts (tests); accelerators ignore it
    if os.environ.get("JAXFAIR_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    missing = [name for name in DISTRIBUTED_ENV if not os.environ.get(name)]
    if missing:
        raise MeshError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not: a multi-host launch sets "
                        "all three on every host")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    return True
