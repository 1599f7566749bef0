"""A differentiable top-K exposure gap between user groups: the smooth counterpart of DP@K
(:mod:`jaxfair.metrics.exposure`), for training terms that target the exposure gap itself.

DP@K counts, per group, how often each item is in its users' top-K lists, normalises the counts to a distribution
``E_g`` and takes the Jensen-Shannon distance between the groups' distributions. Top-K membership is a step
function of the scores, so it has no gradient. Here it is replaced by a sigmoid around each user's own top-K
threshold,

    m_ui = sigmoid((s_ui - theta_u) / (tau sigma_u))                                     (soft top-K membership)
    theta_u = (s_u(K) + s_u(K+1)) / 2   (over the user's unmasked items),   sigma_u = std_i s_ui   (no gradient)

so an item well inside the top K counts about 1, one well outside about 0, and the items near the cut-off carry the
gradient. ``tau`` is in units of the user's own score spread, so rescaling the scores changes nothing. Masked items
(the user's known positives) have membership exactly 0, as they are never recommended. The group distributions are

    E_g[i] = (sum_{u in g} w_u m_ui + eps) / sum_j (sum_{u in g} w_u m_uj + eps)

(``eps`` keeps every log finite) and the gap is the Jensen-Shannon *divergence* (base 2, in ``[0, 1]``) averaged over
pairs of groups that have any weight. The divergence, not its square root (the distance that DP@K reports), because
the square root's gradient is unbounded where the groups agree.

Cost. Scoring every item is one matrix product, but differentiating through ``(users, items)`` sigmoids is most of a
training step's time. Only items near the cut-off have membership visibly above 0, so :func:`candidate_membership`
scores every item without gradient, keeps each user's top ``candidates`` unmasked items (their membership is computed
with gradient) and treats the rest as 0. On CPU the top-``candidates`` selection is the costly part (``top_k`` time
grows with ``candidates``), so the default is small: 20 for K = 10 at ``tau = 0.05``. The test against the dense
form on random normal scores bounds what the dropped items would have added.

Memory. The masks are bool ``(N, I)`` for the ``N`` users of a batch. A caller whose ``(U, I)`` mask of every user
does not fit (:data:`jaxfair.data.dataset.DENSE_LIMIT`) keeps the sets on the device
(:class:`jaxfair.metrics.masks.SparseRows`) and builds each batch's rows from them (Cofair's ``batch_users``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-8


def _top_candidates(scores: jax.Array, exclude: jax.Array, k: int, candidates: int):
    """Per user (no gradient): the top ``max(candidates, k + 1)`` unmasked items ``(..., M)`` and the cut-off
    ``theta`` halfway between the ``k``-th and ``k+1``-th score."""
    masked = jnp.where(exclude, -jnp.inf, jax.lax.stop_gradient(scores))
    # The barrier keeps XLA on CPU from rewriting the sliced top_k into a full sort of every row (34x slower at
    # shape (5, 943, 1682)).
    top, items = jax.lax.optimization_barrier(jax.lax.top_k(masked, max(candidates, k + 1)))
    return items, 0.5 * (top[..., k - 1] + top[..., k])


def soft_topk_membership(scores: jax.Array, exclude: jax.Array, k: int, temperature: float) -> jax.Array:
    """Smooth top-``k`` indicator of every item (the dense form, the reference for :func:`candidate_membership`):
    ``(..., I) -> (..., I)`` in ``[0, 1]``, 0 on excluded items.

    Args:
      scores: ``(..., I)`` scores of every item.
      exclude: bool, broadcastable to ``scores``: items never recommended (known positives).
      k: the cut-off (static); the user needs more than ``k`` unmasked items.
      temperature: ``tau > 0``, in units of the standard deviation of the user's scores over all items.
    """
    exclude = jnp.broadcast_to(exclude, scores.shape)
    _, threshold = _top_candidates(scores, exclude, k, k + 1)
    spread = jnp.std(jax.lax.stop_gradient(scores), axis=-1) + 1e-6
    z = (scores - threshold[..., None]) / (temperature * spread[..., None])
    return jnp.where(exclude, 0.0, jax.nn.sigmoid(z))


def candidate_membership(user_vecs: jax.Array, item_vecs: jax.Array, exclude: jax.Array, k: int, temperature: float,
                         candidates: int) -> tuple[jax.Array, jax.Array]:
    """Soft top-``k`` membership of each user's top ``candidates`` items under inner-product scores.

    Args:
      user_vecs: ``(..., N, d)``; item_vecs: ``(I, d)``; exclude: bool ``(N, I)``.
      k, candidates: static, ``k < candidates <= I``.

    Returns:
      ``(membership (..., N, M), items (..., N, M))`` with ``M = max(candidates, k + 1)``; membership is 0 where the
      candidate is masked (a user with fewer than ``M`` unmasked items).
    """
    item_vecs = jax.lax.stop_gradient(item_vecs)
    fixed = jax.lax.stop_gradient(user_vecs)
    scores = jnp.einsum("...nd,id->...ni", fixed, item_vecs)
    exclude = jnp.broadcast_to(exclude, scores.shape)
    items, threshold = _top_candidates(scores, exclude, k, candidates)
    # The std of <u, v_i> over all items is sqrt(u^T C u), C the items' covariance: no pass over (N, I) needed.
    centred = item_vecs - jnp.mean(item_vecs, axis=0)
    cov = centred.T @ centred / item_vecs.shape[0]
    spread = jnp.sqrt(jnp.maximum(jnp.einsum("...nd,de,...ne->...n", fixed, cov, fixed), 0.0)) + 1e-6
    chosen = jnp.sum(user_vecs[..., None, :] * item_vecs[items], axis=-1)  # (..., N, M), with gradient
    z = (chosen - threshold[..., None]) / (temperature * spread[..., None])
    masked = jnp.take_along_axis(exclude, items, axis=-1)
    return jnp.where(masked, 0.0, jax.nn.sigmoid(z)), items


def group_exposure(membership: jax.Array, items: jax.Array, groups: jax.Array, weight: jax.Array, num_groups: int,
                   num_items: int) -> tuple[jax.Array, jax.Array]:
    """Each group's smoothed exposure distribution over items.

    Args:
      membership: ``(..., N, M)`` soft membership of the items ``items`` (int ``(..., N, M)``); for the dense form,
        ``M = I`` and ``items`` is ``arange(I)`` broadcast.
      groups: int ``(N,)`` in ``[0, G)``; weight: ``(N,)`` user weights (0 leaves a user out).

    Returns:
      ``(dists (..., G, I), mass (G,))``: the normalised exposure ``E_g`` and each group's total user weight.
    """
    onehot = jax.nn.one_hot(groups, num_groups, dtype=membership.dtype) * weight[:, None]  # (N, G)
    lead = membership.shape[:-2]
    flat_m = membership.reshape((-1,) + membership.shape[-2:])
    flat_i = jnp.broadcast_to(items, membership.shape).reshape(flat_m.shape)

    def one(m, i):  # (N, M) -> (G, I): sum over users of w_u m_ui, per group
        contrib = onehot[:, :, None] * m[:, None, :]  # (N, G, M)
        cols = jnp.broadcast_to(i[:, None, :], contrib.shape)
        rows = jnp.broadcast_to(jnp.arange(num_groups)[None, :, None], contrib.shape)
        return jnp.zeros((num_groups, num_items), m.dtype).at[rows, cols].add(contrib)

    exposure = jax.vmap(one)(flat_m, flat_i).reshape(lead + (num_groups, num_items)) + EPS
    return exposure / jnp.sum(exposure, axis=-1, keepdims=True), jnp.sum(onehot, axis=0)


def js_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """Jensen-Shannon divergence, base 2, of strictly positive distributions over the last axis: ``(...)``."""
    m = 0.5 * (p + q)
    return 0.5 * jnp.sum(p * jnp.log2(p / m), axis=-1) + 0.5 * jnp.sum(q * jnp.log2(q / m), axis=-1)


def exposure_gap(dists: jax.Array, mass: jax.Array) -> jax.Array:
    """Mean JS divergence over pairs of groups: ``(..., G, I), (G,) -> (...)``; pairs with a group of zero mass are
    left out, and the gap is 0 when no pair is left."""
    num_groups = dists.shape[-2]
    total, pairs = jnp.zeros(dists.shape[:-2], dists.dtype), 0.0
    for g in range(num_groups):
        for h in range(g + 1, num_groups):
            present = (mass[g] > 0) & (mass[h] > 0)
            total = total + jnp.where(present, js_divergence(dists[..., g, :], dists[..., h, :]), 0.0)
            pairs = pairs + present.astype(dists.dtype)
    return total / jnp.maximum(pairs, 1.0)


def soft_exposure_gap(user_vecs: jax.Array, item_vecs: jax.Array, exclude: jax.Array, groups: jax.Array,
                      weight: jax.Array, num_groups: int, k: int, temperature: float, candidates: int) -> jax.Array:
    """The smooth DP@K gap of inner-product recommendations: ``(..., N, d) -> (...)`` (see the module docstring)."""
    membership, items = candidate_membership(user_vecs, item_vecs, exclude, k, temperature, candidates)
    dists, mass = group_exposure(membership, items, groups, weight, num_groups, item_vecs.shape[0])
    return exposure_gap(dists, mass)
