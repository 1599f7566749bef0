"""No fairness: the frozen backbone's own user embeddings, served unchanged. The unfair reference point of every
comparison, what a config without a method section runs, and the smallest complete example of the method contract
(:mod:`jaxfair.methods.base`): a new method is a module like this one, one line in
:data:`jaxfair.methods.METHODS`, a config, a test file and a docs page.

It trains nothing (``models`` names no model); the pipeline trains the backbone. Its evaluation is the backbone's
report: ranking metrics under every configured protocol next to the popularity baseline (every user scores an item
by its number of training positives, so it runs through the same protocols), and for every attribute the standard
probe (fitted on the probe training users, selected on the validation users, scored on the test users) and the
unseen-user audit (cross-fitted on the validation and test users only) on the test-time embeddings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.methods.base import Evaluation, Method, audit_users, no_check
from jaxfair.metrics.probe import cross_fitted_probe, probe_all
from jaxfair.metrics.ranking import split_ranking
from jaxfair.tables import format_table
from jaxfair.training.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``[noop]`` section: nothing to set (``train`` is unused; every method section has one)."""

    train: TrainConfig = TrainConfig()


def popularity_scorer(split):
    """The popularity baseline: ``(score_fn, user_vecs (U, 1) of ones, item_vecs (I, 1) of training counts)``."""
    counts = np.bincount(split.train_items, minlength=split.num_items).astype(np.float32)
    return (lambda u, v: jnp.sum(u * v, axis=-1)), jnp.ones((split.num_users, 1)), jnp.asarray(counts)[:, None]


def serve(data, params: dict, config: Config, user_vecs: jax.Array, control=None) -> jax.Array:
    """``user_vecs`` unchanged, whatever the control."""
    del data, params, config, control
    return user_vecs


def _prepare(context, config: Config):
    return None


def _models(context, data, config: Config, fitted: dict):
    return []


def _evaluate(context, data, fitted: dict, config: Config) -> Evaluation:
    split, frozen, evaluate = context.split, context.frozen, context.evaluate
    ks, batch = tuple(evaluate.ks), evaluate.batch_size
    metrics = {"backbone": split_ranking(frozen.score, frozen.user_vecs, frozen.item_vecs, split, evaluate.protocols,
                                         ks, batch)}
    pop_score, pop_users, pop_items = popularity_scorer(split)
    metrics["popularity"] = split_ranking(pop_score, {"valid": pop_users, "test": pop_users}, pop_items, split,
                                          evaluate.protocols, ks, batch)
    embeddings = np.asarray(frozen.user_vecs["test"])
    key = context.key
    probe = probe_all(embeddings, split.user_attributes, split.attribute_classes, split.probe_users, key,
                      context.probe)
    unseen_users = audit_users(split)
    unseen = {
        name: cross_fitted_probe(embeddings, labels, unseen_users, len(split.attribute_classes[name]),
                                 jax.random.fold_in(key, 100 + i), context.probe)
        for i, (name, labels) in enumerate(split.user_attributes.items())
    }
    tables = {stage: {} for stage in ("valid", "test")}
    for model, protocols in metrics.items():
        for stage in tables:
            tables[stage][model] = {f"{p}/{m}": v for p, block in protocols.items() for m, v in block[stage].items()}
    tables["test"]["backbone"].update({f"unseen_auc/{a}": r["auc"] for a, r in unseen.items()})
    tables["test"]["backbone"].update({f"unseen_auc_std/{a}": r["auc_std"] for a, r in unseen.items()})
    tables["test"]["backbone"].update({f"auc/{a}": r["auc"] for a, r in probe.items()})
    tables["valid"]["backbone"].update({f"probe_valid_auc/{a}": r["valid_auc"] for a, r in probe.items()})
    results = {"metrics": metrics, "probe": probe, "unseen": unseen}
    return Evaluation(results=results, tables=tables, arrays={"user_embeddings": embeddings})


def report(results: dict) -> str:
    """Test metrics of the backbone and the popularity baseline under every protocol, then the probe AUCs."""
    block = results["noop"]
    rows = [{"model": model, "protocol": protocol, **metrics["test"]}
            for model, protocols in block["metrics"].items() for protocol, metrics in protocols.items()]
    columns = ["model", "protocol"] + [k for k in rows[0] if k not in ("model", "protocol")]
    probe_rows = [{"attribute": name, "unseen auc": block["unseen"][name]["auc"], "auc": r["auc"],
                   "ci_low": (r["auc_ci"] or [np.nan])[0], "ci_high": (r["auc_ci"] or [np.nan, np.nan])[1]}
                  for name, r in block["probe"].items()]
    text = f"test metrics, backbone {results['backbone']['name']}\n" + format_table(rows, columns)
    if probe_rows:
        text += "\n\nprobe AUC on the user embeddings (0.5 = nothing leaks; unseen = cross-fitted on users never "
        text += "trained on)\n" + format_table(probe_rows, ["attribute", "unseen auc", "auc", "ci_low", "ci_high"])
    return text


METHOD = Method("noop", Config, frozen_backbone=True, check=no_check, prepare=_prepare, models=_models,
                evaluate=_evaluate, serve=serve, report=report,
                description="no fairness: the backbone's own embeddings, next to popularity (the reference point)")
