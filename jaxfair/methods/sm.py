"""SM, "separate models": one adversarially trained attribute filter per fairness requirement (Li et al.,
"Towards Personalized Fairness based on Causal Notion", SIGIR 2021), the brute-force baseline that AFRL replaces.

With ``M`` sensitive attributes there are ``2^M - 1`` non-empty requirements ``S``. For each one SM trains, from
scratch and on its own, a filter ``f_S`` (an MLP ``d -> d``) on the frozen backbone user embedding ``u``:
``u*_S = f_S(u)``. The filter plays a min-max game against discriminators ``D_i`` (2-layer MLPs), one per attribute
``i`` in ``S``, that try to recover ``a_i`` from ``u*_S``:

* ``D`` minimises ``E_u sum_{i in S} CE(D_i(u*_S), a_i)``;
* ``f_S`` minimises ``BPR(R(u*_S, v+) - R(u*_S, v-)) - lambda * E_u sum_{i in S} CE(D_i(u*_S), a_i)``, the BPR loss
  through the frozen backbone scorer ``R`` (as in AFRL's Eq. 18) plus the adversarial term (as in AFRL's Eq. 16).

Every batch runs one ``D`` update and then one ``f_S`` update, each player moved only by its own Adam
(:func:`jaxfair.training.optim.update_player`). Training ``2^M - 1`` models one after another is the cost AFRL is
measured against, so the method names one :class:`~jaxfair.methods.base.Model` per requirement (``sm_G``,
``sm_G_A``, ...), which the trainer fits one after another, each timed in ``results.json``. The empty requirement
is served the backbone's own embeddings.

Choices where the baseline is unspecified (recorded here on purpose):

* ``D`` is a stack over all ``M`` attributes, and a 0/1 selector (``sensitive``) weights each attribute's term, so
  every requirement has the same shapes. ``D_i`` for ``i`` outside ``S`` gets an exactly zero gradient; under Adam it
  therefore never moves, and it cannot influence ``f_S``.
* ``f_S`` has ``layers`` layers of width ``hidden`` (default 2 x 64); the discriminators have ``head_layers`` layers of
  width ``hidden``. Attributes with fewer classes than the widest one mask the missing classes out of the softmax, as
  in AFRL.
* ``adversary`` offers AFRL's two options: ``"paper"`` (``-lambda * CE`` as written, unbounded below) and
  ``"confusion"`` (``+lambda * CE(class prior, D_i's prediction)``, smallest when ``D_i`` does no better than the
  prior); see :mod:`jaxfair.methods.afrl`.
* The data pipeline is AFRL's: BPR rows of the training positives (users weighted by their number of positives),
  the probe test users' labels withheld (``attribute_weight = 0``), the same batch size, Adam, and early stopping on
  the sampled-protocol validation NDCG@10 -- here of the one filter being trained.
* Every filter uses the same seed (same initialisation and batch order); they differ only by their requirement.
* Each filter's time covers its whole :func:`jaxfair.training.trainer.fit` call, compilation included (every
  requirement compiles its own training step; the validation function is shared and compiled once).
* Its settings are the ``[sm]`` section's; the AFRL comparison (``configs/afrl_baselines.toml``) copies AFRL's
  lambda, adversary, width, learning rate, batch size, epochs and patience into it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.base import bpr_loss
from jaxfair.config import check_fields
from jaxfair.methods import adversaries
from jaxfair.methods.adversaries import AttributeData, num_classes_of, split_attribute_data
from jaxfair.methods.afrl import ADVERSARIES
from jaxfair.methods.base import Evaluation, Method, best_params
from jaxfair.methods.mlp import mlp_apply, mlp_init, mlp_sizes, stack_init
from jaxfair.methods.requirements import (BASELINE_TRAIN, all_requirements, check_sampled_split, evaluate_requirements,
                                          requirement_model, requirement_name, requirements_report)
from jaxfair.training import optim
from jaxfair.training.step import TrainState
from jaxfair.training.trainer import TrainConfig

PLAYERS = ("D", "f")


@dataclasses.dataclass(frozen=True)
class Config:
    """SM hyper-parameters (the ``[sm]`` section; one set shared by every requirement's filter).

    Attributes:
      lam: weight of the adversarial term in the filter's loss.
      hidden: width of every hidden layer (filter and discriminators).
      layers: linear layers of the filter ``f_S``.
      head_layers: linear layers of each discriminator ``D_i``.
      adversary: ``"paper"`` or ``"confusion"``, as in :class:`jaxfair.methods.afrl.Config`.
      train: each filter's loop (``[sm.train]``: Adam per player, early stopping on its validation NDCG@10).
    """

    lam: float = 10.0
    hidden: int = 64
    layers: int = 2
    head_layers: int = 2
    adversary: str = "paper"
    train: TrainConfig = BASELINE_TRAIN

    def __post_init__(self):
        check_fields(self, choices={"adversary": ADVERSARIES}, non_negative=("lam",),
                     at_least_one=("hidden", "layers", "head_layers"))


SMConfig = Config


def _selector(sensitive) -> jax.Array:
    """Float ``(M,)``: 1 for the attributes of the requirement, 0 for the others."""
    return jnp.asarray(np.asarray(sensitive, bool), jnp.float32)


def init_params(key: jax.Array, dim: int, num_classes: tuple[int, ...], config: Config) -> dict:
    """``{"f": filter MLP (d -> d), "D": stack of M discriminators (d -> max classes)}``."""
    kf, kd = jax.random.split(key)
    return {
        "f": mlp_init(kf, mlp_sizes(dim, config.hidden, dim, config.layers)),
        "D": stack_init(kd, len(num_classes), mlp_sizes(dim, config.hidden, max(num_classes), config.head_layers)),
    }


def make_players(config: Config) -> optim.Players:
    """The filter and the discriminators, each with its own Adam."""
    return optim.same_players(PLAYERS, config.train)


def init_state(key: jax.Array, data: AttributeData, sensitive, config: Config) -> TrainState:
    """Parameters of the filter and the discriminators, and the players' partitioned optimizer state.

    ``sensitive`` (bool ``(M,)``, the requirement) only fixes ``M`` here; every requirement starts from the same
    shapes.
    """
    num_classes = num_classes_of(data)
    if len(np.asarray(sensitive)) != len(num_classes):
        raise ValueError(f"sensitive has {len(np.asarray(sensitive))} entries for {len(num_classes)} attributes")
    params = init_params(key, data.user_vecs.shape[1], num_classes, config)
    return optim.init_players(params, make_players(config))


def filter_embeddings(params: dict, user_vecs: jax.Array) -> jax.Array:
    """The filtered embeddings ``u*_S = f_S(u)``: ``(U, d) -> (U, d)``; score them with the backbone's scorer."""
    return mlp_apply(params["f"], user_vecs)


def selected_nll(d_params, z: jax.Array, labels: jax.Array, mask: jax.Array, select: jax.Array) -> jax.Array:
    """``sum_{i in S} -log q(a_i | z; D_i)`` per user: ``z (B, d)`` -> ``(B,)``; ``select (M,)`` is the 0/1 selector."""
    m = labels.shape[1]
    nll = adversaries.head_nll(d_params, jnp.broadcast_to(z, (m,) + z.shape), labels, mask)  # (M, B)
    return jnp.sum(select[:, None] * nll, axis=0)


def discriminator_loss(d_params, z, labels, weight, mask, select) -> jax.Array:
    """D's objective: weighted mean over users of ``sum_{i in S} CE(D_i(z), a_i)``."""
    return adversaries.weighted_mean(selected_nll(d_params, z, labels, mask, select), weight)


def filter_loss(
    f_params, d_params, u, pos_vecs, neg_vecs, labels, weight, attr_weight, mask, prior, select, score: Callable,
    lam: float, adversary: str = "paper",
) -> jax.Array:
    """The filter's objective for one batch.

    ``BPR(R(f(u), v+) - R(f(u), v-))`` (rows weighted by ``weight``) plus the adversarial term over the attributes
    with ``select == 1`` (users weighted by ``attr_weight``):

    * ``adversary="paper"``: ``- lam * mean_u sum_{i in S} CE(D_i(f(u)), a_i)``;
    * ``adversary="confusion"``: ``+ lam * mean_u sum_{i in S} CE(prior_i, D_i(f(u)))``.
    """
    z = mlp_apply(f_params, u)
    ranking = bpr_loss(score(z, pos_vecs), score(z, neg_vecs), weight)
    if adversary == "paper":
        return ranking - lam * discriminator_loss(d_params, z, labels, attr_weight, mask, select)
    # A zero prior row makes attribute i's cross-entropy (and its gradient) exactly zero.
    return ranking + lam * adversaries.confusion_loss(d_params, z, prior * select[:, None], attr_weight, mask)


def make_train_step(data: AttributeData, score: Callable, sensitive, config: Config):
    """One batch of SM training for requirement ``sensitive`` (bool ``(M,)``): a D update, then an f update.

    ``batch`` holds BPR rows: ``user``, ``pos``, ``neg`` (int32 ``(B,)``) and ``weight`` (``(B,)``, 0 on padding).
    ``score(u (..., d), v (..., d)) -> (...)`` is the frozen backbone's scorer. Returns
    ``(state, batch, key) -> (state, metrics)`` with metrics ``loss`` (f's objective) and ``loss_D``.
    """
    players = make_players(config)
    select = _selector(sensitive)
    if select.shape != (data.labels.shape[1],):
        raise ValueError(f"sensitive must have shape ({data.labels.shape[1]},), got {select.shape}")

    def step(state: TrainState, batch: dict, key: jax.Array):
        del key  # SM's step is deterministic given the batch
        params, opt_state = state.params, state.opt_state
        u = data.user_vecs[batch["user"]]
        labels = data.labels[batch["user"]]
        weight = batch["weight"]
        attr_weight = weight * data.attribute_weight[batch["user"]]

        z = jax.lax.stop_gradient(mlp_apply(params["f"], u))
        params, opt_state, loss_d = optim.update_player(
            players, params, opt_state, "D",
            lambda d: discriminator_loss(d, z, labels, attr_weight, data.class_mask, select),
        )
        pos_vecs, neg_vecs = data.item_vecs[batch["pos"]], data.item_vecs[batch["neg"]]
        params, opt_state, loss_f = optim.update_player(
            players, params, opt_state, "f",
            lambda f: filter_loss(
                f, params["D"], u, pos_vecs, neg_vecs, labels, weight, attr_weight, data.class_mask, data.class_prior,
                select, score, config.lam, config.adversary,
            ),
        )
        return TrainState(params, opt_state, state.step + 1), {"loss": loss_f, "loss_D": loss_d}

    return step


def _embed(params, user_vecs, sensitive, config):
    del sensitive, config  # one filter serves exactly one requirement
    return filter_embeddings(params, user_vecs)


def model_name(sensitive, attribute_names) -> str:
    """The filter of a requirement: ``sm_G``, ``sm_G_A``, ..."""
    return "sm_" + requirement_name(sensitive, attribute_names).replace("+", "_")


# --- the method contract -------------------------------------------------------------------------------------


def _prepare(context, config: Config):
    return {"attributes": split_attribute_data(context.split, context.frozen),
            "attribute_names": context.split.attribute_names}


def _models(context, data: dict, config: Config, fitted: dict):
    """One filter per non-empty requirement, trained from scratch with the same seed (never batched together: this
    is SM's cost)."""
    attributes, names = data["attributes"], data["attribute_names"]
    return [
        requirement_model(
            model_name(sensitive, names), context, attributes, config,
            init=lambda key, sensitive=sensitive: init_state(key, attributes, sensitive, config),
            step=make_train_step(attributes, context.frozen.score, sensitive, config),
            embed=_embed, requirements=np.asarray(sensitive, bool)[None, :],
        )
        for sensitive in all_requirements(len(names))[1:]
    ]


def serve(data: dict, params: dict, config: Config, user_vecs: jax.Array, sensitive) -> jax.Array:
    """The embeddings of ``user_vecs (U, d)`` under one requirement ``sensitive`` (bool ``(M,)``, shared by every
    row: SM has one filter per requirement): its own filter's output, or ``user_vecs`` unchanged for the empty
    requirement."""
    sensitive = np.asarray(sensitive, bool)
    if sensitive.ndim != 1:
        raise ValueError("SM serves one requirement at a time (one filter each): pass a bool (M,) mask")
    if not sensitive.any():
        return user_vecs
    return filter_embeddings(params[model_name(sensitive, data["attribute_names"])], user_vecs)


def _evaluate(context, data: dict, fitted: dict, config: Config) -> Evaluation:
    params = best_params(fitted)

    def serve_all(user_vecs, requirements):
        return jnp.stack([serve(data, params, config, user_vecs, r) for r in np.asarray(requirements)])

    return evaluate_requirements(context, serve_all)


METHOD = Method(
    "sm", Config, frozen_backbone=True, check=lambda config, run: check_sampled_split("sm", run), prepare=_prepare,
    models=_models, evaluate=_evaluate, serve=serve, report=lambda results: requirements_report(results, "sm"),
    description="SM (Li et al., SIGIR 2021): one adversarial filter per fairness requirement, trained separately")
