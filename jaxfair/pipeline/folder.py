"""A run folder has one owner and one config.

* **One owner.** While a run is active it holds an exclusive lock on its folder (``flock`` on the folder itself,
  which the kernel releases when the process ends, however it ends), and ``run.lock`` names the holder (pid, host,
  start time, command). A second run into the same folder stops at once with a message naming the holder. A
  ``run.lock`` left by a killed run is no lock at all: the next run takes the folder and says whose record it
  replaces. A sweep folder is locked the same way while the sweep runs.
* **One config.** The first run records the resolved config (``config.json``) and its fingerprint. A later run into
  the folder with a different config stops with a message listing the changed keys, instead of resuming one run's
  checkpoints under another's settings; ``--restart`` moves the old folder aside (``<folder>.old-<time>``) and starts
  afresh.
* **Complete is complete.** A folder whose ``results.json`` matches the config is finished: a rerun reports it and
  trains nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

from jaxfair.config import fingerprint, flatten
from jaxfair.pipeline.outputs import RunError, write_json, write_text

LOCK = "run.lock"


def changed_keys(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent keys shown as ``-``)."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {json.dumps(a.get(k, '-'))} -> {json.dumps(b.get(k, '-'))}"
            for k in sorted(set(a) | set(b)) if a.get(k, "-") != b.get(k, "-")]


def recorded_changes(recorded: pathlib.Path, config: dict) -> list[str] | None:
    """How ``config`` differs from the one recorded in the ``config.json`` at ``recorded``: ``None`` when nothing is
    recorded, ``[]`` when they are the same, else :func:`changed_keys` (or that the file is unreadable)."""
    if not recorded.exists():
        return None
    try:
        old = json.loads(recorded.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        return ["config.json is unreadable"]
    if old == config:
        return []
    return changed_keys(old, config) or ["config.json differs in the shape of its tables"]


def describe_changes(changes: list[str]) -> str:
    """The first eight changes, and how many more there are."""
    return "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")


class FolderLock:
    """``with FolderLock(path, log):`` holds the exclusive lock of the folder ``path`` for the block.

    Raises:
      RunError: another process holds it (the message names its pid, start time and command from ``run.lock``).
    """

    def __init__(self, path, log=print):
        self.path = pathlib.Path(path)
        self.log = log
        self._fd = None

    def __enter__(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(f"{self.path}: cannot lock the folder ({err.strerror}); is it on a file system "
                               "without locks?") from err
            holder = _holder(self.path / LOCK) or {}
            raise RunError(f"{self.path}: in use by another run (pid {holder.get('pid', '?')}, started "
                           f"{holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to finish or "
                           "stop it") from None
        self._fd = fd
        left = _holder(self.path / LOCK)
        if left:
            self.log(f"[run] {self.path}: a run that no longer runs left its lock (pid {left.get('pid', '?')}, "
                     f"started {left.get('started', '?')}); taking the folder over")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        write_text(self.path / LOCK, json.dumps(record))
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            (self.path / LOCK).unlink(missing_ok=True)  # the record only; the lock is released by closing
            os.close(self._fd)
            self._fd = None


def _holder(lock: pathlib.Path) -> dict | None:
    try:
        record = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def prepare_folder(path) -> pathlib.Path:
    """Create the output folder ``path``; RunError when it is a file or cannot be created or written."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: --out names a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"{path}: cannot create the output folder ({err.strerror})") from err
    if not os.access(path, os.W_OK):
        raise RunError(f"{path}: the output folder is not writable")
    return path


class RunFolder:
    """The folder of one run: ``with RunFolder(path, resolved_config, restart=..., log=...) as folder``.

    Entering checks the folder (a file in its place, not writable), takes the lock (:class:`FolderLock`), and
    compares ``resolved_config`` (plain data) with the recorded one; leaving releases the lock. ``folder.complete``
    says whether the run already finished under this config (then there is nothing to do). With ``restart`` a folder
    holding any run is moved aside first.

    Raises:
      RunError: the path is a file or cannot be written; another live process holds the lock; the folder holds a run
        of another config (without ``restart``).
    """

    def __init__(self, path, resolved_config: dict, restart: bool = False, log=print):
        self.path = pathlib.Path(path)
        self.config = json.loads(json.dumps(resolved_config))
        self.fingerprint = fingerprint(self.config)
        self.restart = restart
        self.log = log
        self.complete = False
        self._lock = FolderLock(self.path, log)

    def __enter__(self) -> "RunFolder":
        prepare_folder(self.path)
        self._lock.__enter__()
        try:
            self._check_config()
        except BaseException:
            self._lock.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__()

    def _check_config(self) -> None:
        changes = recorded_changes(self.path / "config.json", self.config)
        if changes is None:
            return
        if self.restart:
            # Moved while locked (the lock moves with the folder), then the new folder is locked before the old
            # one is let go: no other run can slip in between.
            resolved = self.path.resolve()
            if resolved == pathlib.Path.cwd().resolve():
                raise RunError(f"{self.path}: --restart cannot move the current folder aside; run it from the "
                               "folder above")
            aside = resolved.with_name(f"{resolved.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            resolved.rename(aside)
            (aside / LOCK).unlink(missing_ok=True)
            old_lock, self._lock = self._lock, FolderLock(self.path, self.log)
            self.path.mkdir(parents=True)
            self._lock.__enter__()
            old_lock.path = aside
            old_lock.__exit__()
            self.log(f"[run] --restart: the previous run is kept in {aside}")
            return
        if not changes:
            self.complete = (self.path / "results.json").exists()
            return
        raise RunError(f"{self.path} holds a run of another config ({describe_changes(changes)}); rerun with "
                       "--restart to start afresh (the old folder is kept aside), or choose another --out")

    def record_config(self) -> None:
        """Write ``config.json`` (the resolved config) and ``fingerprint``."""
        write_json(self.path / "config.json", self.config)
        write_text(self.path / "fingerprint", self.fingerprint + "\n")
