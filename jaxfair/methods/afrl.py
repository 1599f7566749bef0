"""AFRL: one model that serves every personalised fairness requirement (Zhu et al., "Adaptive Fair Representation
Learning for Personalized Fairness in Recommendations via Information Alignment", SIGIR 2024).

Given a frozen backbone's user embedding ``u`` (``d``-dimensional) and ``M`` user attributes, AFRL learns

* attribute encoders ``E_i`` (6-layer MLPs) with classifiers ``C_i`` (2-layer MLPs): ``z_i = E_i(u)`` (Eq. 1),
  trained by the EM / bilevel steps of Eqs. (10)-(13): ``min_E min_C E_u[ 1/2 ||z_i||^2 - beta log q(a_i | z_i; C_i) ]``;
* a debiased collaborative encoder ``F`` (6-layer MLP) against discriminators ``D_i`` (2-layer MLPs):
  ``z_0 = F(u)``, min-max of Eq. (16): ``min_F max_D E_u ||z_0 - u||^2 - lambda sum_i [-log q(a_i | z_0; D_i)]``;
* an aggregator ``G`` (MLP): ``u* = G(z_0 (+) [(z_1 (+) ... (+) z_M) * s_u])`` (Eq. 17), trained with BPR through
  the frozen backbone scorer ``R(u*, v)`` (Eq. 18).

The fairness requirement is an input. This module takes it as ``sensitive``, a bool ``(B, M)`` array where True means
"this attribute must not influence this user's recommendations" (the paper's ``s_u`` is its complement, repeated over
the ``d`` dimensions of each ``z_i``). During training each row draws its requirement uniformly over the ``2^M``
combinations (Algorithm 1, line 5).

Algorithm 1 runs one jitted step per batch that updates, in order, C (Eq. 10), E (Eq. 13), D (Eq. 16 inner),
F (Eq. 16 outer) and G (Eq. 18). The five players are declared once with ``optax.partition``
(:func:`jaxfair.training.optim.players`) and each update applies only its own player's Adam
(:func:`jaxfair.training.optim.update_player`), so a player is only moved, and its moments only advanced, by its own
update.

Paper equations -> functions: Eq. (1) :func:`encode`; Eqs. (10)-(13) :func:`~jaxfair.methods.adversaries.
classifier_loss`, :func:`encoder_loss`; Eq. (15)-(16) :func:`collaborative_loss`,
:func:`~jaxfair.methods.adversaries.discriminator_loss`; Eq. (17) :func:`aggregate`; Eq. (18) :func:`aggregator_loss`;
Algorithm 1 :func:`make_train_step`; serving :func:`fair_user_embeddings`.

Choices where the paper is silent (recorded here on purpose):

* Attributes with different numbers of classes share one stacked head of ``max_classes`` outputs; absent classes
  are masked out of the softmax.
* The per-user terms (Eqs. 13, 16) use the users of the BPR batch (users weighted by their number of training
  positives), so one batch feeds all five updates.
* Users of the probe validation and test splits contribute no attribute labels to training
  (``attribute_weight = 0``; :data:`jaxfair.methods.base.WITHHELD_STAGES`): the probe that measures leakage is then
  selected and scored, and the unseen-user audit fitted, on users whose attributes AFRL never saw.
* ``G`` has ``aggregator_layers`` layers of width ``hidden`` (the paper does not give its depth); the attribute
  classifiers' and discriminators' hidden width is ``hidden`` too.
* The ablations AFRL-w/o-z_i and AFRL-w/o-z_0 zero the corresponding inputs of ``G`` (same architecture).
* ``aggregator_residual = True`` (off by default) makes G residual on z_0, ``u* = z_0 + G(...)``: Eq. (17)'s G must
  carry z_0 through a ReLU layer of width ``hidden``, which loses part of it even when F barely debiases (on
  ML-100k at lambda = 0.001, test NDCG@10 0.325 plain vs 0.332 residual against the backbone's 0.339); at the chosen
  lambda = 10 both give 0.31 at about the same probe AUC (``benchmarks/results/afrl_lambda_sweep*``), so Eq. (17)
  as written stays the default.
* F's adversarial term. The default ``adversary = "paper"`` is Eq. (16) as written. Its ``-lambda * CE`` is
  unbounded below: F can lower it by making ``D_i`` confidently *wrong*, i.e. by flipping the attribute's encoding
  one step ahead of ``D_i``, which leaves the attribute recoverable by a fresh probe. ``adversary = "confusion"``
  keeps the min-max structure but gives F a bounded target: it minimises ``lambda * sum_i CE(p(a_i), q(. | z_0;
  D_i))``, the cross-entropy between the attribute's class prior and the discriminator's prediction, smallest
  exactly when D_i can do no better than the prior. ``adversary = "mean_gap"`` replaces the adversarial term by an
  attacker-free one: F minimises ``lambda * sum_i S_i(z_0)``, with ``S_i`` the share of z_0's variance that lies
  between attribute i's class means (:mod:`jaxfair.methods.class_means`), over the batch's users. D_i is trained
  as in the paper in every case (under ``mean_gap`` it only reports).
* Whose embeddings F's adversarial term covers. The paper's term needs each user's label, so it covers the users
  whose labels AFRL may use. On MovieLens-100k that debiasing carries over poorly to the other users: a probe fitted
  and scored only on users whose labels AFRL never saw still finds most of the gender signal (`docs/afrl.md`;
  :func:`jaxfair.metrics.probe.cross_fitted_probe`). The confusion target needs no label, so
  ``confusion_on_all_users = True`` (off by default; only with ``adversary = "confusion"``) applies it to every
  user of the batch, labelled or not, while D_i still learns from labelled users only. No withheld label is used;
  the unlabelled users' embeddings are, as they are at serving time.
* ``erase_output = True`` (off by default; not in the paper) keeps AFRL's training as it is and, afterwards, erases
  each requirement's attributes from its trained output with LEACE fitted on the labelled users' outputs
  (:mod:`jaxfair.methods.output_erasure`): the closed-form erasure's guarantee on top of what AFRL learned.
  Whether it helps is decided on validation only (``docs/erasure.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfair.backbones.base import bpr_loss
from jaxfair.config import check_fields
from jaxfair.methods.adversaries import (AttributeData, classifier_loss, confusion_loss, discriminator_loss,
                                         head_nll, num_classes_of, weighted_mean)
from jaxfair.methods.class_means import between_class_share, linear_share
from jaxfair.methods.mlp import mlp_apply, mlp_init, mlp_sizes, stack_apply, stack_init
from jaxfair.methods.output_erasure import with_output_erasure
from jaxfair.methods.requirements import embed_all_requirements, requirement_method
from jaxfair.training import optim
from jaxfair.training.step import TrainState
from jaxfair.training.trainer import TrainConfig

PLAYERS = ("C", "E", "D", "F", "G")
ADVERSARIES = ("confusion", "linear_share", "mean_gap", "paper")


@dataclasses.dataclass(frozen=True)
class Config:
    """AFRL hyper-parameters (the ``[afrl]`` section); defaults follow the paper (section 4.1.4, Table 1 for PMF on
    ML-1M).

    Attributes:
      beta: weight of the classification term in Eq. (13).
      lam: lambda of Eq. (16), the fairness-accuracy trade-off.
      hidden: width of every hidden layer.
      encoder_layers: layers of E_i and F (6 in the paper).
      head_layers: layers of C_i and D_i (2 in the paper).
      aggregator_layers: layers of G.
      use_attribute_embeddings: False gives the AFRL-w/o-z_i ablation.
      use_collaborative_embedding: False gives the AFRL-w/o-z_0 ablation.
      adversary: ``"paper"`` (default; Eq. 16's ``-lambda * CE`` literally), ``"confusion"`` (F pushes D_i's
        prediction to the class prior) or ``"mean_gap"`` (F shrinks the share of z_0's variance between each
        attribute's class means) or ``"linear_share"`` (the same with the share a linear least-squares probe
        explains); see the module docstring.
      discriminator_steps: D updates per batch before F's update (the inner maximisation of Eq. 16; the paper
        does one alternating step, Algorithm 1 line 9).
      aggregator_residual: True makes G residual on z_0, ``u* = z_0 + G(...)`` (see the module docstring); False
        is Eq. (17) as written.
      confusion_on_all_users: with ``adversary = "confusion"``, F's confusion term covers every user of the batch
        instead of the labelled ones only (see the module docstring).
      erase_output: after training, erase each requirement's attributes from the trained model's output with LEACE
        fitted on the labelled users' outputs (:mod:`jaxfair.methods.output_erasure`; not in the paper; training is
        unchanged); erase_max_rank: directions erased per attribute (0: all).
      train: AFRL's own loop (``[afrl.train]``: Adam for every player at ``learning_rate``, early stopping on the mean
        validation NDCG@10 over all fairness requirements; the paper's learning rate 5e-5 and batch size 256).
    """

    beta: float = 0.1
    lam: float = 0.1
    hidden: int = 64
    encoder_layers: int = 6
    head_layers: int = 2
    aggregator_layers: int = 2
    use_attribute_embeddings: bool = True
    use_collaborative_embedding: bool = True
    adversary: str = "paper"
    discriminator_steps: int = 1
    aggregator_residual: bool = False
    confusion_on_all_users: bool = False
    erase_output: bool = False
    erase_max_rank: int = 0
    train: TrainConfig = TrainConfig(learning_rate=5e-5, batch_size=256, epochs=100, patience=5, monitor="ndcg@10")

    def __post_init__(self):
        check_fields(self, choices={"adversary": ADVERSARIES}, non_negative=("beta", "lam", "erase_max_rank"),
                     at_least_one=("hidden", "encoder_layers", "head_layers", "aggregator_layers",
                                   "discriminator_steps"))
        if self.confusion_on_all_users and self.adversary != "confusion":
            raise ValueError("confusion_on_all_users needs adversary = 'confusion' (the other targets need labels)")
        if not (self.use_attribute_embeddings or self.use_collaborative_embedding):
            raise ValueError("at least one of use_attribute_embeddings and use_collaborative_embedding must be true")


AFRLConfig = Config  # the name the paper's readers look for


def init_params(key: jax.Array, dim: int, num_classes: tuple[int, ...], config: Config) -> dict:
    """Initialise every player. ``E``, ``C``, ``D`` are stacks of ``M`` networks (leading axis ``M``)."""
    m = len(num_classes)
    kc, ke, kd, kf, kg = jax.random.split(key, 5)
    head = mlp_sizes(dim, config.hidden, max(num_classes), config.head_layers)
    encoder = mlp_sizes(dim, config.hidden, dim, config.encoder_layers)
    return {
        "C": stack_init(kc, m, head),
        "E": stack_init(ke, m, encoder),
        "D": stack_init(kd, m, head),
        "F": mlp_init(kf, encoder),
        "G": mlp_init(kg, mlp_sizes((m + 1) * dim, config.hidden, dim, config.aggregator_layers)),
    }


def encode(params: dict, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eq. (1) and ``z_0 = F(u)``: ``u (B, d) -> (z_0 (B, d), z (M, B, d))``."""
    return mlp_apply(params["F"], u), stack_apply(params["E"], u)


