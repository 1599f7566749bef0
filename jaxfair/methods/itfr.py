"""ITFR: intersectional two-sided fairness in recommendation (Wang et al., "Intersectional Two-sided Fairness in
Recommendation", WWW 2024), with GroupDRO and plain BPR as switches of the same jitted step.

Notation: a batch holds ``B`` BPR rows ``r = (u_r, i_r, j_r)`` (user, training positive, sampled negative) with
weight ``w_r`` (0 on padding). Users fall into ``A`` groups (a user attribute), items into ``C`` groups (genres);
row ``r`` belongs to the intersectional group ``g_r = a(u_r) C + c(i_r)`` (its positive item's group), ``G = A C``.
``theta`` is every backbone parameter, flattened to ``(P,)`` where a formula needs a vector.

* **Predicted score normalisation** (``score_normalization``): ``s(u, i) = cos(e_u, e_i) / tau``; off, the inner
  product ``<e_u, e_i>``. ``e`` comes from the backbone's embedding map (tables for MF, propagation for LightGCN).
* **Per-group BPR**, one vectorised pass with group membership as a ``(B, G)`` mask (static shapes, no boolean
  indexing):

      l_r = -log sigmoid(s(u_r, i_r) - s(u_r, j_r)),   m_rg = w_r [g_r = g],   n_g = sum_r m_rg
      L_g(theta) = sum_r m_rg l_r / max(n_g, 1)                        (L_g = 0 for a group absent from the batch)

* **Sharpness-aware group losses** (``sam``; first-order SAM): with ``grad_g = dL_g/dtheta`` at ``theta``,

      eps_g = rho grad_g / (||grad_g|| + 1e-12),   L~_g = L_g(theta + eps_g),   grad~_g = dL_g/dtheta at theta + eps_g

  The ``G`` perturbed points are fresh arrays ``theta + eps_g`` (one ``jax.vmap``); ``theta`` itself is never
  changed, so the update below is applied at exactly the point the step started from. Without ``sam``,
  ``L~ = L`` and ``grad~ = grad``.
* **Collaborative loss balance** (``balance = "collaborative"``): with ``Gbar_j`` the previous epoch's gradient of
  group ``j`` (``sum over its batches of n_j grad_j``, kept in the train state) and ``Lbar_j`` its mean ``L~_j``,

      S_ij = cos(grad~_i, Gbar_j)  (i != j),   S_ii = 1                 (S = I during the first epoch)
      M_ij = sqrt(L~_i Lbar_j)     (i != j),   M_ii = L~_i              (first epoch: Lbar = this batch's L~)
      p_j  = L~_j^gamma / sum_k L~_k^gamma
      e_i  = eta sum_j M_ij S_ij p_j

  A group is pushed up by its own (sharpness-aware) loss and by the losses of the groups its gradient helps.
  ``balance = "groupdro"`` uses ``e_i = eta L~_i`` (online GroupDRO, Sagawa et al. 2020, over the intersectional
  groups); ``balance = "none"`` keeps no weights and descends the row-mean loss.
* **Weights** (multiplicative, as in GroupDRO): ``q_i <- q_i exp(e_i - max e)``, renormalised, then floored at
  ``weight_floor``. The update direction is ``sum_g q_g grad~_g`` (for ``"none"``: ``sum_g (n_g / n) grad~_g``, the
  row-mean gradient), fed to Adam (``optax.adamw``-free: coupled L2 ``[itfr.train] weight_decay`` as in the authors'
  code; :func:`jaxfair.training.optim.make`).

Baselines through the same step and the same contract: plain BPR is ``balance = "none"``, ``sam = false``; online
GroupDRO over the intersectional groups is ``balance = "groupdro"``, ``sam = false``; the paper's ablations are
``sam = false`` (w/o SAM), ``balance = "groupdro"`` (w/o collaborative balance), ``score_normalization = false``
(w/o normalisation). ``configs/grids/itfr_variants.toml`` runs them side by side (:data:`VARIANTS`).

Choices where the paper is silent or the authors' code (yfwang2021/ITFR) differs, recorded on purpose:

* Groups absent from a batch. The authors' code skips the weight update for the whole batch when any group is
  missing. Here the present groups are updated among themselves and every absent group keeps its weight exactly
  (``q`` of the present groups is rescaled to the mass they had), so with many groups the weights still move. An
  absent group contributes no gradient, no epoch statistics, and its ``eps`` is 0.
* The authors' SAM restore aliases the saved copy to the live parameters, so perturbations accumulate across groups
  and batches; here nothing is mutated (tested: the step's update is the optimizer applied at the original point).
* ``Gbar`` sums *point* gradients (before perturbation), weighted by the group's rows in each batch, as the authors'
  code does (their extra ``/100`` scale cancels in the cosine).
* Training negatives avoid every known positive (the authors' sampler avoids training positives only).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxfair.backbones import lightgcn
from jaxfair.backbones.base import padded_batches
from jaxfair.data.groups import genre_item_groups, group_counts, intersectional_groups
from jaxfair.data.preprocess import ITFR_GENRES
from jaxfair.data.sampling import sample_negatives
from jaxfair.methods.base import (Evaluation, Method, Model, require, require_attribute, require_monitor_cutoff,
                                  require_ratio_split)
from jaxfair.metrics.intersectional import intersectional_report
from jaxfair.metrics.ranking import split_ranking
from jaxfair.tables import format_table
from jaxfair.training import optim
from jaxfair.training.trainer import TrainConfig

BALANCES = ("collaborative", "groupdro", "none")
SUPPORTED_BACKBONES = ("cosine_mf", "pmf", "lightgcn")
# The baselines and ablations as settings of this method (``configs/grids/itfr_variants.toml`` lists them).
VARIANTS: dict[str, dict] = {
    "bpr": {"balance": "none", "sam": False},
    "groupdro": {"balance": "groupdro", "sam": False},
    "itfr": {},
    "itfr_no_sam": {"sam": False},
    "itfr_no_balance": {"balance": "groupdro"},
    "itfr_no_norm": {"score_normalization": False},
}
REPORT_KS = (10, 20, 50)
DENSE_LIMIT = 1 << 24  # U * I entries (64 MiB of float32) up to which LightGCN propagates on a dense adjacency


@dataclasses.dataclass(frozen=True)
class Config:
    """ITFR's knobs (the ``[itfr]`` config section). Defaults are the authors' MovieLens settings.

    Attributes:
      user_attribute: the user attribute whose classes are the user groups.
      item_genres: the genres whose positions are the item groups (every item must have exactly one).
      score_normalization: cosine / ``tau`` scores (True) or inner products (False).
      tau: temperature of the normalised score.
      sam: sharpness-aware group losses.
      rho: SAM radius.
      balance: ``"collaborative"`` (ITFR), ``"groupdro"`` or ``"none"`` (plain BPR).
      eta: step size of the multiplicative weight update.
      gamma: exponent of the losses in ``p`` (collaborative balance only).
      weight_floor: lower bound of a group weight after each update.
      train: the loop (``[itfr.train]``) training the backbone from scratch: Adam at ``learning_rate`` with coupled
        L2 ``weight_decay``, early stopping on the full-ranking validation ``monitor``.
    """

    user_attribute: str = "gender"
    item_genres: tuple[str, ...] = ITFR_GENRES
    score_normalization: bool = True
    tau: float = 0.2
    sam: bool = True
    rho: float = 0.02
    balance: str = "collaborative"
    eta: float = 0.05
    gamma: float = 0.5
    weight_floor: float = 1e-5
    train: TrainConfig = TrainConfig(epochs=200, batch_size=1024, learning_rate=1e-3, patience=30,
                                     monitor="ndcg@20", checkpoint_every=20)

    def __post_init__(self):
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {list(BALANCES)}, got {self.balance!r}")
        if not self.item_genres:
            raise ValueError("item_genres must list at least one genre")
        for name in ("tau", "rho", "eta", "gamma", "weight_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_floor >= 1:
            raise ValueError(f"weight_floor must be below 1, got {self.weight_floor}")

    @property
    def needs_group_gradients(self) -> bool:
        """Per-group gradients are needed for SAM and for the gradient-similarity matrix."""
        return self.sam or self.balance == "collaborative"


ItfrConfig = Config


class ItfrState(NamedTuple):
    """Train state; ``G`` groups, ``P`` flattened parameters.

    Attributes:
      params, opt_state, step: backbone parameters, Adam state, batches seen.
      weights: float32 ``(G,)`` group weights ``q`` (uniform at start).
      grad_sum: ``(G, P)`` this epoch's ``sum n_g grad_g``; prev_grads: the previous epoch's (``Gbar``).
      loss_sum, count_sum: ``(G,)`` this epoch's ``sum n_g L~_g`` and ``sum n_g``; prev_loss: ``Lbar`` ``(G,)``.
      epoch: int32, epochs completed (0 = first epoch: no ``Gbar`` yet).
    """

    params: object
    opt_state: object
    step: jax.Array
    weights: jax.Array
    grad_sum: jax.Array
    prev_grads: jax.Array
    loss_sum: jax.Array
    count_sum: jax.Array
    prev_loss: jax.Array
    epoch: jax.Array


EmbedFn = Callable[[object], tuple[jax.Array, jax.Array]]


def make_score(config: Config) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``score(u (..., d), v (..., d)) -> (...)``: ``cos(u, v) / tau`` or ``<u, v>``."""

    def normalize(x):
        return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)

    if config.score_normalization:
        return lambda u, v: jnp.sum(normalize(u) * normalize(v), axis=-1) / config.tau
    return lambda u, v: jnp.sum(u * v, axis=-1)


