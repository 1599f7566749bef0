"""The backbone experiment: load data, train a backbone with BPR, evaluate it against popularity, probe its users.

This is what ``jaxfair train configs/<backbone>_ml100k.toml --out DIR`` runs. Outputs in ``DIR``:

* ``results.json`` - dataset, split statistics, seed, training summary, metrics per protocol (each block names its
  protocol) for the backbone and the popularity baseline, and probe AUCs per attribute;
* ``split.npz`` - the exact split (evaluation negatives and probe users included) the numbers were computed on;
* ``config.json`` - the resolved config, defaults included;
* ``user_embeddings.npy`` ``(U, d)`` (test-time user embeddings) and ``users.csv`` (probe split and attributes);
* ``checkpoints/train`` (resumable training state) and ``checkpoints/best`` (the selected parameters);
* ``train_log.jsonl`` - one line per epoch.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfair.backbones import make_backbone
from jaxfair.data.dataset import Split, save_split
from jaxfair.data.fetch import load
from jaxfair.data.holdout import HoldoutSplit
from jaxfair.data.preprocess import prepare
from jaxfair.experiments.config import DataConfig, EvalConfig, ExperimentConfig
from jaxfair.experiments.outputs import format_table, run_header, write_json, write_npy, write_users_csv
from jaxfair.metrics.probe import probe_all
from jaxfair.metrics.ranking import full_protocol, sampled_protocol, summarize
from jaxfair.training.checkpoint import Checkpointer
from jaxfair.training.step import init_state, make_epoch_fn, make_train_step
from jaxfair.training.trainer import Task, fit

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def load_split(config: DataConfig, log: Callable[[str], None] = print) -> Split:
    """Fetch (or read) the data named by ``config.source`` and preprocess it."""
    raw = load(config.source, log=log)
    split = prepare(raw, config.prep())
    stats = split.statistics()
    log(
        f"[data] {stats['dataset']}: {stats['users']} users, {stats['items']} items, {stats['positives']} positives "
        f"({stats['train_positives']} train)"
    )
    return split


def evaluate_ranking(
    score_fn: ScoreFn,
    user_vecs: dict[str, jax.Array],
    item_vecs: jax.Array,
    split: Split,
    config: EvalConfig,
    stages: tuple[str, ...] = ("valid", "test"),
    known: np.ndarray | None = None,
) -> dict:
    """Ranking metrics of one model under every configured protocol.

    Args:
      score_fn: ``(user_vecs (..., d), item_vecs (..., d)) -> (...)``.
      user_vecs: ``{"valid": (U, d), "test": (U, d)}`` user representations for each stage.
      item_vecs: ``(I, d)``.
      known: bool ``(U, I)`` known positives (computed from the split when omitted).

    Returns:
      ``{protocol: {"protocol": name, "description": ..., stage: {metric@k: mean}}}``.
    """
    if isinstance(split, HoldoutSplit):
        return evaluate_holdout(score_fn, user_vecs, item_vecs, split, config, stages)
    known = split.positive_matrix() if known is None else known
    targets = {"valid": split.valid_items, "test": split.test_items}
    negatives = {"valid": split.valid_negatives, "test": split.test_negatives}
    out = {}
    for protocol in config.protocols:
        block = {"protocol": protocol}
        if protocol == "sampled":
            block["description"] = f"target ranked among {split.test_negatives.shape[1]} fixed sampled negatives"
        else:
            block["description"] = f"target ranked among all {split.num_items} items, other known positives masked"
        for stage in stages:
            if protocol == "sampled":
                per_user = sampled_protocol(
                    score_fn, user_vecs[stage], item_vecs, targets[stage], negatives[stage], config.ks, config.batch_size
                )
            else:
                per_user = full_protocol(
                    score_fn, user_vecs[stage], item_vecs, targets[stage], known, config.ks, config.batch_size
                )
            block[stage] = summarize(per_user)
        out[protocol] = block
    return out


def evaluate_holdout(
    score_fn: ScoreFn,
    user_vecs: dict[str, jax.Array],
    item_vecs: jax.Array,
    split: HoldoutSplit,
    config: EvalConfig,
    stages: tuple[str, ...] = ("valid", "test"),
) -> dict:
    """Full-ranking metrics on a ratio hold-out split: each stage's positives ranked over all items, with the
    training positives (and, for test, the validation positives) masked. Users without positives in a stage are left
    out of its means. Same return layout as :func:`evaluate_ranking`, with the single protocol ``full``."""
    if "sampled" in config.protocols:
        raise ValueError("the 'sampled' protocol needs a leave-one-out split; a ratio split is ranked over all items")
    block = {
        "protocol": "full",
        "description": f"held-out positives ranked among all {split.num_items} items, training"
        " (and for test, validation) positives masked",
    }
    for stage in stages:
        targets = split.target_matrix(stage)
        has_targets = targets.any(axis=1)
        per_user = full_protocol(
            score_fn, user_vecs[stage], item_vecs, targets, split.exclude_matrix(stage), config.ks, config.batch_size
        )
        block[stage] = summarize({k: v[has_targets] for k, v in per_user.items()})
    return {"full": block}


def popularity_scorer(split: Split) -> tuple[ScoreFn, jax.Array, jax.Array]:
    """The popularity baseline: every user scores an item by its number of training positives.

    Returns ``(score_fn, user_vecs (U, 1) of ones, item_vecs (I, 1) of counts)`` so it runs through the same
    protocols as any embedding model.
    """
    counts = np.bincount(split.train_items, minlength=split.num_items).astype(np.float32)
    return (lambda u, v: jnp.sum(u * v, axis=-1)), jnp.ones((split.num_users, 1)), jnp.asarray(counts)[:, None]


def train_backbone(split: Split, config: ExperimentConfig, out_dir: pathlib.Path | None = None, log=print, *,
                   make_loss=None, batch_size: int | None = None, name: str = "train"):
    """Train the configured backbone with BPR; return ``(backbone, context, best_params, fit_result)``.

    ``make_loss(backbone, context) -> loss(params, batch, key)`` replaces the backbone's own loss (e.g. a
    regularised one, on the same batches); ``batch_size`` overrides ``[train] batch_size``; ``name`` names the
    checkpoint folder and log.
    """
    backbone, _ = make_backbone(config.backbone_name, dataclasses.asdict(config.backbone))
    context = backbone.context(split)
    tx = optax.adam(config.train.learning_rate)
    loss = make_loss(backbone, context) if make_loss else (lambda p, b, k: backbone.loss(p, context, b, k))
    step = make_train_step(loss, tx)
    # Validation ranks the validation targets among sampled negatives on a leave-one-out split, over all items on a
    # ratio split.
    protocol = "full" if isinstance(split, HoldoutSplit) else "sampled"
    eval_valid = EvalConfig(protocols=(protocol,), ks=config.evaluate.ks, batch_size=config.evaluate.batch_size)
    item_fn = jax.jit(lambda p: backbone.item_embeddings(p, context))
    user_fn = jax.jit(lambda p: backbone.user_embeddings(p, context, "valid"))

    def validate(params):
        score = lambda u, v: backbone.score(params, u, v)
        metrics = evaluate_ranking(score, {"valid": user_fn(params)}, item_fn(params), split, eval_valid, ("valid",))
        return metrics[protocol]["valid"]

    task = Task(
        init_state=lambda key: init_state(backbone.init(key, split), tx),
        epoch_batches=lambda rng: backbone.make_epoch(split, rng, batch_size or config.train.batch_size),
        run_epoch=make_epoch_fn(step),
        validate=validate,
    )
    result = fit(task, config.train, out_dir, log=log, name=name)
    return backbone, context, result.best_params, result


def save_best(out_dir: pathlib.Path, params, epoch: int) -> None:
    with Checkpointer(out_dir / "checkpoints" / "best") as checkpointer:
        checkpointer.save(max(epoch, 0), params)


def restore_best(out_dir: pathlib.Path, template):
    with Checkpointer(out_dir / "checkpoints" / "best") as checkpointer:
        return checkpointer.restore(template)


def embeddings_of(backbone, context, params) -> tuple[dict[str, jax.Array], jax.Array]:
    users = {stage: backbone.user_embeddings(params, context, stage) for stage in ("valid", "test")}
    return users, backbone.item_embeddings(params, context)


class FrozenBackbone(NamedTuple):
    """A trained backbone, frozen, with everything the fairness methods read from it.

    Attributes:
      backbone, context, params, fit: the backbone's functions, constants, selected parameters and training result
        (None when restored from a finished run, :func:`jaxfair.experiments.runner.restore_run`).
      user_vecs: ``{"valid": (U, d), "test": (U, d)}``; item_vecs: ``(I, d)``.
      score: ``backbone.score`` bound to ``params`` as a ``jax.tree_util.Partial`` (traced, so jitted evaluation
        compiles once).
    """

    backbone: object
    context: dict
    params: object
    fit: object
    user_vecs: dict
    item_vecs: jax.Array
    score: jax.tree_util.Partial


# Probe stages whose users' attribute labels the fairness methods never train on (AFRL's AUDIT_STAGES and Cofair's
# WITHHELD): the standard probe is selected on the validation users and scored on the test users, so neither may
# have been seen labelled.
WITHHELD_STAGES = ("valid", "test")


def withheld_labels(stages: tuple[str, ...] = WITHHELD_STAGES) -> list[str]:
    """How results files name the withheld probe stages: ``["probe valid", "probe test"]`` by default."""
    return [f"probe {stage}" for stage in stages]


def label_weight(split, withheld: tuple[str, ...] = WITHHELD_STAGES) -> np.ndarray:
    """float32 ``(U,)``: 1 for users whose attribute labels a fairness method may train on, 0 for the probe users of
    the ``withheld`` probe stages (:data:`WITHHELD_STAGES` by default)."""
    weight = np.ones(split.num_users, np.float32)
    for stage in withheld:
        weight[split.probe_users[stage]] = 0.0
    return weight


def frozen_backbone(split, config: ExperimentConfig, out_dir=None, log=print) -> FrozenBackbone:
    """Train the configured backbone and freeze it. With ``out_dir``, training is checkpointed there and the
    selected parameters are saved to ``out_dir/checkpoints/best``."""
    backbone, context, params, fit_result = train_backbone(split, config, out_dir, log)
    if out_dir is not None:
        save_best(pathlib.Path(out_dir), params, fit_result.best_epoch)
    user_vecs, item_vecs = embeddings_of(backbone, context, params)
    return FrozenBackbone(
        backbone=backbone,
        context=context,
        params=params,
        fit=fit_result,
        user_vecs=user_vecs,
        item_vecs=item_vecs,
        score=jax.tree_util.Partial(backbone.score, params),
    )


def start_run(config: ExperimentConfig, out_dir, log: Callable[[str], None] = print):
    """What every experiment does first: create ``out_dir``, load the split, and write ``split.npz``,
    ``config.json`` and ``users.csv``.

    Returns:
      ``(out_dir as a Path, split, timings)`` with ``timings["data_seconds"]`` filled in.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    split = load_split(config.data, log)
    save_split(split, out_dir / "split.npz")
    write_json(out_dir / "config.json", config.to_dict())
    write_users_csv(out_dir / "users.csv", split)
    return out_dir, split, {"data_seconds": time.perf_counter() - tick}


