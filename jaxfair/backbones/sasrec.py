"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), trained with per-position BPR.

Parameters: item table ``E`` ``(I + 1, d)`` (row ``I`` = padding, zero and masked), positions ``(L, d)`` and
``num_blocks`` causal self-attention blocks (see :mod:`jaxfair.backbones.transformer`), ``L = max_len``.

Training: each user's training items ``s_1..s_n`` (most recent ``L + 1``) give one row, left-padded to ``L``:
input ``s_1..s_{n-1}``, targets ``s_2..s_n`` (shift by one). At each non-pad position ``t`` with hidden state
``H_t`` (``(B, L, d)``), target ``i_t`` and one sampled negative ``j_t`` (never a known positive):

    loss = -sum_t w_t log sigmoid(<H_t, E_{i_t}> - <H_t, E_{j_t}>) / sum_t w_t

Evaluation: the user vector is ``H_L`` (last position, no dropout) of ``split.histories(stage, L)``: the training
items for ``"valid"``, followed by the validation item for ``"test"``. ``R(u, v) = <u, v>``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxfair.backbones import transformer
from jaxfair.backbones.base import Backbone, Batch, padded_batches
from jaxfair.backbones.common import position_negatives
from jaxfair.data.dataset import Split


@dataclasses.dataclass(frozen=True)
class Config(transformer.TransformerConfig):
    """SASRec hyper-parameters (:class:`~jaxfair.backbones.transformer.TransformerConfig`; blocks, heads and dropout
    follow the paper's MovieLens-1M setting: 2 blocks, 1 head, dropout 0.2). ``l2`` weighs the positive/negative item
    rows at weighted positions."""


def training_rows(split: Split, max_len: int) -> dict[str, np.ndarray]:
    """Shifted input/target windows, one row per user.

    Returns:
      ``{"user": (U,), "seq": (U, L), "pos": (U, L), "weight": (U, L)}``; ``pos`` is ``pad`` and weight 0 where
      the input slot is padding (the first training item is never a target).
    """
    pad = split.num_items
    hist = split.histories("train", max_len + 1)
    seq = hist[:, :-1]
    pos = np.where(seq == pad, pad, hist[:, 1:]).astype(np.int32)
    return {
        "user": np.arange(split.num_users, dtype=np.int32),
        "seq": seq,
        "pos": pos,
        "weight": (pos != pad).astype(np.float32),
    }


def backbone(config: Config = Config()) -> Backbone:
    """Build SASRec's pure functions.

    Args:
      config: the hyper-parameters.

    Returns:
      A :class:`Backbone`; params ``{"items": (I+1, d), "positions": (L, d), "encoder": flax variables}``,
      context ``{"valid": (U, L), "test": (U, L)}`` histories, and ``make_epoch`` batches (one row per user,
      ``B`` users per batch) with ``user`` ``(nb, B)`` and ``seq``/``pos``/``neg``/``weight`` ``(nb, B, L)``.
    """
    encoder = transformer.Encoder(
        dim=config.dim,
        num_blocks=config.num_blocks,
        num_heads=config.num_heads,
        ffn_dim=config.dim,
        dropout=config.dropout,
        causal=True,
        activation="relu",
    )

    def context(split):
        return {stage: jnp.asarray(split.histories(stage, config.max_len)) for stage in ("valid", "test")}

    def make_epoch(split: Split, rng: np.random.Generator, batch_size: int) -> Batch:
        rows = training_rows(split, config.max_len)
        rows["neg"] = position_negatives(split.known_positives(), rows["user"], rows["pos"], split.num_items, rng)
        return padded_batches(rows, batch_size, rng)

    return transformer.sequence_backbone("sasrec", encoder, config, 1, context, make_epoch)
