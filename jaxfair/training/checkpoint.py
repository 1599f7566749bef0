"""Orbax checkpoints behind one small interface, so an orbax API change is one edit here.

A checkpoint is any pytree of arrays (train state, best parameters, loop counters). PRNG keys must be stored as raw
``jax.random.key_data`` arrays. Restoring needs a template pytree of the same structure (e.g. a freshly initialised
state), whose shapes and dtypes tell orbax what to build.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Keeps the newest ``max_to_keep`` checkpoints of one run under ``directory``.

    Use as a context manager, or call :meth:`close` when done (it waits for pending writes).
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 1):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree) -> None:
        """Write ``tree`` as checkpoint ``step`` and wait until it is complete on disk."""
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, template, step: int | None = None):
        """Read checkpoint ``step`` (default: the newest) into the structure of ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError("no checkpoint to restore")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
