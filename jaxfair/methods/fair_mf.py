"""Fairness-regularised matrix factorisation: a table backbone's BPR loss plus a penalty on the gap between the
user groups' mean predicted scores (DifFaiRec's regularised-MF baseline; in the spirit of Yao & Huang, "Beyond
Parity", NeurIPS 2017, and Kamishima et al.'s mean-matching regulariser).

For a batch of BPR rows ``(u, i, j)`` with weights ``w``, every scored pair (the positive and the negative) counts,
and ``p = sigmoid(R(u, v))`` is the predicted preference. With ``m_g`` the weighted mean of ``p`` over the pairs of
users in group ``g`` present in the batch,

    ``L = L_BPR + gamma * (max_g m_g - min_g m_g)^2``

(for two groups ``gamma (m_0 - m_1)^2``; groups absent from the batch are left out). The sigmoid keeps the penalty
from being satisfied by shrinking the scores' scale; ``gamma = 0`` is the plain backbone.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.base import Backbone
from jaxfair.backbones.fit import backbone_model
from jaxfair.methods.base import (Evaluation, Method, require, require_attribute, require_monitor_cutoff,
                                  require_ratio_split)
from jaxfair.methods.gap_evaluation import evaluate_scores, gap_report
from jaxfair.training.trainer import TrainConfig

MF_BACKBONES = ("pmf", "cosine_mf", "lightgcn")


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``[fair_mf]`` section.

    Attributes:
      attribute: the user attribute whose classes are the groups.
      gamma: the penalty's weight; ``gamma = 0`` is plain MF (BPR). 1 was chosen on ML-100k validation data over
        {1, 10, 100, 1000} (larger values cost 3.5-59% validation NDCG@20 and widened the gaps; ``docs/diffairec.md``).
      train: the loop (``[fair_mf.train]``) training the ``[backbone]`` from scratch.
    """

    attribute: str = "gender"
    gamma: float = 1.0
    train: TrainConfig = TrainConfig(epochs=200, batch_size=1024, learning_rate=5e-3, patience=20,
                                     monitor="ndcg@20", checkpoint_every=20)

    def __post_init__(self):
        if self.gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {self.gamma}")


def score_gap_penalty(pos_scores: jax.Array, neg_scores: jax.Array, groups: jax.Array, weight: jax.Array,
                      num_groups: int) -> jax.Array:
    """``(max_g m_g - min_g m_g)^2`` over groups present in the batch; 0 with fewer than two present.

    Args:
      pos_scores, neg_scores: float ``(B,)`` scores of the rows' positive and negative.
      groups: int ``(B,)`` the rows' user groups; weight: ``(B,)`` (0 for padding).
    """
    preference = jax.nn.sigmoid(jnp.concatenate([pos_scores, neg_scores]))
    groups = jnp.concatenate([groups, groups])
    weight = jnp.concatenate([weight, weight])
    sums = jax.ops.segment_sum(preference * weight, groups, num_segments=num_groups)
    counts = jax.ops.segment_sum(weight, groups, num_segments=num_groups)
    present = counts > 0
    means = sums / jnp.maximum(counts, 1e-12)
    gap = jnp.max(jnp.where(present, means, -jnp.inf)) - jnp.min(jnp.where(present, means, jnp.inf))
    return jnp.where(jnp.sum(present) >= 2, gap, 0.0) ** 2


def make_loss(backbone: Backbone, context, user_groups: jax.Array, num_groups: int,
              gamma: float) -> Callable:
    """``loss(params, batch, key) -> (loss, metrics)`` for :func:`jaxfair.training.step.make_train_step`.

    ``batch`` is the backbone's own BPR batch (``user``, ``pos``, ``neg``, ``weight``); the backbone must score
    users and items from embedding tables (``user_embeddings`` / ``item_embeddings``).
    """
    user_groups = jnp.asarray(user_groups, jnp.int32)

    def loss(params, batch, key):
        base, metrics = backbone.loss(params, context, batch, key)
        users = backbone.user_embeddings(params, context, "valid")[batch["user"]]
        items = backbone.item_embeddings(params, context)
        pos = backbone.score(params, users, items[batch["pos"]])
        neg = backbone.score(params, users, items[batch["neg"]])
        penalty = score_gap_penalty(pos, neg, user_groups[batch["user"]], batch["weight"], num_groups)
        return base + gamma * penalty, dict(metrics, bpr=base, score_gap_sq=penalty)

    return loss


# --- the method contract -------------------------------------------------------------------------------------


def _check(config: Config, run_config) -> None:
    require_ratio_split("fair_mf", run_config, "diffairec")
    require(run_config.backbone.name in MF_BACKBONES,
            f"backbone.name: fair_mf trains {list(MF_BACKBONES)}, not {run_config.backbone.name!r}")
    require_attribute("fair_mf.attribute", config.attribute, run_config)
    require_monitor_cutoff("fair_mf.train.monitor", config.train, run_config)


def _prepare(context, config: Config) -> dict:
    split = context.split
    return {"backbone": context.backbone, "context": context.backbone.context(split),
            "groups": np.asarray(split.user_attributes[config.attribute], np.int32),
            "num_groups": len(split.attribute_classes[config.attribute])}


def _models(context, data: dict, config: Config, fitted: dict):
    backbone = context.backbone
    loss = make_loss(backbone, data["context"], data["groups"], data["num_groups"], config.gamma)
    return [backbone_model("fair_mf", context.split, backbone, data["context"], config.train,
                           tuple(context.evaluate.ks), context.evaluate.batch_size, loss=loss)]


def serve(data: dict, params: dict, config: Config, inputs=None, control=None) -> jax.Array:
    """The trained backbone's test-time user embeddings ``(U, d)`` (no control input; score them with the backbone's
    own scorer)."""
    del inputs, control
    return data["backbone"].user_embeddings(params["fair_mf"], data["context"], "test")


def _evaluate(context, data: dict, fitted: dict, config: Config) -> Evaluation:
    backbone, params = context.backbone, fitted["fair_mf"].best_params
    users = {stage: backbone.user_embeddings(params, data["context"], stage) for stage in ("valid", "test")}
    items = backbone.item_embeddings(params, data["context"])
    scores = jax.jit(lambda u, v: backbone.score(params, u[:, None, :], v[None]))(users["test"], items)
    return evaluate_scores(context, np.asarray(scores), np.asarray(users["valid"]), config.attribute)


METHOD = Method("fair_mf", Config, frozen_backbone=False, check=_check, prepare=_prepare, models=_models,
                evaluate=_evaluate, serve=serve, report=lambda results: gap_report(results, "fair_mf"),
                description="regularised MF: BPR plus gamma times the squared gap of the groups' mean predicted "
                            "preference")
