"""DifFaiRec: a fair recommender built on a conditional diffusion model (Jiang & Fan, "DifFaiRec: Generative Fair
Recommender with Conditional Diffusion Model", ICDM 2024).

The diffusion model is :mod:`jaxfair.backbones.diffusion` (DiffRec over interaction vectors); DifFaiRec conditions
its denoiser on a user latent and on that user's *counterfactual* latent, and trains both to denoise to the same
interactions. No public code exists; the paper summary fixes the parts (group vectors by mean pooling or PCA, an
attention counterfactual module, one combined objective) and leaves the rest open. Choices, and why:

**Group vectors** (``G`` groups of the sensitive attribute, rows ``x_u`` L2-normalised to ``xn_u``):

* ``mean``: one token per group, ``y_g = mean_{u in g} xn_u`` ``(I,)``;
* ``pca``: ``k = components`` tokens per group, the leading right singular vectors ``v_{g,1..k}`` of the group's
  centred matrix ``Xn_g - 1 y_g^T``, each scaled by ``s_k / sqrt(n_g)`` (the standard deviation of the group along
  it) and signed so that ``<v_{g,k}, y_g> >= 0`` (an SVD's sign is arbitrary; this makes the tokens reproducible).
  Computed in JAX on the masked ``(U, I)`` matrix of each group, vmapped over groups.

**Counterfactual module** (``d = latent_dim``). The user latent is ``z_u = W_e^T xn_u + b_e``; token ``k`` of group
``g`` lives in the same space as ``e_{g,k} = W_e^T y_{g,k}``. A user reads a group through attention,
``o_g(z) = sum_k softmax_k(<W_q z, W_k e_{g,k}> / sqrt(d)) e_{g,k}``, and the counterfactual user of group ``g'`` is

    ``C(z_u, g') = z_u - o_{g_u}(z_u) + o_{g'}(z_u)``  (swap the own group's part for the other group's).

With mean pooling this is exactly ``W_e^T (xn_u - y_{g_u} + y_{g'}) + b_e``: a user equal to their group's vector
is mapped onto the other group's vector (tested). Attention over a single token has weight 1, so with mean pooling
``W_q`` and ``W_k`` receive no gradient and keep their initial values (tested); they matter for PCA's ``k >= 2``.
``g'`` is the other group for a binary attribute, and a uniformly
drawn other group per row and step for more classes.

**Objective** (the paper's single target, both conditions sharing ``t``, the noise and the dropout mask):

    ``L = E_u [ lambda(t) (||x_0 - f(x_t, t, z_u)||^2 + w_cf ||x_0 - f(x_t, t, C(z_u, g'))||^2) / (T p(t)) ]``

(``eps`` in place of ``x_0`` for ``mean_type = "eps"``; ``lambda``, ``p`` and the timestep sampler as in
:mod:`~jaxfair.backbones.diffusion`; the sampler records the factual term). Both conditions must denoise to the same
target, so the prediction is pushed to ignore what the group swap changes; ``agreement`` (the mean squared gap
between the two predictions) is reported per step.

**What the swap changes** (``swap``). The summary says the counterfactual user keeps the preferences and changes
the group, and that the model is conditioned on it; it does not say whether the interaction vector the denoiser
reads changes too. ``"condition"`` (default): only the condition does, ``f(x_t, t, C(z_u, g'))``. The denoiser still
reads ``x_t``, which carries the group, so the objective can only teach it to ignore the condition's group part.
``"input"``: the swap also moves the noised vector, ``f(x_t + sqrt(abar_t) delta_{g'}, t, C(z_u, g'))`` with
``delta_g = ||x_u|| (r_g - r_{g_u})`` (:func:`input_shifts`; ``r_g`` reads group ``g``'s tokens with the latent's
attention weights, so ``xn_u + delta_g / ||x_u||`` encodes exactly to ``C(z_u, g)``). This is the noised
counterfactual vector ``q(x_0 + delta_{g'})`` under the same noise, and it must still denoise to the factual
``x_0``: the denoiser is pushed to ignore the group direction of its input as well. The shift is a fixed
transformation of the data: no gradient flows through it (with ``k >= 2`` PCA tokens the attention could otherwise
learn to shrink the swap). It needs ``mean_type = "x0"`` (:func:`check_swap`).

**Serving** (``serve``): ``"average"`` (default) replaces the denoiser's output at every reverse step by its mean
over the ``G`` conditions ``C(z_u, g)``, ``g = 0..G-1`` (``C(z_u, g_u) = z_u``): the user's prediction averaged over
every group they could belong to (with ``swap = "input"``, condition ``g`` reads ``x_t + sqrt(abar_t) delta_g``).
``"factual"`` uses ``z_u`` and ``x_t`` only.

The user latent probed for the attribute is the denoiser's first hidden layer on the observed vector at the first
reverse step, under the served condition(s) (averaged for ``"average"``, each condition with its input).

**DiffRec** (the baseline) is this method with ``group_vectors = "none"``: the unconditional denoiser of
:mod:`jaxfair.backbones.diffusion`, trained and served by the same contract, with the same diffusion settings
(``[diffairec.diffusion]``) and loop (``[diffairec.train]``: Adam with coupled L2 ``weight_decay``, as DiffRec's
``torch.optim.Adam(weight_decay=...)``; users per step ``batch_size``). ``configs/grids/diffairec_variants.toml``
compares DiffRec, both group-vector constructions and the regularised MF (:mod:`jaxfair.methods.fair_mf`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones import diffusion
from jaxfair.methods.base import (Evaluation, Method, Model, require_attribute, require_monitor_cutoff,
                                  require_ratio_split)
from jaxfair.methods.gap_evaluation import evaluate_scores, gap_report, precomputed_score, items_placeholder
from jaxfair.metrics.ranking import split_ranking
from jaxfair.training import init, optim
from jaxfair.training.trainer import TrainConfig

GROUP_VECTORS = ("mean", "pca", "none")
SERVE = ("average", "factual")
SWAPS = ("condition", "input")


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``[diffairec]`` section.

    Attributes:
      attribute: the sensitive user attribute.
      group_vectors: ``"mean"``, ``"pca"``, or ``"none"`` (DiffRec, the unconditional baseline).
      components: tokens per group for ``"pca"`` (``"mean"`` always has one).
      latent_dim: ``d``, size of the user latent and of the condition.
      counterfactual_weight: ``w_cf``.
      serve: ``"average"`` or ``"factual"``.
      swap: what the group swap changes: ``"condition"`` (the denoiser's condition only) or ``"input"`` (the
        condition and the noised interaction vector; see the module docstring).
      diffusion: the diffusion model (``[diffairec.diffusion]``, :class:`jaxfair.backbones.diffusion.Config`).
      train: the loop (``[diffairec.train]``; ``batch_size`` users per step).
    """

    attribute: str = "gender"
    group_vectors: str = "mean"
    components: int = 1
    latent_dim: int = 64
    counterfactual_weight: float = 1.0
    serve: str = "average"
    swap: str = "condition"
    diffusion: diffusion.Config = diffusion.Config()
    train: TrainConfig = TrainConfig(epochs=200, batch_size=128, learning_rate=3e-4, patience=20, monitor="ndcg@20",
                                     checkpoint_every=20)

    def __post_init__(self):
        if self.group_vectors not in GROUP_VECTORS:
            raise ValueError(f"group_vectors must be one of {list(GROUP_VECTORS)}, got {self.group_vectors!r}")
        if self.serve not in SERVE:
            raise ValueError(f"serve must be one of {list(SERVE)}, got {self.serve!r}")
        if self.swap not in SWAPS:
            raise ValueError(f"swap must be one of {list(SWAPS)}, got {self.swap!r}")
        if self.components < 1 or self.latent_dim < 1:
            raise ValueError(f"components and latent_dim must be positive, got {self.components}, {self.latent_dim}")
        if self.counterfactual_weight < 0:
            raise ValueError(f"counterfactual_weight must be >= 0, got {self.counterfactual_weight}")
        if self.group_vectors != "none":
            check_swap(self.diffusion, self)


