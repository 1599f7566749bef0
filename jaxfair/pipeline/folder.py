"""A run folder has one owner and one config.

* **One owner.** While a run is active its folder holds ``run.lock`` (the holder's pid, host, start time and
  command), created atomically. A second run into the same folder stops at once with a message naming the holder; a
  lock left by a process that no longer runs (on this host) is taken over.
* **One config.** The first run records the resolved config (``config.json``) and its fingerprint. A later run into
  the folder with a different config stops with a message listing the changed keys, instead of resuming one run's
  checkpoints under another's settings; ``--restart`` moves the old folder aside (``<folder>.old-<time>``) and starts
  afresh. A sweep folder holds the same lock while the sweep runs.
* **Complete is complete.** A folder whose ``results.json`` matches the config is finished: a rerun reports it and
  trains nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import sys
import time

from jaxfair.config import fingerprint
from jaxfair.pipeline.outputs import RunError, write_json

LOCK = "run.lock"


def _flat(values, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent keys shown as ``-``)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {json.dumps(a.get(k, '-'))} -> {json.dumps(b.get(k, '-'))}"
            for k in sorted(set(a) | set(b)) if a.get(k, "-") != b.get(k, "-")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class FolderLock:
    """``with FolderLock(path, log):`` holds ``path/run.lock`` (created atomically) for the block.

    Raises:
      RunError: another live process on this host holds it (the message names its pid, start time and command).
        A lock whose process no longer runs is taken over, with a log line.
    """

    def __init__(self, path, log=print):
        self.path = pathlib.Path(path)
        self.log = log
        self.held = False

    def __enter__(self) -> "FolderLock":
        lock = self.path / LOCK
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _holder(lock)
                if holder and holder.get("host") == record["host"] and _alive(int(holder.get("pid", -1))) \
                        and int(holder["pid"]) != os.getpid():
                    raise RunError(f"{self.path}: in use by another run (pid {holder['pid']}, started "
                                   f"{holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to "
                                   "finish or stop it") from None
                self.log(f"[run] taking over the lock of a run that no longer runs "
                         f"(pid {(holder or {}).get('pid', '?')}, started {(holder or {}).get('started', '?')})")
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as out:
                out.write(json.dumps(record))
            self.held = True
            return self
        raise RunError(f"{self.path}: could not take the run lock {lock}")

    def __exit__(self, *exc) -> None:
        if self.held:
            (self.path / LOCK).unlink(missing_ok=True)
            self.held = False


def _holder(lock: pathlib.Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


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
        recorded = self.path / "config.json"
        if not recorded.exists():
            return
        if self.restart:
            aside = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            self._lock.__exit__()
            self.path.rename(aside)
            self.log(f"[run] --restart: the previous run is kept in {aside}")
            self.path.mkdir(parents=True)
            self._lock.__enter__()
            return
        try:
            old = json.loads(recorded.read_text())
        except (OSError, ValueError):
            old = None
        if old == self.config:
            self.complete = (self.path / "results.json").exists()
            return
        changes = changed_keys(old or {}, self.config) if old is not None else ["config.json is unreadable"]
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise RunError(f"{self.path} holds a run of another config ({shown}); rerun with --restart to start afresh "
                       "(the old folder is kept aside), or choose another --out")

    def record_config(self) -> None:
        """Write ``config.json`` (the resolved config) and ``fingerprint``."""
        write_json(self.path / "config.json", self.config)
        (self.path / "fingerprint").write_text(self.fingerprint + "\n")
