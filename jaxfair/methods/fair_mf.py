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

from typing import Callable

import jax
import jax.numpy as jnp

from jaxfair.backbones.base import Backbone


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
