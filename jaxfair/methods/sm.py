"""SM, "separate models": one adversarially trained attribute filter per fairness requirement (Li et al.,
"Towards Personalized Fairness based on Causal Notion", SIGIR 2021), the brute-force baseline that AFRL replaces.

With ``M`` sensitive attributes there are ``2^M - 1`` non-empty requirements ``S``. For each one SM trains, from
scratch and on its own, a filter ``f_S`` (an MLP ``d -> d``) on the frozen backbone user embedding ``u``:
``u*_S = f_S(u)``. The filter plays a min-max game against discriminators ``D_i`` (2-layer MLPs), one per attribute
``i`` in ``S``, that try to recover ``a_i`` from ``u*_S``:

* ``D`` minimises ``E_u sum_{i in S} CE(D_i(u*_S), a_i)``;
* ``f_S`` minimises ``BPR(R(u*_S, v+) - R(u*_S, v-)) - lambda * E_u sum_{i in S} CE(D_i(u*_S), a_i)``, the BPR loss
  through the frozen backbone scorer ``R`` (as in AFRL's Eq. 18) plus the adversarial term (as in AFRL's Eq. 16).

Every batch runs one ``D`` update and then one ``f_S`` update, each player with its own Adam state
(:func:`jaxfair.methods.afrl.update_player`). Training ``2^M - 1`` models one after another is the cost AFRL is
measured against, so :func:`train_all` runs them sequentially and times each one.

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
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfair.backbones.base import bpr_loss
from jaxfair.methods import afrl
from jaxfair.methods.afrl import AFRLData
from jaxfair.methods.mlp import mlp_apply, mlp_init, mlp_sizes, stack_init
from jaxfair.methods.requirements import fit_method
from jaxfair.training.step import TrainState

PLAYERS = ("D", "f")


@dataclasses.dataclass(frozen=True)
class SMConfig:
    """SM hyper-parameters (one set shared by every requirement's filter).

    Attributes:
      lam: weight of the adversarial term in the filter's loss.
      hidden: width of every hidden layer (filter and discriminators).
      layers: linear layers of the filter ``f_S``.
      head_layers: linear layers of each discriminator ``D_i``.
      learning_rate, batch_size, epochs, patience: each filter's training loop (Adam, early stopping on its
        validation NDCG@10).
      adversary: ``"paper"`` or ``"confusion"``, as in :class:`jaxfair.methods.afrl.AFRLConfig`.
    """

    lam: float = 10.0
    hidden: int = 64
    layers: int = 2
    head_layers: int = 2
    learning_rate: float = 1e-3
    batch_size: int = 256
    epochs: int = 15
    patience: int = 5
    adversary: str = "paper"

    def __post_init__(self):
        if self.adversary not in afrl.ADVERSARIES:
            raise ValueError(f"adversary must be one of {afrl.ADVERSARIES}, got {self.adversary!r}")
        if self.lam < 0:
            raise ValueError(f"lam must be non-negative, got {self.lam}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("hidden", "layers", "head_layers", "batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def _selector(sensitive) -> jax.Array:
    """Float ``(M,)``: 1 for the attributes of the requirement, 0 for the others."""
    return jnp.asarray(np.asarray(sensitive, bool), jnp.float32)


def init_params(key: jax.Array, dim: int, num_classes: tuple[int, ...], config: SMConfig) -> dict:
    """``{"f": filter MLP (d -> d), "D": stack of M discriminators (d -> max classes)}``."""
    kf, kd = jax.random.split(key)
    return {
        "f": mlp_init(kf, mlp_sizes(dim, config.hidden, dim, config.layers)),
        "D": stack_init(kd, len(num_classes), mlp_sizes(dim, config.hidden, max(num_classes), config.head_layers)),
    }


def make_optimizer(config: SMConfig) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate)


def init_state(key: jax.Array, data: AFRLData, sensitive, config: SMConfig) -> TrainState:
    """Parameters of the filter and the discriminators, and one optimizer state per player.

    ``sensitive`` (bool ``(M,)``, the requirement) only fixes ``M`` here; every requirement starts from the same
    shapes.
    """
    num_classes = afrl.num_classes_of(data)
    if len(np.asarray(sensitive)) != len(num_classes):
        raise ValueError(f"sensitive has {len(np.asarray(sensitive))} entries for {len(num_classes)} attributes")
    params = init_params(key, data.user_vecs.shape[1], num_classes, config)
    return afrl.init_player_state(params, PLAYERS, make_optimizer(config))


def filter_embeddings(params: dict, user_vecs: jax.Array) -> jax.Array:
    """The filtered embeddings ``u*_S = f_S(u)``: ``(U, d) -> (U, d)``; score them with the backbone's scorer."""
    return mlp_apply(params["f"], user_vecs)


def selected_nll(d_params, z: jax.Array, labels: jax.Array, mask: jax.Array, select: jax.Array) -> jax.Array:
    """``sum_{i in S} -log q(a_i | z; D_i)`` per user: ``z (B, d)`` -> ``(B,)``; ``select (M,)`` is the 0/1 selector."""
    m = labels.shape[1]
    nll = afrl.head_nll(d_params, jnp.broadcast_to(z, (m,) + z.shape), labels, mask)  # (M, B)
    return jnp.sum(select[:, None] * nll, axis=0)