def row_losses(params, batch: dict, embed: EmbedFn, score: Callable) -> jax.Array:
    """``l_r = -log sigmoid(s(u, i) - s(u, j))`` per row, ``(B,)`` (padding rows included; weight them out)."""
    users, items = embed(params)
    u = users[batch["user"]]
    return -jax.nn.log_sigmoid(score(u, items[batch["pos"]]) - score(u, items[batch["neg"]]))


def group_losses(params, batch: dict, embed: EmbedFn, score: Callable, num_groups: int):
    """Per-group mean BPR in one pass.

    Returns:
      ``(L (G,), n (G,))``: ``L_g = sum_r m_rg l_r / max(n_g, 1)`` and ``n_g = sum_r m_rg``, with
      ``m_rg = weight_r [group_r = g]``.
    """
    losses = row_losses(params, batch, embed, score)
    mask = jax.nn.one_hot(batch["group"], num_groups, dtype=jnp.float32) * batch["weight"][:, None]
    counts = jnp.sum(mask, axis=0)
    return jnp.sum(mask * losses[:, None], axis=0) / jnp.maximum(counts, 1.0), counts


def perturbations(grads: jax.Array, rho: float) -> jax.Array:
    """SAM's ``eps_g = rho grad_g / (||grad_g|| + 1e-12)`` for stacked flat gradients ``(G, P)``; a zero gradient
    (absent group) gives a zero perturbation."""
    norms = jnp.sqrt(jnp.sum(grads * grads, axis=-1, keepdims=True))
    return rho * grads / (norms + 1e-12)


