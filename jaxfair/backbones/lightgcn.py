"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
SIGIR 2020), trained with BPR.

Parameters: layer-0 embeddings ``E_u^(0)`` ``(U, d)`` and ``E_i^(0)`` ``(I, d)``. Over the training bipartite graph
(edge ``(u, i)`` for every distinct training positive) with degrees ``deg_u``, ``deg_i``:

    e_u^(k+1) = sum_{i in N(u)} e_i^(k) / sqrt(deg_u deg_i)
    e_i^(k+1) = sum_{u in N(i)} e_u^(k) / sqrt(deg_u deg_i)
    e_u = mean_{k=0..L} e_u^(k),   e_i = mean_{k=0..L} e_i^(k)           (U, d), (I, d)
    R(u, v) = <u, v>

Propagation gathers along the ``P`` edges and scatters with ``jax.ops.segment_sum`` (``O(P d)`` per layer, no dense
``U x I`` matrix). Items without training edges keep ``e_i^(0) / (L + 1)``. As in the paper, the L2 term acts on the
layer-0 rows of the batch's users, positives and negatives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.base import Backbone, Context, dot_score
from jaxfair.backbones.common import bpr_with_l2, check_dim_l2, init_user_item_tables, pair_epoch
from jaxfair.data.dataset import Split


@dataclasses.dataclass(frozen=True)
class Config:
    """LightGCN hyper-parameters.

    Attributes:
      dim: embedding size ``d``.
      l2: weight of the squared L2 norm of the layer-0 user/positive/negative rows of a batch.
      num_layers: propagation layers ``L`` (0 gives plain MF).
    """

    dim: int = 64
    l2: float = 1e-6
    num_layers: int = 3

    def __post_init__(self):
        check_dim_l2(self.dim, self.l2)
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be non-negative, got {self.num_layers}")


def graph_context(split: Split) -> Context:
    """The normalised training graph as edge lists.

    Returns:
      ``{"edge_user": int32 (E,), "edge_item": int32 (E,), "edge_weight": float32 (E,)}`` with one edge per
      distinct training pair and weight ``1 / sqrt(deg_u deg_i)``.
    """
    # Duplicate (user, item) rows would count twice in the degrees; the graph is over distinct pairs.
    codes = np.unique(split.train_users.astype(np.int64) * split.num_items + split.train_items)
    users, items = codes // split.num_items, codes % split.num_items
    deg_u = np.bincount(users, minlength=split.num_users).astype(np.float64)
    deg_i = np.bincount(items, minlength=split.num_items).astype(np.float64)
    weight = 1.0 / np.sqrt(deg_u[users] * deg_i[items])
    return {
        "edge_user": jnp.asarray(users, jnp.int32),
        "edge_item": jnp.asarray(items, jnp.int32),
        "edge_weight": jnp.asarray(weight, jnp.float32),
    }


def propagate(user0: jax.Array, item0: jax.Array, context: Context, num_layers: int) -> tuple[jax.Array, jax.Array]:
    """Mean of the layer-0..L embeddings.

    Args:
      user0, item0: ``(U, d)``, ``(I, d)`` layer-0 embeddings.
      context: from :func:`graph_context`.
      num_layers: ``L``.

    Returns:
      ``(users (U, d), items (I, d))``.
    """
    eu, ei, w = context["edge_user"], context["edge_item"], context["edge_weight"][:, None]
    num_users, num_items = user0.shape[0], item0.shape[0]
    user_k, item_k = user0, item0
    user_sum, item_sum = user0, item0
    for _ in range(num_layers):  # L is a small static number; unrolled
        user_k, item_k = (
            jax.ops.segment_sum(w * item_k[ei], eu, num_segments=num_users),
            jax.ops.segment_sum(w * user_k[eu], ei, num_segments=num_items),
        )
        user_sum = user_sum + user_k
        item_sum = item_sum + item_k
    return user_sum / (num_layers + 1), item_sum / (num_layers + 1)


def dense_adjacency(context: Context, num_users: int, num_items: int) -> jax.Array:
    """The normalised training graph as a dense float32 ``(U, I)`` matrix ``A[u, i] = 1 / sqrt(deg_u deg_i)``."""
    adjacency = jnp.zeros((num_users, num_items), jnp.float32)
    return adjacency.at[context["edge_user"], context["edge_item"]].add(context["edge_weight"])


def propagate_dense(user0: jax.Array, item0: jax.Array, adjacency: jax.Array, num_layers: int):
    """:func:`propagate` with a dense adjacency (``e_u^(k+1) = A e_i^(k)``, ``e_i^(k+1) = A^T e_u^(k)``): the same map,
    faster than edge gathers when many propagations run side by side (``jax.vmap`` turns it into batched matmuls,
    where vmapped ``segment_sum`` scatters are slow on CPU). Memory ``U I`` floats; meant for small graphs."""
    user_k, item_k = user0, item0
    user_sum, item_sum = user0, item0
    for _ in range(num_layers):
        user_k, item_k = adjacency @ item_k, adjacency.T @ user_k
        user_sum = user_sum + user_k
        item_sum = item_sum + item_k
    return user_sum / (num_layers + 1), item_sum / (num_layers + 1)


def backbone(config: Config = Config()) -> Backbone:
    """Build LightGCN's pure functions.

    Args:
      config: the hyper-parameters.

    Returns:
      A :class:`Backbone`; params ``{"user": (U, d), "item": (I, d)}`` (layer 0), context from
      :func:`graph_context`, ``user``/``pos``/``neg``/``weight`` batches ``(num_batches, B)``;
      ``user_embeddings``/``item_embeddings`` return the propagated embeddings.
    """

    def loss(params, context, batch, key):
        del key  # no dropout
        users, items = propagate(params["user"], params["item"], context, config.num_layers)
        u, p, n = batch["user"], batch["pos"], batch["neg"]
        reg_rows = (params["user"][u], params["item"][p], params["item"][n])
        return bpr_with_l2(dot_score, users[u], items[p], items[n], batch["weight"], config.l2, reg_rows)

    def user_embeddings(params, context, stage="valid"):
        del stage  # the graph is the training graph for both stages
        return propagate(params["user"], params["item"], context, config.num_layers)[0]

    def item_embeddings(params, context):
        return propagate(params["user"], params["item"], context, config.num_layers)[1]

    return Backbone(name="lightgcn", init=lambda key, split: init_user_item_tables(key, split, config.dim),
                    context=graph_context, make_epoch=pair_epoch, loss=loss, user_embeddings=user_embeddings,
                    item_embeddings=item_embeddings,
                    score=lambda params, user_vecs, item_vecs: dot_score(user_vecs, item_vecs))
