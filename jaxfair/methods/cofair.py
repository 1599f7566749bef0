"""Cofair: one model whose fairness strength is chosen after training (Chen et al., "Post-Training Fairness
Control: A Single-Train Framework for Dynamic Fairness in Recommendation", WWW 2026 companion / HCRS).

Given a frozen backbone's user embedding ``e`` (``d``-dimensional), its frozen item embeddings and one sensitive
attribute with ``K`` classes, Cofair learns a filter with ``T`` fairness levels (paper section 3.1):

    s      = W_s e + b_s                                      shared layer, (d_s,)
    p_t    = W_t e + b_t                                      adapter of level t = 1..T, (d_p,)
    e_t    = W_o LeakyReLU_0.2([s ; p_t]) + b_o               output layer shared by all levels, (d,)
    e_0    = e                                                level 0 is the original embedding (identity)

All T levels are one ``jax.vmap`` over the stacked adapters (:func:`level_embeddings`). A discriminator ``D``
(2-layer MLP ``d -> 32 -> K``) predicts the attribute from ``e_t``; the attacker loss of user ``u`` at level ``t`` is
``l_t(u) = CE(D(e_t(u)), a_u)`` and ``L_t`` is its mean over the batch. One batch of BPR rows ``(u, i, j)`` updates,
in order:

1. ``D`` (``discriminator_steps`` Adam steps): ``min_D (1/T) sum_t L_t`` on the (stopped) level embeddings;
2. the filter (shared layer, adapters, output layer; one Adam step) on

       L = (1/T) sum_{t=1..T} [ BPR_t - lambda_t L_t ] + beta R,
       BPR_t = -mean log sigmoid(<e_t(u), v_i> - <e_t(u), v_j>)    through the frozen item embeddings (backbone scorer)

   with the adaptive level weights (Eq. 10; recomputed every batch from the current attacker losses, no gradient)

       lambda_1 = lambda_0,   lambda_t = lambda_{t-1} + alpha (1 - (L_t - L_{t-1}))     t = 2..T

   so a level that did not gain attacker loss over the previous one gets a larger push, and the user-level
   monotonicity regulariser

       R = mean_{t=1..T-1} mean_u max(0, softplus(l_t(u) - l_{t+1}(u)) - log 2).

Choices where the paper is silent or its public code (WeixinChen98/Cofair) differs, recorded on purpose:

* ``R`` subtracts ``softplus(0) = log 2`` and clips at zero. The public code uses ``softplus(l_t - l_{t+1})``
  itself, which is never zero and keeps pushing users whose losses are already in order; here ``R`` is exactly zero
  when every user's attacker loss is non-decreasing over the levels and positive otherwise (gradient >= 1/2 on a
  violating pair), so it only acts on violations.
* The adversary. ``adversary = "paper"`` (the default) is the paper's ``-lambda_t L_t``: unbounded below, so the
  filter can lower it by making D confidently *wrong* (flipping the attribute's encoding one step ahead of D), which
  leaves the attribute recoverable by a fresh probe. ``adversary = "confusion"`` keeps the min-max structure but
  gives the filter a bounded target, ``+lambda_t C_t`` with ``C_t`` the cross-entropy between the attribute's class
  prior and D's prediction (smallest exactly when D can do no better than the prior). ``adversary = "capped"`` is
  the paper's term with each user's attacker loss capped at ``-log prior[a_u]`` (what an attacker that only knows
  the class frequencies pays), in the adversarial term, in Eq. (10) and in ``R`` alike: the filter gains nothing
  from pushing D past chance, so higher levels are not rewarded for flipping the encoding. Eq. (10) and ``R`` use
  the (uncapped) attacker loss ``l_t`` with the ``paper`` and ``confusion`` adversaries. ``adversary = "mean_gap"``
  replaces the adversarial term by an attacker-free one: the filter minimises ``+lambda_t S_t`` with ``S_t`` the share
  of ``e_t``'s variance that lies between the classes (:mod:`jaxfair.methods.class_means`),

      S_t = sum_k p_k ||mu_k - mu||^2 / mean_u ||e_t(u) - mu||^2        (p_k class weights, mu_k class means)

  which for two classes is the largest between-class variance any unit direction ``w`` sees, scaled by the total
  variance (so rescaling the embedding buys nothing), and is in ``[0, 1]``. There is no attacker lag to exploit and
  no encoding to flip. It is not Fisher's ratio, so variance added in directions without the attribute lowers it too.
  ``D`` is still trained, and Eq. (10) and ``R`` still use its losses ``l_t``. On MovieLens-100k its order over the
  levels held for the labelled users but not for unseen users' probe AUC (`docs/cofair.md`).
  ``adversary = "linear_share"`` uses Fisher's form instead, ``V_t = tr(S_t^{-1} S_b)`` with ``S_t`` the total
  *covariance* (:func:`~jaxfair.methods.class_means.linear_share`, a small ridge on ``S_t``): for two classes the
  R^2 of the best linear least-squares probe, unchanged by any invertible linear map of ``e_t``, so variance added
  elsewhere buys nothing. ``D``, Eq. (10) and ``R`` as for ``mean_gap``.
* The exposure term (not in the paper; off by default). The paper's Lemma 1 bounds DP by the adversarial objective,
  but on MovieLens-100k the filter stops moving exposure once ``D`` is at chance: the capped attacker's term has no
  gradient left, and test DP@10 stayed flat from level 2-3 about 0.015 above the random-group floor
  (``docs/cofair.md``). With ``exposure_weight = gamma > 0`` each level's objective also gets ``+ gamma lambda_t X_t``, ``X_t``
  the Jensen-Shannon divergence between the classes' *soft* top-K exposure
  (:func:`~jaxfair.methods.soft_exposure.soft_exposure_gap`: a sigmoid around each user's own top-K cut-off,
  training positives masked, over the labelled users of the batch), the smooth counterpart of the DP@K the paper
  reports. It shares Eq. (10)'s ``lambda_t``, so a higher level is pushed harder on exposure too; Eq. (10) and ``R``
  still read ``D``'s losses. It scores every item for every level and user once per step, which makes the configs'
  step 4.0x slower at MovieLens-100k's shapes on a 2-core CPU (``python -m benchmarks.cofair_step
  --exposure-weight``).
  Scores are inner products (``e_t . v_i``), the scorer of both backbones Cofair is configured with here (PMF,
  LightGCN); the experiment refuses the term for other backbones.
* ``D`` is one multi-class softmax head for any ``K >= 2`` (binary gender is ``K = 2``), without dropout. The public
  code takes one ``D`` step per level *before* the filter's backward pass that reuses ``D`` (an in-place update
  current PyTorch rejects); here ``D`` takes its steps on all levels at once, then the filter is differentiated
  against the updated ``D``.
* Users of the probe validation and probe test splits contribute no attribute labels (their adversarial and
  regulariser weight is 0; :data:`jaxfair.methods.base.WITHHELD_STAGES`), so the probe that measures leakage is
  selected and scored, and the unseen-user audit fitted, on users whose attribute Cofair never saw.
* The per-user terms use the users of the BPR batch (a user counts once per training positive), as the public code
  does. Weights are He-normal with zero biases (:mod:`jaxfair.methods.mlp`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.base import bpr_loss
from jaxfair.backbones.common import pair_epoch
from jaxfair.config import ConfigError, check_fields
from jaxfair.data.dataset import UserItems, use_dense
from jaxfair.methods.base import (Evaluation, Method, Model, audit_users, interval_columns, label_weight, require,
                                  require_attribute, require_ratio_split, withheld_labels)
from jaxfair.methods.cofair_evaluation import (attacker_loss_drops, audit_levels, curve_figure, curve_steps,
                                               exposure_floor, level_report, probe_levels, results_table)
from jaxfair.methods.class_means import between_class_share, linear_share
from jaxfair.methods.mlp import mlp_apply, mlp_init, mlp_sizes
from jaxfair.methods.soft_exposure import soft_exposure_gap
from jaxfair.metrics.exposure import full_ranking_report
from jaxfair.metrics.masks import SparseRows, rows_mask
from jaxfair.metrics.probe import probe_attribute
from jaxfair.training import optim
from jaxfair.training.step import TrainState
from jaxfair.training.trainer import TrainConfig

ADVERSARIES = ("paper", "capped", "confusion", "mean_gap", "linear_share")
LOG2 = float(np.log(2.0))


@dataclasses.dataclass(frozen=True)
class Config:
    """Cofair hyper-parameters (the ``[cofair]`` section); defaults follow the public code's ML-1M/BPR settings
    unless noted.

    Attributes:
      attribute: the sensitive attribute (a column of the split's user attributes).
      levels: ``T``, the number of trained fairness levels (level 0 is the identity).
      shared_dim, adapter_dim: ``d_s`` and ``d_p``.
      negative_slope: of the LeakyReLU in the output layer.
      discriminator_hidden: hidden width of ``D``.
      discriminator_layers: linear layers of ``D`` (2 in the paper; 1 is a linear attacker, the probe's own class).
      discriminator_learning_rate: Adam step size of ``D``.
      lambda0, alpha: the adaptive level weights (Eq. 10).
      beta: weight of the user-level monotonicity regulariser.
      discriminator_steps: ``D`` updates per batch before the filter's update.
      adversary: ``"paper"`` (the filter maximises D's cross-entropy, ``-lambda_t L_t``), ``"capped"`` (the same with
        each user's ``l_t(u)`` capped at ``-log prior[a_u]``, the loss of guessing from the prior) or ``"confusion"`` (the
        filter minimises ``lambda_t C_t``, the cross-entropy between the attribute's class prior and D's prediction,
        smallest exactly when D can do no better than the prior) or ``"mean_gap"`` (the filter minimises
        ``lambda_t S_t``, the share of the level's variance between the class means, no attacker) or
        ``"linear_share"`` (``lambda_t V_t``, the share a linear least-squares probe explains, no attacker); see the
        module docstring.
      residual: add the input embedding to every level's output (``e_t = e + W_o ...``) so an adapter starts from
        the original embedding; False is the paper's architecture.
      user_major: train with the levels laid out user-major (:func:`user_major_levels`, every product a 2-D
        matmul): the same model and loss, a step 1.3-1.4x faster on CPU, but gradients summed in another order, so a
        run equals the default's only to float rounding (and the min-max game amplifies rounding: printed metrics
        move in the last digits). False, the default, keeps every earlier result bit for bit.
      exposure_weight: ``gamma``; above 0 adds ``gamma lambda_t X_t`` to each level's objective, ``X_t`` the soft
        top-``exposure_k`` exposure gap between the classes (not in the paper; see the module docstring).
      exposure_k, exposure_temperature, exposure_candidates: the cut-off, the sigmoid's width (in units of each
        user's score standard deviation) and the items per user that carry gradient, of
        :func:`jaxfair.methods.soft_exposure.soft_exposure_gap`.
      floor_shuffles: above 0, also measure every level's random-group floor of DP@K and EOpp@K (that many
        permutations of the attribute's labels; :func:`~jaxfair.methods.cofair_evaluation.exposure_floor`), over all
        users and over the users whose label Cofair never saw (their ``dp@k`` is reported as ``unseen_dp@k``).
      retrain_baseline: also train the retraining baseline after Cofair: one single-level model per lambda
        (``levels = 1``, ``alpha = beta = 0``), each from scratch (the cost Cofair avoids).
      baseline_lambdas: the baseline's fixed lambdas; empty means the level weights ``lambda_1..lambda_T`` Cofair
        arrives at (Eq. 10 on the trained model's attacker losses over the labelled users).
      train: Cofair's own loop (``[cofair.train]``: the filter's Adam at ``learning_rate``, early stopping on the
        validation ``monitor`` at level ``T``: any full-ranking metric such as ``recall@10``, the public code's
        choice, ``dp@k``/``eopp@k``, or ``parity@k = 1 - DP@k`` to keep the fairest epoch of the top level).
    """

    # Validation metrics a [cofair.train] monitor may name besides the ranking ones (the pipeline checks it).
    extra_monitors: ClassVar[tuple[str, ...]] = ("parity", "dp", "eopp")

    attribute: str = "gender"
    levels: int = 5
    shared_dim: int = 64
    adapter_dim: int = 64
    negative_slope: float = 0.2
    discriminator_hidden: int = 32
    discriminator_layers: int = 2
    discriminator_learning_rate: float = 1e-3
    lambda0: float = 0.01
    alpha: float = 0.01
    beta: float = 0.02
    discriminator_steps: int = 1
    adversary: str = "paper"
    residual: bool = False
    user_major: bool = False
    exposure_weight: float = 0.0
    exposure_k: int = 10
    exposure_temperature: float = 0.05
    exposure_candidates: int = 20
    floor_shuffles: int = 0
    retrain_baseline: bool = True
    baseline_lambdas: tuple[float, ...] = ()
    train: TrainConfig = TrainConfig(learning_rate=1e-3, batch_size=4096, epochs=100, patience=20,
                                     monitor="recall@10")

    def __post_init__(self):
        check_fields(self, choices={"adversary": ADVERSARIES},
                     non_negative=("lambda0", "alpha", "beta", "exposure_weight"),
                     at_least_one=("levels", "shared_dim", "adapter_dim", "discriminator_hidden",
                                   "discriminator_layers", "discriminator_steps", "exposure_k", "exposure_candidates"))
        if not (self.discriminator_learning_rate > 0 and self.exposure_temperature > 0):
            raise ValueError("discriminator_learning_rate and exposure_temperature must be positive")
        if self.floor_shuffles < 0 or self.floor_shuffles == 1:
            raise ValueError(f"floor_shuffles must be 0 (off) or at least 2, got {self.floor_shuffles}")
        if any(not lam >= 0 for lam in self.baseline_lambdas):
            raise ValueError(f"baseline_lambdas must be non-negative, got {list(self.baseline_lambdas)}")

    def single_level(self, lam: float) -> "Config":
        """The retraining baseline's model at ``lam``: one level, fixed weight, no regulariser."""
        return dataclasses.replace(self, levels=1, lambda0=float(lam), alpha=0.0, beta=0.0)


CofairConfig = Config


class CofairData(NamedTuple):
    """Cofair's constant inputs.

    Attributes:
      user_vecs: ``(U, d)`` frozen backbone user embeddings; item_vecs: ``(I, d)`` frozen item embeddings.
      labels: int32 ``(U,)`` sensitive attribute class; label_weight: float32 ``(U,)``, 0 for users whose label is
        withheld from training.
      prior: float32 ``(K,)`` class frequencies among the labelled users (the ``confusion`` adversary's target).
      num_classes: ``K`` (static).
      exclude: items never recommended to a user (the training positives), masked in the exposure term: bool
        ``(U, I)``, or on data above the memory rule (:data:`jaxfair.data.dataset.DENSE_LIMIT`) the same sets as
        :class:`~jaxfair.metrics.masks.SparseRows`, from which each batch builds its users' ``(N, I)`` rows
        (:func:`batch_users`); None masks nothing.
    """

    user_vecs: jax.Array
    item_vecs: jax.Array
    labels: jax.Array
    label_weight: jax.Array
    prior: jax.Array
    num_classes: int
    exclude: jax.Array | SparseRows | None = None


def make_data(user_vecs, item_vecs, labels, num_classes: int, label_weight=None, exclude=None) -> CofairData:
    """Check and hold Cofair's inputs (see :class:`CofairData`); ``exclude`` is a bool ``(U, I)`` array, a
    :class:`~jaxfair.data.dataset.UserItems` (kept sparse, as :class:`~jaxfair.metrics.masks.SparseRows`) or
    None."""
    labels = np.asarray(labels, np.int32)
    if labels.ndim != 1 or labels.shape[0] != np.shape(user_vecs)[0]:
        raise ValueError(f"labels must be (U,) = ({np.shape(user_vecs)[0]},), got {labels.shape}")
    if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) with at least 2 classes")
    weight = np.ones(labels.shape, np.float32) if label_weight is None else np.asarray(label_weight, np.float32)
    counts = np.bincount(labels, weights=weight, minlength=num_classes)
    if counts.sum() <= 0:
        raise ValueError("no user has a label weight above 0: the adversary would have nothing to learn from")
    prior = counts / max(counts.sum(), 1e-12)
    expected = (labels.shape[0], np.shape(item_vecs)[0])
    if isinstance(exclude, UserItems):
        if (exclude.num_users, exclude.num_items) != expected:
            raise ValueError(f"exclude must be (U, I) = {expected}, got {(exclude.num_users, exclude.num_items)}")
        exclude = SparseRows.from_sets(exclude)
    elif exclude is not None:
        exclude = np.asarray(exclude, bool)
        if exclude.shape != expected:
            raise ValueError(f"exclude must be (U, I) = {expected}, got {exclude.shape}")
        exclude = jnp.asarray(exclude)
    return CofairData(jnp.asarray(user_vecs), jnp.asarray(item_vecs), jnp.asarray(labels), jnp.asarray(weight),
                      jnp.asarray(prior, jnp.float32), int(num_classes), exclude)


def _linear_init(key: jax.Array, fan_in: int, fan_out: int) -> dict:
    return mlp_init(key, (fan_in, fan_out))[0]


def init_params(key: jax.Array, dim: int, num_classes: int, config: Config) -> dict:
    """``{"filter": {"shared", "adapters", "out"}, "D": MLP}``; adapters are stacked ``(T, d, d_p)`` / ``(T, d_p)``."""
    k_shared, k_adapters, k_out, k_disc = jax.random.split(key, 4)
    adapters = jax.vmap(lambda k: _linear_init(k, dim, config.adapter_dim))(jax.random.split(k_adapters, config.levels))
    return {
        "filter": {
            "shared": _linear_init(k_shared, dim, config.shared_dim),
            "adapters": adapters,
            "out": _linear_init(k_out, config.shared_dim + config.adapter_dim, dim),
        },
        "D": mlp_init(k_disc, mlp_sizes(dim, config.discriminator_hidden, num_classes, config.discriminator_layers)),
    }


def user_major_levels(filter_params: dict, user_vecs: jax.Array, config: Config = Config()) -> jax.Array:
    """Levels 1..T, user-major: ``(B, d) -> (B, T, d)``; the training layout with ``config.user_major``.

    As in :func:`adapted_embeddings`, the shared half is computed once for all levels. The T adapters run as one
    ``(B, d) x (d, T d_p)`` product (the stack laid side by side) and their output half as one
    ``(B T, d_p) x (d_p, d)`` product. Keeping the level axis inside each user's row makes every product, and every
    product of the backward pass, a plain 2-D matmul: the level-major form (a batched matmul over the adapter stack,
    as the ``vmap`` gives) makes XLA on CPU transpose ``(T, B, d)`` tensors in the backward pass, and the levels'
    gradient takes 3x as long at MovieLens-100k's shapes (``docs/benchmarks.md``, the Cofair step). The forward pass
    is bit-identical to :func:`adapted_embeddings`; gradients are summed in another order.
    """
    slope = config.negative_slope
    out = filter_params["out"]
    adapters = filter_params["adapters"]
    num_levels, dim, adapter_dim = adapters["w"].shape
    shared_dim = filter_params["shared"]["w"].shape[1]
    shared = jax.nn.leaky_relu(user_vecs @ filter_params["shared"]["w"] + filter_params["shared"]["b"], slope)
    common = shared @ out["w"][:shared_dim] + out["b"] + (user_vecs if config.residual else 0.0)
    side_by_side = jnp.transpose(adapters["w"], (1, 0, 2)).reshape(dim, num_levels * adapter_dim)
    private = jax.nn.leaky_relu(user_vecs @ side_by_side + adapters["b"].reshape(-1), slope)
    private = private.reshape(-1, adapter_dim) @ out["w"][shared_dim:]  # (B T, d)
    return common[:, None, :] + private.reshape(user_vecs.shape[0], num_levels, -1)


def adapted_embeddings(filter_params: dict, user_vecs: jax.Array, config: Config = Config()) -> jax.Array:
    """Levels 1..T in one vmap over the adapter stack: ``(B, d) -> (T, B, d)`` (``config`` gives the LeakyReLU
    slope and the residual switch). The default training layout and the evaluation's; bit-identical in the forward
    pass to :func:`user_major_levels` transposed."""
    # LeakyReLU acts elementwise, so W_o [a(s); a(p_t)] = a(s) W_o[:d_s] + a(p_t) W_o[d_s:]: the shared half is computed
    # once for all levels, and only the adapter half runs per level.
    slope = config.negative_slope
    out = filter_params["out"]
    shared_dim = filter_params["shared"]["w"].shape[1]
    shared = jax.nn.leaky_relu(user_vecs @ filter_params["shared"]["w"] + filter_params["shared"]["b"], slope)
    common = shared @ out["w"][:shared_dim] + out["b"] + (user_vecs if config.residual else 0.0)

    def one_level(adapter):
        private = jax.nn.leaky_relu(user_vecs @ adapter["w"] + adapter["b"], slope)
        return common + private @ out["w"][shared_dim:]

    return jax.vmap(one_level)(filter_params["adapters"])


def level_embeddings(filter_params: dict, user_vecs: jax.Array, config: Config = Config()) -> jax.Array:
    """Every level including the identity level 0: ``(B, d) -> (T + 1, B, d)``."""
    adapted = adapted_embeddings(filter_params, user_vecs, config)
    return jnp.concatenate([user_vecs[None], adapted], axis=0)


def user_embeddings_at_level(params: dict, user_embeddings: jax.Array, levels, config: Config = Config()):
    """The serving API: each user's embedding at their own fairness level.

    Args:
      params: Cofair parameters (the full dict or its ``"filter"`` part).
      user_embeddings: ``(B, d)`` frozen backbone embeddings.
      levels: int ``(B,)`` (or a scalar for everyone) in ``[0, T]``; 0 returns the input unchanged. (Traced code
        cannot raise, so values outside ``[0, T]`` are clipped into it.)
      config: the architecture switches the model was trained with (``negative_slope``, ``residual``).

    Returns:
      ``(B, d)``.
    """
    filter_params = params.get("filter", params)
    num_levels = filter_params["adapters"]["b"].shape[0]
    levels = jnp.broadcast_to(jnp.asarray(levels, jnp.int32), user_embeddings.shape[:1])
    all_levels = level_embeddings(filter_params, user_embeddings, config)  # (T + 1, B, d)
    chosen = jnp.clip(levels, 0, num_levels)
    return jnp.take_along_axis(all_levels, chosen[None, :, None], axis=0)[0]


def attacker_losses(disc_params, embeddings: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-user attacker loss ``l_t(u) = -log softmax(D(e_t(u)))[a_u]``: ``(T, B, d), (B,) -> (T, B)``."""
    logits = mlp_apply(disc_params, embeddings)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[None, :, None], axis=-1)[..., 0]


def user_major_attacker_losses(disc_params, embeddings: jax.Array, labels: jax.Array) -> jax.Array:
    """:func:`attacker_losses` of user-major embeddings: ``(B, T, d), (B,) -> (T, B)`` (only the small result is
    transposed)."""
    users, levels, dim = embeddings.shape
    # D on a 2-D (B T, d) matrix: on CPU its gradient is 1.7x faster than on the 3-D tensor.
    log_probs = jax.nn.log_softmax(mlp_apply(disc_params, embeddings.reshape(users * levels, dim)), axis=-1)
    losses = -jnp.take_along_axis(log_probs, jnp.repeat(labels, levels)[:, None], axis=-1)[:, 0]
    return losses.reshape(users, levels).T


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
    """``sum_b w_b v[..., b] / sum_b w_b`` over the last axis (0 when every weight is 0)."""
    return jnp.sum(values * weight, axis=-1) / jnp.maximum(jnp.sum(weight), 1e-12)


def adaptive_lambdas(level_losses: jax.Array, lambda0: float, alpha: float) -> jax.Array:
    """Eq. (10): ``lambda_1 = lambda_0``, ``lambda_t = lambda_{t-1} + alpha (1 - (L_t - L_{t-1}))``.

    Args:
      level_losses: ``(T,)`` mean attacker loss ``L_t`` of levels 1..T.

    Returns:
      ``(T,)`` level weights (the caller stops their gradient).
    """
    increments = alpha * (1.0 - (level_losses[1:] - level_losses[:-1]))
    return lambda0 + jnp.concatenate([jnp.zeros((1,), level_losses.dtype), jnp.cumsum(increments)])


def monotonicity_regularizer(losses: jax.Array, weight: jax.Array) -> jax.Array:
    """``mean_{t<T} mean_u max(0, softplus(l_t(u) - l_{t+1}(u)) - log 2)``: zero iff no user's attacker loss drops.

    Args:
      losses: ``(T, B)`` per-user attacker losses of levels 1..T.
      weight: ``(B,)`` user weights (0 for padding or withheld labels).
    """
    if losses.shape[0] < 2:
        return jnp.zeros((), losses.dtype)
    drop = losses[:-1] - losses[1:]
    penalty = jnp.maximum(jax.nn.softplus(drop) - LOG2, 0.0)
    return jnp.mean(weighted_mean(penalty, weight))


def confusion_losses(disc_params, embeddings: jax.Array, prior: jax.Array) -> jax.Array:
    """Per-user ``C_t(u) = -sum_k prior_k log softmax(D(e_t(u)))_k``: ``(..., d), (K,) -> (...)`` (``(T, B)`` from
    ``(T, B, d)``, ``(B, T)`` from user-major ``(B, T, d)``)."""
    return -jnp.sum(prior * jax.nn.log_softmax(mlp_apply(disc_params, embeddings), axis=-1), axis=-1)


def discriminator_loss(disc_params, embeddings: jax.Array, labels: jax.Array, weight: jax.Array,
                       user_major: bool = False) -> jax.Array:
    """``(1/T) sum_t L_t`` on stopped level embeddings ``(T, B, d)`` (``(B, T, d)`` with ``user_major``)."""
    losses = (user_major_attacker_losses if user_major else attacker_losses)(disc_params, embeddings, labels)
    return jnp.mean(weighted_mean(losses, weight))


def filter_loss(filter_params, disc_params, users: dict, rows: dict, score: Callable, config: Config,
                prior: jax.Array | None = None, levels_fn: Callable | None = None, item_vecs: jax.Array | None = None):
    """The filter's objective ``(1/T) sum_t [BPR_t - lambda_t L_t] + beta R`` of one batch (with the ``confusion``
    adversary, ``+ lambda_t C_t`` in place of ``- lambda_t L_t``; with ``mean_gap``, ``+ lambda_t S_t``
    (:func:`between_class_share`); with ``linear_share``, ``+ lambda_t V_t`` (:func:`linear_share`); with
    ``capped``, ``l_t`` capped at ``-log prior[a_u]``; ``prior`` is required by all four). With
    ``config.exposure_weight = gamma > 0``, each level also gets ``+ gamma lambda_t X_t``, the soft top-K exposure
    gap (:func:`~jaxfair.methods.soft_exposure.soft_exposure_gap`) between the classes over the labelled users
    present in the batch (each counted once, by ``users["present"]`` from :func:`batch_users`), scored against every
    item (``item_vecs``, required then) with ``users["exclude"]`` masked.

    The adversarial terms are over ``N`` distinct user rows with weights, the BPR term over the ``B`` batch rows,
    which index into the ``N`` users. With ``N = B`` (each row its own user) this is the per-row form of the paper;
    with the ``N = U`` distinct users weighted by their row counts it is the same number, computed once per user.

    Args:
      users: ``{"vecs": (N, d) frozen embeddings, "labels": (N,), "weight": (N,)}`` (weight: row count times 0/1 for
        withheld labels); when the exposure term is on, also ``"present"`` ``(N,)`` (the exposure term's user
        weights: each labelled user of the batch weighs 1 in all) and ``"exclude"`` bool ``(N, I)``, both as
        :func:`batch_users` builds them.
      rows: ``{"user": (B,) index into users (None when users are the rows themselves, N = B), "pos": (B, d),
        "neg": (B, d) frozen item embeddings, "weight": (B,) 0 on padding}``.
      score: the frozen backbone scorer ``(u (..., d), v (..., d)) -> (...)``.
      levels_fn: ``(filter_params, vecs (N, d), config) -> (T, N, d)``; :func:`adapted_embeddings` (one vmap over the
        adapter stack) by default; with ``config.user_major``, ``-> (N, T, d)`` and :func:`user_major_levels`.
        ``benchmarks.cofair_step`` passes a per-level loop to time them against.

    Returns:
      ``(loss, metrics)`` with per-level ``bpr``, ``attacker_loss``, ``lambda`` and ``exposure_gap`` ``(T,)`` (the
      last 0 when the term is off) and scalar ``reg``.
    """
    if config.user_major:
        adapted = (levels_fn or user_major_levels)(filter_params, users["vecs"], config)  # (N, T, d)
        row_vecs = adapted if rows["user"] is None else adapted[rows["user"]]  # (B, T, d)
        losses = user_major_attacker_losses(disc_params, adapted, users["labels"])  # (T, N)
        level_major = jnp.swapaxes(adapted, 0, 1)  # only the mean_gap, linear_share and exposure terms read it
    else:
        adapted = level_major = (levels_fn or adapted_embeddings)(filter_params, users["vecs"], config)  # (T, N, d)
        # Per-row mode gathers by arange here: dropping the gather changes how XLA sums the gradient (float rounding).
        index = jnp.arange(adapted.shape[1]) if rows["user"] is None else rows["user"]
        row_vecs = adapted[:, index]  # (T, B, d)
        losses = attacker_losses(disc_params, adapted, users["labels"])  # (T, N)
    level_axis = 1 if config.user_major else 0
    bpr = jax.vmap(lambda e: bpr_loss(score(e, rows["pos"]), score(e, rows["neg"]), rows["weight"]),
                   in_axes=level_axis)(row_vecs)  # (T,)
    if config.adversary == "capped":
        # No credit beyond the loss of guessing from the prior: making D confidently wrong is not fairer.
        losses = jnp.minimum(losses, -jnp.log(prior)[users["labels"]])
    level_losses = weighted_mean(losses, users["weight"])  # (T,)
    lambdas = jax.lax.stop_gradient(adaptive_lambdas(level_losses, config.lambda0, config.alpha))
    reg = monotonicity_regularizer(losses, users["weight"])
    if config.adversary == "confusion":
        confusion = confusion_losses(disc_params, adapted, prior)
        adversarial = weighted_mean(confusion.T if config.user_major else confusion, users["weight"])
    elif config.adversary == "mean_gap":
        adversarial = between_class_share(level_major, users["labels"], users["weight"], prior.shape[0])
    elif config.adversary == "linear_share":
        adversarial = linear_share(level_major, users["labels"], users["weight"], prior.shape[0])
    else:
        adversarial = -level_losses
    gap = jnp.zeros_like(level_losses)
    if config.exposure_weight > 0:
        gap = soft_exposure_gap(level_major, item_vecs, users["exclude"], users["labels"], users["present"],
                                prior.shape[0], config.exposure_k, config.exposure_temperature, config.exposure_candidates)
        adversarial = adversarial + config.exposure_weight * gap
    loss = jnp.mean(bpr + lambdas * adversarial) + config.beta * reg
    return loss, {"bpr": bpr, "attacker_loss": level_losses, "lambda": lambdas, "reg": reg, "exposure_gap": gap}


def batch_users(data: CofairData, batch: dict, per_user: bool) -> tuple[dict, jax.Array | None]:
    """The user side of a batch for :func:`filter_loss`: ``(users, row_user_index)``.

    ``per_user``: every user of the dataset once, weighted by their (label-weighted) row count in the batch, so the
    filter runs on ``U`` rows instead of ``B`` (cheaper when ``U < B``; identical loss); ``row_user_index`` is the
    batch's ``user`` column. Otherwise one entry per row and ``row_user_index`` is None (row ``b`` is user entry
    ``b``: no gather, whose backward pass is a scatter).
    """
    label_weight = batch["weight"] * data.label_weight[batch["user"]]
    if per_user:
        num_users = data.user_vecs.shape[0]
        weight = jax.ops.segment_sum(label_weight, batch["user"], num_segments=num_users)
        users = {"vecs": data.user_vecs, "labels": data.labels, "weight": weight,
                 "present": (weight > 0).astype(weight.dtype)}
        if data.exclude is not None:
            users["exclude"] = exclude_rows(data, None)
        return users, batch["user"]
    # Each labelled user of the batch counts once in the exposure term: a row weighs 1 / (the user's labelled rows).
    labelled = (label_weight > 0).astype(label_weight.dtype)
    rows_per_user = jax.ops.segment_sum(labelled, batch["user"], num_segments=data.user_vecs.shape[0])
    users = {"vecs": data.user_vecs[batch["user"]], "labels": data.labels[batch["user"]], "weight": label_weight,
             "present": labelled / jnp.maximum(rows_per_user[batch["user"]], 1.0)}
    if data.exclude is not None:
        users["exclude"] = exclude_rows(data, batch["user"])
    return users, None


def exclude_rows(data: CofairData, users: jax.Array | None) -> jax.Array:
    """Bool ``(N, I)``: the exposure term's mask of ``users`` (int ``(N,)``; None: every user, ``N = U``, which
    :func:`batch_users` asks only when ``U`` is at most the batch's rows). Gathered from the dense ``(U, I)`` mask,
    or built from the sparse sets for these users only (the same rows; no ``(U, I)`` array)."""
    if isinstance(data.exclude, SparseRows):
        users = jnp.arange(data.user_vecs.shape[0]) if users is None else users
        return rows_mask(data.exclude, users, data.item_vecs.shape[0])
    return data.exclude if users is None else data.exclude[users]


def make_players(config: Config) -> optim.Players:
    """The filter (Adam at ``train.learning_rate``) and D (Adam at ``discriminator_learning_rate``)."""
    return optim.players({"filter": optim.make(config.train),
                          "D": optim.make(config.train, learning_rate=config.discriminator_learning_rate)})


def init_state(key: jax.Array, data: CofairData, config: Config) -> TrainState:
    """Parameters and the players' partitioned optimizer state (filter, D), so each player is moved only by its
    own update."""
    params = init_params(key, data.user_vecs.shape[1], data.num_classes, config)
    return optim.init_players(params, make_players(config))


def make_train_step(data: CofairData, score: Callable, config: Config, levels_fn: Callable | None = None):
    """One alternating min-max step, ``(state, batch, key) -> (state, metrics)`` (not jitted; scan or jit it).

    ``batch``: ``user``, ``pos``, ``neg`` int32 ``(B,)`` and ``weight`` ``(B,)``. When the dataset has no more
    users than a batch has rows, the filter and ``D`` run once per distinct user (see :func:`batch_users`).
    ``levels_fn`` replaces the levels' function (see :func:`filter_loss`).
    """
    levels_fn = levels_fn or (user_major_levels if config.user_major else adapted_embeddings)
    if config.exposure_weight > 0 and data.exclude is None:
        raise ValueError("exposure_weight > 0 needs CofairData.exclude (the training positives to mask)")
    players = make_players(config)

    def step(state: TrainState, batch: dict, key: jax.Array):
        del key  # deterministic given the batch
        params, opt_state = state.params, state.opt_state
        per_user = data.user_vecs.shape[0] <= batch["user"].shape[0]
        users, row_user = batch_users(data, batch, per_user)
        rows = {"user": row_user, "pos": data.item_vecs[batch["pos"]], "neg": data.item_vecs[batch["neg"]],
                "weight": batch["weight"]}

        stopped = jax.lax.stop_gradient(levels_fn(params["filter"], users["vecs"], config))

        def discriminator_update(_, carry):
            p, o, _ = carry
            return optim.update_player(
                players, p, o, "D", lambda d: discriminator_loss(d, stopped, users["labels"], users["weight"],
                                                                 user_major=config.user_major)
            )

        params, opt_state, loss_d = jax.lax.fori_loop(
            0, config.discriminator_steps, discriminator_update, (params, opt_state, jnp.zeros(()))
        )
        (loss_f, metrics), grads = jax.value_and_grad(filter_loss, has_aux=True)(
            params["filter"], params["D"], users, rows, score, config, data.prior, levels_fn, data.item_vecs
        )
        params, opt_state = optim.apply_player_grads(players, params, opt_state, "filter", grads)
        metrics = dict(metrics, loss=loss_f, discriminator_loss=loss_d)
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


# --- the method contract -------------------------------------------------------------------------------------

# Backbones whose scorer is the inner product <u, v>, which the exposure term (exposure_weight > 0) assumes.
INNER_PRODUCT_BACKBONES = ("pmf", "lightgcn", "sasrec", "bert4rec")


def _check(config: Config, run_config) -> None:
    require_ratio_split("Cofair", run_config, "cofair")
    require(config.exposure_weight == 0 or run_config.backbone.name in INNER_PRODUCT_BACKBONES,
            f"cofair.exposure_weight: the exposure term scores items by inner product, which backbone "
            f"{run_config.backbone.name!r} does not; use one of {list(INNER_PRODUCT_BACKBONES)} or set it to 0")
    require_attribute("cofair.attribute", config.attribute, run_config)


def _prepare(context, config: Config) -> CofairData:
    """Cofair's constant inputs for ``config.attribute``: the frozen backbone's validation-time embeddings, the labels
    (the probe validation and test users' withheld), and each user's training positives (masked by the exposure term,
    as validation ranking masks them)."""
    split, frozen = context.split, context.frozen
    if config.attribute not in split.user_attributes:
        raise ConfigError(f"cofair.attribute: {config.attribute!r} is not a user attribute of this split "
                          f"(have {list(split.attribute_names)})")
    # The training positives as a dense (U, I) mask on small data (bit for bit the earlier runs), as sets above the
    # memory rule (each batch then builds its users' rows).
    exclude = (split.exclude_matrix("valid") if use_dense(split.num_users, split.num_items)
               else split.exclude_sets("valid"))
    return make_data(frozen.user_vecs["valid"], frozen.item_vecs, split.user_attributes[config.attribute],
                     len(split.attribute_classes[config.attribute]), label_weight(split), exclude=exclude)


def device_masks(split, stage: str) -> tuple:
    """``stage``'s full-ranking ``(targets, exclude)`` (:meth:`~jaxfair.data.dataset.Split.ranking_masks`): bool
    ``(U, I)`` device arrays on small data, per-user sets above the memory rule (evaluated in blocks of users)."""
    targets, exclude = split.ranking_masks(stage)
    if isinstance(targets, UserItems):
        return targets, exclude
    return jnp.asarray(targets), jnp.asarray(exclude)


def final_lambdas(params, data: CofairData, config: Config) -> np.ndarray:
    """``lambda_1..lambda_T`` of Eq. (10) from the trained model's mean attacker losses over the labelled users."""
    adapted = adapted_embeddings(params["filter"], data.user_vecs, config)
    losses = weighted_mean(attacker_losses(params["D"], adapted, data.labels), data.label_weight)
    return np.asarray(adaptive_lambdas(losses, config.lambda0, config.alpha))


def discriminator_losses(params, data: CofairData, user_vecs, users, config: Config) -> np.ndarray:
    """Cofair's own discriminator's per-user loss ``(T + 1, n)`` at every level for ``users``."""
    levels = level_embeddings(params["filter"], jnp.asarray(user_vecs)[users], config)
    return np.asarray(attacker_losses(params["D"], levels, data.labels[users]))


def cofair_model(name: str, context, data: CofairData, config: Config) -> Model:
    """Cofair (or one retraining-baseline model) as the trainer fits it: BPR rows of the split in batches of
    ``config.train.batch_size``, early stopping on the validation ``config.train.monitor`` at level ``T``."""
    split, score = context.split, context.frozen.score
    targets, exclude = device_masks(split, "valid")
    ks = tuple(context.evaluate.ks)
    top = config.levels

    def validate(params):
        emb = user_embeddings_at_level(params, data.user_vecs, top, config)
        report = full_ranking_report(score, emb, data.item_vecs, targets, exclude, data.labels,
                                     num_groups=data.num_classes, ks=ks)
        report = {k: float(v) for k, v in report.items()}
        # Higher-is-better names for the fairness gaps, so they can be monitored too.
        report.update({f"parity@{k}": 1.0 - report[f"dp@{k}"] for k in ks})
        return report

    return Model(name=name, train=config.train, init=lambda key: init_state(key, data, config),
                 step=make_train_step(data, score, config),
                 batches=lambda rng: pair_epoch(split, rng, config.train.batch_size), validate=validate)


def _models(context, data: CofairData, config: Config, fitted: dict) -> list[Model]:
    """Cofair; once it is fitted, the retraining baseline's models ``retrain0..`` (one per lambda)."""
    models = [cofair_model("cofair", context, data, config)]
    if config.retrain_baseline and "cofair" in fitted:
        lambdas = config.baseline_lambdas or tuple(float(x) for x in
                                                   final_lambdas(fitted["cofair"].best_params, data, config))
        models += [cofair_model(f"retrain{i}", context, data, config.single_level(lam))
                   for i, lam in enumerate(lambdas)]
    return models


def _evaluate(context, data: CofairData, fitted: dict, config: Config) -> Evaluation:
    split, frozen, ks, key = context.split, context.frozen, tuple(context.evaluate.ks), context.key
    params = fitted["cofair"].best_params
    stages = {stage: device_masks(split, stage) for stage in ("valid", "test")}

    def report(filter_params, cfg, stage):
        levels = level_embeddings(filter_params, frozen.user_vecs[stage], cfg)
        return levels, level_report(levels, frozen.item_vecs, frozen.score, *stages[stage], data.labels,
                                    data.num_classes, ks)

    level_vecs, test_report = report(params["filter"], config, "test")
    _, valid_report = report(params["filter"], config, "valid")
    level_vecs = np.asarray(level_vecs)
    probes, probe_losses = probe_levels(level_vecs, split, config.attribute, key, context.probe)
    audits = audit_levels(level_vecs, split, config.attribute, audit_users(split), key, context.probe)
    mlp_audits = None
    if context.probe.audit_hidden:  # the non-linear audit beside the linear one (one hidden layer, probe.audit_hidden)
        mlp_audits = audit_levels(level_vecs, split, config.attribute, audit_users(split), jax.random.fold_in(key, 50),
                                  dataclasses.replace(context.probe, hidden=context.probe.audit_hidden))
    disc_losses = discriminator_losses(params, data, frozen.user_vecs["test"], split.probe_users["test"], config)
    lambdas = final_lambdas(params, data, config)
    levels = [{"level": t, "metrics": {k: float(v[t]) for k, v in test_report.items()},
               "valid_metrics": {k: float(v[t]) for k, v in valid_report.items()},
               "probe_auc": probes[t]["auc"], "probe_auc_ci": probes[t]["auc_ci"],
               "probe_valid_auc": probes[t]["valid_auc"], "unseen_auc": audits[t]["auc"],
               "unseen_auc_ci": audits[t]["auc_ci"], "unseen_auc_std": audits[t]["auc_std"],
               "unseen_repeats": audits[t]["repeats"],
               **({"mlp_unseen_auc": mlp_audits[t]["auc"], "mlp_unseen_auc_ci": mlp_audits[t]["auc_ci"]}
                  if mlp_audits else {})}
              for t in range(config.levels + 1)]

    baseline = None
    retrained = [name for name in fitted if name.startswith("retrain")]
    if retrained:
        lambdas_used = config.baseline_lambdas or tuple(float(x) for x in lambdas)
        models = []
        for i, name in enumerate(retrained):
            single = config.single_level(lambdas_used[i])
            vecs, one = report(fitted[name].best_params["filter"], single, "test")
            _, one_valid = report(fitted[name].best_params["filter"], single, "valid")
            probe = probe_attribute(np.asarray(vecs[1]), split.user_attributes[config.attribute], split.probe_users,
                                    data.num_classes, jax.random.fold_in(key, 100 + i), context.probe)
            models.append({"lambda": float(lambdas_used[i]), "metrics": {k: float(v[1]) for k, v in one.items()},
                           "valid_metrics": {k: float(v[1]) for k, v in one_valid.items()},
                           "probe_auc": probe["auc"], "probe_auc_ci": probe["auc_ci"],
                           "probe_valid_auc": probe["valid_auc"], "best_epoch": fitted[name].best_epoch,
                           "train_seconds": fitted[name].seconds})
        baseline = {"models": models, "seconds": float(sum(m["train_seconds"] for m in models))}

    results = {
        "attribute": config.attribute,
        "withheld_labels": withheld_labels(),
        "final_lambdas": [float(x) for x in lambdas],
        "levels": levels,
        "attacker_loss_drop_fraction": {
            "probe": attacker_loss_drops(probe_losses),
            "discriminator": attacker_loss_drops(disc_losses),
            "description": "fraction of probe-test users whose attacker loss decreases from level t to t+1, "
                           "t = 0..T-1 (lower is better)",
        },
        "retrain_baseline": baseline,
    }
    tables = {"valid": {}, "test": {}}
    attribute = config.attribute
    for m in levels:
        intervals = {**interval_columns("unseen_auc", {attribute: m["unseen_auc_ci"]}),
                     **interval_columns("auc", {attribute: m["probe_auc_ci"]})}
        if "mlp_unseen_auc" in m:
            intervals.update({"mlp_unseen_auc": m["mlp_unseen_auc"],
                              **interval_columns("mlp_unseen_auc", {attribute: m["mlp_unseen_auc_ci"]})})
        tables["test"][f"level {m['level']}"] = {"unseen_auc": m["unseen_auc"], "auc": m["probe_auc"], **intervals,
                                                 **m["metrics"]}
        tables["valid"][f"level {m['level']}"] = {"probe_valid_auc": m["probe_valid_auc"], **m["valid_metrics"]}
    for i, m in enumerate((baseline or {}).get("models", [])):
        tables["test"][f"retrain {i + 1}"] = {"lambda": m["lambda"], "auc": m["probe_auc"], **m["metrics"]}
        tables["valid"][f"retrain {i + 1}"] = {"lambda": m["lambda"], "probe_valid_auc": m["probe_valid_auc"],
                                               **m["valid_metrics"]}
    k = ks[0]
    top = levels[-1]
    dp = curve_steps([m["valid_metrics"][f"dp@{k}"] for m in levels[1:]])
    auc = curve_steps([m["probe_valid_auc"] for m in levels[1:]])
    tables["valid"]["curve"] = {
        "recall_ratio": top["valid_metrics"][f"recall@{k}"] / max(levels[0]["valid_metrics"][f"recall@{k}"], 1e-12),
        "nonrising_steps": dp["nonrising"] + auc["nonrising"], "smallest_dp_fall": dp["smallest_fall"]}
    test_dp = curve_steps([m["metrics"][f"dp@{k}"] for m in levels[1:]])
    test_auc = curve_steps([m["probe_auc"] for m in levels[1:]])
    test_unseen = curve_steps([m["unseen_auc"] for m in levels[1:]])
    tables["test"]["curve"] = {
        "recall_ratio": top["metrics"][f"recall@{k}"] / max(levels[0]["metrics"][f"recall@{k}"], 1e-12),
        "dp_nonrising_steps": test_dp["nonrising"], "auc_nonrising_steps": test_auc["nonrising"],
        "unseen_auc_nonrising_steps": test_unseen["nonrising"],
        "cofair_seconds": fitted["cofair"].seconds,
        **({"retrain_seconds": baseline["seconds"]} if baseline else {})}
    if config.floor_shuffles:
        floors = {"all": exposure_floor(level_vecs, frozen.item_vecs, frozen.score, *stages["test"], data.labels,
                                        data.num_classes, ks, config.floor_shuffles, context.seed),
                  "unseen": exposure_floor(level_vecs, frozen.item_vecs, frozen.score, *stages["test"], data.labels,
                                           data.num_classes, ks, config.floor_shuffles, context.seed,
                                           rows=audit_users(split))}
        results["exposure_floor"] = floors
        for t, (every, unseen) in enumerate(zip(floors["all"], floors["unseen"])):
            row = tables["test"][f"level {t}"]
            row.update({k: v for k, v in every.items() if "_floor" in k or "_excess" in k})
            row.update({f"unseen_{k}": v for k, v in unseen.items()})
    arrays = {f"user_embeddings_level{t}": emb for t, emb in enumerate(level_vecs)}
    return Evaluation(results=results, tables=tables, arrays=arrays,
                      figures={"fairness_accuracy.png": lambda full: curve_figure(full, k)})


def serve(data, params: dict, config: Config, user_vecs: jax.Array, levels) -> jax.Array:
    """Each user's embedding at their own fairness level (int ``(U,)`` or a scalar in ``[0, T]``)."""
    return user_embeddings_at_level(params["cofair"], user_vecs, levels, config)


def _report(results: dict) -> str:
    return results_table(results, min(int(k.split("@")[1]) for k in results["cofair"]["levels"][0]["metrics"]))


METHOD = Method("cofair", Config, frozen_backbone=True, check=_check, prepare=_prepare, models=_models,
                evaluate=_evaluate, serve=serve, report=_report,
                description="Cofair (Chen et al., WWW 2026): one model, fairness level chosen after training")
