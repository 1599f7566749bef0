"""The sweep harness: one config, a grid of overrides, several seeds -> one run folder per point and seed, and a
summary (mean, std and n of every number in the runs' tables) that ``jaxfair report`` renders.

    jaxfair sweep CONFIG [--grid GRID.toml] [--seeds 0 1 2] [--set section.key=value ...] [--select RULE ...] --out DIR

A grid file holds labelled points and/or a product of values, each a set of dotted config keys::

    [points.bpr]                         # one point per table: these overrides on top of the config
    "itfr.balance" = "none"
    "itfr.sam" = false
    [points.itfr]                        # an empty point: the config as it is

    [grid]                               # every combination of these values (labelled "afrl.lam=0.1", ...)
    "afrl.lam" = [0.1, 1.0, 10.0]

With both, every point is combined with every grid combination. Every point and seed is parsed and checked before
anything runs. Runs go to ``DIR/runs/<point>/seed<S>`` (a finished run is read, not rerun, so an interrupted sweep
resumes); runs that share data, backbone, evaluation settings and seed share one trained backbone
(``DIR/.backbones``), and the seeds of such a backbone are trained together, as one program
(:func:`jaxfair.pipeline.run.train_backbones_together`: in sequence inside it, bit-identical to separate runs, or
with ``--batch-seeds`` batched by ``vmap``; the method's stages and the evaluation then run seed after seed). ``DIR`` also gets ``summary.json``, ``config.json`` (the resolved base config),
``grid.toml`` (a copy) and ``provenance.json`` (the command, the commit, the date and the versions).

Model selection (``--select``) reads the validation tables only (the test tables are never passed to it). Rules, in
order: ``admit: EXPR`` keeps the points for which a condition holds; ``min: EXPR`` / ``max: EXPR`` rank what is left
(later rules break ties; a remaining tie goes to the earlier point). In an expression ``{row:column}`` is the
point's seed-mean of a validation number and ``{point/row:column}`` another point's; ``abs``, ``min``, ``max``,
arithmetic, comparisons and ``and``/``or``/``not`` are allowed, e.g.
``"admit: {mean:ndcg@10} >= 0.9 * {backbone:ndcg@10}"`` then ``"min: abs({mean:probe_valid_auc} - 0.5)"``.
"""

from __future__ import annotations

import ast
import itertools
import json
import operator
import pathlib
import platform
import re
import shlex
import sys
import time
import tomllib
from typing import Callable

import numpy as np

from jaxfair._version import __version__
from jaxfair.compile_cache import enable_compile_cache
from jaxfair.cpu_devices import split_host
from jaxfair.config import ConfigError, apply_overrides, flatten, read_toml
from jaxfair.pipeline import parse_config, run
from jaxfair.pipeline.run import train_backbones_together
from jaxfair.pipeline.folder import FolderLock, describe_changes, prepare_folder, recorded_changes
from jaxfair.pipeline.outputs import RunError, git_commit, write_json, write_text

Log = Callable[[str], None]


