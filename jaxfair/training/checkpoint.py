"""Orbax checkpoints behind one small interface, so an orbax API change is one edit here.

A checkpoint is any pytree of arrays (train state, best parameters, loop counters). PRNG keys must be stored as raw
``jax.random.key_data`` arrays. Restoring needs a template pytree of the same structure (e.g. a freshly initialised
state), whose shapes and dtypes tell orbax what to build.

A checkpoint that does not restore (a truncated file, an empty manifest, missing metadata: what a kill during a
write or a damaged disk leaves) is passed over for the next older one; once one restores, each that did not is
reported in one line and moved aside (``<step>.damaged-<time>``, which orbax no longer lists). The trainer keeps two,
so a damaged newest one costs at most the epochs since the one before. When none restores, nothing is moved and
:class:`CheckpointError` says why and how to start afresh.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import time

import jax
import orbax.checkpoint as ocp


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class CheckpointError(RuntimeError):
    """No checkpoint of a folder restores; the message names the folder and how to start afresh."""


class Checkpointer:
    """Keeps the newest ``max_to_keep`` checkpoints of one run under ``directory``.

    Use as a context manager, or call :meth:`close` when done (it waits for pending writes). ``log`` receives the
    one-line reports of damaged checkpoints.
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 1, log=print):
        self.directory = pathlib.Path(directory).absolute()
        self.log = log
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        try:
            with _quiet_absl():
                self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as err:  # orbax raises many kinds on a damaged folder
            raise CheckpointError(f"{self.directory}: cannot be read as a checkpoint folder ({type(err).__name__}: "
                                  f"{err}); rerun with --restart") from err

    def latest_step(self) -> int | None:
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def save(self, step: int, tree) -> None:
        """Start writing ``tree`` as checkpoint ``step`` and return while the files are written in the background.

        Orbax finishes a pending save before it starts the next; :meth:`latest_step`, :meth:`restore` and
        :meth:`close` wait for it. A checkpoint is written into a temporary folder renamed once complete, so a run
        killed mid-write resumes from the one before (epochs are deterministic, so the results do not change;
        ``tests/test_resume.py``).
        """
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)

    def restore(self, template, step: int | None = None):
        """Read checkpoint ``step`` (default: the newest that restores) into the structure of ``template``.

        Steps that fail are moved aside only once an older one has restored: when none restores (damage, or a
        template that no longer matches what was saved), nothing is moved.

        Raises:
          FileNotFoundError: there is no checkpoint. CheckpointError: none restores.
        """
        self._manager.wait_until_finished()
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError("no checkpoint to restore")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        failed = []
        for candidate in steps:
            try:
                with _quiet_absl():  # orbax logs its own errors about a damaged file; ours is one line per step
                    restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
            except Exception as err:  # orbax raises many kinds on a damaged checkpoint
                failed.append((candidate, err))
                continue
            for bad, err in failed:
                aside = self.directory / f"{bad}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
                (self.directory / str(bad)).rename(aside)
                self.log(f"[checkpoint] {self.directory / str(bad)} does not restore ({type(err).__name__}); moved "
                         f"to {aside.name}, resuming from step {candidate}")
            if failed:
                with _quiet_absl():
                    self._manager.reload()
            return restored
        newest, err = failed[0]
        reason = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{self.directory}: no checkpoint restores (steps {[s for s, _ in failed]}; the newest "
                              f"fails with {type(err).__name__}: {reason}); rerun with --restart to start afresh "
                              "(the old folder is kept aside)")

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