def aggregate(params: dict, z0: jax.Array, z: jax.Array, sensitive: jax.Array, config: Config) -> jax.Array:
    """Eq. (17): ``u* = G(z_0 (+) [(z_1 (+) ... (+) z_M) * s_u])`` with ``s_u = not sensitive``.

    Args:
      z0: ``(B, d)``; z: ``(M, B, d)``; sensitive: bool ``(B, M)``.

    Returns:
      ``(B, d)`` fair user embeddings.
    """
    keep = jnp.logical_not(sensitive).T[..., None].astype(z.dtype)  # (M, B, 1)
    zi = z * keep if config.use_attribute_embeddings else jnp.zeros_like(z)
    z0 = z0 if config.use_collaborative_embedding else jnp.zeros_like(z0)
    flat = jnp.transpose(zi, (1, 0, 2)).reshape(z0.shape[0], -1)
    out = mlp_apply(params["G"], jnp.concatenate([z0, flat], axis=-1))
    return z0 + out if config.aggregator_residual else out


def fair_user_embeddings(params: dict, user_embeddings: jax.Array, sensitive: jax.Array, config: Config) -> jax.Array:
    """The serving API: fair embeddings ``u*`` for any per-user requirement.

    Args:
      user_embeddings: ``(B, d)`` frozen backbone embeddings.
      sensitive: bool ``(B, M)``, or ``(M,)`` for one requirement shared by every row.

    Returns:
      ``(B, d)``; score items with the backbone's own ``score(params, u*, v)``.
    """
    sensitive = jnp.broadcast_to(jnp.asarray(sensitive, bool), (user_embeddings.shape[0], params["E"][0]["w"].shape[0]))
    z0, z = encode(params, user_embeddings)
    return aggregate(params, z0, z, sensitive, config)


