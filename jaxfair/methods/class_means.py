"""The between-class share behind the ``mean_gap`` adversaries of AFRL and Cofair: an attacker-free fairness term.

For an attribute with class weights ``p_k`` and class means ``mu_k`` of an embedding, the between-class scatter
``sum_k p_k ||mu_k - mu||^2`` is, for two classes, exactly the largest between-class variance a unit direction sees
(the scatter matrix has rank one); for more classes it bounds every direction. Divided by the total variance it is
a share in ``[0, 1]``, unchanged by rescaling the embedding, and it needs no trained attacker, so there is no attacker
lag to exploit and no encoding to flip. It is not a linear probe's best achievable separation: that divides each
direction's between-class variance by the variance *along that direction* (Fisher's ratio), so a filter can lower this
share by adding variance in directions that carry no attribute, which a probe ignores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def between_class_share(embeddings: jax.Array, labels: jax.Array, weight: jax.Array, num_classes: int) -> jax.Array:
    """The share of the (weighted) variance between the class means, per leading slice: ``(T, N, d) -> (T,)``
    (``T`` is Cofair's levels; AFRL passes one slice).

    ``S_t = sum_k p_k ||mu_k - mu||^2 / (sum_u w_u ||e_t(u) - mu||^2 / sum_u w_u)`` with ``p_k`` the weight share of
    class ``k``, ``mu_k`` its weighted mean and ``mu = sum_k p_k mu_k`` the overall weighted mean; classes without
    weight drop out. 0 when every class has the same mean, 1 when every user sits on their class mean.
    """
    onehot = jax.nn.one_hot(labels, num_classes, dtype=embeddings.dtype) * weight[:, None]  # (N, K)
    counts = jnp.sum(onehot, axis=0)  # (K,)
    total_weight = jnp.maximum(jnp.sum(counts), 1e-12)
    share = counts / total_weight
    class_means = jnp.einsum("nk,tnd->tkd", onehot, embeddings) / jnp.maximum(counts, 1e-12)[None, :, None]
    mean = jnp.einsum("k,tkd->td", share, class_means)
    between = jnp.einsum("k,tk->t", share, jnp.sum((class_means - mean[:, None]) ** 2, axis=-1))
    total = jnp.einsum("n,tn->t", weight, jnp.sum((embeddings - mean[:, None]) ** 2, axis=-1)) / total_weight
    return between / jnp.maximum(total, 1e-12)
