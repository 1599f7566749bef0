"""The one pipeline every method runs through: load the split -> train or restore the frozen backbone -> fit the
method's models with the one trainer -> evaluate -> write the outputs.

``jaxfair train CONFIG --out DIR`` is :func:`run`; the sweep harness (:mod:`jaxfair.harness`) calls it once per
point and seed. Outputs in ``DIR``:

* ``config.json`` - the fully resolved config (defaults included); ``split.npz`` - the exact split (evaluation
  negatives and probe users included); ``users.csv`` - one row per user: probe split and attributes;
* ``results.json`` - dataset, split statistics, protocols and seeds; the backbone's and every model's training
  summary; the method's own block (``results[<method>]``); ``tables`` (``valid`` and ``test``: ``{row: {column:
  value}}``, what the harness summarises and ``jaxfair report`` renders; the test table's ``run`` row holds the
  stages' wall seconds and the epochs trained, its ``data`` row the split's counts); timings; the resolved
  config; the commit;
* the method's arrays (e.g. ``user_embeddings_<requirement>.npy``, rows aligned with ``users.csv``) and figures;
* ``checkpoints/train`` and ``train_log.jsonl`` (the backbone's resumable state and log), ``checkpoints/best``
  (its selected parameters) and ``backbone.json`` (its training summary), then per model ``checkpoints/<name>`` and
  ``<name>_log.jsonl``.

``results.json`` is written last. Re-running the same command on a folder whose run was interrupted resumes: a
finished backbone is restored from ``checkpoints/best``, a model whose checkpoint shows it finished is not trained
again, and an unfinished one continues from its newest checkpoint, exactly as if it had not stopped; a finished run
is reported complete. A folder is one run's only (:mod:`jaxfair.pipeline.folder`: a lock while it runs, and a rerun
of another config stops unless ``--restart``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from typing import Callable, NamedTuple, Sequence

import jax

from jaxfair._version import __version__
from jaxfair.backbones import make_backbone
from jaxfair.backbones.base import Backbone, freeze
from jaxfair.backbones.fit import backbone_model
from jaxfair.config import ConfigError, fingerprint
from jaxfair.data.dataset import Split, load_split as read_split, save_split
from jaxfair.data.fetch import load
from jaxfair.data.preprocess import prepare
from jaxfair.methods import get_method
from jaxfair.methods.base import Context, Evaluation, Method
from jaxfair.pipeline.config import DataConfig, RunConfig, parse_config
from jaxfair.pipeline.folder import RunFolder
from jaxfair.pipeline.outputs import RunError, git_commit, write_figure, write_json, write_npy, write_users_csv
from jaxfair.training.checkpoint import Checkpointer
from jaxfair.training.seeds import fit_seeds
from jaxfair.training.trainer import FitResult, fault_point, fit, initial_carry

Log = Callable[[str], None]


def load_split(config: DataConfig, log: Log = print) -> Split:
    """Fetch (or read) the data named by ``config.source`` and preprocess it."""
    split = prepare(load(config.source, log=log), config.prep)
    stats = split.statistics()
    log(f"[data] {stats['dataset']}: {stats['users']} users, {stats['items']} items, {stats['positives']} positives "
        f"({stats['train_positives']} train)")
    return split


def start_run(config: RunConfig, folder: RunFolder, log: Log = print) -> Split:
    """Load the split, and write ``split.npz``, ``config.json`` and ``users.csv`` into the run's folder."""
    split = load_split(config.data, log)
    save_split(split, folder.path / "split.npz")
    folder.record_config()
    write_users_csv(folder.path / "users.csv", split)
    return split


def backbone_fingerprint(config: RunConfig, with_seed: bool = True) -> str:
    """What determines a trained backbone: the data, the backbone (its loop included), the evaluation settings its
    validation uses and the seed (``with_seed=False``: the same without it, what the seeds of one sweep point
    share)."""
    recipe = {"data": config.data.to_dict(), "backbone": config.backbone.to_dict(),
              "evaluate": dataclasses.asdict(config.evaluate)}
    return fingerprint({**recipe, "seed": config.seed} if with_seed else recipe)