def fair_embeddings_all_requirements(params: dict, user_vecs: jax.Array, requirements: jax.Array, config: Config):
    """``u*`` of every user under every requirement in one ``jax.vmap``: ``(K, M), (U, d) -> (K, U, d)``."""
    return embed_all_requirements(fair_user_embeddings, params, user_vecs, requirements, config)


def encoder_loss(e_params, c_params, u, labels, weight, mask, beta: float) -> jax.Array:
    """Eq. (13), outer minimisation over E: mean over users of ``sum_i [1/2 ||z_i||^2 - beta log q(a_i | z_i; C_i)]``."""
    z = stack_apply(e_params, u)
    compression = 0.5 * jnp.sum(z**2, axis=-1)  # (M, B), Eq. (4)
    return weighted_mean(jnp.sum(compression + beta * head_nll(c_params, z, labels, mask), axis=0), weight)


def collaborative_loss(
    f_params, d_params, u, labels, recon_weight, attr_weight, mask, lam: float, prior=None, adversary="paper",
    confusion_weight=None,
) -> jax.Array:
    """Outer minimisation of Eq. (16) over F: ``E ||z_0 - u||^2`` (Eq. 15) plus the adversarial term.

    ``adversary="paper"``: ``- lambda sum_i [-log q(a_i | z_0; D_i)]`` (Eq. 14 as written);
    ``adversary="confusion"``: ``+ lambda sum_i CE(p(a_i), q(. | z_0; D_i))`` with ``prior`` the class priors;
    ``adversary="mean_gap"``: ``+ lambda sum_i S_i(z_0)`` (:func:`mean_gap_loss`; D is not used);
    ``adversary="linear_share"``: ``+ lambda sum_i V_i(z_0)`` (:func:`linear_share_loss`; D is not used).
    ``confusion_weight`` (``(B,)``, default ``attr_weight``) weights the users in the confusion term.
    """
    z0 = mlp_apply(f_params, u)
    confusion_weight = attr_weight if confusion_weight is None else confusion_weight
    reconstruction = weighted_mean(jnp.sum((z0 - u) ** 2, axis=-1), recon_weight)
    if adversary == "paper":
        return reconstruction - lam * discriminator_loss(d_params, z0, labels, attr_weight, mask)
    if adversary == "mean_gap":
        return reconstruction + lam * mean_gap_loss(z0, labels, attr_weight, mask)
    if adversary == "linear_share":
        return reconstruction + lam * linear_share_loss(z0, labels, attr_weight, mask)
    return reconstruction + lam * confusion_loss(d_params, z0, prior, confusion_weight, mask)


