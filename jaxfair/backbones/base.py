"""The contract every backbone fulfils, and the BPR loss they share.

A backbone is a bundle of pure functions over a parameter pytree (no objects with state). The fairness methods only
ever use ``user_embeddings``, ``item_embeddings`` and ``score``: they replace a user's embedding ``u`` by a fair one
``u*`` and score items with the frozen backbone's own scorer ``R(u*, v)``.

Shapes: ``U`` users, ``I`` items, ``d`` embedding size (64 by default), ``B`` batch rows.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Batch = dict[str, jax.Array]
Context = dict[str, jax.Array]


class Backbone(NamedTuple):
    """Pure functions defining one backbone. Each backbone module has a frozen ``Config`` dataclass and a
    ``backbone(config) -> Backbone`` factory; the functions close over the config.

    Attributes:
      name: registry name (``"pmf"``, ``"deepmodel"``, ``"sasrec"``, ``"bert4rec"``, ``"lightgcn"``, ``"cosine_mf"``).
      init: ``(key, split) -> params``.
      context: ``(split) -> Context``, a pytree of constant arrays built once per split (graph edges for
        LightGCN, histories for the sequential models; empty for the others).
      make_epoch: ``(split, rng: np.random.Generator, batch_size) -> Batch`` with leading axes
        ``(num_batches, B, ...)``; padding rows carry ``weight == 0``.
      loss: ``(params, context, batch, key) -> (loss, metrics)``, the BPR loss of one batch (weighted mean).
      user_embeddings: ``(params, context, stage) -> (U, d)``; ``stage`` is ``"valid"`` or ``"test"`` and only
        matters for sequential backbones (the test history includes the validation item).
      item_embeddings: ``(params, context) -> (I, d)``.
      score: ``(params, user_vecs (..., d), item_vecs (..., d)) -> (...)``, broadcasting over leading axes, e.g.
        ``(B, 1, d)`` against ``(B, N, d)`` or ``(1, I, d)``.
    """

    name: str
    init: Callable[..., Params]
    context: Callable[..., Context]
    make_epoch: Callable[..., Batch]
    loss: Callable[..., tuple[jax.Array, dict]]
    user_embeddings: Callable[..., jax.Array]
    item_embeddings: Callable[..., jax.Array]
    score: Callable[..., jax.Array]


def bpr_loss(pos_scores: jax.Array, neg_scores: jax.Array, weight: jax.Array) -> jax.Array:
    """Bayesian personalised ranking: ``-sum_w log sigmoid(s+ - s-) / sum_w`` (weighted mean over rows).

    Args:
      pos_scores, neg_scores: scores of the positive and the sampled negative, same shape.
      weight: same shape, 0 for padding rows.
    """
    losses = -jax.nn.log_sigmoid(pos_scores - neg_scores)
    return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def dot_score(user_vecs: jax.Array, item_vecs: jax.Array) -> jax.Array:
    """Inner product ``<u, v>`` over the last axis, broadcasting the leading axes."""
    return jnp.sum(user_vecs * item_vecs, axis=-1)


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator | None) -> Batch:
    """Shuffle rows (when ``rng`` is given) and stack them into fixed-size batches.

    Every array in ``arrays`` shares its leading axis (rows). The last batch is padded with copies of row 0 whose
    ``weight`` is 0, so every batch has the same shape and the jitted step compiles once.

    Returns:
      dict of arrays shaped ``(num_batches, batch_size, ...)``, plus ``weight`` ``(num_batches, batch_size, ...)``
      (the input's ``weight`` if present, else ones).
    """
    n = len(next(iter(arrays.values())))
    order = rng.permutation(n) if rng is not None else np.arange(n)
    num_batches = max(1, -(-n // batch_size))
    pad = num_batches * batch_size - n
    order = np.concatenate([order, np.zeros(pad, dtype=order.dtype)])
    out = {}
    for key, value in arrays.items():
        out[key] = value[order].reshape((num_batches, batch_size) + value.shape[1:])
    weight = arrays.get("weight")
    base = np.ones((n,) + (() if weight is None else weight.shape[1:]), np.float32) if weight is None else weight
    w = base[order].astype(np.float32).copy()
    if pad:
        w[n:] = 0.0
    out["weight"] = w.reshape((num_batches, batch_size) + base.shape[1:])
    return out


class FrozenBackbone(NamedTuple):
    """A trained backbone, frozen, with everything a method on top of it reads.

    Attributes:
      backbone, context, params: its functions, constants and selected parameters.
      user_vecs: ``{"valid": (U, d), "test": (U, d)}`` (they differ only for sequential backbones);
      item_vecs: ``(I, d)``.
      score: ``backbone.score`` bound to ``params`` as a ``jax.tree_util.Partial`` (its parameters are traced, so
        jitted evaluation compiles once).
    """

    backbone: Backbone
    context: Context
    params: Params
    user_vecs: dict
    item_vecs: jax.Array
    score: Callable


def freeze(backbone: Backbone, context: Context, params: Params) -> FrozenBackbone:
    """Bind a backbone's selected parameters: its embeddings for both stages and its scorer."""
    users = {stage: backbone.user_embeddings(params, context, stage) for stage in ("valid", "test")}
    return FrozenBackbone(backbone, context, params, users, backbone.item_embeddings(params, context),
                          jax.tree_util.Partial(backbone.score, params))