def pairwise_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """``(G, G)`` cosine similarities of the rows of ``a`` with the rows of ``b`` (0 where either is zero)."""
    dots = a @ b.T
    norms = jnp.sqrt(jnp.sum(a * a, axis=-1))[:, None] * jnp.sqrt(jnp.sum(b * b, axis=-1))[None, :]
    return dots / jnp.maximum(norms, 1e-12)


def collaborative_exponents(
    losses: jax.Array, grads: jax.Array, prev_grads: jax.Array, prev_loss: jax.Array, first_epoch, eta: float,
    gamma: float,
) -> jax.Array:
    """``e = eta (M * S) p`` of the collaborative loss balance (module docstring), ``(G,)``.

    Args:
      losses: ``L~`` ``(G,)``; grads: ``grad~`` ``(G, P)``; prev_grads: ``Gbar`` ``(G, P)``; prev_loss: ``Lbar``.
      first_epoch: bool scalar; True gives ``S = I`` and ``Lbar = L~``.
    """
    num_groups = losses.shape[0]
    eye = jnp.eye(num_groups, dtype=losses.dtype)
    similarity = jnp.where(first_epoch, eye, pairwise_cosine(grads, prev_grads) * (1 - eye) + eye)
    other = jnp.where(first_epoch, losses, prev_loss)
    scale = jnp.sqrt(jnp.maximum(losses, 0.0))[:, None] * jnp.sqrt(jnp.maximum(other, 0.0))[None, :]
    scale = scale * (1 - eye) + jnp.diag(losses)
    powered = jnp.maximum(losses, 0.0) ** gamma
    p = powered / jnp.maximum(jnp.sum(powered), 1e-12)
    return eta * (scale * similarity) @ p


