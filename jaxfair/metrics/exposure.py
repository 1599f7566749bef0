"""Full-ranking accuracy and top-K exposure fairness of one set of user embeddings, in one jitted pass.

Exposure fairness (Cofair's DP@K and EOpp@K). For a sensitive attribute with groups ``g = 0..G-1``:

* ``DP@K``: each group's exposure vector counts, per item, how many of the group's users have the item in their
  top-K list; normalised to a distribution ``E_g``. ``DP@K`` is the Jensen-Shannon distance between the groups'
  distributions (the mean over pairs of groups when ``G > 2``), base-2 logarithms, so it lies in ``[0, 1]``.
  SciPy's ``jensenshannon`` with its default natural logarithm (the public Cofair code) gives ``DP@K * sqrt(ln 2)``.
* ``EOpp@K``: the same, counting only the top-K slots that hold one of the user's held-out positives (hits).

Lower is fairer: 0 means every group is shown the same items in the same proportions.

Memory. On small data (bool ``(U, I)`` targets and masks) the report is one jitted pass over the ``(U, I)`` scores.
With the masks as per-user item sets (:class:`~jaxfair.data.dataset.UserItems`, which
:meth:`~jaxfair.data.dataset.Split.ranking_masks` gives above :data:`jaxfair.data.dataset.DENSE_LIMIT`) it streams
users in blocks of :func:`~jaxfair.metrics.ranking.block_rows` (the memory budget, divided among the embedding sets
evaluated side by side): each block's masks are built from the sets, its per-user metrics are summed, and its top-K
exposure *counts* per group and item are added up; the counts are normalised and compared once every block is in.
The exposure counts are exact either way (integers in float32), so DP/EOpp agree with the one-pass report wherever
the top-K lists do; the ranking means agree to float rounding (sums taken in another order).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.data.dataset import UserItems
from jaxfair.metrics.group import exposure_counts, exposure_distribution, normalize_exposure, pairwise_js_distance
from jaxfair.metrics.masks import SparseRows, gather_mask
from jaxfair.metrics.ranking import block_rows, ranking_metrics


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
    memory_bytes: int | None = None,
) -> dict[str, jax.Array]:
    """Recall/NDCG/precision/HR@K (means over users with at least one target) and DP/EOpp@K of one embedding set.

    Jitted (``num_groups`` and ``ks`` static); the scorer is traced, so a ``jax.tree_util.Partial`` holding a
    backbone's parameters compiles once. With ``targets``/``exclude`` as
    :class:`~jaxfair.data.dataset.UserItems`, the users are streamed in blocks (:func:`blocked_ranking_report`; not
    inside ``jax.vmap``, which it replaces by a leading axis of ``user_vecs``).

    Args:
      score: ``(u (..., d), v (..., d)) -> (...)``, a function or ``jax.tree_util.Partial``.
      user_vecs: ``(U, d)``; item_vecs: ``(I, d)``.
      targets: bool ``(U, I)`` held-out positives; exclude: bool ``(U, I)`` known positives to mask; either may be
        :class:`~jaxfair.data.dataset.UserItems` instead.
      groups: int ``(U,)`` sensitive group per user.
      num_groups, ks: static.
      memory_bytes: the blocked form's budget per block (None: :data:`~jaxfair.metrics.ranking.EVAL_MEMORY_BYTES`).

    Returns:
      Metric name -> scalar. Wrap in ``jax.vmap`` over a leading axis of ``user_vecs`` to evaluate several embedding
      sets (e.g. every fairness level) in one pass.
    """
    if not isinstance(score, jax.tree_util.Partial):
        score = jax.tree_util.Partial(score)
    if isinstance(targets, UserItems) or isinstance(exclude, UserItems):
        return blocked_ranking_report(score, user_vecs, item_vecs, targets, exclude, groups, num_groups=num_groups,
                                      ks=ks, memory_bytes=memory_bytes)
    return _report(score, user_vecs, item_vecs, targets, exclude, groups, num_groups=num_groups, ks=tuple(ks))


def blocked_ranking_report(
    score: Callable,
    user_vecs: jax.Array,
    item_vecs: jax.Array,
    targets,
    exclude,
    groups,
    *,
    num_groups: int,
    ks: tuple[int, ...],
    memory_bytes: int | None = None,
) -> dict[str, jax.Array]:
    """:func:`full_ranking_report` over blocks of users, for data whose ``(U, I)`` arrays do not fit (module
    docstring): memory ``O(L b I)`` for blocks of ``b = block_rows(I, L, memory_bytes)`` users, never ``U I``.

    Args:
      user_vecs: ``(U, d)``, or ``(L, U, d)``: ``L`` embedding sets (fairness levels) evaluated side by side.
      targets, exclude: :class:`~jaxfair.data.dataset.UserItems` (or bool ``(U, I)``): sent to the device once as CSR,
        from which each block's rows are built there (:mod:`jaxfair.metrics.masks`).
      score, item_vecs, groups, num_groups, ks, memory_bytes: as in :func:`full_ranking_report`.

    Returns:
      Metric name -> scalar, or ``(L,)`` for ``(L, U, d)`` embeddings (what ``jax.vmap`` of
      :func:`full_ranking_report` gives).
    """
    if not isinstance(score, jax.tree_util.Partial):
        score = jax.tree_util.Partial(score)
    ks = tuple(int(k) for k in ks)
    user_vecs, item_vecs = jnp.asarray(user_vecs), jnp.asarray(item_vecs)
    sets = user_vecs.ndim == 3
    num_sets, num_users = (user_vecs.shape[0] if sets else 1), user_vecs.shape[-2]
    num_items = item_vecs.shape[0]
    groups = jnp.asarray(groups, jnp.int32)
    targets, exclude = SparseRows.from_sets(targets), SparseRows.from_sets(exclude)
    size = max(1, min(num_users, block_rows(num_items, num_sets, memory_bytes)))
    block = functools.partial(_block_sums, num_groups=num_groups, ks=ks, target_slots=targets.slots(size),
                              exclude_slots=exclude.slots(size))
    totals, counts = None, None
    for start in range(0, num_users, size):
        # A fixed block shape (one compilation): the last block is padded with user 0 at weight 0.
        rows = np.arange(start, start + size)
        weight = (rows < num_users).astype(np.float32)
        sums, block_counts = block(score, user_vecs, item_vecs, (targets.indptr, targets.indices),
                                   (exclude.indptr, exclude.indices), groups,
                                   np.where(rows < num_users, rows, 0).astype(np.int32), weight)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        counts = block_counts if counts is None else jax.tree_util.tree_map(jnp.add, counts, block_counts)
    present = np.asarray(totals.pop("present"), np.float64)
    out = {k: jnp.asarray(np.asarray(v, np.float64) / np.maximum(present, 1.0), jnp.float32)
           for k, v in totals.items()}
    gap = jax.vmap(pairwise_js_distance) if sets else pairwise_js_distance
    out.update({name: gap(normalize_exposure(value)) for name, value in counts.items()})
    return out


@functools.partial(jax.jit, static_argnames=("num_groups", "ks", "target_slots", "exclude_slots"))
def _block_sums(score, user_vecs, item_vecs, targets, exclude, groups, rows, weight, *, num_groups, ks, target_slots,
                exclude_slots):
    """One block of :func:`blocked_ranking_report`, the users ``rows (b,)`` of ``user_vecs`` ``([L,] U, d)``, their
    masks built here from the CSR ``targets`` and ``exclude`` (``(indptr, indices)``, :mod:`jaxfair.metrics.masks`):
    ``({each per-user metric summed over the users with a target, "present": the number of those users},
    {"dp@k"/"eopp@k": (G, I) exposure counts})``, each with a leading ``L`` axis for ``(L, U, d)`` embeddings. Rows
    of weight 0 (padding) count nowhere."""
    num_items = item_vecs.shape[0]
    relevant = gather_mask(*targets, rows, num_items, target_slots) & (weight > 0)[:, None]  # (b, I)
    masked = gather_mask(*exclude, rows, num_items, exclude_slots) & ~relevant
    groups = groups[rows]

    def one(vecs):
        scores = score(vecs[rows][:, None, :], item_vecs[None, :, :])
        scores = jnp.where(masked, -jnp.inf, scores)
        present = relevant.any(axis=1)
        sums = {name: jnp.sum(jnp.where(present, values, 0.0))
                for name, values in ranking_metrics(scores, relevant, ks).items()}
        sums["present"] = present.sum().astype(jnp.float32)
        counts = {}
        for k in ks:
            _, items = jax.lax.top_k(scores, k)  # one top_k per cut-off, as in topk_exposure_gaps
            hit = jnp.take_along_axis(relevant, items, axis=1).astype(jnp.float32)
            slots = jnp.broadcast_to(weight[:, None], items.shape)
            counts[f"dp@{k}"] = exposure_counts(items, groups, num_groups, item_vecs.shape[0], slots)
            counts[f"eopp@{k}"] = exposure_counts(items, groups, num_groups, item_vecs.shape[0], slots * hit)
        return sums, counts

    if user_vecs.ndim == 2:
        return one(user_vecs)
    if user_vecs.shape[0] == 1:  # no vmap over a size-1 axis (see cofair_evaluation.level_report)
        return jax.tree_util.tree_map(lambda x: x[None], one(user_vecs[0]))
    return jax.vmap(one)(user_vecs)


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