def run(config: ExperimentConfig, out_dir: str | pathlib.Path, log: Callable[[str], None] = print) -> dict:
    """Train, evaluate, probe and write every output of the backbone experiment; returns ``results.json``'s dict."""
    out_dir, split, timings = start_run(config, out_dir, log)

    tick = time.perf_counter()
    frozen = frozen_backbone(split, config, out_dir, log)
    backbone, params, fit_result = frozen.backbone, frozen.params, frozen.fit
    timings["train_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    known = split.positive_matrix()
    user_vecs, item_vecs = frozen.user_vecs, frozen.item_vecs
    metrics = {
        config.backbone_name: evaluate_ranking(
            lambda u, v: backbone.score(params, u, v), user_vecs, item_vecs, split, config.evaluate, known=known
        )
    }
    pop_score, pop_users, pop_items = popularity_scorer(split)
    metrics["popularity"] = evaluate_ranking(
        pop_score, {"valid": pop_users, "test": pop_users}, pop_items, split, config.evaluate, known=known
    )
    timings["evaluate_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    embeddings = np.asarray(user_vecs["test"])
    probe = probe_all(
        embeddings, split.user_attributes, split.attribute_classes, split.probe_users,
        jax.random.fold_in(jax.random.key(config.train.seed), 1), config.probe,
    )
    timings["probe_seconds"] = time.perf_counter() - tick
    write_npy(out_dir / "user_embeddings.npy", embeddings)

    results = {
        **run_header(split, config),
        "backbone": config.backbone_name,
        "training": {
            "best_epoch": fit_result.best_epoch,
            "epochs_run": fit_result.epochs_run,
            "resumed_from_epoch": fit_result.resumed_from,
            "best_valid": fit_result.best_valid,
        },
        "metrics": metrics,
        "probe": probe,
        "timings": timings,
        "config": config.to_dict(),
    }
    write_json(out_dir / "results.json", results)
    log(results_table(results))
    return results


def results_table(results: dict) -> str:
    """The printed summary: test metrics of every model under every protocol, then probe AUCs."""
    rows = []
    for model, protocols in results["metrics"].items():
        for protocol, block in protocols.items():
            rows.append({"model": model, "protocol": protocol, **block["test"]})
    columns = ["model", "protocol"] + [k for k in rows[0] if k not in ("model", "protocol")]
    probe_rows = [
        {"attribute": name, "auc": r["auc"], "ci_low": r["auc_ci"][0], "ci_high": r["auc_ci"][1]}
        for name, r in results.get("probe", {}).items()
    ]
    text = "test metrics\n" + format_table(rows, columns)
    if probe_rows:
        text += "\n\nprobe AUC on user embeddings (0.5 = nothing leaks)\n"
        text += format_table(probe_rows, ["attribute", "auc", "ci_low", "ci_high"])
    return text