def _label_value(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def read_grid(path: str | pathlib.Path | None) -> dict[str, dict]:
    """A grid file's points: label -> dotted overrides (module docstring). No file: one point, ``base``."""
    if path is None:
        return {"base": {}}
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    unknown = [k for k in values if k not in ("points", "grid")]
    if unknown or not values:
        raise ConfigError(f"{path}: a grid file holds [points.<label>] tables and/or a [grid] table, not "
                          f"{unknown or 'nothing'}")
    points = {label: flatten(table) for label, table in values.get("points", {"base": {}}).items()}
    grid = flatten(values.get("grid", {}))
    for key, options in grid.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{path}: grid.{key}: expected a non-empty list of values")
    if not grid:
        return points
    combos = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    out = {}
    for label, overrides in points.items():
        for combo in combos:
            name = ",".join(f"{k}={_label_value(v)}" for k, v in combo.items())
            out[name if label == "base" else f"{label},{name}"] = {**overrides, **combo}
    return out


def _folder(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", label)


def sweep(config_path, out, grid=None, seeds=None, overrides=(), select=(), log: Log = print,
          command: str | None = None, restart: bool = False, batch_seeds: bool = False) -> dict:
    """Run every point of ``grid`` for every seed (module docstring); returns the summary.

    Args:
      config_path: the base config; overrides: ``section.key=value`` strings applied to it first.
      out: the sweep folder. grid: a grid file (None: the config alone). seeds: default the config's seed.
      select: selection rules (``admit:``, ``min:``, ``max:``); the summary gets ``selection``.
      command: recorded in ``provenance.json`` (default: this process's command line).
      restart: rerun every point afresh (each old run folder is moved aside); otherwise a finished point is read,
        an unfinished one resumes, and a point folder holding another config stops the sweep (RunError).
      batch_seeds: train a point's backbones as one vmapped program (faster on accelerators; results then differ from
        separate runs by float rounding) instead of in sequence inside one program (bit-identical).
    """
    split_host()  # one device per core for the probes, if JAX has not started yet
    enable_compile_cache()
    out = pathlib.Path(out)
    base = apply_overrides(read_toml(config_path), overrides)
    points = read_grid(grid)
    seeds = list(seeds) if seeds else [parse_config(base).seed]
    rules = [parse_rule(rule) for rule in select]
    configs = {}
    for label, point in points.items():
        for seed in seeds:
            try:
                configs[label, seed] = parse_config(apply_overrides(base, {**point, "seed": seed}))
            except ConfigError as err:
                raise ConfigError(f"point {label!r}, seed {seed}: {err}") from err
    with FolderLock(prepare_folder(out), log):
        return _sweep(out, config_path, grid, overrides, base, points, seeds, rules, configs, log, command, restart,
                      batch_seeds)


def _sweep(out, config_path, grid, overrides, base, points, seeds, rules, configs, log, command, restart,
           batch_seeds=False) -> dict:
    resolved = json.loads(json.dumps(parse_config(base).to_dict()))
    changes = None if restart else recorded_changes(out / "config.json", resolved)
    if changes:
        raise RunError(f"{out} holds a sweep of another config ({describe_changes(changes)}); rerun with "
                       "--restart to run every point afresh, or choose another --out")
    write_json(out / "config.json", resolved)
    if grid is not None:
        write_text(out / "grid.toml", pathlib.Path(grid).read_text())  # (the copy itself may be the grid)
    if not (out / "provenance.json").exists():  # what started the sweep; a resumed or reread sweep keeps it
        write_json(out / "provenance.json", provenance(command))
    results: dict[str, list[dict]] = {label: [] for label in points}
    total, done = len(configs), 0
    start = time.perf_counter()
    run_dirs = {key: out / "runs" / _folder(key[0]) / f"seed{key[1]}" for key in configs}
    # a point's seeds train their backbones in one program (runs that have theirs already are left out)
    train_backbones_together([config for key, config in configs.items()
                              if restart or not (run_dirs[key] / "backbone.json").exists()], out / ".backbones", log,
                             batched=batch_seeds)
    for (label, seed), config in configs.items():
        run_dir = run_dirs[label, seed]
        done += 1
        log(f"[sweep] {done}/{total} {label} seed {seed} -> {run_dir}")
        results[label].append(run(config, run_dir, log=log, backbone_cache=out / ".backbones", restart=restart))
        log(f"[sweep] {done}/{total} done, {time.perf_counter() - start:.0f}s so far")
    summary = summarize(results, points, seeds)
    summary.update(config=str(config_path), grid=None if grid is None else str(grid), overrides=list(overrides))
    if rules:
        summary["selection"] = choose(summary, rules)
        log(f"[sweep] selected on validation: {summary['selection']['chosen']}")
    write_json(out / "summary.json", summary)
    return summary


def provenance(command: str | None = None) -> dict:
    """What produced a results folder: the command, the commit, the date, the versions and the machine."""
    import jax

    return {
        "command": command or " ".join(shlex.quote(a) for a in ["jaxfair", *sys.argv[1:]]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "jaxfair": __version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
    }


def summarize(results: dict[str, list[dict]], points: dict[str, dict], seeds: list[int]) -> dict:
    """Mean, population std, n and the values of every table number, per point, over its runs (seeds)."""
    summary = {"seeds": list(seeds), "points": {}}
    for label, runs in results.items():
        tables = {}
        for stage in ("valid", "test"):
            rows: dict[str, dict[str, list]] = {}
            for result in runs:
                for row, columns in result.get("tables", {}).get(stage, {}).items():
                    for column, value in columns.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                            rows.setdefault(row, {}).setdefault(column, []).append(float(value))
            tables[stage] = {row: {column: _stats(values) for column, values in columns.items()}
                             for row, columns in rows.items()}
        summary["points"][label] = {"overrides": points.get(label, {}), "seeds": [r.get("seed") for r in runs],
                                    "tables": tables}
    return summary


def _stats(values: list[float]) -> dict:
    finite = [v for v in values if np.isfinite(v)]
    return {"mean": float(np.mean(finite)) if finite else float("nan"),
            "std": float(np.std(finite)) if finite else float("nan"), "n": len(finite), "values": values}


# --- validation-only selection -----------------------------------------------------------------------------

_REF = re.compile(r"\{([^{}:]+):([^{}]+)\}")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCTIONS = {"abs": abs, "min": min, "max": max}


def parse_rule(rule: str) -> tuple[str, str, ast.Expression, list[tuple[str | None, str, str]]]:
    """``"admit: EXPR"``, ``"min: EXPR"`` or ``"max: EXPR"`` -> ``(kind, text, parsed expression, references)``."""
    kind, sep, text = rule.partition(":")
    kind = kind.strip()
    if not sep or kind not in ("admit", "min", "max"):
        raise ConfigError(f"--select {rule!r}: expected 'admit: EXPR', 'min: EXPR' or 'max: EXPR'")
    refs = []

    def name(match):
        target, column = match.group(1), match.group(2)
        point, _, row = target.rpartition("/")
        refs.append((point or None, row, column))
        return f"_ref{len(refs) - 1}"

    try:
        tree = ast.parse(_REF.sub(name, text.strip()), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"--select {rule!r}: not an expression ({err.msg})") from err
    for node in ast.walk(tree):
        allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Name,
                   ast.Constant, ast.Load, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, *_BINARY, *_COMPARE)
        if not isinstance(node, allowed) or (isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS)):
            raise ConfigError(f"--select {rule!r}: only numbers, {{row:column}} references, arithmetic, "
                              "comparisons, and/or/not and abs/min/max are allowed")
    return kind, text.strip(), tree, refs


def _evaluate(node, names: dict):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ConfigError(f"--select: unknown name {node.id!r} (write references as {{row:column}})")
        return names[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, names)
        return {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}[type(node.op)](value)
    if isinstance(node, ast.BoolOp):
        values = [_evaluate(v, names) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, right_node in zip(node.ops, node.comparators):
            right = _evaluate(right_node, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*[_evaluate(a, names) for a in node.args])
    raise ConfigError(f"--select: cannot evaluate {ast.dump(node)}")


def validation_means(summary: dict) -> dict[str, dict[str, dict[str, float]]]:
    """Point -> row -> column -> seed mean, of the validation tables only."""
    return {label: {row: {col: stats["mean"] for col, stats in columns.items()}
                    for row, columns in point["tables"].get("valid", {}).items()}
            for label, point in summary["points"].items()}


def choose(summary: dict, rules) -> dict:
    """Apply selection rules (:func:`parse_rule` results) to a summary's validation means; returns ``chosen`` (a
    point label or None), ``admissible`` points and each point's ``scores`` (one per ``min``/``max`` rule)."""
    return select_points(validation_means(summary), rules)


def select_points(means: dict[str, dict[str, dict[str, float]]], rules) -> dict:
    """The selection itself, on validation means only (``point -> row -> column -> value``)."""

    def value(label, ref):
        point, row, column = ref
        source = means.get(point or label)
        if source is None:
            raise ConfigError(f"--select: no point {point!r} (points: {', '.join(means)})")
        if row not in source or column not in source[row]:
            rows = {r: sorted(c) for r, c in source.items()}
            raise ConfigError(f"--select: no validation number {row}:{column} (have {rows})")
        return source[row][column]

    admissible = list(means)
    scores = {label: [] for label in means}
    order = {label: [] for label in means}
    for kind, text, tree, refs in rules:
        for label in list(admissible if kind == "admit" else means):
            names = {f"_ref{i}": value(label, ref) for i, ref in enumerate(refs)}
            result = _evaluate(tree, names)
            if kind == "admit":
                if not result:
                    admissible.remove(label)
            else:
                scores[label].append(float(result))
                order[label].append(float(result) if kind == "min" else -float(result))
    ranked = sorted(admissible, key=lambda label: (order[label], list(means).index(label)))
    return {"rules": [f"{kind}: {text}" for kind, text, _, _ in rules], "admissible": admissible,
            "scores": scores, "chosen": ranked[0] if ranked else None}