def mean_gap_loss(z0: jax.Array, labels: jax.Array, weight: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum_i S_i(z_0)``: for each attribute, the share of z_0's variance between its class means.

    Args:
      z0: ``(B, d)``; labels: int ``(B, M)``; weight: ``(B,)`` (0 for padding and withheld labels);
      mask: bool ``(M, max_classes)`` (its width is the number of classes every attribute is counted over; absent
        classes have no weight and drop out).
    """
    return _sum_over_attributes(between_class_share, z0, labels, weight, mask)


def linear_share_loss(z0: jax.Array, labels: jax.Array, weight: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum_i V_i(z_0)``: for each attribute, the share of its class indicator a linear least-squares probe on z_0
    explains (:func:`~jaxfair.methods.class_means.linear_share`, Pillai's trace scaled to ``[0, 1]``). Arguments as
    :func:`mean_gap_loss`."""
    return _sum_over_attributes(linear_share, z0, labels, weight, mask)


def _sum_over_attributes(statistic, z0, labels, weight, mask):
    return sum(statistic(z0[None], labels[:, i], weight, mask.shape[1])[0] for i in range(labels.shape[1]))


def aggregator_loss(g_params, params, u, pos_vecs, neg_vecs, sensitive, weight, score, config) -> jax.Array:
    """Eq. (18): BPR of ``R(u*, v+) - R(u*, v-)`` through the frozen backbone scorer, as a function of G only."""
    z0, z = encode(params, u)
    z0, z = jax.lax.stop_gradient(z0), jax.lax.stop_gradient(z)
    u_star = aggregate(dict(params, G=g_params), z0, z, sensitive, config)
    return bpr_loss(score(u_star, pos_vecs), score(u_star, neg_vecs), weight)


def make_players(config: Config) -> optim.Players:
    """The five players, each with its own Adam at ``config.train.learning_rate``."""
    return optim.same_players(PLAYERS, config.train)


def init_state(key: jax.Array, data: AttributeData, config: Config) -> TrainState:
    """Parameters of every player and the players' partitioned optimizer state."""
    params = init_params(key, data.user_vecs.shape[1], num_classes_of(data), config)
    return optim.init_players(params, make_players(config))


def make_train_step(data: AttributeData, score: Callable, config: Config):
    """Algorithm 1 for one batch, as ``(state, batch, key) -> (state, metrics)``.

    ``batch`` holds BPR rows: ``user``, ``pos``, ``neg`` (int32 ``(B,)``) and ``weight`` (``(B,)``, 0 on padding).
    ``score(u (..., d), v (..., d)) -> (...)`` is the frozen backbone's scorer.
    """
    players = make_players(config)

    def step(state: TrainState, batch: dict, key: jax.Array):
        params, opt_state = state.params, state.opt_state
        u = data.user_vecs[batch["user"]]
        labels = data.labels[batch["user"]]
        weight = batch["weight"]
        attr_weight = weight * data.attribute_weight[batch["user"]]
        sensitive = jax.random.bernoulli(key, 0.5, labels.shape)  # uniform over the 2^M requirements

        def update(params, opt_state, name, loss_fn):
            return optim.update_player(players, params, opt_state, name, loss_fn)

        z = jax.lax.stop_gradient(stack_apply(params["E"], u))
        params, opt_state, loss_c = update(
            params, opt_state, "C", lambda c: classifier_loss(c, z, labels, attr_weight, data.class_mask)
        )
        params, opt_state, loss_e = update(
            params, opt_state, "E",
            lambda e: encoder_loss(e, params["C"], u, labels, attr_weight, data.class_mask, config.beta),
        )
        z0 = jax.lax.stop_gradient(mlp_apply(params["F"], u))

        def discriminator_update(_, carry):
            p, o, _ = carry
            return update(p, o, "D", lambda d: discriminator_loss(d, z0, labels, attr_weight, data.class_mask))

        params, opt_state, loss_d = jax.lax.fori_loop(
            0, config.discriminator_steps, discriminator_update, (params, opt_state, jnp.zeros(()))
        )
        params, opt_state, loss_f = update(
            params, opt_state, "F",
            lambda f: collaborative_loss(
                f, params["D"], u, labels, weight, attr_weight, data.class_mask, config.lam, data.class_prior,
                config.adversary, weight if config.confusion_on_all_users else attr_weight,
            ),
        )
        pos_vecs, neg_vecs = data.item_vecs[batch["pos"]], data.item_vecs[batch["neg"]]
        params, opt_state, loss_g = update(
            params, opt_state, "G",
            lambda g: aggregator_loss(g, params, u, pos_vecs, neg_vecs, sensitive, weight, score, config),
        )
        metrics = {"loss": loss_g, "loss_C": loss_c, "loss_E": loss_e, "loss_D": loss_d, "loss_F": loss_f}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


# --- the method contract -------------------------------------------------------------------------------------

def _post_training(serve, data: AttributeData, config: Config):
    """``serve`` followed by the output erasure when ``config.erase_output`` (else ``serve`` itself)."""
    return with_output_erasure(serve, data, config.erase_max_rank) if config.erase_output else serve


METHOD = requirement_method(
    "afrl", Config, init_state=init_state, make_train_step=make_train_step, embed=fair_user_embeddings,
    post_training=_post_training,
    description="AFRL (Zhu et al., SIGIR 2024): one model serving every personalised fairness requirement")
