"""DeepModel: a Wide & Deep style scorer (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016)
over learned user and item embeddings, trained with BPR.

Parameters: user table ``(U, d)``, item table ``(I, d)`` and an MLP with hidden sizes ``h_1, ..., h_n`` (ReLU).
For ``u (..., d)`` and ``v (..., d)`` broadcast to a common shape ``(..., d)``:

    wide(u, v) = <u, v>
    deep(u, v) = w_out^T relu(... relu(W_1 [u; v; u * v] + b_1) ...) + b_out
    R(u, v)    = wide(u, v) + deep(u, v)                                     -> (...)

The first layer is stored as three blocks, ``W_1 [u; v; u*v] = W_u u + W_v v + W_uv (u*v)``: the same function as
the concatenation, but ``W_u u`` is computed once per user and ``W_v v`` once per item before broadcasting, which
matters when scoring all ``(U, I)`` pairs. ``score`` only needs vectors, so it works on any user vector (e.g. a fair
``u*`` produced by a fairness method).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfair.backbones.base import Backbone, dot_score
from jaxfair.backbones.common import check_dim_l2, init_user_item_tables, pair_epoch, table_pair_loss


@dataclasses.dataclass(frozen=True)
class Config:
    """DeepModel hyper-parameters.

    Attributes:
      dim: embedding size ``d``.
      l2: weight of the squared L2 norm of the user/positive/negative embedding rows of a batch (MLP weights are
        not penalised).
      hidden: hidden layer sizes of the deep part, each > 0, at least one.
    """

    dim: int = 64
    l2: float = 1e-6
    hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self):
        check_dim_l2(self.dim, self.l2)
        if len(self.hidden) == 0 or min(self.hidden) <= 0:
            raise ValueError(f"hidden must be a non-empty list of positive sizes, got {self.hidden}")


class DeepTower(nn.Module):
    """The deep part: ``(u (..., d), v (..., d)) -> (...)``, broadcasting ``u`` against ``v``."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        # Split first layer: equal to Dense on concat([u, v, u*v]) but the u- and v-terms are computed before the
        # broadcast, so only the u*v term costs (..., d) x (d, h_1) on the broadcast shape.
        h = (
            nn.Dense(self.hidden[0], name="first_u")(u)
            + nn.Dense(self.hidden[0], use_bias=False, name="first_v")(v)
            + nn.Dense(self.hidden[0], use_bias=False, name="first_uv")(u * v)
        )
        h = nn.relu(h)
        for k, size in enumerate(self.hidden[1:]):
            h = nn.relu(nn.Dense(size, name=f"hidden_{k + 1}")(h))
        return nn.Dense(1, name="out")(h)[..., 0]


def backbone(config: Config = Config()) -> Backbone:
    """Build DeepModel's pure functions.

    Args:
      config: the hyper-parameters.

    Returns:
      A :class:`Backbone`; params ``{"user": (U, d), "item": (I, d), "mlp": flax variables}``, empty context,
      ``user``/``pos``/``neg``/``weight`` batches ``(num_batches, B)``.
    """
    tower = DeepTower(hidden=tuple(config.hidden))

    def init(key, split):
        k_tables, k_mlp = jax.random.split(key)
        params = init_user_item_tables(k_tables, split, config.dim)
        dummy = jnp.zeros((1, config.dim), jnp.float32)
        params["mlp"] = tower.init(k_mlp, dummy, dummy)
        return params

    def score(params, user_vecs, item_vecs):
        # No explicit broadcast: both parts contain the u * v term, so each already has the broadcast shape (...),
        # and leaving u and v unbroadcast lets the tower apply W_u and W_v once per distinct vector.
        return dot_score(user_vecs, item_vecs) + tower.apply(params["mlp"], user_vecs, item_vecs)

    return Backbone(
        name="deepmodel",
        init=init,
        context=lambda split: {},
        make_epoch=pair_epoch,
        loss=table_pair_loss(score, config.l2),
        user_embeddings=lambda params, context, stage="valid": params["user"],
        item_embeddings=lambda params, context: params["item"],
        score=score,
    )