def update_weights(weights: jax.Array, exponents: jax.Array, present: jax.Array, floor: float) -> jax.Array:
    """Multiplicative update of the present groups, ``q_i <- q_i exp(e_i - max e)`` renormalised to the mass the
    present groups had; absent groups keep their weight; then ``q = max(q, floor)``. No group present: unchanged."""
    shift = jnp.max(jnp.where(present, exponents, -jnp.inf))
    grown = jnp.where(present, weights * jnp.exp(jnp.where(present, exponents - shift, 0.0)), 0.0)
    mass = jnp.sum(jnp.where(present, weights, 0.0))
    new = jnp.where(present, mass * grown / jnp.maximum(jnp.sum(grown), 1e-30), weights)
    new = jnp.where(jnp.any(present), new, weights)
    return jnp.maximum(new, floor)


def init_state(params, tx: optax.GradientTransformation, num_groups: int) -> ItfrState:
    """Uniform weights, zero epoch statistics."""
    size = ravel_pytree(params)[0].shape[0]
    zeros_g = jnp.zeros((num_groups,), jnp.float32)
    return ItfrState(
        params=params,
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
        weights=jnp.full((num_groups,), 1.0 / num_groups, jnp.float32),
        grad_sum=jnp.zeros((num_groups, size), jnp.float32),
        prev_grads=jnp.zeros((num_groups, size), jnp.float32),
        loss_sum=zeros_g,
        count_sum=zeros_g,
        prev_loss=zeros_g,
        epoch=jnp.zeros((), jnp.int32),
    )


