"""Closed-form linear concept erasure (LEACE; Belrose et al., "LEACE: Perfect linear concept erasure in closed form",
NeurIPS 2023) on frozen backbone user embeddings: no training, one model serving every fairness requirement and
every strength.

Fit, on the labelled users only (the probe validation and test users' labels are withheld, as for every method):
with ``mu`` the users' mean embedding and ``S = Cov(u)`` (``d x d``), the whitening ``W = S^{-1/2}`` and its inverse
``W^+ = S^{1/2}``; for attribute ``i`` with one-hot classes ``z_i``, the cross-covariance ``C_i = Cov(u, z_i)``
(``d x K_i``, rank at most ``K_i - 1``) and the orthonormal directions ``D_i`` of the column span of ``W C_i`` (its
left singular vectors, strongest first). For a requirement (a bool mask over the attributes) the projection ``P`` is
onto the joint span of the masked attributes' ``D_i``, and a user embedding is served as

    u' = u - t W^+ P W (u - mu)

with the strength ``t`` in ``[0, 1]`` (``t = 1`` is LEACE; ``t = 0`` the identity, as is the empty requirement).

Guarantee (at ``t = 1``, on the fitting users): ``Cov(u', z_i) = 0`` for every masked attribute, so no linear
classifier of ``u'`` predicts ``z_i`` better than a constant in expectation (LEACE's Theorem; among all erasures
with that property it moves embeddings least in the whitened norm). What it does not cover: non-linear probes (the
class-conditional distributions may still differ in their shape), and users outside the fitting set: the erasure
fitted on the labelled users is applied to users whose labels were withheld, whose class means may differ (the
unseen-user audit measures exactly this). ``tests/test_erasure.py`` checks the zero cross-covariance and that a fresh
linear probe falls to chance on held-out rows of synthetic data with a planted linear attribute.

Choices (the paper is silent or the setting differs):

* ``max_rank`` (> 0) erases only the ``max_rank`` strongest directions of each attribute (by the singular values
  of ``W C_i``); 0 erases all of them (``K_i - 1``). A many-class attribute (occupation: 21 classes) has up to 20
  directions, and erasing all of them costs accuracy; the guarantee then holds for the erased directions only.
* The whitening treats eigenvalues below ``1e-6`` of the largest as zero; a labelled set whose covariance is rank
  deficient at that tolerance (fewer users than dimensions, a constant coordinate) is refused with a message
  (:class:`ErasureError`), as is an attribute with fewer than two classes among the labelled users.
* The joint span of a requirement is orthonormalised by an SVD of the stacked directions (singular values below
  ``1e-3`` dropped), so overlapping attributes are not erased twice. All ``2^M`` projections are computed in one
  ``jax.vmap``; serving a batch of users with per-user masks and strengths gathers each user's matrix.
* Fit on the validation-time embeddings (what AFRL's players train on), served on the test-time ones.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.config import check_fields
from jaxfair.data.dataset import DataError
from jaxfair.methods.adversaries import AttributeData, split_attribute_data
from jaxfair.methods.base import Evaluation, Method
from jaxfair.methods.requirements import check_sampled_split, evaluate_requirements, requirements_report
from jaxfair.training.trainer import TrainConfig

EIGEN_TOLERANCE = 1e-6  # relative: eigenvalues of the covariance below this share of the largest are zero
RANK_TOLERANCE = 1e-4  # relative: an attribute's direction weaker than this share of its strongest is rounding
SPAN_TOLERANCE = 1e-3  # singular values of stacked unit directions below this are the same direction twice


class ErasureError(DataError):
    """The labelled users cannot define an erasure (the message says why and what to change); a
    :class:`~jaxfair.data.dataset.DataError`, so the command line reports it in one line."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``[erasure]`` section.

    Attributes:
      strength: ``t`` in ``[0, 1]``, the share of the erasure applied (1: LEACE; serving may pass its own per user).
      max_rank: directions erased per attribute, strongest first (0: all, ``K_i - 1``).
      train: unused (nothing is trained); every method section has one.
    """

    strength: float = 1.0
    max_rank: int = 0
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        check_fields(self, non_negative=("strength", "max_rank"))
        if not self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")


class Eraser(NamedTuple):
    """A fitted erasure.

    Attributes:
      mean: ``(d,)`` the labelled users' mean embedding ``mu``.
      whiten: ``(d, d)`` ``W = S^{-1/2}``; unwhiten: ``(d, d)`` ``W^+ = S^{1/2}``.
      directions: ``(M, d, K)`` per attribute, its orthonormal whitened directions strongest first, zero columns
        beyond its rank (or ``max_rank``); ``K`` is the largest class count.
      singular_values: ``(M, K)`` the strength of each direction (0 where none).
      eigenvalues: ``(d,)`` of ``S``, ascending; class_counts: ``(M, K)`` labelled users per class.
    """

    mean: jax.Array
    whiten: jax.Array
    unwhiten: jax.Array
    directions: jax.Array
    singular_values: jax.Array
    eigenvalues: jax.Array
    class_counts: jax.Array


@functools.partial(jax.jit, static_argnames=("num_classes", "max_rank"))
def _fit(x, labels, weight, class_mask, *, num_classes: int, max_rank: int) -> Eraser:
    w = weight / jnp.sum(weight)
    mean = w @ x
    centred = x - mean
    cov = (centred * w[:, None]).T @ centred
    eigenvalues, vectors = jnp.linalg.eigh(cov)
    kept = eigenvalues > EIGEN_TOLERANCE * eigenvalues[-1]
    root = jnp.sqrt(jnp.where(kept, eigenvalues, 1.0))
    whiten = (vectors * jnp.where(kept, 1.0 / root, 0.0)) @ vectors.T
    unwhiten = (vectors * jnp.where(kept, root, 0.0)) @ vectors.T

    def attribute(labels_i, mask_i):
        onehot = jax.nn.one_hot(labels_i, num_classes, dtype=x.dtype) * mask_i
        cross = (centred * w[:, None]).T @ onehot  # (d, K): Cov(u, z_i)
        u, s, _ = jnp.linalg.svd(whiten @ cross, full_matrices=False)  # (d, K), (K,)
        keep = s > RANK_TOLERANCE * s[0]  # rank <= K_i - 1: the last singular value is rounding
        if max_rank:
            keep &= jnp.arange(s.shape[0]) < max_rank
        counts = jnp.sum(onehot * (weight > 0)[:, None], axis=0)
        return u * keep, jnp.where(keep, s, 0.0), counts

    directions, singular_values, counts = jax.vmap(attribute, in_axes=(1, 0))(labels, class_mask)
    return Eraser(mean, whiten, unwhiten, directions, singular_values, eigenvalues, counts)


def fit_eraser(user_vecs, labels, weight, class_mask, attribute_names=None, max_rank: int = 0,
               rank_deficient_ok: bool = False) -> Eraser:
    """Fit the erasure of every attribute on the users with ``weight > 0`` (module docstring).

    Args:
      user_vecs: ``(U, d)``; labels: int ``(U, M)``; weight: ``(U,)`` (0: the user's labels are withheld);
      class_mask: bool ``(M, K)`` the classes each attribute has; attribute_names: for messages.
      max_rank: directions per attribute (0: all).
      rank_deficient_ok: accept embeddings that span fewer than ``d`` dimensions (a trained network's outputs, whose
        dead ReLU units leave directions without variance): the whitening is then the pseudo-inverse on their span,
        where all the users lie, and the guarantee holds there. False (the backbone's embeddings) refuses them.

    Raises:
      ErasureError: fewer labelled users than needed for a full-rank covariance, or an attribute with fewer than two
        classes among them.
    """
    x = jnp.asarray(user_vecs, jnp.float32)
    labels, weight = jnp.asarray(labels, jnp.int32), jnp.asarray(weight, jnp.float32)
    class_mask = np.asarray(class_mask, bool)
    count, dim = int(np.sum(np.asarray(weight) > 0)), x.shape[1]
    names = list(attribute_names or [f"attribute {i}" for i in range(labels.shape[1])])
    if count <= dim:
        raise ErasureError(f"erasure: {count} labelled users cannot whiten {dim}-dimensional embeddings (their "
                           f"covariance is rank deficient); it needs more labelled users than dimensions")
    eraser = _fit(x, labels, weight, jnp.asarray(class_mask, jnp.float32), num_classes=class_mask.shape[1],
                  max_rank=int(max_rank))
    eigenvalues = np.asarray(eraser.eigenvalues)
    deficient = int(np.sum(eigenvalues <= EIGEN_TOLERANCE * eigenvalues[-1]))
    if deficient and not rank_deficient_ok:
        raise ErasureError(f"erasure: the {count} labelled users' embeddings span only {dim - deficient} of {dim} "
                           f"dimensions (rank deficient covariance); whitening is undefined")
    for name, counts in zip(names, np.asarray(eraser.class_counts)):
        if np.sum(counts > 0) < 2:
            raise ErasureError(f"erasure: attribute {name!r} has a single class among the {count} labelled users; "
                               f"there is nothing to erase (or to fit it on)")
    return eraser


def projection(eraser: Eraser, sensitive: jax.Array) -> jax.Array:
    """``(d, d)`` ``P``: onto the joint span of the directions of the attributes ``sensitive`` (bool ``(M,)``)."""
    m, d, k = eraser.directions.shape
    stacked = jnp.moveaxis(eraser.directions * sensitive[:, None, None], 0, 1).reshape(d, m * k)
    u, s, _ = jnp.linalg.svd(stacked, full_matrices=False)
    basis = u * (s > SPAN_TOLERANCE)
    return basis @ basis.T


def erasure_matrix(eraser: Eraser, sensitive: jax.Array) -> jax.Array:
    """``(d, d)`` ``E`` with ``u' = u - t (u - mu) E`` for row vectors: ``E = W P W^+`` (the transpose of the column
    form ``W^+ P W``; all three are symmetric)."""
    return eraser.whiten @ projection(eraser, sensitive) @ eraser.unwhiten


def erase(eraser: Eraser, user_vecs: jax.Array, sensitive: jax.Array, strength=1.0) -> jax.Array:
    """Fair embeddings of ``user_vecs (U, d)`` under one requirement ``sensitive (M,)`` at ``strength`` (a scalar or
    ``(U,)``)."""
    strength = jnp.broadcast_to(jnp.asarray(strength, user_vecs.dtype), user_vecs.shape[:1])
    return user_vecs - strength[:, None] * ((user_vecs - eraser.mean) @ erasure_matrix(eraser, sensitive))


@jax.jit
def erase_all(eraser: Eraser, user_vecs: jax.Array, requirements: jax.Array, strength=1.0) -> jax.Array:
    """Every requirement of ``requirements (K, M)`` in one ``jax.vmap``: ``(K, U, d)``."""
    return jax.vmap(lambda s: erase(eraser, user_vecs, s, strength))(requirements)


def masks_by_code(num_attributes: int) -> np.ndarray:
    """Bool ``(2^M, M)``: row ``c`` is the requirement whose attribute ``j`` is masked iff bit ``j`` of ``c`` is set."""
    codes = np.arange(2**num_attributes)
    return ((codes[:, None] >> np.arange(num_attributes)[None, :]) & 1).astype(bool)


def requirement_codes(sensitive: jax.Array) -> jax.Array:
    """``sum_j sensitive[..., j] 2^j``: ``(..., M) -> (...)`` int32, the row of :func:`masks_by_code`."""
    m = sensitive.shape[-1]
    return jnp.sum(sensitive.astype(jnp.int32) << jnp.arange(m), axis=-1)


@jax.jit
def erase_per_user(eraser: Eraser, user_vecs: jax.Array, sensitive: jax.Array, strength: jax.Array) -> jax.Array:
    """A mixed batch in one pass: user ``n`` under its own mask ``sensitive[n] (M,)`` and ``strength[n]``.

    The ``2^M`` erasure matrices are built in one ``jax.vmap`` and each user's is gathered by its mask's index
    (``sum_j mask_j 2^j``), so the cost is ``2^M`` small SVDs plus one ``(U, d, d)`` product, whatever the mix.
    """
    masks = jnp.asarray(masks_by_code(sensitive.shape[1]), user_vecs.dtype)  # (2^M, M): mask of each code
    matrices = jax.vmap(lambda s: erasure_matrix(eraser, s))(masks)
    index = requirement_codes(sensitive)
    strength = jnp.broadcast_to(jnp.asarray(strength, user_vecs.dtype), user_vecs.shape[:1])
    return user_vecs - strength[:, None] * jnp.einsum("ud,ude->ue", user_vecs - eraser.mean, matrices[index])


# --- the method contract -------------------------------------------------------------------------------------------


class ErasureData(NamedTuple):
    """The method's constant inputs: the attribute data (validation-time embeddings, labels withheld where they must
    be) and the eraser fitted on them."""

    attributes: AttributeData
    eraser: Eraser


def _prepare(context, config: Config) -> ErasureData:
    data = split_attribute_data(context.split, context.frozen)
    eraser = fit_eraser(data.user_vecs, data.labels, data.attribute_weight, data.class_mask,
                        context.split.attribute_names, config.max_rank)
    return ErasureData(data, eraser)


def _models(context, data, config: Config, fitted: dict):
    return []  # closed form: nothing to train


def _evaluate(context, data: ErasureData, fitted: dict, config: Config) -> Evaluation:
    evaluation = evaluate_requirements(
        context, lambda user_vecs, reqs: erase_all(data.eraser, user_vecs, reqs.astype(jnp.float32), config.strength))
    names = context.split.attribute_names
    ranks = {name: int(np.sum(np.asarray(data.eraser.singular_values[i]) > 0)) for i, name in enumerate(names)}
    results = {**evaluation.results, "strength": config.strength, "max_rank": config.max_rank,
               "erased_directions": ranks,
               "labelled_users": int(np.sum(np.asarray(data.attributes.attribute_weight) > 0))}
    return evaluation._replace(results=results)


def serve(data: ErasureData, params: dict, config: Config, user_vecs, control=None) -> jax.Array:
    """Fair embeddings of ``user_vecs (U, d)``. ``control``: a bool requirement ``(M,)`` or per-user ``(U, M)``, or a
    pair ``(mask, strength)`` with strength a scalar or ``(U,)`` (default: the config's); None: every attribute."""
    del params
    mask, strength = control if isinstance(control, tuple) else (control, config.strength)
    user_vecs = jnp.asarray(user_vecs, jnp.float32)
    m = data.eraser.directions.shape[0]
    mask = jnp.ones((m,), bool) if mask is None else jnp.asarray(mask, bool)
    mask = jnp.broadcast_to(mask, (user_vecs.shape[0], m))
    strength = jnp.broadcast_to(jnp.asarray(strength, jnp.float32), user_vecs.shape[:1])
    return erase_per_user(data.eraser, user_vecs, mask, strength)


METHOD = Method("erasure", Config, frozen_backbone=True, check=lambda config, run: check_sampled_split("erasure", run),
                prepare=_prepare, models=_models, evaluate=_evaluate, serve=serve,
                report=lambda results: requirements_report(results, "erasure"),
                description="closed-form linear concept erasure (LEACE) per requirement and strength, no training")

__all__ = ["Config", "Eraser", "ErasureData", "ErasureError", "METHOD", "erase", "erase_all",
           "erase_per_user", "erasure_matrix", "fit_eraser", "masks_by_code", "projection", "requirement_codes",
           "serve"]