DifFaiRecConfig = Config


def normalize_rows(x: jax.Array) -> jax.Array:
    """``x_u / ||x_u||`` (an all-zero row stays zero). ``(..., I)``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@jax.jit
def _group_means(xn: jax.Array, member: jax.Array) -> jax.Array:
    counts = jnp.sum(member, axis=1, keepdims=True)
    return (member @ xn) / jnp.maximum(counts, 1.0)


def mean_group_vectors(x: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """Mean pooling: ``y_g = mean_{u in g} xn_u``. ``x (U, I)``, ``groups`` int ``(U,)`` -> ``(G, I)``."""
    member = (jnp.asarray(groups)[None, :] == jnp.arange(num_groups)[:, None]).astype(jnp.float32)
    return _group_means(normalize_rows(jnp.asarray(x, jnp.float32)), member)


def pca_group_vectors(x: jax.Array, groups: jax.Array, num_groups: int, components: int = 1) -> jax.Array:
    """The ``k`` leading principal directions of each group's normalised rows, scaled by the group's standard
    deviation along them and signed towards the group's mean. ``x (U, I)``, ``groups (U,)`` -> ``(G, k, I)``."""
    xn = normalize_rows(jnp.asarray(x, jnp.float32))
    member = (jnp.asarray(groups)[None, :] == jnp.arange(num_groups)[:, None]).astype(jnp.float32)
    return _pca_tokens(xn, member, components)


