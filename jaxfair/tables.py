"""Plain-text and Markdown tables: how every command prints numbers. No model or data knowledge."""

from __future__ import annotations

from typing import Sequence

import numpy as np


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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values, digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (population std), each to ``digits`` decimals."""
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"
