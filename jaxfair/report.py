"""``jaxfair report``: Markdown tables from finished runs and sweeps, so no table in the docs is typed by hand.

    jaxfair report DIR [DIR ...] [--stage test|valid] [--rows ROW ...] [--columns COLUMN ...] [--points POINT ...]
                   [--digits 3] [--transpose]

A ``DIR`` is a sweep folder (its ``summary.json``: every point, mean ± std over seeds) or a run folder (its
``results.json``: one point, one seed). Every run's ``tables`` hold ``{row: {column: value}}`` per stage (a row per
fairness requirement for AFRL, per level for Cofair, one ``all`` row for ITFR and DifFaiRec); the layout follows
from what is asked:

* one row per point (e.g. ``--rows all``): a table with a line per point and a column per ``--columns``;
* one point with several rows: a line per row;
* several points with several rows: one table per column, a line per row and a column per point.

Cells are ``mean ± std`` (population std over the seeds) when a point has several runs, the value otherwise, ``-``
when a row has no such number. Reading JSON only, it needs no accelerator and starts in a blink.

In the docs, every table is the output of the ``jaxfair report`` command printed above it, between
``<!-- report -->`` and ``<!-- /report -->`` markers; ``jaxfair report --update-docs FILE.md ...`` rewrites every such
table from its command (:func:`update_markdown`), and the test suite checks that none would change.

``--paired REFERENCE`` compares every other point with the reference point seed by seed (the runs of a sweep with
the same seed share the split and the seed): each cell is the mean of the per-seed differences ``point - reference``
and the paired t statistic ``mean / (sd / sqrt(n))`` (``sd`` with ``n - 1``; none with one seed or identical
differences).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex

import numpy as np

from jaxfair.tables import markdown_table


class ReportError(ValueError):
    """A folder that holds neither a sweep summary nor a run's results, or a selection that matches nothing."""


def load_points(paths) -> dict[str, dict]:
    """Label -> ``{"tables": {stage: {row: {column: {"mean", "std", "n"}}}}}`` from sweep and run folders.

    A sweep's single unnamed point (``base``) and a run are labelled by their folder's name; with several folders a
    point's label is ``folder:point`` when its own label is not unique.
    """
    loaded = []
    for path in paths:
        path = pathlib.Path(path)
        if (path / "summary.json").is_file():
            summary = json.loads((path / "summary.json").read_text())
            for label, point in summary["points"].items():
                loaded.append((path.name, path.name if label == "base" else label, point))
        elif (path / "results.json").is_file():
            results = json.loads((path / "results.json").read_text())
            tables = {stage: {row: {col: {"mean": v, "std": 0.0, "n": 1} for col, v in columns.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
                              for row, columns in rows.items()}
                      for stage, rows in results.get("tables", {}).items()}
            loaded.append((path.name, path.name, {"tables": tables, "seeds": [results.get("seed")]}))
        else:
            raise ReportError(f"{path}: neither a sweep folder (summary.json) nor a run folder (results.json)")
    labels = [label for _, label, _ in loaded]
    points = {}
    for folder, label, point in loaded:
        points[label if labels.count(label) == 1 else f"{folder}:{label}"] = point
    return points


def _cell(stats: dict | None, digits: int) -> str:
    if stats is None or stats.get("n", 0) == 0 or not np.isfinite(stats["mean"]):
        return "-"
    if stats["n"] > 1:
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}"


def _union(lists) -> list:
    out = []
    for items in lists:
        out += [x for x in items if x not in out]
    return out


def paired(paths, reference: str, stage: str = "test", rows=None, columns=None, points=None, digits: int = 4) -> str:
    """``jaxfair report --paired``: per point, row and column, the mean per-seed difference to ``reference`` and its
    paired t statistic (module docstring). Needs sweep folders, whose summaries keep the per-seed values."""
    everything = load_points(paths)
    if reference not in everything:
        raise ReportError(f"--paired {reference}: no such point (have {', '.join(everything)})")
    labels = [p for p in (points or everything) if p != reference]
    base = everything[reference]
    rows = list(rows) if rows else list(base["tables"].get(stage, {}))
    columns = list(columns) if columns else _union(list(base["tables"][stage].get(r, {})) for r in rows)
    lines = []
    for label in labels:
        point = everything[label]
        if point.get("seeds") != base.get("seeds"):
            raise ReportError(f"--paired: {label!r} ran seeds {point.get('seeds')}, {reference!r} {base.get('seeds')}")
        body = []
        for row in rows:
            cells = []
            for column in columns:
                ours = point["tables"][stage].get(row, {}).get(column, {}).get("values")
                theirs = base["tables"][stage].get(row, {}).get(column, {}).get("values")
                if not ours or not theirs or len(ours) != len(theirs):
                    cells.append("-")
                    continue
                d = np.asarray(ours) - np.asarray(theirs)
                spread = d.std(ddof=1) if len(d) > 1 else 0.0
                t = f" (t {d.mean() / (spread / np.sqrt(len(d))):+.2f})" if spread > 0 else ""
                cells.append(f"{d.mean():+.{digits}f}{t}")
            body.append([row, *cells])
        lines.append(f"{label} - {reference}, paired over {len(base.get('seeds') or [])} seeds:\n\n"
                     + markdown_table(["row", *columns], body))
    return "\n\n".join(lines) + "\n"