@functools.partial(jax.jit, static_argnames="components")
def _pca_tokens(xn, member, components):
    means = _group_means(xn, member)

    def one(mask, mean):
        centred = (xn - mean[None]) * mask[:, None]
        _, s, vt = jnp.linalg.svd(centred, full_matrices=False)
        v, s = vt[:components], s[:components]
        sign = jnp.where(v @ mean >= 0, 1.0, -1.0)
        scale = s / jnp.sqrt(jnp.maximum(jnp.sum(mask), 1.0))
        return (sign * scale)[:, None] * v

    return jax.vmap(one)(member, means)


def group_tokens(x: jax.Array, groups: jax.Array, num_groups: int, config: Config) -> jax.Array:
    """The group vectors as attention tokens ``(G, k, I)`` (``k = 1`` for mean pooling)."""
    if config.group_vectors == "mean":
        return mean_group_vectors(x, groups, num_groups)[:, None, :]
    return pca_group_vectors(x, groups, num_groups, config.components)


def init_counterfactual(key: jax.Array, num_items: int, latent_dim: int) -> dict:
    """``{"encoder": {w (I, d), b (d,)}, "query": (d, d), "key": (d, d)}``."""
    k_enc, k_q, k_k = jax.random.split(key, 3)
    return {
        "encoder": {"w": init.normal(k_enc, (num_items, latent_dim)) * math.sqrt(2.0 / (num_items + latent_dim)),
                    "b": jnp.zeros((latent_dim,))},
        "query": init.normal(k_q, (latent_dim, latent_dim)) / math.sqrt(latent_dim),
        "key": init.normal(k_k, (latent_dim, latent_dim)) / math.sqrt(latent_dim),
    }


def init_params(key: jax.Array, num_items: int, diffusion_config: diffusion.Config, config: Config) -> dict:
    k_den, k_cf = jax.random.split(key)
    return {
        "denoiser": diffusion.init_denoiser(k_den, num_items, diffusion_config, config.latent_dim),
        "counterfactual": init_counterfactual(k_cf, num_items, config.latent_dim),
    }


def user_latent(cf: dict, x: jax.Array) -> jax.Array:
    """``z = W_e^T xn + b_e``. ``x (B, I) -> (B, d)``."""
    return normalize_rows(x) @ cf["encoder"]["w"] + cf["encoder"]["b"]


def attention_weights(cf: dict, z: jax.Array, tokens: jax.Array) -> jax.Array:
    """``softmax_k(<W_q z, W_k e_{g,k}> / sqrt(d))``: ``z (B, d)``, tokens ``(G, k, I)`` -> ``(B, G, k)``."""
    token_latents = tokens @ cf["encoder"]["w"]  # (G, k, d)
    logits = jnp.einsum("bd,gkd->bgk", z @ cf["query"], token_latents @ cf["key"]) / math.sqrt(z.shape[-1])
    return jax.nn.softmax(logits, axis=-1)


def group_readout(cf: dict, z: jax.Array, tokens: jax.Array) -> jax.Array:
    """``o_g(z)`` for every group: attention of ``z (B, d)`` over each group's tokens ``(G, k, I)`` -> ``(B, G, d)``."""
    return jnp.einsum("bgk,gkd->bgd", attention_weights(cf, z, tokens), tokens @ cf["encoder"]["w"])


