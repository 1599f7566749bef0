"""FFVAE baseline: a disentangling VAE with one latent subspace per user attribute (after Creager et al., "Flexibly
Fair Representation Learning by Disentanglement", ICML 2019), adapted the way the AFRL paper compares against it.

The frozen backbone's user embedding ``u`` (``d``-dimensional) is encoded into a diagonal Gaussian posterior
``q(s | u) = N(mu(u), diag(exp(logvar(u))))`` over a latent ``s = [z, b_1, ..., b_M]``: a residual ``z``
(``latent_dim``) and one subspace ``b_i`` (``attr_dim``) per attribute. With ``s = mu + exp(logvar / 2) * eps``,
``eps ~ N(0, I)`` (reparameterisation, ``eps`` drawn from the step's key), the players minimise:

* VAE (encoder ``Enc`` and decoder ``Dec`` together), per user (``w`` = BPR-row weight, ``w_a`` = that times the
  user's ``attribute_weight``)::

      L_VAE = E_w ||Dec(s) - u||^2                                   reconstruction
            + beta_kl * E_w KL(q(s | u) || N(0, I))                  KL = 1/2 sum_j (exp(logvar_j) + mu_j^2 - 1 - logvar_j)
            + alpha   * E_wa sum_i -log q(a_i | b_i; C_i)            attribute alignment (C fixed)
            + gamma   * E_wa sum_i ADV_i(mu_z; A_i)                  disentanglement (A fixed)

  with ``ADV_i = +log q(a_i | mu_z; A_i)`` for ``adversary="paper"`` (minus the adversary's cross-entropy, AFRL's
  Eq. 16 as written) and ``ADV_i = CE(p(a_i), q(. | mu_z; A_i))`` for ``adversary="confusion"`` (cross-entropy to
  the class prior ``data.class_prior``; see :mod:`jaxfair.methods.afrl` for why it is bounded). Both are the shared
  adversary losses (:func:`~jaxfair.methods.adversaries.discriminator_loss`,
  :func:`~jaxfair.methods.adversaries.confusion_loss`), imported, not re-implemented.
* attribute classifiers ``C_i`` (stack of ``M`` MLPs on ``b_i``): ``min E_wa sum_i -log q(a_i | b_i; C_i)``;
* adversaries ``A_i`` (stack of ``M`` MLPs on the residual): ``min E_wa sum_i -log q(a_i | mu_z; A_i)``;
* aggregator ``G`` (MLP), the serving head: ``u* = G([mu_z, mu_b * s_u])`` with ``s_u`` = not sensitive, repeated
  over each subspace's ``attr_dim`` dimensions, trained with BPR through the frozen backbone scorer
  ``min E_w -log sigma(R(u*, v+) - R(u*, v-))`` (AFRL's Eq. 18), the encoder behind a stop-gradient. Each BPR row
  draws its requirement uniformly over the ``2^M`` combinations (Bernoulli(0.5) per attribute).

One jitted step per batch updates, in order, C, A, VAE and G, each moved only by its own Adam
(:func:`jaxfair.training.optim.update_player` over the players' ``optax.partition``). Serving under a requirement zeroes the
posterior means of the sensitive ``b_i`` and runs ``G``; FFVAE and AFRL therefore share the serving mechanism and
the evaluation (:mod:`jaxfair.methods.requirements`) and differ only in how the representation is learned.

Choices (recorded on purpose):

* Disentanglement. FFVAE proper penalises the total correlation of ``q(z, b)`` with a density-ratio discriminator
  and relies on ``b_i``'s alignment to pull each attribute out of ``z``. Here the residual ``z`` is instead made
  uninformative of every attribute by per-attribute adversaries ``A_i`` (weight ``gamma``). This is the AFRL
  paper's reading of FFVAE as "the latent split into per-attribute subspaces", and it lets both methods share the
  adversary options of :mod:`jaxfair.methods.afrl`.
* The adversaries (and the encoder's fooling term) see the posterior mean ``mu_z``, which is what serving feeds
  ``G``; the alignment term and the decoder see the reparameterised sample, as in a VAE.
* Serving uses posterior means (no sampling), so ``u*`` is deterministic.
* Reconstruction and KL are weighted by the BPR-row weight (users weighted by their number of training positives,
  as AFRL's Eq. 15); attribute terms additionally by ``attribute_weight`` (0 = label withheld, e.g. probe test
  users).
* Every network (encoder, decoder, ``C_i``, ``A_i``, ``G``) is an MLP with ``layers`` linear layers of width
  ``hidden``; attributes with fewer classes than ``max_classes`` mask the absent ones out of the softmax.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfair.backbones.base import bpr_loss
from jaxfair.config import check_fields
from jaxfair.methods import adversaries
from jaxfair.methods.adversaries import AttributeData, num_classes_of, weighted_mean
from jaxfair.methods.afrl import ADVERSARIES
from jaxfair.methods.mlp import mlp_apply, mlp_init, mlp_sizes, stack_init
from jaxfair.methods.requirements import BASELINE_TRAIN, embed_all_requirements, requirement_method
from jaxfair.training import optim
from jaxfair.training.step import TrainState
from jaxfair.training.trainer import TrainConfig

PLAYERS = ("C", "A", "VAE", "G")


@dataclasses.dataclass(frozen=True)
class Config:
    """FFVAE hyper-parameters (the ``[ffvae]`` section).

    Attributes:
      attr_dim: width of each attribute subspace ``b_i``.
      latent_dim: width of the residual ``z``.
      hidden: width of every hidden layer.
      layers: linear layers of every network (encoder, decoder, classifiers, adversaries, aggregator).
      alpha: weight of the attribute-alignment term (``b_i`` predicts ``a_i``).
      gamma: weight of the disentanglement term (``z`` must not predict ``a_i``).
      beta_kl: weight of the KL term.
      adversary: ``"paper"`` (minus the adversary's cross-entropy) or ``"confusion"`` (cross-entropy to the class
        prior), as in :class:`jaxfair.methods.afrl.Config`.
      train: the loop (``[ffvae.train]``: Adam per player, early stopping on the mean validation NDCG@10 over all
        fairness requirements).
    """

    attr_dim: int = 4
    latent_dim: int = 32
    hidden: int = 64
    layers: int = 2
    alpha: float = 1.0
    gamma: float = 1.0
    beta_kl: float = 1.0
    adversary: str = "paper"
    train: TrainConfig = BASELINE_TRAIN

    def __post_init__(self):
        check_fields(self, choices={"adversary": ADVERSARIES}, non_negative=("alpha", "gamma", "beta_kl"),
                     at_least_one=("attr_dim", "latent_dim", "hidden", "layers"))


FFVAEConfig = Config


def total_latent(num_attributes: int, config: Config) -> int:
    """Width of ``s = [z, b_1, ..., b_M]``."""
    return config.latent_dim + num_attributes * config.attr_dim


def attribute_slice(i: int, config: Config) -> slice:
    """Columns of ``b_i`` inside the latent ``s`` (and inside the encoder's mean output, its first ``L`` columns)."""
    start = config.latent_dim + i * config.attr_dim
    return slice(start, start + config.attr_dim)


def init_params(key: jax.Array, dim: int, num_classes: tuple[int, ...], config: Config) -> dict:
    """Every player's parameters. ``C`` and ``A`` are stacks of ``M`` networks; ``VAE`` holds encoder and decoder."""
    m = len(num_classes)
    width = total_latent(m, config)
    k_enc, k_dec, kc, ka, kg = jax.random.split(key, 5)
    return {
        "C": stack_init(kc, m, mlp_sizes(config.attr_dim, config.hidden, max(num_classes), config.layers)),
        "A": stack_init(ka, m, mlp_sizes(config.latent_dim, config.hidden, max(num_classes), config.layers)),
        "VAE": {
            "encoder": mlp_init(k_enc, mlp_sizes(dim, config.hidden, 2 * width, config.layers)),
            "decoder": mlp_init(k_dec, mlp_sizes(width, config.hidden, dim, config.layers)),
        },
        "G": mlp_init(kg, mlp_sizes(width, config.hidden, dim, config.layers)),
    }


def posterior(vae: dict, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``q(s | u)``: ``u (B, d) -> (mean (B, L), logvar (B, L))``; the encoder outputs ``[mean, logvar]``."""
    out = mlp_apply(vae["encoder"], u)
    width = out.shape[-1] // 2
    return out[..., :width], out[..., width:]


def split_latent(s: jax.Array, num_attributes: int, config: Config) -> tuple[jax.Array, jax.Array]:
    """``s (B, L) -> (z (B, latent_dim), b (M, B, attr_dim))``."""
    z = s[..., : config.latent_dim]
    b = s[..., config.latent_dim :].reshape(s.shape[:-1] + (num_attributes, config.attr_dim))
    return z, jnp.moveaxis(b, -2, 0)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per row: ``(B, L) -> (B,)``."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def reconstruction_error(decoder, s: jax.Array, u: jax.Array) -> jax.Array:
    """``||Dec(s) - u||^2`` per row: ``(B,)``."""
    return jnp.sum((mlp_apply(decoder, s) - u) ** 2, axis=-1)


def adversary_term(a_params, z: jax.Array, labels, attr_weight, mask, prior, adversary: str) -> jax.Array:
    """The encoder's disentanglement term on the residual ``z (B, latent_dim)`` (smaller = ``z`` hides more)."""
    if adversary == "paper":
        return -adversaries.discriminator_loss(a_params, z, labels, attr_weight, mask)
    return adversaries.confusion_loss(a_params, z, prior, attr_weight, mask)


def vae_loss(vae, c_params, a_params, u, eps, labels, weight, attr_weight, mask, prior, config: Config):
    """The VAE player's objective (module docstring) with noise ``eps (B, L)``; returns ``(loss, parts)``."""
    m = labels.shape[1]
    mean, logvar = posterior(vae, u)
    s = mean + jnp.exp(0.5 * logvar) * eps
    _, b = split_latent(s, m, config)
    z_mean, _ = split_latent(mean, m, config)
    parts = {
        "reconstruction": weighted_mean(reconstruction_error(vae["decoder"], s, u), weight),
        "kl": weighted_mean(kl_divergence(mean, logvar), weight),
        "alignment": adversaries.classifier_loss(c_params, b, labels, attr_weight, mask),
        "adversarial": adversary_term(a_params, z_mean, labels, attr_weight, mask, prior, config.adversary),
    }
    loss = (
        parts["reconstruction"] + config.beta_kl * parts["kl"] + config.alpha * parts["alignment"]
        + config.gamma * parts["adversarial"]
    )
    return loss, parts


def serving_latent(params: dict, u: jax.Array, sensitive: jax.Array, config: Config) -> jax.Array:
    """Posterior mean ``[mu_z, mu_b * s_u]`` with the sensitive subspaces zeroed: ``(B, L)``."""
    mean, _ = posterior(params["VAE"], u)
    keep = jnp.repeat(jnp.logical_not(sensitive), config.attr_dim, axis=-1)  # (B, M * attr_dim)
    b = jnp.where(keep, mean[..., config.latent_dim :], 0.0)
    return jnp.concatenate([mean[..., : config.latent_dim], b], axis=-1)


def aggregate(g_params, latent: jax.Array) -> jax.Array:
    """``u* = G(latent)``."""
    return mlp_apply(g_params, latent)


def num_attributes(params: dict) -> int:
    return params["C"][0]["w"].shape[0]


def fair_user_embeddings(params: dict, user_vecs: jax.Array, sensitive: jax.Array, config: Config) -> jax.Array:
    """The serving API (same signature as :func:`jaxfair.methods.afrl.fair_user_embeddings`).

    Args:
      user_vecs: ``(B, d)`` frozen backbone embeddings.
      sensitive: bool ``(B, M)``, or ``(M,)`` for one requirement shared by every row; True = the attribute must
        not influence the user's recommendations.

    Returns:
      ``(B, d)``; score items with the backbone's own scorer.
    """
    sensitive = jnp.broadcast_to(jnp.asarray(sensitive, bool), (user_vecs.shape[0], num_attributes(params)))
    return aggregate(params["G"], serving_latent(params, user_vecs, sensitive, config))


def fair_embeddings_all_requirements(params: dict, user_vecs: jax.Array, requirements: jax.Array, config: Config):
    """``u*`` of every user under every requirement in one ``jax.vmap``: ``(K, M), (U, d) -> (K, U, d)``."""
    return embed_all_requirements(fair_user_embeddings, params, user_vecs, requirements, config)


def aggregator_loss(g_params, params, u, pos_vecs, neg_vecs, sensitive, weight, score, config) -> jax.Array:
    """BPR of ``R(u*, v+) - R(u*, v-)`` through the frozen scorer (AFRL's Eq. 18) as a function of G only."""
    latent = jax.lax.stop_gradient(serving_latent(params, u, sensitive, config))
    u_star = aggregate(g_params, latent)
    return bpr_loss(score(u_star, pos_vecs), score(u_star, neg_vecs), weight)


# A deliberate mirror of afrl.make_players / afrl.init_state: each method module declares its own players.
def make_players(config: Config) -> optim.Players:
    """The four players, each with its own Adam at ``config.train.learning_rate``."""
    return optim.same_players(PLAYERS, config.train)


def init_state(key: jax.Array, data: AttributeData, config: Config) -> TrainState:
    """Parameters of every player and the players' partitioned optimizer state."""
    params = init_params(key, data.user_vecs.shape[1], num_classes_of(data), config)
    return optim.init_players(params, make_players(config))


def make_train_step(data: AttributeData, score: Callable, config: Config):
    """One batch of FFVAE training as ``(state, batch, key) -> (state, metrics)``.

    ``batch`` holds BPR rows: ``user``, ``pos``, ``neg`` (int32 ``(B,)``) and ``weight`` (``(B,)``, 0 on padding).
    ``score(u (..., d), v (..., d)) -> (...)`` is the frozen backbone's scorer. ``metrics["loss"]`` is G's BPR loss.
    """
    players = make_players(config)
    mask, prior = data.class_mask, data.class_prior

    def step(state: TrainState, batch: dict, key: jax.Array):
        params, opt_state = state.params, state.opt_state
        u = data.user_vecs[batch["user"]]
        labels = data.labels[batch["user"]]
        m = labels.shape[1]
        weight = batch["weight"]
        attr_weight = weight * data.attribute_weight[batch["user"]]
        noise_key, requirement_key = jax.random.split(key)
        sensitive = jax.random.bernoulli(requirement_key, 0.5, labels.shape)  # uniform over the 2^M requirements

        mean, logvar = posterior(params["VAE"], u)
        eps = jax.random.normal(noise_key, mean.shape, mean.dtype)
        _, b = split_latent(jax.lax.stop_gradient(mean + jnp.exp(0.5 * logvar) * eps), m, config)
        z_mean, _ = split_latent(jax.lax.stop_gradient(mean), m, config)
        params, opt_state, loss_c = optim.update_player(
            players, params, opt_state, "C", lambda c: adversaries.classifier_loss(c, b, labels, attr_weight, mask)
        )
        params, opt_state, loss_a = optim.update_player(
            players, params, opt_state, "A",
            lambda a: adversaries.discriminator_loss(a, z_mean, labels, attr_weight, mask),
        )
        vae_args = (u, eps, labels, weight, attr_weight, mask, prior, config)
        _, parts = vae_loss(params["VAE"], params["C"], params["A"], *vae_args)  # the terms before the update
        params, opt_state, loss_vae = optim.update_player(
            players, params, opt_state, "VAE", lambda vae: vae_loss(vae, params["C"], params["A"], *vae_args)[0]
        )
        pos_vecs, neg_vecs = data.item_vecs[batch["pos"]], data.item_vecs[batch["neg"]]
        params, opt_state, loss_g = optim.update_player(
            players, params, opt_state, "G",
            lambda g: aggregator_loss(g, params, u, pos_vecs, neg_vecs, sensitive, weight, score, config),
        )
        metrics = {"loss": loss_g, "loss_C": loss_c, "loss_A": loss_a, "loss_VAE": loss_vae, **parts}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


# --- the method contract -------------------------------------------------------------------------------------

METHOD = requirement_method(
    "ffvae", Config, init_state=init_state, make_train_step=make_train_step, embed=fair_user_embeddings,
    description="FFVAE-style baseline: per-attribute latent subspaces dropped before AFRL's aggregator")