def render(paths, stage: str = "test", rows=None, columns=None, points=None, digits: int = 3,
           transpose: bool = False) -> str:
    """The Markdown table(s) of ``jaxfair report`` (module docstring)."""
    everything = load_points(paths)
    if points:
        missing = [p for p in points if p not in everything]
        if missing:
            raise ReportError(f"--points {' '.join(missing)}: no such point (have {', '.join(everything)})")
        everything = {p: everything[p] for p in points}
    tables = {label: point["tables"].get(stage, {}) for label, point in everything.items()}
    rows = list(rows) if rows else _union(list(t) for t in tables.values())
    columns = list(columns) if columns else _union(list(t.get(r, {})) for t in tables.values() for r in rows)
    if not rows or not columns:
        raise ReportError(f"nothing to report for stage {stage!r} (rows {rows}, columns {columns})")
    unknown = [c for c in columns if not any(c in t.get(r, {}) for t in tables.values() for r in rows)]
    if unknown:
        raise ReportError(f"--columns {' '.join(unknown)}: in no row {rows} of stage {stage!r}")
    counts = sorted({len(point.get("seeds") or []) for point in everything.values()})
    caption = ""
    if counts[-1] > 1:
        caption = (f"mean ± std over {counts[0]} seeds\n\n" if len(counts) == 1 else
                   f"mean ± std over the seeds of each point ({', '.join(map(str, counts))} runs)\n\n")

    def table(header, body):
        if transpose:
            header, body = [header[0], *[r[0] for r in body]], [[h, *[r[i + 1] for r in body]]
                                                                 for i, h in enumerate(header[1:])]
        return markdown_table(header, body)

    def stats(label, row, column):
        return tables[label].get(row, {}).get(column)

    if len(rows) == 1:
        body = [[label, *[_cell(stats(label, rows[0], c), digits) for c in columns]] for label in tables]
        return caption + table(["point", *columns], body) + "\n"
    if len(tables) == 1:
        (label,) = tables
        body = [[row, *[_cell(stats(label, row, c), digits) for c in columns]] for row in rows]
        return caption + table(["row", *columns], body) + "\n"
    blocks = []
    for column in columns:
        body = [[row, *[_cell(stats(label, row, column), digits) for label in tables]] for row in rows]
        blocks.append(f"{column}:\n\n" + table(["row", *tables], body))
    return caption + "\n\n".join(blocks) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jaxfair report`` (shared by the command and the docs' embedded commands)."""
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="sweep folders (summary.json) or run folders")
    parser.add_argument("--stage", choices=["test", "valid"], default="test")
    parser.add_argument("--rows", nargs="+", help="rows to show, in order (default: all)")
    parser.add_argument("--columns", nargs="+", help="columns to show, in order (default: all)")
    parser.add_argument("--points", nargs="+", help="sweep points to show, in order (default: all)")
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--transpose", action="store_true", help="swap the table's rows and columns")
    parser.add_argument("--paired", metavar="POINT",
                        help="per point: the mean per-seed difference to POINT and its paired t statistic")
    parser.add_argument("--update-docs", nargs="+", metavar="FILE.md",
                        help="rewrite every <!-- report --> table in these Markdown files from the command above it")


def output(args) -> str:
    """What ``jaxfair report`` prints for parsed ``args``."""
    if not args.dirs:
        raise ReportError("name at least one sweep or run folder")
    if args.paired:
        return paired(args.dirs, args.paired, stage=args.stage, rows=args.rows, columns=args.columns,
                      points=args.points, digits=args.digits)
    return render(args.dirs, stage=args.stage, rows=args.rows, columns=args.columns, points=args.points,
                  digits=args.digits, transpose=args.transpose)


_EMBEDDED = re.compile(r"```bash\n((?:[^`]|`(?!``))*?jaxfair report (?:[^`]|`(?!``))*?)\n```\n<!-- report -->\n(.*?)<!-- /report -->",
                       re.S)


def embedded_reports(text: str) -> list[tuple[str, str]]:
    """``(command, table)`` of every report embedded in a Markdown text: a ``bash`` block holding one ``jaxfair
    report`` command (``\\`` continuations allowed), then the table between ``<!-- report -->`` markers."""
    return [(match.group(1).replace("\\\n", " "), match.group(2)) for match in _EMBEDDED.finditer(text)]


def run_embedded(command: str, root: pathlib.Path) -> str:
    """The output of an embedded ``jaxfair report`` command, its folders relative to ``root``."""
    words = shlex.split(command)
    if words[:2] != ["jaxfair", "report"]:
        raise ReportError(f"not a jaxfair report command: {command!r}")
    parser = argparse.ArgumentParser(prog="jaxfair report", exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(words[2:])
    args.dirs = [str(root / d) for d in args.dirs]
    return output(args)


def update_markdown(path, root=None) -> bool:
    """Rewrite every embedded report table of a Markdown file from its command; returns whether anything changed.
    Folders in the commands are relative to ``root`` (default: the current folder)."""
    path = pathlib.Path(path)
    root = pathlib.Path(root or ".")
    text = path.read_text()

    def replace(match):
        command = match.group(1).replace("\\\n", " ")
        return match.group(0)[: match.start(2) - match.start(0)] + run_embedded(command, root) + "<!-- /report -->"

    new = _EMBEDDED.sub(replace, text)
    if new != text:
        path.write_text(new)
    return new != text