def input_shifts(cf: dict, x: jax.Array, z: jax.Array, own: jax.Array, tokens: jax.Array) -> jax.Array:
    """The group swap in interaction space: ``delta_g = ||x_u|| (r_g(z_u) - r_{g_u}(z_u))`` for every ``g``, where
    ``r_g = sum_k a_{g,k} y_{g,k}`` reads the tokens with the latent's attention weights. ``x (B, I)``, ``z (B, d)``,
    ``own (B,)`` -> ``(G, B, I)`` (row ``g_u`` is zero). ``W_e^T (xn_u + delta_g / ||x_u||) + b_e = C(z_u, g)``: the
    shifted vector's latent (before normalisation) is the counterfactual latent."""
    readout = jnp.einsum("bgk,gki->bgi", attention_weights(cf, z, tokens), tokens)  # (B, G, I)
    own_part = jnp.take_along_axis(readout, own[:, None, None], axis=1)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)[:, None, :]
    return jnp.moveaxis(norm * (readout - own_part), 1, 0)


def counterfactual_latents(cf: dict, z: jax.Array, own: jax.Array, tokens: jax.Array) -> jax.Array:
    """``C(z_u, g) = z_u - o_{g_u}(z_u) + o_g(z_u)`` for every ``g``: ``(G, B, d)`` (row ``g_u`` equals ``z_u``)."""
    readout = group_readout(cf, z, tokens)
    own_part = jnp.take_along_axis(readout, own[:, None, None], axis=1)  # (B, 1, d)
    return jnp.moveaxis(z[:, None, :] - own_part + readout, 1, 0)


def other_groups(key: jax.Array, own: jax.Array, num_groups: int) -> jax.Array:
    """A group other than ``own`` per row: ``1 - g`` for two groups, uniform among the others for more."""
    shift = jax.random.randint(key, own.shape, 1, num_groups)
    return (own + shift) % num_groups


def make_train_step(diffusion_config: diffusion.Config, config: Config, interactions: jax.Array,
                    user_groups: jax.Array, tokens: jax.Array, tx) -> Callable:
    """DifFaiRec's step ``(state, batch, key) -> (state, metrics)`` (not jitted; scan or jit it).

    Args:
      interactions: float ``(U, I)`` training vectors; user_groups: int ``(U,)``; tokens: ``(G, k, I)`` from
        :func:`group_tokens` (constants of the step); tx: from :func:`jaxfair.training.optim.make`.
      batch: ``{"users": int (B,), "weight": (B,)}``.

    The skeleton is :func:`jaxfair.backbones.diffusion.make_denoising_step`; each row's loss is ``mse_u +
    counterfactual_weight * mse_cf_u``, the factual and the counterfactual pass sharing t, the noise and the dropout
    mask, both denoising to the same target. Metrics: ``loss``, ``mse`` (factual), ``mse_cf``, ``agreement`` and
    ``grad_norm``.
    """
    dc = diffusion_config
    check_swap(dc, config)
    user_groups = jnp.asarray(user_groups, jnp.int32)
    tokens = jnp.asarray(tokens, jnp.float32)
    num_groups = tokens.shape[0]
    sqrt_abar = jnp.sqrt(diffusion.make_schedule(dc).abar)

    def row_losses(params, batch, x0, x_t, t, target, dropout_key, group_key):
        own, weight = user_groups[batch["users"]], batch["weight"]
        target_group = other_groups(group_key, own, num_groups)
        cf = params["counterfactual"]
        z = user_latent(cf, x0)
        conditions = counterfactual_latents(cf, z, own, tokens)  # (G, B, d)
        z_cf = jnp.take_along_axis(conditions, target_group[None, :, None], axis=0)[0]
        x_t_cf = x_t
        if config.swap == "input":  # a data transformation: no gradient reaches the attention through it
            shifts = jax.lax.stop_gradient(input_shifts(cf, x0, z, own, tokens))
            shift = jnp.take_along_axis(shifts, target_group[None, :, None], axis=0)[0]
            x_t_cf = x_t + sqrt_abar[t][:, None] * shift
        outputs = _denoise_shared_mask(params["denoiser"], x_t, x_t_cf, t, jnp.concatenate([z, z_cf]), dropout_key,
                                       dc.dropout)
        factual, counter = jnp.split(outputs, 2)
        mse, mse_cf = diffusion.row_mse(target, factual), diffusion.row_mse(target, counter)
        aux = {"mse": mse, "mse_cf": diffusion.weighted_mean(mse_cf, weight),
               "agreement": diffusion.weighted_mean(diffusion.row_mse(factual, counter), weight)}
        return mse + config.counterfactual_weight * mse_cf, aux

    return diffusion.make_denoising_step(dc, interactions, tx, row_losses)


