"""Choose Cofair's settings on validation data only: train the config's backbone once, then Cofair once per setting
of a grid, and report per level the validation Recall@10 and DP@10 (validation positives ranked, training positives
masked) and the probe's selection AUC (on the probe-validation users; the probe-test users are never looked at).

    python benchmarks/cofair_sweep.py configs/cofair_pmf_ml100k.toml --out benchmarks/results/cofair_sweep

Each grid entry overrides fields of the config's ``[cofair]`` section; the default grid compares the public code's
settings with the adversary and attacker variants of :mod:`jaxfair.methods.cofair`. Writes ``sweep.json`` and prints
one block per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import numpy as np

from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments import cofair as cofair_experiment
from jaxfair.experiments import runner
from jaxfair.methods import cofair
from jaxfair.metrics.probe import ProbeConfig

PUBLIC = {"adversary": "paper", "lambda0": 0.01, "alpha": 0.01, "discriminator_layers": 2, "discriminator_steps": 1,
          "discriminator_learning_rate": 1e-3, "residual": False}
LINEAR = {"lambda0": 0.05, "alpha": 0.5, "discriminator_layers": 1, "discriminator_steps": 5,
          "discriminator_learning_rate": 1e-2, "residual": True}
DEFAULT_GRID = [
    PUBLIC,
    {**LINEAR, "adversary": "paper"},
    {**LINEAR, "adversary": "capped"},
    {**LINEAR, "adversary": "confusion"},
]


def sweep(config_path: str, grid: list[dict], seed: int = 0, log=print) -> list[dict]:
    config = runner.load(config_path, seed=seed)
    split = backbone_experiment.load_split(config.data, log=lambda message: None)
    frozen = backbone_experiment.frozen_backbone(split, config, None, log=lambda message: None)
    user_vecs, item_vecs, score = frozen.user_vecs, frozen.item_vecs, frozen.score
    section = cofair_experiment.section_config(config)
    data = cofair_experiment.cofair_data(split, user_vecs["valid"], item_vecs, section.attribute)
    targets, exclude = cofair_experiment.stage_arrays(split, "valid")
    ks = tuple(config.evaluate.ks)
    out = []
    for setting in grid:
        method = dataclasses.replace(section.method(), **setting)
        tick = time.perf_counter()
        fit_result = cofair_experiment.train_cofair(split, data, score, method, seed, None, lambda message: None,
                                                    user_vecs["valid"], ks)
        seconds = time.perf_counter() - tick
        params = fit_result.best_params
        levels = cofair.level_embeddings(params["filter"], user_vecs["valid"], method)
        report = cofair_experiment.level_report(levels, item_vecs, score, targets, exclude, data.labels,
                                                data.num_classes, ks)
        levels = np.asarray(levels)
        probes, _ = cofair_experiment.probe_levels(levels, split, section.attribute, jax.random.key(seed),
                                                   ProbeConfig(bootstrap=0))
        entry = {
            "setting": setting,
            "seed": seed,
            "best_epoch": fit_result.best_epoch,
            "seconds": seconds,
            "lambdas": [float(x) for x in cofair_experiment.final_lambdas(params, data, method)],
            "valid_recall@10": [float(x) for x in report["recall@10"]],
            "valid_dp@10": [float(x) for x in report["dp@10"]],
            "probe_selection_auc": [p["valid_auc"] for p in probes],
        }
        out.append(entry)
        log(f"{setting}  best epoch {entry['best_epoch']}  {seconds:.0f}s")
        for name in ("valid_recall@10", "valid_dp@10", "probe_selection_auc"):
            log(f"  {name:22s} " + " ".join(f"{v:.4f}" for v in entry[name]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--grid", help="JSON list of [cofair] overrides (default: the module's DEFAULT_GRID)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="benchmarks/results/cofair_sweep")
    args = parser.parse_args(argv)
    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    results = [entry for seed in args.seeds for entry in sweep(args.config, grid, seed)]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
