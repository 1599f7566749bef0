"""Writing run outputs atomically: a reader never sees a half-written file (each is written to a temporary name in
the same folder, then renamed over the target)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np
import pandas as pd


class RunError(ValueError):
    """A run folder that cannot be used as asked (a file in its place, not a finished run, ...)."""


def _atomic(path: pathlib.Path, write) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, payload: dict) -> None:
    def write(tmp):
        tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")

    _atomic(path, write)


def write_text(path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_npy(path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array))

    _atomic(path, write)


def write_figure(path, figure) -> None:
    """Save a matplotlib figure (format from the suffix, e.g. PNG) atomically and close it."""
    import matplotlib.pyplot as plt

    def write(tmp):
        figure.savefig(tmp, dpi=120, format=pathlib.Path(path).suffix.lstrip(".") or "png")

    try:
        _atomic(path, write)
    finally:
        plt.close(figure)


def write_users_csv(path, split) -> None:
    """``users.csv``: row ``r`` describes row ``r`` of every ``user_embeddings*.npy`` of the run.

    Columns: ``user`` (row index), ``raw_id`` (id in the source files), ``probe_split`` (train/valid/test), then one
    column per attribute holding the class label (e.g. ``F``, ``25-34``, ``engineer``).
    """
    part = np.empty(split.num_users, dtype=object)
    for name, users in split.probe_users.items():
        part[users] = name
    frame = pd.DataFrame({"user": np.arange(split.num_users), "raw_id": split.user_raw_ids, "probe_split": part})
    for name, codes in split.user_attributes.items():
        frame[name] = np.asarray(split.attribute_classes[name], dtype=object)[codes]

    _atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def git_commit(path=".") -> str:
    """The commit of the checkout holding ``path`` (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if rev.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
