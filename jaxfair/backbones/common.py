"""Pieces shared by several backbones: config checks, embedding-table init, BPR epochs and losses.

Conventions used throughout the backbones:

* Embedding tables are initialised from ``normal(0, INIT_STD)`` with ``INIT_STD = 0.1``; with ``d = 64`` the initial
  inner products are small (std about ``0.08``), so BPR starts near ``log 2`` and no row dominates.
* The L2 term is ``l2 * sum_w (sum_k ||e_k||^2) / sum_w``: the squared norms of every embedding row a batch row uses
  (user, positive and negative), averaged with the same weights as the BPR loss, so padding rows add nothing and the
  strength does not depend on the batch size.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.base import Backbone, Batch, bpr_loss, padded_batches
from jaxfair.data.dataset import Split
from jaxfair.data.sampling import bpr_pairs, sample_negatives
from jaxfair.training import init

INIT_STD = 0.1


def check_dim_l2(dim: int, l2: float) -> None:
    """Raise ValueError unless ``dim > 0`` and ``l2 >= 0`` (the two fields every backbone config has)."""
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    if l2 < 0:
        raise ValueError(f"l2 must be non-negative, got {l2}")


def init_table(key: jax.Array, rows: int, dim: int, zero_rows: Sequence[int] = ()) -> jax.Array:
    """A ``(rows, dim)`` float32 table drawn from ``normal(0, INIT_STD)``.

    Args:
      key: PRNG key.
      rows, dim: table shape.
      zero_rows: rows set to zero (the padding id of sequence tables, so a padded slot starts as "nothing").
    """
    table = INIT_STD * init.normal(key, (rows, dim), jnp.float32)
    if zero_rows:
        table = table.at[jnp.asarray(list(zero_rows))].set(0.0)
    return table


def init_user_item_tables(key: jax.Array, split: Split, dim: int) -> dict[str, jax.Array]:
    """``{"user": (U, d), "item": (I, d)}`` tables for the matrix-factorisation style backbones."""
    k_user, k_item = jax.random.split(key)
    return {"user": init_table(k_user, split.num_users, dim), "item": init_table(k_item, split.num_items, dim)}


def pair_epoch(split: Split, rng: np.random.Generator, batch_size: int) -> Batch:
    """One shuffled epoch of BPR triples, one fresh negative per training positive.

    Returns:
      ``{"user", "pos", "neg": int32, "weight": float32}``, each ``(num_batches, batch_size)``; padding rows have
      weight 0.
    """
    # Built once per epoch: the known positives (a dense (U, I) mask on small data, CSR sets on large) that
    # sample_negatives rejects.
    positives = split.known_positives()
    return padded_batches(bpr_pairs(split, rng, positives), batch_size, rng)


def l2_penalty(l2: float, weight: jax.Array, *embeddings: jax.Array) -> jax.Array:
    """``l2 * sum_w sum_k ||e_k||^2 / sum_w`` over the rows of ``weight`` (shape ``(...)``; each ``e_k`` ``(..., d)``)."""
    if l2 == 0.0:
        return jnp.zeros((), jnp.float32)
    squared = sum(jnp.sum(e * e, axis=-1) for e in embeddings)
    return l2 * jnp.sum(squared * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def bpr_with_l2(
    score: Callable[[jax.Array, jax.Array], jax.Array],
    users: jax.Array,
    pos: jax.Array,
    neg: jax.Array,
    weight: jax.Array,
    l2: float,
    reg_embeddings: Sequence[jax.Array] | None = None,
) -> tuple[jax.Array, dict]:
    """BPR of ``score(users, pos)`` against ``score(users, neg)`` plus the L2 term.

    Args:
      score: ``(u (..., d), v (..., d)) -> (...)``.
      users, pos, neg: ``(..., d)`` embeddings of each row's user, positive and negative.
      weight: ``(...)``, 0 on padding.
      l2: penalty weight.
      reg_embeddings: the embeddings to penalise; defaults to ``(users, pos, neg)`` (LightGCN passes its layer-0
        rows instead of the propagated ones, as in the paper).

    Returns:
      ``(loss, {"bpr": ..., "reg": ...})``.
    """
    bpr = bpr_loss(score(users, pos), score(users, neg), weight)
    reg = l2_penalty(l2, weight, *(reg_embeddings if reg_embeddings is not None else (users, pos, neg)))
    return bpr + reg, {"bpr": bpr, "reg": reg}


def table_pair_loss(score: Callable, l2: float) -> Callable:
    """The batch loss of a backbone whose params are ``{"user": (U, d), "item": (I, d), ...}``.

    Args:
      score: ``(params, u, v) -> (...)``, the backbone's scorer.
      l2: penalty weight on the gathered user/positive/negative rows.

    Returns:
      ``loss(params, context, batch, key) -> (loss, metrics)`` for batches from :func:`pair_epoch`.
    """

    def loss(params, context, batch, key):
        del context, key  # no graph, no dropout
        u = params["user"][batch["user"]]
        pos = params["item"][batch["pos"]]
        neg = params["item"][batch["neg"]]
        return bpr_with_l2(lambda a, b: score(params, a, b), u, pos, neg, batch["weight"], l2)

    return loss


def position_negatives(
    positives: np.ndarray, users: np.ndarray, targets: np.ndarray, pad_id: int, rng: np.random.Generator
) -> np.ndarray:
    """One negative per sequence position, never a known positive of that row's user.

    Args:
      positives: bool ``(U, I)`` known positives, or the same as :class:`~jaxfair.data.dataset.UserItems`.
      users: int ``(R,)`` user of each row.
      targets: int ``(R, L)`` target items; ``pad_id`` where there is nothing to predict.
      pad_id: the padding id; such positions get ``pad_id`` as negative too (their weight is 0).

    Returns:
      int32 ``(R, L)``.
    """
    rows, length = targets.shape
    flat_users = np.repeat(np.asarray(users), length)
    neg = sample_negatives(positives, flat_users, 1, rng)[:, 0].reshape(rows, length)
    return np.where(targets == pad_id, pad_id, neg).astype(np.int32)


def table_backbone(name: str, dim: int, l2: float, score: Callable) -> Backbone:
    """A backbone whose users and items are plain embedding tables ``{"user": (U, d), "item": (I, d)}`` trained with
    BPR on :func:`pair_epoch` batches; only the scorer ``score(params, u, v)`` differs (PMF, cosine MF)."""
    return Backbone(
        name=name,
        init=lambda key, split: init_user_item_tables(key, split, dim),
        context=lambda split: {},
        make_epoch=pair_epoch,
        loss=table_pair_loss(score, l2),
        user_embeddings=lambda params, context, stage="valid": params["user"],
        item_embeddings=lambda params, context: params["item"],
        score=score,
    )