def _denoise_shared_mask(params, x_t, x_t_cf, t, conditions, key, rate):
    """The factual and counterfactual passes with one dropout mask: they differ only by their condition (and, for
    ``swap = "input"``, by the input's group shift)."""
    dropped = diffusion.input_dropout(key, x_t, rate)
    dropped_cf = dropped if x_t_cf is x_t else diffusion.input_dropout(key, x_t_cf, rate)  # same key: same mask
    return diffusion.denoise(params, jnp.concatenate([dropped, dropped_cf]), jnp.concatenate([t, t]), conditions)


def check_swap(diffusion_config: diffusion.Config, config) -> None:
    """``swap = "input"`` needs ``mean_type = "x0"``: its counterfactual pass must denoise a shifted vector to the
    user's own ``x_0``, and with ``"eps"`` the shared noise target would instead imply the shifted ``x_0``."""
    if config.swap == "input" and diffusion_config.mean_type != "x0":
        raise ValueError(f'swap = "input" needs the diffusion mean_type "x0", got {diffusion_config.mean_type!r}')


def serving_conditions(params: dict, x: jax.Array, own: jax.Array, tokens: jax.Array, serve: str,
                       swap: str = "condition") -> tuple[jax.Array, jax.Array | None]:
    """The conditions a user is served under, ``(G, B, d)`` for ``"average"`` and ``(1, B, d)`` for ``"factual"``,
    and, for ``swap = "input"`` with ``"average"``, the matching input shifts ``(G, B, I)`` (else None)."""
    cf = params["counterfactual"]
    z = user_latent(cf, x)
    if serve == "factual":
        return z[None], None
    shifts = input_shifts(cf, x, z, own, tokens) if swap == "input" else None
    return counterfactual_latents(cf, z, own, tokens), shifts


def make_scorer(diffusion_config: diffusion.Config, config: Config, user_groups: jax.Array,
                tokens: jax.Array) -> Callable:
    """Jitted ``(params, x (B, I), users (B,)) -> scores (B, I)``: the reverse process with the denoiser's output
    averaged over the serving conditions at every step (:func:`jaxfair.backbones.diffusion.denoise_averaged`, which
    runs the condition-free part of the first layer and the linear last layer once, not once per condition)."""
    check_swap(diffusion_config, config)
    schedule = diffusion.make_schedule(diffusion_config)
    sqrt_abar = jnp.sqrt(schedule.abar)
    user_groups = jnp.asarray(user_groups, jnp.int32)
    tokens = jnp.asarray(tokens, jnp.float32)

    @jax.jit
    def scores(params, x, users):
        conditions, shifts = serving_conditions(params, x, user_groups[users], tokens, config.serve, config.swap)

        def predict(x_t, t):
            moved = None if shifts is None else sqrt_abar[t][None, :, None] * shifts
            return diffusion.denoise_averaged(params["denoiser"], x_t, t, conditions, moved)

        return diffusion.reverse(diffusion_config, schedule, predict, x)

    return scores


def make_latent_fn(diffusion_config: diffusion.Config, config: Config, user_groups: jax.Array,
                   tokens: jax.Array) -> Callable:
    """Jitted ``(params, x (B, I), users (B,)) -> (B, hidden[0])``: the probed user latent."""
    user_groups = jnp.asarray(user_groups, jnp.int32)
    tokens = jnp.asarray(tokens, jnp.float32)
    first = diffusion_config.reverse_steps - 1
    sqrt_abar = jnp.sqrt(diffusion.make_schedule(diffusion_config).abar)

    @jax.jit
    def latent(params, x, users):
        conditions, shifts = serving_conditions(params, x, user_groups[users], tokens, config.serve, config.swap)
        inputs = x[None] if shifts is None else x[None] + sqrt_abar[first] * shifts  # (G or 1, B, I)
        t = jnp.full((x.shape[0],), first, jnp.int32)
        hidden = jax.vmap(lambda x_g, c: diffusion.hidden_state(params["denoiser"], x_g, t, c), in_axes=(0, 0))
        return jnp.mean(hidden(jnp.broadcast_to(inputs, (conditions.shape[0], *x.shape)), conditions), axis=0)

    return latent


