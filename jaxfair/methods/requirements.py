"""What every personalised-fairness method shares: sampled-protocol metrics of every fairness requirement in one
``jax.vmap``, and fitting a method on frozen backbone embeddings with the shared trainer.

A *method* here is anything with ``embed(params, user_vecs (U, d), sensitive (M,) bool, config) -> (U, d)`` (AFRL,
the FFVAE baseline, an SM filter that ignores ``sensitive``), trained on BPR rows of the split.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfair.backbones.base import padded_batches
from jaxfair.data.sampling import bpr_pairs
from jaxfair.metrics.ranking import ranking_metrics
from jaxfair.training.step import make_epoch_fn
from jaxfair.training.trainer import FitResult, Task, TrainConfig, fit


def _candidates(item_vecs, targets, negatives):
    candidates = jnp.concatenate([targets[:, None], negatives], axis=1)
    return item_vecs[candidates], jnp.zeros(candidates.shape, bool).at[:, 0].set(True)  # (U, 1+N, d), (U, 1+N)


def _sampled_means(score, u_star, cand_vecs, relevant, ks):
    scores = score(u_star[:, None, :], cand_vecs)
    return {k: jnp.mean(v) for k, v in ranking_metrics(scores, relevant, ks).items()}


@functools.partial(jax.jit, static_argnames=("config", "ks", "embed"))
def requirement_metrics(params, score, user_vecs, item_vecs, targets, negatives, requirements, *, config, ks, embed):
    """Sampled-protocol metrics of every requirement in one vmapped pass.

    Args:
      params: the method's parameters; score: the backbone scorer as a ``jax.tree_util.Partial`` (its parameters
        are traced, so one compilation serves every call).
      user_vecs: ``(U, d)`` backbone user embeddings; item_vecs: ``(I, d)``.
      targets: int ``(U,)``; negatives: int ``(U, N)``; requirements: bool ``(K, M)``.
      config: the method's (hashable) config; ks: cut-offs; embed: the method's serving function.

    Returns:
      metric name -> ``(K,)`` mean over users.
    """
    cand_vecs, relevant = _candidates(item_vecs, targets, negatives)
    return jax.vmap(
        lambda sensitive: _sampled_means(score, embed(params, user_vecs, sensitive, config), cand_vecs, relevant, ks)
    )(requirements)


@functools.partial(jax.jit, static_argnames=("ks",))
def embedding_metrics(score, fair, item_vecs, targets, negatives, *, ks):
    """Sampled-protocol metrics of precomputed embedding sets ``fair (K, U, d)`` in one vmapped pass -> ``(K,)``."""
    cand_vecs, relevant = _candidates(item_vecs, targets, negatives)
    return jax.vmap(lambda u_star: _sampled_means(score, u_star, cand_vecs, relevant, ks))(fair)


def fit_method(
    split,
    *,
    init_state: Callable,
    train_step: Callable,
    embed: Callable,
    config,
    requirements,
    score,
    valid_user_vecs,
    item_vecs,
    seed: int,
    out_dir=None,
    log=print,
    name: str,
    ks: tuple[int, ...] = (10,),
) -> FitResult:
    """Fit a method with the shared trainer: BPR rows of ``split`` batched by ``config.batch_size``, one jitted scan
    per epoch, early stopping on the mean validation NDCG@``ks[0]`` over ``requirements`` (bool ``(K, M)``).

    ``config`` must carry ``epochs``, ``batch_size``, ``learning_rate`` and ``patience``; ``init_state(key)`` and
    ``train_step(state, batch, key)`` are the method's own.
    """
    if not isinstance(score, jax.tree_util.Partial):
        score = jax.tree_util.Partial(score)
    valid_targets, valid_negatives = jnp.asarray(split.valid_items), jnp.asarray(split.valid_negatives)
    requirements = jnp.asarray(requirements)
    known = split.positive_matrix()

    def validate(params):
        metrics = requirement_metrics(
            params, score, valid_user_vecs, item_vecs, valid_targets, valid_negatives, requirements,
            config=config, ks=tuple(ks), embed=embed,
        )
        return {k: float(jnp.mean(v)) for k, v in metrics.items()}

    def epoch_batches(rng):
        return padded_batches(bpr_pairs(split, rng, known), config.batch_size, rng)

    task = Task(init_state=init_state, epoch_batches=epoch_batches, run_epoch=make_epoch_fn(train_step), validate=validate)
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        patience=config.patience, monitor=f"ndcg@{ks[0]}", seed=seed,
    )
    return fit(task, train_config, out_dir, log=log, name=name)
