"""Dispatch a config file to its experiment, and re-evaluate finished runs.

A config with only the common sections runs the backbone experiment (:mod:`jaxfair.experiments.backbone`); a config
with a method section (e.g. ``[afrl]``) runs that method's experiment on top of the trained backbone.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, NamedTuple

import jax

from jaxfair.backbones import make_backbone
from jaxfair.config import ConfigError
from jaxfair.data.dataset import load_split
from jaxfair.experiments import afrl as afrl_experiment
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments import cofair as cofair_experiment
from jaxfair.experiments import diffairec as diffairec_experiment
from jaxfair.experiments import itfr as itfr_experiment
from jaxfair.experiments.config import ExperimentConfig, load_config, parse_config
from jaxfair.experiments.outputs import format_table, write_json

# Method section name -> module with ``SECTION`` parsing and ``run(config, out_dir, log)``.
METHODS: dict[str, object] = {
    afrl_experiment.SECTION: afrl_experiment,
    cofair_experiment.SECTION: cofair_experiment,
    itfr_experiment.SECTION: itfr_experiment,
    diffairec_experiment.SECTION: diffairec_experiment,
}


def load(path, seed: int | None = None) -> ExperimentConfig:
    """Read a config file, optionally overriding ``[train] seed``."""
    config = load_config(path, tuple(METHODS))
    if seed is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    return config


def run(config: ExperimentConfig, out_dir, log: Callable[[str], None] = print) -> dict:
    for name, module in METHODS.items():
        if name in config.sections:
            return module.run(config, out_dir, log)
    return backbone_experiment.run(config, out_dir, log)


def run_seeds(config_path, seeds, out_dir, log: Callable[[str], None] = print) -> list[dict]:
    """Run the config once per seed into ``out_dir/seed<S>`` (``jaxfair train CONFIG --seed S``) and return the
    ``results.json`` dicts in seed order. A seed whose ``results.json`` already exists is read, not rerun."""
    out_dir = pathlib.Path(out_dir)
    results = []
    for seed in seeds:
        run_dir = out_dir / f"seed{seed}"
        if (run_dir / "results.json").exists():
            results.append(json.loads((run_dir / "results.json").read_text()))
        else:
            results.append(run(load(config_path, seed=seed), run_dir, log))
    return results


def seeds_report(config_path, seeds, out_dir, summarize: Callable[[list[dict]], tuple[dict, str]],
                 log: Callable[[str], None] = print) -> tuple[dict, str]:
    """:func:`run_seeds`, then ``summarize(results) -> (summary, markdown table)``; writes ``out_dir/summary.json``
    and ``out_dir/table.md``, prints the table and returns both."""
    out_dir = pathlib.Path(out_dir)
    summary, table = summarize(run_seeds(config_path, seeds, out_dir, log))
    write_json(out_dir / "summary.json", summary)
    (out_dir / "table.md").write_text(table)
    log(table)
    return summary, table


class RestoredRun(NamedTuple):
    """A finished run of ``jaxfair train``: its parsed config, its split and its frozen backbone."""

    config: ExperimentConfig
    split: object
    frozen: backbone_experiment.FrozenBackbone


def restore_run(run_dir) -> RestoredRun:
    """Read a finished run's ``config.json`` and ``split.npz`` and restore its backbone's selected parameters.

    Nothing is trained or written. Raises ConfigError when ``run_dir`` is not a finished run.
    """
    run_dir = pathlib.Path(run_dir)
    for name in ("config.json", "split.npz", "checkpoints/best"):
        if not (run_dir / name).exists():
            raise ConfigError(f"{run_dir}: not a finished run of 'jaxfair train' (missing {name})")
    config = parse_config(json.loads((run_dir / "config.json").read_text()), tuple(METHODS))
    split = load_split(run_dir / "split.npz")
    backbone, _ = make_backbone(config.backbone_name, dataclasses.asdict(config.backbone))
    context = backbone.context(split)
    params = backbone_experiment.restore_best(run_dir, backbone.init(jax.random.key(0), split))
    user_vecs, item_vecs = backbone_experiment.embeddings_of(backbone, context, params)
    frozen = backbone_experiment.FrozenBackbone(
        backbone=backbone, context=context, params=params, fit=None, user_vecs=user_vecs, item_vecs=item_vecs,
        score=jax.tree_util.Partial(backbone.score, params),
    )
    return RestoredRun(config, split, frozen)


def evaluate_run(run_dir, protocols=None, ks=None, log: Callable[[str], None] = print) -> dict:
    """Restore a finished backbone run's selected parameters and evaluate them again (same split and negatives).

    Writes ``run_dir/evaluation.json`` and prints the table. Raises ConfigError when ``run_dir`` is not a finished run.
    """
    run_dir = pathlib.Path(run_dir)
    config, split, frozen = restore_run(run_dir)
    evaluate = dataclasses.replace(
        config.evaluate,
        protocols=tuple(protocols) if protocols else config.evaluate.protocols,
        ks=tuple(ks) if ks else config.evaluate.ks,
    )
    metrics = backbone_experiment.evaluate_ranking(frozen.score, frozen.user_vecs, frozen.item_vecs, split, evaluate)
    rows = [{"protocol": p, "stage": s, **block[s]} for p, block in metrics.items() for s in ("valid", "test")]
    log(format_table(rows, list(rows[0])))
    result = {"dataset": split.name, "backbone": config.backbone_name, "seed": config.train.seed, "metrics": metrics}
    write_json(run_dir / "evaluation.json", result)
    return result
