"""Full-ranking accuracy and top-K exposure fairness of one set of user embeddings, in one jitted pass.

Exposure fairness (Cofair's DP@K and EOpp@K). For a sensitive attribute with groups ``g = 0..G-1``:

* ``DP@K``: each group's exposure vector counts, per item, how many of the group's users have the item in their
  top-K list; normalised to a distribution ``E_g``. ``DP@K`` is the Jensen-Shannon distance between the groups'
  distributions (the mean over pairs of groups when ``G > 2``), base-2 logarithms, so it lies in ``[0, 1]``.
  SciPy's ``jensenshannon`` with its default natural logarithm (the public Cofair code) gives ``DP@K * sqrt(ln 2)``.
* ``EOpp@K``: the same, counting only the top-K slots that hold one of the user's held-out positives (hits).

Lower is fairer: 0 means every group is shown the same items in the same proportions.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfair.metrics.group import exposure_distribution, pairwise_js_distance
from jaxfair.metrics.ranking import ranking_metrics


def topk_exposure_gaps(
    scores: jax.Array, relevant: jax.Array, groups: jax.Array, num_groups: int, ks: tuple[int, ...],
    user_weight: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``dp@k`` and ``eopp@k`` for each ``k`` (see the module docstring).

    Args:
      scores: ``(U, I)``, masked items at ``-inf`` (they are never in a top-K unless fewer than K remain).
      relevant: bool ``(U, I)`` held-out positives.
      groups: int ``(U,)`` group of each user.
      num_groups: ``G`` (static).
      ks: cut-offs (static).
      user_weight: optional ``(U,)`` 0/1 weights selecting the users counted (default all).

    Returns:
      ``{"dp@k", "eopp@k"}`` scalars.
    """
    num_items = scores.shape[1]
    weight = jnp.ones(scores.shape[:1], jnp.float32) if user_weight is None else jnp.asarray(user_weight, jnp.float32)
    out = {}
    for k in ks:
        # One top_k per cut-off: slicing a shared top-max(k) makes XLA on CPU fall back to a full sort.
        _, items = jax.lax.top_k(scores, k)
        hit = jnp.take_along_axis(relevant, items, axis=1).astype(jnp.float32)
        slots = jnp.broadcast_to(weight[:, None], items.shape)
        out[f"dp@{k}"] = pairwise_js_distance(exposure_distribution(items, groups, num_groups, num_items, slots))
        out[f"eopp@{k}"] = pairwise_js_distance(
            exposure_distribution(items, groups, num_groups, num_items, slots * hit)
        )
    return out


def full_ranking_report(
    score: Callable,
    user_vecs: jax.Array,
    item_vecs: jax.Array,
    targets: jax.Array,
    exclude: jax.Array,
    groups: jax.Array,
    *,
    num_groups: int,
    ks: tuple[int, ...],
) -> dict[str, jax.Array]:
    """Recall/NDCG/precision/HR@K (means over users with at least one target) and DP/EOpp@K of one embedding set.

    Jitted (``num_groups`` and ``ks`` static); the scorer is traced, so a ``jax.tree_util.Partial`` holding a
    backbone's parameters compiles once.

    Args:
      score: ``(u (..., d), v (..., d)) -> (...)``, a function or ``jax.tree_util.Partial``.
      user_vecs: ``(U, d)``; item_vecs: ``(I, d)``.
      targets: bool ``(U, I)`` held-out positives; exclude: bool ``(U, I)`` known positives to mask.
      groups: int ``(U,)`` sensitive group per user.
      num_groups, ks: static.

    Returns:
      Metric name -> scalar. Wrap in ``jax.vmap`` over a leading axis of ``user_vecs`` to evaluate several embedding
      sets (e.g. every fairness level) in one pass.
    """
    if not isinstance(score, jax.tree_util.Partial):
        score = jax.tree_util.Partial(score)
    return _report(score, user_vecs, item_vecs, targets, exclude, groups, num_groups=num_groups, ks=tuple(ks))


@functools.partial(jax.jit, static_argnames=("num_groups", "ks"))
def _report(score, user_vecs, item_vecs, targets, exclude, groups, *, num_groups, ks):
    scores = score(user_vecs[:, None, :], item_vecs[None, :, :])
    scores = jnp.where(exclude & ~targets, -jnp.inf, scores)
    has_target = targets.any(axis=1)
    per_user = ranking_metrics(scores, targets, ks)
    denominator = jnp.maximum(has_target.sum(), 1)
    out = {name: jnp.sum(jnp.where(has_target, values, 0.0)) / denominator for name, values in per_user.items()}
    out.update(topk_exposure_gaps(scores, targets, groups, num_groups, ks))
    return out
