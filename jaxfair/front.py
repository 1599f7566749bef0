"""The accuracy-fairness front of finished sweeps: each point's accuracy against its unseen-user audit AUC, every
method and setting on one figure.

    jaxfair front SWEEP [SWEEP ...] --out front.png [--row mean] [--auc unseen_auc] [--accuracy ndcg@10/backbone]

For every point of every sweep folder (its ``summary.json``) it reads, from the test table's ``--row`` (default
``mean``, the mean over the non-empty requirements), the seed-mean of ``--auc`` (default ``unseen_auc``: the probe
fitted and scored only on users whose labels no method saw) and of ``--accuracy`` (default ``ndcg@10/backbone``),
with their standard deviations over seeds. It prints the points as a table (the figure's data, sorted by AUC), marks
those inside the target region (AUC at most ``--max-auc``, accuracy at least ``--min-accuracy``), and writes the
figure (error bars: one std over seeds; the target region shaded).
"""

from __future__ import annotations

import json
import pathlib
import re

from jaxfair.pipeline.outputs import RunError, write_figure
from jaxfair.tables import format_table


def front_points(folders, row: str = "mean", auc: str = "unseen_auc", accuracy: str = "ndcg@10/backbone") -> list:
    """``[{"sweep", "point", "auc", "auc_std", "accuracy", "accuracy_std", "seeds"}]`` of every point of the sweep
    folders that reports both numbers in its test table's ``row``."""
    points = []
    for folder in folders:
        path = pathlib.Path(folder) / "summary.json"
        if not path.is_file():
            raise RunError(f"{folder}: not a finished sweep (no summary.json)")
        summary = json.loads(path.read_text())
        for label, point in summary["points"].items():
            cells = point["tables"].get("test", {}).get(row, {})
            if auc in cells and accuracy in cells:
                points.append({"sweep": pathlib.Path(folder).name, "point": label, "auc": cells[auc]["mean"],
                               "auc_std": cells[auc]["std"], "accuracy": cells[accuracy]["mean"],
                               "accuracy_std": cells[accuracy]["std"], "seeds": cells[auc]["n"]})
    if not points:
        raise RunError(f"no point of {[str(f) for f in folders]} reports both {auc!r} and {accuracy!r} in its "
                       f"test row {row!r}")
    return sorted(points, key=lambda p: p["auc"])


def front_table(points, max_auc: float, min_accuracy: float) -> str:
    rows = [{"sweep": p["sweep"], "point": p["point"], "auc": f"{p['auc']:.3f} ± {p['auc_std']:.3f}",
             "accuracy": f"{p['accuracy']:.3f} ± {p['accuracy_std']:.3f}", "seeds": p["seeds"],
             "in target": "yes" if p["auc"] <= max_auc and p["accuracy"] >= min_accuracy else "-"} for p in points]
    return format_table(rows, ["sweep", "point", "auc", "accuracy", "seeds", "in target"])


def front_figure(points, auc: str, accuracy: str, max_auc: float, min_accuracy: float, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5))
    sweeps = sorted({p["sweep"] for p in points})
    for index, sweep in enumerate(sweeps):
        mine = [p for p in points if p["sweep"] == sweep]
        axes.errorbar([p["auc"] for p in mine], [p["accuracy"] for p in mine], xerr=[p["auc_std"] for p in mine],
                      yerr=[p["accuracy_std"] for p in mine], fmt="o", capsize=2, label=sweep, color=f"C{index}")
        for p in mine:  # "erasure.strength=1.0,erasure.max_rank=1" -> "strength=1.0,max_rank=1"
            axes.annotate(re.sub(r"\b[a-z_]+\.", "", p["point"]), (p["auc"], p["accuracy"]), fontsize=6,
                          xytext=(3, 3), textcoords="offset points")
    low, _ = axes.get_xlim()
    _, high = axes.get_ylim()
    axes.fill_between([min(low, 0.48), max_auc], min_accuracy, max(high, min_accuracy + 0.01), color="green",
                      alpha=0.08, label="target")
    axes.set_xlabel(f"{auc} (0.5: nothing leaks)")
    axes.set_ylabel(accuracy)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def front(folders, out, row: str = "mean", auc: str = "unseen_auc", accuracy: str = "ndcg@10/backbone",
          max_auc: float = 0.55, min_accuracy: float = 0.95, log=print) -> list:
    """``jaxfair front``: print the points' table and write the figure to ``out``; returns the points."""
    points = front_points(folders, row, auc, accuracy)
    log(f"test row {row!r}: {auc} against {accuracy}, mean ± std over seeds; target: {auc} <= {max_auc} and "
        f"{accuracy} >= {min_accuracy}\n" + front_table(points, max_auc, min_accuracy))
    out = pathlib.Path(out)
    if not out.parent.is_dir():
        raise RunError(f"{out.parent}: no such folder for --out")
    figure = front_figure(points, auc, accuracy, max_auc, min_accuracy, title=f"row {row}: " + ", ".join(
        sorted({p['sweep'] for p in points})))
    write_figure(out, figure)
    log(f"wrote {out}")
    return points
