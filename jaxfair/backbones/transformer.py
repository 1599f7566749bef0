"""The self-attention encoder shared by SASRec (causal) and BERT4Rec (bidirectional), with its embedding layer,
per-position BPR loss, evaluation read-out and config checks.

Input: item ids ``seq`` ``(B, L)``, left-padded with ``pad_id``. With item table ``E`` (row ``pad_id`` zero and
masked), learned positions ``P`` ``(L, d)`` and ``m = [seq != pad_id]``:

    x^(0) = dropout(sqrt(d) * E[seq] * m + P)                                        (B, L, d)
    for each block b:   (pre-norm; a padded slot's output is zeroed, it carries no information)
        x = x + dropout(MHA(LN(x), mask))
        x = x + dropout(W_2 act(W_1 LN(x) + b_1) + b_2)
        x = x * m
    H = LN(x)                                                                          (B, L, d)

``mask`` lets query ``t`` attend key ``s`` when ``m_s`` (and ``s <= t`` if causal); every position also attends to
itself, so fully padded rows never take a softmax over nothing. Attention uses Flax Linen
``MultiHeadDotProductAttention``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfair.backbones.base import Backbone, Batch, dot_score
from jaxfair.backbones.common import bpr_with_l2, check_dim_l2, init_table

# Users encoded at once when reading out embeddings; bounds the (chunk, heads, L, L) attention tensor.
EVAL_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The settings SASRec and BERT4Rec share (each subclass sets its own defaults for heads and dropout).

    Attributes:
      dim: embedding size ``d``.
      l2: weight of the squared L2 norm of the item rows a position's loss uses.
      max_len: window ``L``, at least 2.
      num_blocks: self-attention blocks.
      num_heads: attention heads (must divide ``dim``).
      dropout: dropout rate on embeddings, attention weights and residual branches (training only).
    """

    dim: int = 64
    l2: float = 1e-6
    max_len: int = 100
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2

    def __post_init__(self):
        check_dim_l2(self.dim, self.l2)
        if self.max_len < 2:
            raise ValueError(f"max_len must be at least 2, got {self.max_len}")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"num_heads must be positive and divide dim={self.dim}, got {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class Encoder(nn.Module):
    """Stack of pre-norm self-attention blocks: ``(x (B, L, d), valid (B, L) bool) -> (B, L, d)``."""

    dim: int
    num_blocks: int
    num_heads: int
    ffn_dim: int
    dropout: float
    causal: bool
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool) -> jax.Array:
        length = x.shape[-2]
        allowed = valid[..., None, :]  # (B, 1, L): keys that hold an item
        if self.causal:
            allowed = allowed & jnp.tril(jnp.ones((length, length), bool))
        allowed = allowed | jnp.eye(length, dtype=bool)
        mask = allowed[..., None, :, :]  # head axis
        act = nn.relu if self.activation == "relu" else nn.gelu
        keep = valid[..., None].astype(x.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        for b in range(self.num_blocks):
            h = nn.LayerNorm(name=f"attn_norm_{b}")(x)
            h = nn.MultiHeadDotProductAttention(
                num_heads=self.num_heads, qkv_features=self.dim, dropout_rate=self.dropout, name=f"attn_{b}"
            )(h, h, mask=mask, deterministic=deterministic)
            x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
            h = nn.LayerNorm(name=f"ffn_norm_{b}")(x)
            h = nn.Dense(self.dim, name=f"ffn_out_{b}")(act(nn.Dense(self.ffn_dim, name=f"ffn_in_{b}")(h)))
            x = (x + nn.Dropout(self.dropout)(h, deterministic=deterministic)) * keep
        return nn.LayerNorm(name="final_norm")(x)


def init_params(key: jax.Array, encoder: Encoder, table_rows: int, pad_id: int, max_len: int) -> dict:
    """``{"items": (table_rows, d), "positions": (max_len, d), "encoder": flax variables}``; the pad row is zero."""
    k_items, k_pos, k_enc = jax.random.split(key, 3)
    dummy = jnp.zeros((1, max_len, encoder.dim), jnp.float32)
    return {
        "items": init_table(k_items, table_rows, encoder.dim, zero_rows=(pad_id,)),
        "positions": init_table(k_pos, max_len, encoder.dim),
        "encoder": encoder.init(k_enc, dummy, jnp.ones((1, max_len), bool), deterministic=True),
    }


def encode(params: dict, encoder: Encoder, seq: jax.Array, pad_id: int, key: jax.Array | None = None) -> jax.Array:
    """Hidden states ``(B, L, d)`` of ``seq`` ``(B, L)``; dropout is on iff ``key`` is given (training)."""
    valid = seq != pad_id
    # Multiplying by the mask (not only zero-initialising the pad row) keeps the pad row out of every gradient.
    x = params["items"][seq] * (jnp.sqrt(float(encoder.dim)) * valid[..., None]) + params["positions"][: seq.shape[-1]]
    if key is None:
        return encoder.apply(params["encoder"], x, valid, deterministic=True)
    return encoder.apply(params["encoder"], x, valid, deterministic=False, rngs={"dropout": key})


def last_hidden(params: dict, encoder: Encoder, seqs: jax.Array, pad_id: int) -> jax.Array:
    """Deterministic hidden state at the last position of every row of ``seqs`` ``(U, L)`` -> ``(U, d)``.

    Rows are encoded ``EVAL_CHUNK`` at a time (``lax.map``) so memory stays bounded for thousands of users.
    """
    rows, length = seqs.shape
    chunks = -(-rows // EVAL_CHUNK)
    padded = jnp.concatenate([seqs, jnp.full((chunks * EVAL_CHUNK - rows, length), pad_id, seqs.dtype)])
    out = jax.lax.map(lambda s: encode(params, encoder, s, pad_id)[:, -1], padded.reshape(chunks, EVAL_CHUNK, length))
    return out.reshape(chunks * EVAL_CHUNK, -1)[:rows]


def sequence_loss(params: dict, encoder: Encoder, batch: Batch, pad_id: int, l2: float, key: jax.Array):
    """Per-position BPR: ``<H_t, E[pos_t]>`` against ``<H_t, E[neg_t]>`` weighted by ``weight`` ``(B, L)``.

    Batch keys: ``seq``, ``pos``, ``neg`` int ``(B, L)``, ``weight`` float ``(B, L)``. The L2 term covers the
    positive and negative item rows at weighted positions.
    """
    hidden = encode(params, encoder, batch["seq"], pad_id, key)
    pos = params["items"][batch["pos"]]
    neg = params["items"][batch["neg"]]
    return bpr_with_l2(dot_score, hidden, pos, neg, batch["weight"], l2, (pos, neg))



def sequence_backbone(name: str, encoder: Encoder, config, special_rows: int, context, make_epoch) -> Backbone:
    """The :class:`Backbone` of a self-attention model whose item table has ``special_rows`` rows after the ``I``
    items (padding first, then e.g. BERT4Rec's ``[mask]``).

    The model supplies its own ``context`` (the evaluation histories) and ``make_epoch`` (its training rows); init,
    per-position BPR loss, last-position read-out, item table and dot-product score are shared.
    """

    def pad_of(params):
        return params["items"].shape[0] - special_rows

    def init(key, split):
        return init_params(key, encoder, split.num_items + special_rows, split.num_items, config.max_len)

    def loss(params, context, batch, key):
        del context
        return sequence_loss(params, encoder, batch, pad_of(params), config.l2, key)

    def user_embeddings(params, context, stage="valid"):
        return last_hidden(params, encoder, context[stage], pad_of(params))

    def item_embeddings(params, context):
        del context
        return params["items"][:-special_rows]

    return Backbone(name=name, init=init, context=context, make_epoch=make_epoch, loss=loss,
                    user_embeddings=user_embeddings, item_embeddings=item_embeddings,
                    score=lambda params, user_vecs, item_vecs: dot_score(user_vecs, item_vecs))
