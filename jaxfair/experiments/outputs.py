"""Writing run outputs atomically (a reader never sees a half-written file) and printing result tables."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from jaxfair.data.dataset import Split


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


def write_users_csv(path, split: Split) -> None:
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

    def write(tmp):
        frame.to_csv(tmp, index=False)

    _atomic(path, write)


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


def format_table(rows: Sequence[dict], columns: Sequence[str], *, digits: int = 4) -> str:
    """Plain-text table: one line per row dict, floats rounded to ``digits``."""

    def cell(value):
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body)
    return "\n".join(lines)


def mean_std(values, digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (population std), each to ``digits`` decimals: the seed harnesses' cells."""
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


FULL_RANKING = "held-out positives ranked among all items; training (and validation) positives masked"


def run_header(split, config, protocol: str | None = None, description: str | None = None) -> dict:
    """The fields every experiment's ``results.json`` opens with: the dataset, its source and statistics, the
    protocol (when given) and the seeds. ``config`` is the run's
    :class:`~jaxfair.experiments.config.ExperimentConfig`."""
    header = {"dataset": split.name, "source": config.data.source, "statistics": split.statistics()}
    if protocol is not None:
        header.update(protocol=protocol, protocol_description=description)
    header.update(seed=config.train.seed, split_seed=config.data.seed)
    return header


def fit_summary(fit_result, seconds: float) -> dict:
    """A trained model's entry in ``results.json``: best and last epoch, training time and time per epoch."""
    return {"best_epoch": fit_result.best_epoch, "epochs_run": fit_result.epochs_run, "train_seconds": seconds,
            "seconds_per_epoch": seconds / max(fit_result.epochs_run, 1)}