def _save_best(out_dir: pathlib.Path, params, epoch: int) -> None:
    with Checkpointer(out_dir / "checkpoints" / "best") as checkpointer:
        if checkpointer.latest_step() != max(epoch, 0):  # a rerun that found no better epoch saves nothing
            checkpointer.save(max(epoch, 0), params)


def _restore_best(out_dir: pathlib.Path, template):
    with Checkpointer(out_dir / "checkpoints" / "best") as checkpointer:
        return checkpointer.restore(template)


def fit_summary(fit_result: FitResult, seconds: float) -> dict:
    """A trained model's entry in ``results.json``."""
    return {"best_epoch": fit_result.best_epoch, "epochs_run": fit_result.epochs_run, "train_seconds": seconds,
            "seconds_per_epoch": seconds / max(fit_result.epochs_run, 1), "resumed_from_epoch": fit_result.resumed_from,
            "best_valid": fit_result.best_valid}


def _backbone_model(config: RunConfig, split: Split, backbone: Backbone, context):
    """The backbone stage's :class:`~jaxfair.training.trainer.Model` (``[backbone.train]``, validated at the
    ``[evaluate]`` cut-offs)."""
    return backbone_model("train", split, backbone, context, config.backbone.train, tuple(config.evaluate.ks),
                          config.evaluate.batch_size)


def backbone_stage(config: RunConfig, split: Split, backbone: Backbone, out_dir: pathlib.Path | None, log: Log,
                   cache: pathlib.Path | None = None):
    """Train the backbone with ``[backbone.train]`` and freeze it; returns ``(FrozenBackbone, summary)``.

    With ``out_dir``, training resumes from ``checkpoints/train`` (a finished one trains nothing more) and the
    selected parameters go to ``checkpoints/best``. With ``cache`` (a folder shared by the runs of a sweep), a
    backbone trained before under the same :func:`backbone_fingerprint` is copied in (``checkpoints/best`` and
    ``backbone.json``) instead of trained; one trained here is added to the cache.
    """
    context = backbone.context(split)
    cached = None if cache is None else pathlib.Path(cache) / backbone_fingerprint(config)
    trained_here = out_dir is not None and (out_dir / "checkpoints" / "train").exists()
    if out_dir is not None and not trained_here and cached is not None and (cached / "backbone.json").exists():
        shutil.copytree(cached / "checkpoints" / "best", out_dir / "checkpoints" / "best", dirs_exist_ok=True)
        if (cached / "train_log.jsonl").exists():  # trained together with other seeds (train_backbones_together)
            shutil.copy(cached / "train_log.jsonl", out_dir / "train_log.jsonl")
        shutil.copy(cached / "backbone.json", out_dir / "backbone.json")
        log(f"[train] backbone restored from the sweep's cache ({cached.name})")
    if out_dir is not None and not trained_here and (out_dir / "backbone.json").exists():
        summary = json.loads((out_dir / "backbone.json").read_text())
        return freeze(backbone, context, _restore_best(out_dir, backbone.init(jax.random.key(0), split))), summary
    model = _backbone_model(config, split, backbone, context)
    tick = time.perf_counter()
    result = fit(model, config.seed, out_dir, log=log)
    summary = fit_summary(result, time.perf_counter() - tick)
    if out_dir is not None:
        if result.resumed_from == result.epochs_run and (out_dir / "backbone.json").exists():
            summary = json.loads((out_dir / "backbone.json").read_text())  # finished before: nothing was trained
        _save_best(out_dir, result.best_params, result.best_epoch)
        write_json(out_dir / "backbone.json", summary)
        if cached is not None and not (cached / "backbone.json").exists():
            shutil.copytree(out_dir / "checkpoints" / "best", cached / "checkpoints" / "best", dirs_exist_ok=True)
            write_json(cached / "backbone.json", summary)
    return freeze(backbone, context, result.best_params), summary