def group_gradients(params, batch, embed: EmbedFn, score: Callable, num_groups: int, rho: float | None):
    """Point and (with ``rho``) sharpness-aware losses and parameter gradients of every group, without ``G``
    backward passes through the batch.

    Each row's loss depends only on its own user, positive and negative embeddings, and each row belongs to one
    group, so one backward pass over the rows gives every group's gradient with respect to the embeddings:
    ``dL_g/dx_r = (m_rg / n_g) dl_r/dx_r``, scattered into a ``(G, U, d)`` / ``(G, I, d)`` pair by
    ``segment_sum``; the embedding map's VJP (``jax.vmap``-ed over groups) takes them to parameter space. For SAM,
    the ``G`` perturbed points ``theta + eps_g`` go through the embedding map in one ``jax.vmap``; row ``r`` reads its
    embeddings from its own group's perturbed copy (the only one its loss enters), so the ``G`` perturbed losses are
    again one pass over the rows. Exact for any embedding map (tested against one ``jax.grad`` per group).

    Returns:
      ``(L, n, grads, L~, grads~)``: ``(G,)``, ``(G,)``, flat ``(G, P)``, ``(G,)``, ``(G, P)``; without ``rho``,
      ``L~ = L`` and ``grads~ = grads``.
    """
    flat, unravel = ravel_pytree(params)
    embed_flat = lambda f: embed(unravel(f))
    user, pos, neg, group = batch["user"], batch["pos"], batch["neg"], batch["group"]
    mask = jax.nn.one_hot(group, num_groups, dtype=jnp.float32) * batch["weight"][:, None]
    counts = jnp.sum(mask, axis=0)
    coefficient = batch["weight"] / jnp.maximum(counts, 1.0)[group]  # d L_{g_r} / d l_r

    def rows(u, p, n):
        return -jax.nn.log_sigmoid(score(u, p) - score(u, n))

    def losses_and_embedding_grads(u, p, n):
        losses, row_vjp = jax.vjp(rows, u, p, n)
        du, dp, dn = row_vjp(coefficient)
        num_users, num_items = users.shape[0], items.shape[0]
        user_grad = jax.ops.segment_sum(du, group * num_users + user, num_segments=num_groups * num_users)
        item_grad = jax.ops.segment_sum(
            jnp.concatenate([dp, dn]),
            jnp.concatenate([group * num_items + pos, group * num_items + neg]),
            num_segments=num_groups * num_items,
        )
        group_loss = jnp.sum(mask * losses[:, None], axis=0) / jnp.maximum(counts, 1.0)
        return group_loss, (user_grad.reshape(num_groups, num_users, -1), item_grad.reshape(num_groups, num_items, -1))

    (users, items), embed_vjp = jax.vjp(embed_flat, flat)
    losses, embedding_grads = losses_and_embedding_grads(users[user], items[pos], items[neg])
    grads = jax.vmap(lambda cotangent: embed_vjp(cotangent)[0])(embedding_grads)
    if rho is None:
        return losses, counts, grads, losses, grads
    perturbed = flat[None, :] + perturbations(grads, rho)
    perturbed_users, perturbed_items = jax.vmap(embed_flat)(perturbed)
    sa_losses, sa_embedding_grads = losses_and_embedding_grads(
        perturbed_users[group, user], perturbed_items[group, pos], perturbed_items[group, neg]
    )
    sa_grads = jax.vmap(lambda point, cotangent: jax.vjp(embed_flat, point)[1](cotangent)[0])(
        perturbed, sa_embedding_grads
    )
    return losses, counts, grads, sa_losses, sa_grads


