"""Run by ``tests/test_mesh.py`` in a fresh process whose ``XLA_FLAGS`` force 4 CPU devices (JAX reads the flag when
its backend starts, so it cannot be set inside the test process). Prints one JSON line per check.

    python tests/mesh_worker.py OUT_DIR CASE [CASE ...]      CASE: one of CASES, or "checkpoint"

For a case (a config from ``configs/`` on small synthetic data, 2 epochs per stage), the backbone and the method's
models are trained with ``devices = 1``, ``devices = 4`` (data parallel) and ``devices = 4, model_axis = 2`` (the
tables of at least :data:`TABLE_ROWS` rows split by rows), and the largest difference of their selected parameters
and validation metrics is reported.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np

import jaxfair.training.mesh as mesh_module
from jaxfair.backbones import make_backbone
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.methods import get_method
from jaxfair.methods.base import Context
from jaxfair.pipeline.config import load_config
from jaxfair.pipeline.run import backbone_stage, fit_models, load_split
from jaxfair.training.trainer import fit

TABLE_ROWS = 64  # the synthetic data has 128 users and 96 items: the user tables are row-sharded, the item tables not
ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {  # config, the stages with a [*.train] section, extra overrides
    "pmf": ("configs/pmf_ml100k.toml", ["backbone"], []),
    "lightgcn": ("configs/lightgcn_ml100k.toml", ["backbone"], []),
    "afrl": ("configs/afrl_pmf_ml100k.toml", ["backbone", "afrl"], []),
    "cofair": ("configs/cofair_pmf_ml100k.toml", ["backbone", "cofair"], ["cofair.retrain_baseline=false"]),
    "itfr": ("configs/itfr_mf_ml100k.toml", ["itfr"],  # the synthetic data's genres
             ["data.genre_groups=['Sci-Fi', 'Romance', 'Action']", "data.k_core=2",
              "itfr.item_genres=['Sci-Fi', 'Romance', 'Action']"]),
    "diffairec": ("configs/diffairec_ml100k.toml", ["diffairec"], []),
}
LAYOUTS = ((1, 1), (4, 1), (4, 2))


def overrides(data: pathlib.Path, stages, extra, devices: int, model_axis: int) -> list[str]:
    out = [f"data.source='{data}'", "data.eval_negatives=30"]
    for stage in stages:
        out += [f"{stage}.train.epochs=2", f"{stage}.train.batch_size=64", f"{stage}.train.devices={devices}",
                f"{stage}.train.model_axis={model_axis}"]
    return out + extra


def train(config):
    """The backbone (for a method on a frozen one) and every model the method names, no evaluation: name ->
    (selected parameters, validation metrics)."""
    method = get_method(config.method)
    split = load_split(config.data, log=lambda message: None)
    backbone, _ = make_backbone(config.backbone.name, dataclasses.asdict(config.backbone.config))
    out = {}
    frozen = None
    if method.frozen_backbone:
        frozen, summary = backbone_stage(config, split, backbone, None, lambda message: None)
        out["backbone"] = (frozen.params, summary.get("best_valid", {}))
    context = Context(split=split, frozen=frozen, backbone=backbone, backbone_config=config.backbone.config,
                      evaluate=config.evaluate, probe=config.probe, seed=config.seed)
    data = method.prepare(context, config.method_config)
    for name, result in fit_models(method, context, data, config.method_config, None, lambda message: None).items():
        out[name] = (result.best_params, result.best_valid)
    return out


def max_difference(a, b) -> float:
    leaves = [np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0)
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return float(max(leaves, default=0.0))


def check_case(name: str, data: pathlib.Path) -> dict:
    path, stages, extra = CASES[name]
    runs = {layout: train(load_config(ROOT / path, overrides(data, stages, extra, *layout))) for layout in LAYOUTS}
    one = runs[(1, 1)]
    report = {"case": name, "models": sorted(one)}
    for layout in LAYOUTS[1:]:
        other = runs[layout]
        report[f"params_{layout[0]}x{layout[1]}"] = max(max_difference(one[m][0], other[m][0]) for m in one)
        report[f"valid_{layout[0]}x{layout[1]}"] = max(
            max_difference([v for k, v in sorted(one[m][1].items())], [v for k, v in sorted(other[m][1].items())])
            for m in one)
    return report


def pmf_model(data: pathlib.Path, devices: int, model_axis: int, *extra: str):
    """The PMF case's backbone stage as the pipeline builds it: ``(Model, seed)``."""
    from jaxfair.pipeline.run import _backbone_model

    path, stages, case_extra = CASES["pmf"]
    config = load_config(ROOT / path, overrides(data, stages, case_extra, devices, model_axis) + list(extra))
    split = load_split(config.data, log=lambda message: None)
    backbone, _ = make_backbone(config.backbone.name, dataclasses.asdict(config.backbone.config))
    return _backbone_model(config, split, backbone, backbone.context(split)), config.seed


def check_checkpoint(data: pathlib.Path, out: pathlib.Path) -> dict:
    """PMF: 2 epochs on 4 devices (row-sharded tables) into a folder, then resumed on 1 device to 4 epochs, against
    4 epochs on 4 devices without a stop."""
    def model_for(devices, model_axis, epochs):
        return pmf_model(data, devices, model_axis, f"backbone.train.epochs={epochs}", "backbone.train.patience=10")

    lines: list[str] = []
    model, seed = model_for(4, 2, 2)
    first = fit(model, seed, out / "resume", log=lines.append)
    sharded = [leaf.sharding.spec for leaf in jax.tree.leaves(first.state.params) if hasattr(leaf, "sharding")]
    model, seed = model_for(1, 1, 4)
    resumed = fit(model, seed, out / "resume", log=lines.append)
    model, seed = model_for(4, 2, 4)
    straight = fit(model, seed, None, log=lines.append)
    return {"case": "checkpoint", "resumed_from": resumed.resumed_from, "epochs": resumed.epochs_run,
            "row_sharded_leaves": sum(1 for spec in sharded if spec and spec[0] == "model"),
            "resumed_devices": len(jax.tree.leaves(resumed.state.params)[0].sharding.device_set),
            "params": max_difference(resumed.state.params, straight.state.params),
            "training_on": [line for line in lines if "training on" in line]}


def check_hosts(data: pathlib.Path) -> dict:
    """PMF on a 2 x 2 mesh whose devices belong to the processes launched together (``tests/test_mesh.py`` starts
    two with 2 CPU devices each): the selected parameters, gathered, for comparison with one process's."""
    from jax.experimental import multihost_utils

    model, seed = pmf_model(data, 4, 2)
    result = fit(model, seed, None, log=lambda message: None)
    gathered = multihost_utils.process_allgather(result.best_params, tiled=True)
    return {"case": "hosts", "process": jax.process_index(), "processes": jax.process_count(),
            "local_devices": jax.local_device_count(),
            "params": [np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(gathered)]}


def main(argv):
    out = pathlib.Path(argv[0])
    mesh_module.TABLE_ROWS = TABLE_ROWS
    if "hosts" in argv[1:]:
        mesh_module.initialize_distributed()  # from the JAX_* variables the test sets
    data = out / "data"
    if not data.exists():
        write_ml100k_folder(make_synthetic(num_users=128, num_items=96, per_user=16, seed=3), data)
    print(json.dumps({"devices": jax.device_count()}), flush=True)
    for case in argv[1:]:
        if case == "hosts":
            report = check_hosts(data)
        elif case == "checkpoint":
            report = check_checkpoint(data, out)
        else:
            report = check_case(case, data)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
