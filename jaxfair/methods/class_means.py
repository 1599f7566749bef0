"""Attacker-free fairness terms for AFRL and Cofair: the between-class share (``mean_gap``) and the linear share
(``linear_share``).

For an attribute with class weights ``p_k`` and class means ``mu_k`` of an embedding, the between-class scatter
``sum_k p_k ||mu_k - mu||^2`` is, for two classes, exactly the largest between-class variance a unit direction sees
(the scatter matrix has rank one); for more classes it bounds every direction. Divided by the total variance it is
a share in ``[0, 1]``, unchanged by rescaling the embedding, and it needs no trained attacker, so there is no attacker
lag to exploit and no encoding to flip. It is not a linear probe's best achievable separation: that divides each
direction's between-class variance by the variance *along that direction* (Fisher's ratio), so a filter can lower this
share by adding variance in directions that carry no attribute, which a probe ignores.

:func:`linear_share` closes that gap. It divides by the total covariance instead of the total variance, ``V =
tr(S_t^{-1} S_b)`` (Pillai's trace): for two classes it is the largest share of variance between the class means that
*any* direction sees, ``max_a a^T S_b a / a^T S_t a``, which is also the R^2 of the least-squares regression of the
class indicator on the embedding, i.e. what the best linear probe fitted by least squares explains. It is unchanged
by any invertible linear map of the embedding, so it cannot be lowered by adding variance elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _class_moments(embeddings, labels, weight, num_classes):
    """Weighted class statistics of ``(T, N, d)`` embeddings: ``counts (K,)`` (class weights), ``total_weight``,
    ``share (K,)`` (``p_k``), ``class_means (T, K, d)`` (``mu_k``; 0 for a class without weight) and ``mean (T, d)``
    (``mu = sum_k p_k mu_k``)."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=embeddings.dtype) * weight[:, None]  # (N, K)
    counts = jnp.sum(onehot, axis=0)
    total_weight = jnp.maximum(jnp.sum(counts), 1e-12)
    share = counts / total_weight
    class_means = jnp.einsum("nk,tnd->tkd", onehot, embeddings) / jnp.maximum(counts, 1e-12)[None, :, None]
    mean = jnp.einsum("k,tkd->td", share, class_means)
    return counts, total_weight, share, class_means, mean


def between_class_share(embeddings: jax.Array, labels: jax.Array, weight: jax.Array, num_classes: int) -> jax.Array:
    """The share of the (weighted) variance between the class means, per leading slice: ``(T, N, d) -> (T,)``
    (``T`` is Cofair's levels; AFRL passes one slice).

    ``S_t = sum_k p_k ||mu_k - mu||^2 / (sum_u w_u ||e_t(u) - mu||^2 / sum_u w_u)`` with ``p_k`` the weight share of
    class ``k``, ``mu_k`` its weighted mean and ``mu = sum_k p_k mu_k`` the overall weighted mean; classes without
    weight drop out. 0 when every class has the same mean, 1 when every user sits on their class mean.
    """
    counts, total_weight, share, class_means, mean = _class_moments(embeddings, labels, weight, num_classes)
    between = jnp.einsum("k,tk->t", share, jnp.sum((class_means - mean[:, None]) ** 2, axis=-1))
    total = jnp.einsum("n,tn->t", weight, jnp.sum((embeddings - mean[:, None]) ** 2, axis=-1)) / total_weight
    return between / jnp.maximum(total, 1e-12)


def linear_share(
    embeddings: jax.Array, labels: jax.Array, weight: jax.Array, num_classes: int, ridge: float = 1e-2
) -> jax.Array:
    """Pillai's trace of the classes, scaled to ``[0, 1]``, per leading slice: ``(T, N, d) -> (T,)``.

    ``V_t = tr((S_t + r I)^{-1} S_b) / min(K' - 1, d)`` with, over the weighted users, ``S_t = sum_u w_u (e_u - mu)
    (e_u - mu)^T / sum_u w_u`` the total covariance, ``S_b = sum_k p_k (mu_k - mu)(mu_k - mu)^T`` the between-class
    scatter (``p_k``, ``mu_k``, ``mu`` as in :func:`between_class_share`), ``K'`` the number of classes with weight
    and ``r = ridge * tr(S_t) / d`` a ridge relative to the mean variance (it keeps the inverse finite when the batch
    has fewer users than dimensions, and makes ``V`` shrink towards ``S_b``'s share of the isotropic part). Without
    the ridge, ``V`` is the sum of squared canonical correlations between the embedding and the class indicator
    divided by their number: 0 when every class has the same mean, 1 when the classes are linearly separable with
    no spread along the separating directions.
    """
    counts, total_weight, share, class_means, mean = _class_moments(embeddings, labels, weight, num_classes)
    centred = embeddings - mean[:, None]  # (T, N, d)
    total = jnp.einsum("n,tni,tnj->tij", weight, centred, centred) / total_weight  # (T, d, d)
    gaps = class_means - mean[:, None]  # (T, K, d)
    between = jnp.einsum("k,tki,tkj->tij", share, gaps, gaps)
    dim = embeddings.shape[-1]
    scale = ridge * jnp.trace(total, axis1=-2, axis2=-1) / dim  # (T,)
    regularised = total + (scale[:, None, None] + 1e-12) * jnp.eye(dim, dtype=embeddings.dtype)
    pillai = jnp.trace(jnp.linalg.solve(regularised, between), axis1=-2, axis2=-1)
    present = jnp.sum(counts > 0)
    return pillai / jnp.maximum(jnp.minimum(present - 1, dim), 1).astype(embeddings.dtype)
