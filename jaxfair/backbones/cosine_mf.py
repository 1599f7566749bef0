"""Cosine matrix factorisation: the MF backbone that ITFR is built on (a matrix factorisation whose score is a
temperature-scaled cosine similarity, as in contrastive recommenders), trained here with BPR (Rendle et al., "BPR:
Bayesian Personalized Ranking from Implicit Feedback", UAI 2009).

Parameters: user table ``(U, d)`` and item table ``(I, d)``. Score

    R(u, v) = cos(u, v) / tau = <u, v> / (||u|| ||v|| tau),

with temperature ``tau`` (0.1 by default), so scores lie in ``[-1/tau, 1/tau]``. The norm is computed as
``sqrt(||x||^2 + 1e-12)`` so a zero vector gets a zero (not NaN) score and gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxfair.backbones.base import Backbone
from jaxfair.backbones.common import check_dim_l2, table_backbone


@dataclasses.dataclass(frozen=True)
class Config:
    """Cosine-MF hyper-parameters.

    Attributes:
      dim: embedding size ``d``.
      l2: weight of the squared L2 norm of the rows a batch uses. 0 by default: the score ignores the norms, so the
        penalty would only shrink the vectors, which inflates the gradient of the cosine (it scales as ``1/||x||``).
      tau: temperature dividing the cosine (> 0).
    """

    dim: int = 64
    l2: float = 0.0
    tau: float = 0.1

    def __post_init__(self):
        check_dim_l2(self.dim, self.l2)
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


def normalize(x: jax.Array) -> jax.Array:
    """``x / ||x||`` over the last axis, safe at zero."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def backbone(config: Config = Config()) -> Backbone:
    """Build cosine MF's pure functions.

    Args:
      config: the hyper-parameters.

    Returns:
      A :class:`Backbone`; params ``{"user": (U, d), "item": (I, d)}`` (the embeddings are returned unnormalised;
      ``score`` normalises), empty context, ``user``/``pos``/``neg``/``weight`` batches ``(num_batches, B)``.
    """

    def score(params, user_vecs, item_vecs):
        del params
        return jnp.sum(normalize(user_vecs) * normalize(item_vecs), axis=-1) / config.tau

    return table_backbone("cosine_mf", config.dim, config.l2, score)