def train_backbones_together(configs: Sequence[RunConfig], cache: pathlib.Path, log: Log = print,
                             batched: bool = False) -> list[list[int]]:
    """Train the frozen backbones of runs that differ only in their seed as one program per recipe
    (:func:`jaxfair.training.seeds.fit_seeds`; ``batched``: vmapped, else bit-identical to separate runs), into a
    sweep's backbone ``cache``: each seed's folder
    ``cache/<backbone_fingerprint>`` gets what :func:`backbone_stage` caches for a backbone trained alone
    (``checkpoints/best``, ``backbone.json``) plus its ``train_log.jsonl`` and resumable ``checkpoints/train``, so
    every run of those seeds restores its backbone from there. Seeds already cached, runs whose method trains no
    frozen backbone, and a recipe with a single seed left are skipped (that run trains its own, as before).

    ``backbone.json``'s ``train_seconds`` is the wall time of the whole vmapped fit, shared by its seeds.

    Returns:
      the seeds trained together, one list per recipe.
    """
    groups: dict[str, dict[int, RunConfig]] = {}
    for config in configs:
        if get_method(config.method).frozen_backbone and not (cache / backbone_fingerprint(config) /
                                                              "backbone.json").exists():
            groups.setdefault(backbone_fingerprint(config, with_seed=False), {})[config.seed] = config
    trained = []
    for group in groups.values():
        if len(group) < 2:
            continue
        seeds, first = sorted(group), next(iter(group.values()))
        log(f"[train] the backbones of seeds {seeds} in one program ({'batched' if batched else 'in sequence'})")
        split = load_split(first.data, log)
        backbone, _ = make_backbone(first.backbone.name, dataclasses.asdict(first.backbone.config))
        model = _backbone_model(first, split, backbone, backbone.context(split))
        folders = [pathlib.Path(cache) / backbone_fingerprint(group[seed]) for seed in seeds]
        tick = time.perf_counter()
        results = fit_seeds(model, seeds, folders, log=log, batched=batched)
        seconds = time.perf_counter() - tick
        for folder, result in zip(folders, results):
            _save_best(folder, result.best_params, result.best_epoch)
            write_json(folder / "backbone.json", fit_summary(result, seconds))
        trained.append(seeds)
    return trained


def fit_models(method: Method, context: Context, data, method_config, out_dir, log: Log) -> dict:
    """Fit every model the method names with the one trainer, asking again after each round until it names nothing
    new. Returns name -> :class:`FitResult`, whose ``seconds`` is the whole fit's wall time (compilation
    included)."""
    fitted = {}
    while True:
        pending = [m for m in method.models(context, data, method_config, fitted) if m.name not in fitted]
        if not pending:
            return fitted
        for model in pending:
            tick = time.perf_counter()
            result = fit(model, context.seed, out_dir, log=log)
            fitted[model.name] = dataclasses.replace(result, seconds=time.perf_counter() - tick)


def run_header(split: Split, config: RunConfig) -> dict:
    """The fields every ``results.json`` opens with: the dataset, its source and statistics, the ranking
    protocols with their descriptions, and the seeds."""
    protocols = [p for p in config.evaluate.protocols if p in split.protocols]
    return {"dataset": split.name, "source": config.data.source, "statistics": split.statistics(),
            "protocols": {p: split.protocol_description(p) for p in protocols},
            "seed": config.seed, "split_seed": config.data.prep.seed}


def data_row(split: Split) -> dict:
    """The split's counts as a table row: users, items, positives per part, probe users per part."""
    stats = split.statistics()
    row = {k: stats[k] for k in ("users", "items", "positives", "train_positives", "valid_positives",
                                 "test_positives")}
    row.update({f"probe_{k}_users": v for k, v in stats["probe_users"].items()})
    return row


def run(config: RunConfig, out_dir, log: Log = print, backbone_cache=None, restart: bool = False) -> dict:
    """Run one experiment end to end and write its outputs (module docstring); returns ``results.json``'s dict.

    The folder is this run's alone while it runs (:class:`~jaxfair.pipeline.folder.RunFolder`): a folder holding a
    run of another config stops the run (``restart=True`` moves it aside first), and a finished run of the same
    config is reported complete and not run again.
    """
    with RunFolder(out_dir, config.to_dict(), restart=restart, log=log) as folder:
        if folder.complete:
            log(f"[run] {folder.path}: complete (its results.json was written by this config); nothing to do")
            return json.loads((folder.path / "results.json").read_text())
        return _run(config, folder, log, backbone_cache)