def make_train_step(embed: EmbedFn, num_groups: int, config: Config, tx: optax.GradientTransformation):
    """One jitted-ready batch update ``(state, batch, key) -> (state, metrics)``.

    Args:
      embed: ``params -> (users (U, d), items (I, d))``, the backbone's embedding map.
      num_groups: ``G``.
      config: the switches and constants.
      tx: from :func:`jaxfair.training.optim.make`.

    ``batch``: ``user``, ``pos``, ``neg``, ``group`` int32 ``(B,)`` and ``weight`` float32 ``(B,)``. Metrics:
    ``loss`` (row-mean BPR at ``theta``), ``objective`` (``sum_g q_g L~_g``), ``weight_min``, ``weight_max``.
    """
    score = make_score(config)

    def apply(state, direction):
        updates, opt_state = tx.update(direction, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    def step(state: ItfrState, batch: dict, key: jax.Array):
        del key  # deterministic given the batch
        if not config.needs_group_gradients:
            (losses, counts), vjp = jax.vjp(lambda p: group_losses(p, batch, embed, score, num_groups), state.params)
            present = counts > 0
            if config.balance == "none":
                weights, coefficients = state.weights, counts / jnp.maximum(jnp.sum(counts), 1.0)
            else:
                weights = update_weights(state.weights, config.eta * losses, present, config.weight_floor)
                coefficients = weights
            direction = vjp((coefficients, jnp.zeros_like(counts)))[0]
            params, opt_state = apply(state, direction)
            new_state = state._replace(params=params, opt_state=opt_state, step=state.step + 1, weights=weights)
            return new_state, _metrics(losses, counts, losses, weights)

        losses, counts, grads, sa_losses, sa_grads = group_gradients(
            state.params, batch, embed, score, num_groups, config.rho if config.sam else None
        )
        present = counts > 0
        if config.balance == "collaborative":
            exponents = collaborative_exponents(
                sa_losses, sa_grads, state.prev_grads, state.prev_loss, state.epoch == 0, config.eta, config.gamma
            )
            weights = update_weights(state.weights, exponents, present, config.weight_floor)
            coefficients = weights
        elif config.balance == "groupdro":
            weights = update_weights(state.weights, config.eta * sa_losses, present, config.weight_floor)
            coefficients = weights
        else:
            weights, coefficients = state.weights, counts / jnp.maximum(jnp.sum(counts), 1.0)
        coefficients = jnp.where(present, coefficients, 0.0)
        _, unravel = ravel_pytree(state.params)
        direction = unravel(coefficients @ sa_grads)
        params, opt_state = apply(state, direction)
        new_state = state._replace(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            weights=weights,
            grad_sum=state.grad_sum + counts[:, None] * grads if config.balance == "collaborative" else state.grad_sum,
            loss_sum=state.loss_sum + counts * sa_losses,
            count_sum=state.count_sum + counts,
        )
        return new_state, _metrics(losses, counts, sa_losses, weights)

    return step


def _metrics(losses, counts, sa_losses, weights) -> dict:
    return {
        "loss": jnp.sum(losses * counts) / jnp.maximum(jnp.sum(counts), 1.0),
        "objective": jnp.sum(weights * sa_losses),
        "weight_min": jnp.min(weights),
        "weight_max": jnp.max(weights),
    }


def end_epoch(state: ItfrState) -> ItfrState:
    """Roll the epoch statistics: ``Gbar <- grad_sum``, ``Lbar_g <- loss_sum_g / count_sum_g`` (kept where the group
    had no rows), clear the sums, count the epoch."""
    seen = state.count_sum > 0
    return state._replace(
        prev_grads=state.grad_sum,
        grad_sum=jnp.zeros_like(state.grad_sum),
        prev_loss=jnp.where(seen, state.loss_sum / jnp.maximum(state.count_sum, 1.0), state.prev_loss),
        loss_sum=jnp.zeros_like(state.loss_sum),
        count_sum=jnp.zeros_like(state.count_sum),
        epoch=state.epoch + 1,
    )


def epoch_batches(
    users: np.ndarray, items: np.ndarray, groups: np.ndarray, positives: np.ndarray, rng: np.random.Generator,
    batch_size: int,
) -> dict:
    """One shuffled epoch of BPR rows with their intersectional group.

    Args:
      users, items: int ``(R,)`` training positives; groups: int ``(R,)`` their groups.
      positives: bool ``(U, I)`` every known positive (negatives are drawn outside it), or the same as
        :class:`~jaxfair.data.dataset.UserItems` (:meth:`~jaxfair.data.dataset.Split.known_positives`).

    Returns:
      ``user``, ``pos``, ``neg``, ``group``, ``weight`` stacked ``(num_batches, batch_size)``; padding weight 0.
    """
    rows = {
        "user": np.asarray(users, np.int32),
        "pos": np.asarray(items, np.int32),
        "neg": sample_negatives(positives, users, 1, rng)[:, 0],
        "group": np.asarray(groups, np.int32),
    }
    return padded_batches(rows, batch_size, rng)


# --- the method contract -------------------------------------------------------------------------------------


class ItfrData(NamedTuple):
    """ITFR's constants for a split: user and item groups (``A`` and ``C`` of them, ``names`` ``"user|item"``), each
    training row's intersectional group, every known positive (negatives avoid them), the backbone's functions and
    its constants, and its embedding map ``params -> (users (U, d), items (I, d))``."""

    user_group: np.ndarray
    item_group: np.ndarray
    num_user_groups: int
    num_item_groups: int
    names: list
    row_groups: np.ndarray
    positives: object  # bool (U, I), or UserItems above the memory rule (Split.known_positives)
    backbone: object
    embed: Callable

    @property
    def num_groups(self) -> int:
        return self.num_user_groups * self.num_item_groups


def _check(config: Config, run_config) -> None:
    """ConfigErrors, before any data is read, for settings ITFR cannot honour."""
    require_ratio_split("ITFR", run_config, "itfr")
    backbone = run_config.backbone
    require(backbone.name in SUPPORTED_BACKBONES, f"backbone.name: ITFR trains {list(SUPPORTED_BACKBONES)} "
            f"(embedding tables, optionally propagated), not {backbone.name!r}")
    require(getattr(backbone.config, "l2", 0.0) == 0.0,
            "backbone.l2: ITFR's losses carry no L2 term; set backbone.l2 = 0 and use itfr.train.weight_decay")
    require(backbone.name != "cosine_mf" or backbone.config.tau == config.tau,
            f"backbone.tau ({getattr(backbone.config, 'tau', None)}) differs from itfr.tau ({config.tau}): ITFR "
            "scores with itfr.tau; set both to the same value")
    require_attribute("itfr.user_attribute", config.user_attribute, run_config)
    require_monitor_cutoff("itfr.train.monitor", config.train, run_config)


def embedding_map(backbone, backbone_config, context, split) -> Callable:
    """``params -> (users (U, d), items (I, d))``: the backbone's own embedding functions, except LightGCN, whose
    propagation runs on a dense adjacency when ``U I <= DENSE_LIMIT`` (the same map; ITFR pushes ``3 G`` vmapped
    propagations through it per step: batched matmuls, where vmapped edge scatters are slow on CPU)."""
    if backbone.name == "lightgcn" and split.num_users * split.num_items <= DENSE_LIMIT:
        adjacency = lightgcn.dense_adjacency(context, split.num_users, split.num_items)
        layers = backbone_config.num_layers
        return lambda params: lightgcn.propagate_dense(params["user"], params["item"], adjacency, layers)
    return lambda params: (backbone.user_embeddings(params, context, "valid"),
                           backbone.item_embeddings(params, context))


def _prepare(context, config: Config) -> ItfrData:
    """The groups of the split (DataError when an item has not exactly one of the group genres)."""
    split, backbone = context.split, context.backbone
    user_group = split.user_attributes[config.user_attribute]
    user_names = split.attribute_classes[config.user_attribute]
    item_group = genre_item_groups(split.item_genres, split.genre_names, config.item_genres)
    num_item_groups = len(config.item_genres)
    row_groups = intersectional_groups(user_group, item_group, split.train_users, split.train_items, num_item_groups)
    return ItfrData(
        user_group=user_group, item_group=item_group, num_user_groups=len(user_names),
        num_item_groups=num_item_groups, names=[f"{a}|{c}" for a in user_names for c in config.item_genres],
        row_groups=row_groups, positives=split.known_positives(), backbone=backbone,
        embed=embedding_map(backbone, context.backbone_config, backbone.context(split), split),
    )


def _models(context, data: ItfrData, config: Config, fitted: dict) -> list[Model]:
    split = context.split
    score = make_score(config)
    tx = optim.make(config.train)
    embed_jit = jax.jit(data.embed)

    def validate(params):
        users, items = embed_jit(params)
        block = split_ranking(score, {"valid": users}, items, split, ("full",), tuple(context.evaluate.ks),
                              context.evaluate.batch_size, ("valid",))
        return block["full"]["valid"]

    return [Model(
        name="itfr", train=config.train,
        init=lambda key: init_state(data.backbone.init(key, split), tx, data.num_groups),
        step=make_train_step(data.embed, data.num_groups, config, tx),
        batches=lambda rng: epoch_batches(split.train_users, split.train_items, data.row_groups, data.positives, rng,
                                          config.train.batch_size),
        validate=validate, end_epoch=end_epoch,
    )]


def _evaluate(context, data: ItfrData, fitted: dict, config: Config) -> Evaluation:
    """Validation and test full-ranking metrics and the intersectional report at :data:`REPORT_KS` and the
    configured cut-offs."""
    split, fit = context.split, fitted["itfr"]
    ks = tuple(sorted(set(REPORT_KS) | set(context.evaluate.ks)))
    score = make_score(config)
    users, items = jax.jit(data.embed)(fit.best_params)
    ranking = split_ranking(score, {"valid": users, "test": users}, items, split, ("full",), ks,
                            context.evaluate.batch_size)["full"]
    reports = {stage: intersectional_report(
        score, users, items, *split.ranking_masks(stage), data.user_group,
        data.item_group, data.num_user_groups, data.num_item_groups, ks, context.evaluate.batch_size)
        for stage in ("valid", "test")}
    results = {
        "groups": {"user_attribute": config.user_attribute,
                   "user_groups": list(split.attribute_classes[config.user_attribute]),
                   "item_groups": list(config.item_genres), "names": data.names,
                   "train_rows": group_counts(data.row_groups, data.num_groups).tolist()},
        "final_weights": np.asarray(fit.state.weights).tolist(),
        "valid": ranking["valid"], "test": ranking["test"],
        "valid_intersectional": reports["valid"], "intersectional": reports["test"],
    }
    tables = {stage: {"all": {**ranking[stage], **{f"{name}@{k}": reports[stage][f"@{k}"][name]
                                                    for k in ks for name in ("cv", "min", "ucv", "icv")}}}
              for stage in ("valid", "test")}
    heat_k = max([k for k in REPORT_KS if k <= 20] or [REPORT_KS[0]])
    return Evaluation(results=results, tables=tables,
                      figures={"recall_matrix.png": lambda full: heatmap_figure(full, heat_k)})


def serve(data: ItfrData, params: dict, config: Config, inputs=None, control=None) -> jax.Array:
    """The trained backbone's user embeddings ``(U, d)`` (ITFR has no control input; score them with
    :func:`make_score`)."""
    del inputs, control
    return data.embed(params["itfr"])[0]


def report(results: dict, k: int = 20) -> str:
    """Test Recall/NDCG@k and the recall matrix's statistics at k."""
    block = results["itfr"]
    fairness = block["intersectional"][f"@{k}"]
    fit = results["models"]["itfr"]
    row = {f"recall@{k}": block["test"][f"recall@{k}"], f"ndcg@{k}": block["test"][f"ndcg@{k}"],
           **{f"{name}@{k}": fairness[name] for name in ("cv", "min", "ucv", "icv")},
           "epochs": fit["epochs_run"], "s/epoch": fit["seconds_per_epoch"]}
    config = results["config"]["itfr"]
    header = (f"test, {results['backbone']['name']} backbone, balance={config['balance']} sam={config['sam']} "
              f"score_normalization={config['score_normalization']} (CV/UCV/ICV: lower is fairer; MIN: higher is "
              "fairer)\n")
    return header + format_table([row], list(row))


def heatmap_figure(results: dict, k: int = 20):
    """Heat map of the test ``R@k`` (user groups x item groups) with its CV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    block = results["itfr"]
    matrix = np.asarray(block["intersectional"][f"@{k}"]["matrix"], float)
    user_names, item_names = block["groups"]["user_groups"], block["groups"]["item_groups"]
    figure, ax = plt.subplots(figsize=(0.7 * len(item_names) + 2.5, 0.6 * len(user_names) + 2.2))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_title(f"test Recall@{k}, CV@{k} = {block['intersectional'][f'@{k}']['cv']:.3f}", fontsize=9)
    ax.set_xticks(range(len(item_names)), item_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(user_names)), user_names, fontsize=8)
    for (a, c), value in np.ndenumerate(matrix):
        ax.text(c, a, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    figure.colorbar(image, ax=ax, label=f"Recall@{k}")
    figure.tight_layout()
    return figure


METHOD = Method("itfr", Config, frozen_backbone=False, check=_check, prepare=_prepare, models=_models,
                evaluate=_evaluate, serve=serve, report=report,
                description="ITFR (Wang et al., WWW 2024): intersectional two-sided fairness; BPR and GroupDRO as "
                            "its settings")
