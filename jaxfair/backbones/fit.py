"""A backbone as the trainer fits it: BPR on the backbone's own batches (or another loss on the same batches),
validated under its split's validation protocol (``sampled`` on leave-one-out, ``full`` on a ratio split).

Used by the pipeline's backbone stage (``[backbone.train]``) and by the methods that train a table backbone with a
loss of their own (the regularised MF, :mod:`jaxfair.methods.fair_mf`).
"""

from __future__ import annotations

from typing import Callable

import jax

from jaxfair.backbones.base import Backbone
from jaxfair.metrics.ranking import split_ranking
from jaxfair.training import optim
from jaxfair.training.step import init_state, make_train_step
from jaxfair.training.trainer import Model, TrainConfig


def backbone_model(name: str, split, backbone: Backbone, context, train: TrainConfig, ks: tuple[int, ...],
                   eval_batch_size: int = 256, loss: Callable | None = None) -> Model:
    """The :class:`~jaxfair.training.trainer.Model` of ``backbone`` on ``split``.

    Args:
      name: checkpoint and log name (``"train"`` for the backbone stage).
      train: its loop and optimizer (``[backbone.train]``, or a method's own section).
      ks: the validation cut-offs (``[evaluate] ks``; ``train.monitor`` is one of the metrics at them).
      loss: ``(params, batch, key) -> (loss, metrics)`` replacing the backbone's own BPR loss, on the same batches.
    """
    tx = optim.make(train)
    loss = loss or (lambda p, b, k: backbone.loss(p, context, b, k))
    protocol = split.validation_protocol
    # One program for both tables (a graph backbone propagates once for both).
    embeddings_fn = jax.jit(lambda p: (backbone.user_embeddings(p, context, "valid"),
                                       backbone.item_embeddings(p, context)))

    def validate(params):
        score = jax.tree_util.Partial(backbone.score, params)  # traced: one compilation for every epoch
        user_vecs, item_vecs = embeddings_fn(params)
        metrics = split_ranking(score, {"valid": user_vecs}, item_vecs, split, (protocol,), tuple(ks),
                                eval_batch_size, ("valid",))
        return metrics[protocol]["valid"]

    return Model(
        name=name, train=train,
        init=lambda key: init_state(backbone.init(key, split), tx),
        step=make_train_step(loss, tx),
        batches=lambda rng: backbone.make_epoch(split, rng, train.batch_size),
        validate=validate,
    )