def _run(config: RunConfig, folder: RunFolder, log: Log, backbone_cache) -> dict:
    method = get_method(config.method)
    out_dir = folder.path
    start = time.perf_counter()
    timings = {}
    split = start_run(config, folder, log)
    timings["data_seconds"] = time.perf_counter() - start

    tick = time.perf_counter()
    backbone, _ = make_backbone(config.backbone.name, dataclasses.asdict(config.backbone.config))
    frozen, backbone_summary = None, None
    if method.frozen_backbone:
        frozen, backbone_summary = backbone_stage(config, split, backbone, out_dir, log, backbone_cache)
    context = Context(split=split, frozen=frozen, backbone=backbone, backbone_config=config.backbone.config,
                      evaluate=config.evaluate, probe=config.probe, seed=config.seed)
    data = method.prepare(context, config.method_config)
    timings["backbone_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    fitted = fit_models(method, context, data, config.method_config, out_dir, log)
    timings["fit_seconds"] = time.perf_counter() - tick

    fault_point("evaluate")
    log(f"[evaluate] {method.name}: ranking metrics, attribute probes and the unseen-user audit")
    tick = time.perf_counter()
    evaluation: Evaluation = method.evaluate(context, data, fitted, config.method_config)
    timings["evaluate_seconds"] = time.perf_counter() - tick
    log(f"[evaluate] done in {timings['evaluate_seconds']:.0f}s")
    timings["total_seconds"] = time.perf_counter() - start

    tables = {stage: dict(rows) for stage, rows in evaluation.tables.items()}
    tables.setdefault("test", {})["run"] = {**timings, "epochs": sum(f.epochs_run for f in fitted.values())}
    tables["test"]["data"] = data_row(split)
    results = {
        **run_header(split, config),
        "method": method.name,
        "backbone": {"name": config.backbone.name, **(backbone_summary or {})},
        "models": {name: fit_summary(result, result.seconds) for name, result in fitted.items()},
        method.name: evaluation.results,
        "tables": tables,
        "timings": timings,
        "config": config.to_dict(),
        "jaxfair": {"version": __version__, "commit": git_commit(pathlib.Path(__file__).parent)},
    }
    for stem, array in evaluation.arrays.items():
        write_npy(out_dir / f"{stem}.npy", array)
    for name, figure in evaluation.figures.items():
        write_figure(out_dir / name, figure(results))
    fault_point("results")
    write_json(out_dir / "results.json", results)
    log(method.report(results))
    return results


class RestoredRun(NamedTuple):
    """A finished run of ``jaxfair train``: its parsed config, split, method, context (the frozen backbone
    restored), the method's constant inputs and every model's selected parameters."""

    config: RunConfig
    split: Split
    method: Method
    context: Context
    data: object
    params: dict
    fitted: dict

    def serve(self, control=None, inputs=None):
        """The method's serving function on this run: ``inputs`` default to the frozen backbone's test-time user
        embeddings (or, for a model without a frozen backbone, the users' training interaction rows)."""
        if inputs is None:
            inputs = (self.context.frozen.user_vecs["test"] if self.context.frozen is not None
                      else self.split.train_matrix().astype("float32"))
        return self.method.serve(self.data, self.params, self.config.method_config, inputs, control)


def restore_run(run_dir) -> RestoredRun:
    """Read a finished run's ``config.json`` and ``split.npz`` and restore its backbone's and its models' selected
    parameters from their checkpoints. Nothing is trained; the models' logs are left as they are.

    Raises:
      RunError: ``run_dir`` is not a finished run.
    """
    run_dir = pathlib.Path(run_dir)
    for name in ("config.json", "split.npz", "results.json"):
        if not (run_dir / name).exists():
            raise RunError(f"{run_dir}: not a finished run of 'jaxfair train' (missing {name})")
    try:
        config = parse_config(json.loads((run_dir / "config.json").read_text()))
    except ConfigError as err:
        raise RunError(f"{run_dir}/config.json: {err}") from err
    split = read_split(run_dir / "split.npz")
    method = get_method(config.method)
    backbone, _ = make_backbone(config.backbone.name, dataclasses.asdict(config.backbone.config))
    frozen = None
    if method.frozen_backbone:
        if not (run_dir / "checkpoints" / "best").exists():
            raise RunError(f"{run_dir}: not a finished run of 'jaxfair train' (missing checkpoints/best)")
        frozen = freeze(backbone, backbone.context(split),
                        _restore_best(run_dir, backbone.init(jax.random.key(0), split)))
    context = Context(split=split, frozen=frozen, backbone=backbone, backbone_config=config.backbone.config,
                      evaluate=config.evaluate, probe=config.probe, seed=config.seed)
    data = method.prepare(context, config.method_config)
    summaries = json.loads((run_dir / "results.json").read_text()).get("models", {})
    fitted = {}
    while True:
        pending = [m for m in method.models(context, data, config.method_config, fitted) if m.name not in fitted]
        if not pending:
            break
        for model in pending:
            fitted[model.name] = _restore_model(run_dir, model, config.seed, summaries.get(model.name, {}))
    return RestoredRun(config, split, method, context, data, {n: f.best_params for n, f in fitted.items()}, fitted)


def _restore_model(run_dir: pathlib.Path, model, seed: int, summary: dict) -> FitResult:
    """A finished model's :class:`FitResult` from its checkpoint (the trainer's carry) and its ``results.json``
    entry ``summary``."""
    folder = run_dir / "checkpoints" / model.name
    if not folder.exists():
        raise RunError(f"{run_dir}: not a finished run of 'jaxfair train' (missing checkpoints/{model.name})")
    state = model.init(jax.random.split(jax.random.key(seed))[0])
    template = initial_carry(state)  # its shapes and dtypes tell orbax what to build
    with Checkpointer(folder) as checkpointer:
        carry = checkpointer.restore(template)
    return FitResult(state=carry["state"], best_params=carry["best_params"], best_epoch=int(carry["best_epoch"]),
                     best_valid=summary.get("best_valid", {}), epochs_run=int(carry["epoch"]),
                     seconds=summary.get("train_seconds", 0.0), resumed_from=None)


def evaluate_run(run_dir, protocols=None, ks=None, log: Log = print) -> dict:
    """Restore a finished run and evaluate it again (same split, negatives and probe keys), optionally under other
    protocols or cut-offs. Writes ``run_dir/evaluation.json`` (``tables`` as in ``results.json``) and prints the
    method's report. Raises RunError when ``run_dir`` is not a finished run."""
    run_dir = pathlib.Path(run_dir)
    restored = restore_run(run_dir)
    evaluate = dataclasses.replace(restored.config.evaluate,
                                   protocols=tuple(protocols) if protocols else restored.config.evaluate.protocols,
                                   ks=tuple(ks) if ks else restored.config.evaluate.ks)
    unsupported = [p for p in evaluate.protocols if p not in restored.split.protocols]
    if unsupported:
        raise RunError(f"--protocol {' '.join(unsupported)}: a {restored.split.kind} split is ranked under "
                       f"{list(restored.split.protocols)} only")
    context = restored.context._replace(evaluate=evaluate)
    evaluation = restored.method.evaluate(context, restored.data, restored.fitted, restored.config.method_config)
    previous = json.loads((run_dir / "results.json").read_text())
    results = {**{k: previous[k] for k in ("dataset", "source", "statistics", "seed", "split_seed", "method",
                                          "backbone", "models", "config") if k in previous},
               restored.method.name: evaluation.results, "tables": evaluation.tables,
               "evaluate": dataclasses.asdict(evaluate)}
    write_json(run_dir / "evaluation.json", results)
    log(restored.method.report(results))
    return results