# --- the method contract -------------------------------------------------------------------------------------


class DiffusionData(NamedTuple):
    """The training interaction vectors ``(U, I)``, the users' groups and the model's functions: ``init(key) ->
    params``, ``make_step(tx) -> step``, ``scorer(params, x, users) -> (B, I)`` scores and ``latent(params, x,
    users) -> (B, h)`` probed latents."""

    interactions: np.ndarray
    groups: np.ndarray
    init: Callable
    make_step: Callable
    scorer: Callable
    latent: Callable


def _check(config: Config, run_config) -> None:
    require_ratio_split("DifFaiRec", run_config, "diffairec")
    require_attribute("diffairec.attribute", config.attribute, run_config)
    require_monitor_cutoff("diffairec.train.monitor", config.train, run_config)


def _prepare(context, config: Config) -> DiffusionData:
    split, dc = context.split, config.diffusion
    interactions = split.train_matrix().astype(np.float32)
    groups = np.asarray(split.user_attributes[config.attribute], np.int32)
    if config.group_vectors == "none":
        return DiffusionData(interactions, groups, lambda key: diffusion.init_denoiser(key, split.num_items, dc),
                             lambda tx: diffusion.make_train_step(dc, interactions, tx), diffusion.make_scorer(dc),
                             diffusion.make_latent_fn(dc))
    num_groups = len(split.attribute_classes[config.attribute])
    tokens = group_tokens(interactions, groups, num_groups, config)
    return DiffusionData(interactions, groups, lambda key: init_params(key, split.num_items, dc, config),
                         lambda tx: make_train_step(dc, config, interactions, groups, tokens, tx),
                         make_scorer(dc, config, groups, tokens), make_latent_fn(dc, config, groups, tokens))


def all_user_scores(data: DiffusionData, params, batch_size: int) -> np.ndarray:
    """Every user's item scores ``(U, I)`` from their training vector, in batches of ``batch_size`` users."""
    return diffusion.all_scores(lambda x, users: data.scorer(params, x, users), data.interactions, batch_size)


def _models(context, data: DiffusionData, config: Config, fitted: dict) -> list[Model]:
    split, batch = context.split, context.evaluate.batch_size
    tx = optim.make(config.train)
    items = items_placeholder(split.num_items)

    def validate(params):
        scores = {"valid": all_user_scores(data, params, batch)}
        block = split_ranking(precomputed_score, scores, items, split, ("full",), tuple(context.evaluate.ks), batch,
                              ("valid",))
        return block["full"]["valid"]

    return [Model(name="diffairec", train=config.train,
                  init=lambda key: diffusion.init_state(data.init(key), tx, config.diffusion),
                  step=data.make_step(tx),
                  batches=lambda rng: diffusion.user_batches(split.num_users, rng, config.train.batch_size),
                  validate=validate)]


def _evaluate(context, data: DiffusionData, fitted: dict, config: Config) -> Evaluation:
    params, batch = fitted["diffairec"].best_params, context.evaluate.batch_size
    scores = all_user_scores(data, params, batch)
    latents = diffusion.all_scores(lambda x, users: data.latent(params, x, users), data.interactions, batch)
    return evaluate_scores(context, scores, latents, config.attribute)


def serve(data: DiffusionData, params: dict, config: Config, interactions: jax.Array, users=None) -> jax.Array:
    """Item scores ``(B, I)`` of users from their interaction rows ``(B, I)`` (``users``: their indices, int
    ``(B,)``, which give their groups; default ``0..B-1``), under the configured serving."""
    users = jnp.arange(interactions.shape[0]) if users is None else jnp.asarray(users)
    return data.scorer(params["diffairec"], jnp.asarray(interactions, jnp.float32), users)


METHOD = Method("diffairec", Config, frozen_backbone=False, check=_check, prepare=_prepare, models=_models,
                evaluate=_evaluate, serve=serve, report=lambda results: gap_report(results, "diffairec"),
                description="DifFaiRec (Jiang & Fan, ICDM 2024): counterfactual conditional diffusion; DiffRec "
                            "as group_vectors none")
