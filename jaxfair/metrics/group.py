"""Group fairness measures over user groups defined by one sensitive attribute (jax.numpy, pure, jit-able).

Groups are integer ids in ``[0, G)``. Every function is jitted, with sizes such as ``num_groups`` static. An empty
group yields NaN in per-group quantities and is ignored by the gaps and distances built on them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames="num_groups")
def group_means(values: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """Mean of ``values`` within each group.

    Args:
      values: float ``(n,)``.
      groups: int ``(n,)`` in ``[0, G)``.
      num_groups: ``G``.

    Returns:
      float ``(G,)``: ``sum_{i: g_i = g} v_i / |{i: g_i = g}|``, NaN for an empty group.
    """
    values = jnp.asarray(values, dtype=jnp.float32)
    sums = jax.ops.segment_sum(values, groups, num_segments=num_groups)
    counts = jax.ops.segment_sum(jnp.ones_like(values), groups, num_segments=num_groups)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)


@jax.jit
def max_gap(means: jax.Array) -> jax.Array:
    """``max - min`` of ``means`` ignoring NaN entries; NaN when all are NaN. Scalar."""
    return jnp.nanmax(means) - jnp.nanmin(means)


@functools.partial(jax.jit, static_argnames="num_groups")
def demographic_parity_gap(predicted: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """Largest difference between groups in the rate of positive predictions.

    Args:
      predicted: bool or 0/1 ``(n,)``.
      groups: int ``(n,)``; num_groups: ``G``.

    Returns:
      Scalar ``max_g P(pred = 1 | g) - min_g P(pred = 1 | g)`` over non-empty groups.
    """
    return max_gap(group_means(jnp.asarray(predicted, jnp.float32), groups, num_groups))


@functools.partial(jax.jit, static_argnames="num_groups")
def equal_opportunity_gap(
    predicted: jax.Array, labels: jax.Array, groups: jax.Array, num_groups: int
) -> jax.Array:
    """Largest difference between groups in the true positive rate.

    Args:
      predicted: bool or 0/1 ``(n,)``.
      labels: bool or 0/1 ``(n,)`` ground truth.
      groups: int ``(n,)``; num_groups: ``G``.

    Returns:
      Scalar ``max_g TPR_g - min_g TPR_g`` with ``TPR_g = P(pred = 1 | label = 1, g)``, over groups that have at
      least one positive label.
    """
    predicted = jnp.asarray(predicted, jnp.float32)
    positive = jnp.asarray(labels, jnp.float32)
    true_pos = jax.ops.segment_sum(predicted * positive, groups, num_segments=num_groups)
    num_pos = jax.ops.segment_sum(positive, groups, num_segments=num_groups)
    return max_gap(jnp.where(num_pos > 0, true_pos / jnp.maximum(num_pos, 1.0), jnp.nan))


@functools.partial(jax.jit, static_argnames=("num_groups", "num_items"))
def exposure_distribution(
    topk_items: jax.Array,
    groups: jax.Array,
    num_groups: int,
    num_items: int,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Each group's distribution of exposure over items.

    Args:
      topk_items: int ``(n, K)`` each user's recommended items, ids in ``[0, I)``.
      groups: int ``(n,)``.
      num_groups: ``G``; num_items: ``I``.
      weights: optional exposure weight of each slot, broadcastable to ``(n, K)`` (e.g. position weights
        ``1 / log2(p + 2)`` of shape ``(K,)``); default 1 per slot.

    Returns:
      float ``(G, I)``: row ``g`` is ``E_g[i] = sum of weights of slots of group g's users holding item i``,
      divided by its total so it sums to 1; a NaN row for a group with no exposure.
    """
    return normalize_exposure(exposure_counts(topk_items, groups, num_groups, num_items, weights))


def exposure_counts(topk_items: jax.Array, groups: jax.Array, num_groups: int, num_items: int,
                    weights: jax.Array | None = None) -> jax.Array:
    """The unnormalised half of :func:`exposure_distribution`: float32 ``(G, I)`` sums of slot weights per group and
    item. Counts of disjoint sets of users add up, so blocks of users can be counted one at a time."""
    topk_items = jnp.asarray(topk_items)
    w = jnp.ones(topk_items.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    w = jnp.broadcast_to(w, topk_items.shape)
    rows = jnp.broadcast_to(jnp.asarray(groups)[:, None], topk_items.shape)
    return jnp.zeros((num_groups, num_items), jnp.float32).at[rows, topk_items].add(w)


def normalize_exposure(exposure: jax.Array) -> jax.Array:
    """``(..., G, I)`` counts -> each row divided by its total; a NaN row where the total is 0."""
    total = exposure.sum(axis=-1, keepdims=True)
    return jnp.where(total > 0, exposure / jnp.where(total > 0, total, 1.0), jnp.nan)


@jax.jit
def js_distance(p: jax.Array, q: jax.Array) -> jax.Array:
    """Jensen-Shannon distance between two distributions over the last axis.

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` and base-2 logarithms, ``0 log 0 = 0``;
    the distance is ``sqrt(JS)`` in ``[0, 1]``: 0 for identical, 1 for disjoint supports, symmetric.

    Args:
      p, q: nonnegative ``(..., I)``; each is normalised to sum 1 here.

    Returns:
      ``(...)`` distances.
    """
    p = jnp.asarray(p, jnp.float32)
    q = jnp.asarray(q, jnp.float32)
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    m = 0.5 * (p + q)

    def kl_to_m(a):
        # Where a > 0, m >= a / 2 > 0, so the ratio is finite; a = 0 terms are 0 by convention.
        safe = jnp.where(a > 0, a / jnp.where(m > 0, m, 1.0), 1.0)
        return jnp.sum(jnp.where(a > 0, a * jnp.log2(safe), 0.0), axis=-1)

    divergence = 0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)
    return jnp.sqrt(jnp.clip(divergence, 0.0, 1.0))


@jax.jit
def pairwise_js_distance(dists: jax.Array) -> jax.Array:
    """Mean Jensen-Shannon distance over all pairs of groups ``g < h``.

    Args:
      dists: ``(G, I)`` per-group distributions, e.g. from :func:`exposure_distribution`; NaN rows (groups with no
        exposure) are left out.

    Returns:
      Scalar mean of ``js_distance(dists[g], dists[h])`` over pairs of valid groups (for two groups, their
      distance); NaN when fewer than two groups are valid.
    """
    dists = jnp.asarray(dists, jnp.float32)
    valid = ~jnp.isnan(dists).any(axis=1)
    clean = jnp.where(valid[:, None], dists, 1.0)  # placeholder rows keep the arithmetic finite
    distance = js_distance(clean[:, None, :], clean[None, :, :])  # (G, G)
    g = dists.shape[0]
    upper = jnp.triu(jnp.ones((g, g), bool), k=1)
    pairs = upper & valid[:, None] & valid[None, :]
    num_pairs = pairs.sum()
    return jnp.where(num_pairs > 0, jnp.sum(jnp.where(pairs, distance, 0.0)) / jnp.maximum(num_pairs, 1), jnp.nan)