def discriminator_loss(d_params, z, labels, weight, mask, select) -> jax.Array:
    """D's objective: weighted mean over users of ``sum_{i in S} CE(D_i(z), a_i)``."""
    return afrl._weighted_mean(selected_nll(d_params, z, labels, mask, select), weight)


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
    return ranking + lam * afrl.confusion_loss(d_params, z, prior * select[:, None], attr_weight, mask)


def make_train_step(data: AFRLData, score: Callable, sensitive, config: SMConfig):
    """One batch of SM training for requirement ``sensitive`` (bool ``(M,)``): a D update, then an f update.

    ``batch`` holds BPR rows: ``user``, ``pos``, ``neg`` (int32 ``(B,)``) and ``weight`` (``(B,)``, 0 on padding).
    ``score(u (..., d), v (..., d)) -> (...)`` is the frozen backbone's scorer. Returns
    ``(state, batch, key) -> (state, metrics)`` with metrics ``loss`` (f's objective) and ``loss_D``.
    """
    tx = make_optimizer(config)
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
        params, opt_state, loss_d = afrl.update_player(
            params, opt_state, "D", lambda d: discriminator_loss(d, z, labels, attr_weight, data.class_mask, select), tx
        )
        pos_vecs, neg_vecs = data.item_vecs[batch["pos"]], data.item_vecs[batch["neg"]]
        params, opt_state, loss_f = afrl.update_player(
            params, opt_state, "f",
            lambda f: filter_loss(
                f, params["D"], u, pos_vecs, neg_vecs, labels, weight, attr_weight, data.class_mask, data.class_prior,
                select, score, config.lam, config.adversary,
            ),
            tx,
        )
        return TrainState(params, opt_state, state.step + 1), {"loss": loss_f, "loss_D": loss_d}

    return step


def _embed(params, user_vecs, sensitive, config):
    del sensitive, config  # one filter serves exactly one requirement
    return filter_embeddings(params, user_vecs)


def train_one(split, data: AFRLData, score, sensitive, config: SMConfig, seed: int, valid_user_vecs, log=print,
              out_dir=None, name: str = "sm", ks=(10,)):
    """Fit the filter of one requirement with the shared trainer; early stopping on its validation NDCG@``ks[0]``."""
    return fit_method(
        split,
        init_state=lambda key: init_state(key, data, sensitive, config),
        train_step=make_train_step(data, score, sensitive, config),
        embed=_embed,
        config=config,
        requirements=np.asarray(sensitive, bool)[None, :],
        score=score, valid_user_vecs=valid_user_vecs, item_vecs=data.item_vecs, seed=seed, out_dir=out_dir,
        log=log, name=name, ks=ks,
    )


def train_all(split, data: AFRLData, score, config: SMConfig, seed: int, valid_user_vecs, log=print, out_dir=None):
    """Train the ``2^M - 1`` filters one after another (never batched together: this is SM's cost).

    Args:
      split: the :class:`jaxfair.data.dataset.Split` (BPR rows, validation targets and negatives, attribute names).
      data: AFRL's constant inputs (:func:`jaxfair.experiments.afrl.afrl_data`).
      score: the frozen backbone scorer ``(u, v) -> scores``; pass a ``jax.tree_util.Partial`` (as AFRL's experiment
        does) so its parameters are traced.
      valid_user_vecs: ``(U, d)`` validation-time backbone user embeddings.
      out_dir: optional; each filter then checkpoints (and resumes) under ``checkpoints/sm_<requirement>``.

    Returns:
      requirement name (``"G"``, ``"A"``, ``"G+A"``, ...; the empty requirement is not trained) ->
      ``(best params, seconds, FitResult)``, in :func:`jaxfair.methods.afrl.all_requirements` order. The total is
      logged; it is also ``sum(seconds)`` up to the loop's bookkeeping.
    """
    if not isinstance(score, jax.tree_util.Partial):
        score = jax.tree_util.Partial(score)
    names = split.attribute_names
    out = {}
    start = time.perf_counter()
    for sensitive in afrl.all_requirements(len(names))[1:]:
        name = afrl.requirement_name(sensitive, names)
        tick = time.perf_counter()
        result = train_one(
            split, data, score, sensitive, config, seed, valid_user_vecs, log, out_dir, "sm_" + name.replace("+", "_")
        )
        jax.block_until_ready(result.best_params)
        seconds = time.perf_counter() - tick
        out[name] = (result.best_params, seconds, result)
        log(f"[sm] {name}: {seconds:.2f}s, {result.epochs_run} epochs, best epoch {result.best_epoch}")
    log(f"[sm] {len(out)} filters trained in {time.perf_counter() - start:.2f}s")
    return out


def total_seconds(runs: dict) -> float:
    """Summed training time of :func:`train_all`'s filters."""
    return float(sum(seconds for _, seconds, _ in runs.values()))
