"""Attribute classifiers and adversaries, shared by the methods that learn against user attributes (AFRL, SM and the
FFVAE baseline): the attribute data they train on and the losses of their stacked classifier heads.

``M`` attributes with different numbers of classes share one stack of ``M`` heads of ``max_classes`` outputs
(:mod:`jaxfair.methods.mlp`); a class an attribute does not have is masked out of its softmax. Users whose labels are
withheld (the probe validation and test users, :func:`jaxfair.methods.base.label_weight`) carry weight 0 in every
attribute term. Moving a player by its own optimizer is :func:`jaxfair.training.optim.update_player`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.methods.base import label_weight
from jaxfair.methods.mlp import stack_apply_each


class AttributeData(NamedTuple):
    """Constant inputs of a method on a frozen backbone that learns against ``M`` user attributes.

    Attributes:
      user_vecs: ``(U, d)`` frozen backbone user embeddings (validation-time); item_vecs: ``(I, d)``.
      labels: int32 ``(U, M)`` attribute classes.
      attribute_weight: float32 ``(U,)``: 1 for users whose labels may be trained on, 0 for withheld ones.
      class_mask: bool ``(M, max_classes)``, True on each attribute's real classes.
      class_prior: float32 ``(M, max_classes)`` class frequencies among the labelled users (0 on masked classes),
        the target of the ``"confusion"`` adversary.
    """

    user_vecs: jax.Array
    item_vecs: jax.Array
    labels: jax.Array
    attribute_weight: jax.Array
    class_mask: jax.Array
    class_prior: jax.Array


def make_data(user_vecs, item_vecs, labels, num_classes: tuple[int, ...], attribute_weight=None) -> AttributeData:
    """Build :class:`AttributeData`, deriving the class mask and the class prior (over users with weight > 0).

    Args:
      user_vecs: ``(U, d)``; item_vecs: ``(I, d)``; labels: int ``(U, M)``; num_classes: classes per attribute;
      attribute_weight: ``(U,)``, default all ones.
    """
    labels = np.asarray(labels, np.int32)
    weight = np.ones(len(labels), np.float32) if attribute_weight is None else np.asarray(attribute_weight, np.float32)
    mask = class_mask(tuple(num_classes))
    # Cast on the host and copy with device_put: jnp.asarray builds one small program per array shape.
    return AttributeData(
        user_vecs=jax.device_put(np.asarray(user_vecs, np.float32)),
        item_vecs=jax.device_put(np.asarray(item_vecs, np.float32)),
        labels=jax.device_put(labels),
        attribute_weight=jax.device_put(weight),
        class_mask=jax.device_put(np.asarray(mask, np.float32 if np.asarray(mask).dtype.kind == "f" else bool)),
        class_prior=jax.device_put(np.asarray(class_prior(labels, weight, mask), np.float32)),
    )


def split_attribute_data(split, frozen) -> AttributeData:
    """:class:`AttributeData` of every attribute of ``split`` on a frozen backbone's validation-time embeddings,
    with the probe validation and test users' labels withheld."""
    names = split.attribute_names
    labels = np.stack([split.user_attributes[n] for n in names], axis=1)
    num_classes = tuple(len(split.attribute_classes[n]) for n in names)
    return make_data(frozen.user_vecs["valid"], frozen.item_vecs, labels, num_classes, label_weight(split))


def class_prior(labels: np.ndarray, weight: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Weighted class frequencies ``(M, max_classes)`` of ``labels (U, M)`` over users with ``weight > 0``."""
    prior = np.zeros(mask.shape, np.float64)
    for i in range(mask.shape[0]):
        prior[i] = np.bincount(labels[:, i], weights=weight, minlength=mask.shape[1])[: mask.shape[1]]
    return (prior / prior.sum(axis=1, keepdims=True)).astype(np.float32)


def class_mask(num_classes: tuple[int, ...]) -> np.ndarray:
    """Bool ``(M, max(num_classes))``: row ``i`` is True on attribute ``i``'s first ``num_classes[i]`` columns."""
    width = max(num_classes)
    return np.arange(width)[None, :] < np.asarray(num_classes)[:, None]


def num_classes_of(data: AttributeData) -> tuple[int, ...]:
    """Classes per attribute, read off the class mask."""
    return tuple(int(n) for n in np.asarray(data.class_mask).sum(axis=1))


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
    """``sum w v / max(sum w, 1)`` over users."""
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def head_log_probs(heads, z: jax.Array, mask: jax.Array) -> jax.Array:
    """Log class probabilities ``(M, B, max_classes)`` of a stack of heads on ``z (M, B, d)``; masked classes -inf-like."""
    logits = jnp.where(mask[:, None, :], stack_apply_each(heads, z), -1e9)
    return jax.nn.log_softmax(logits, axis=-1)


def head_nll(heads, z: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """``-log q(a_i | z_i; head_i)`` for every attribute: ``z (M, B, d)`` -> ``(M, B)``.

    ``mask (M, max_classes)`` removes classes an attribute does not have from its softmax.
    """
    logp = head_log_probs(heads, z, mask)
    return -jnp.take_along_axis(logp, labels.T[..., None], axis=-1)[..., 0]


def classifier_loss(c_params, z, labels, weight, mask) -> jax.Array:
    """Mean over users of ``sum_i -log q(a_i | z_i; C_i)``: heads ``C_i`` reading their own inputs ``z (M, B, d)``
    (AFRL's Eq. 10; FFVAE's alignment classifiers)."""
    return weighted_mean(jnp.sum(head_nll(c_params, z, labels, mask), axis=0), weight)


def discriminator_loss(d_params, z0, labels, weight, mask) -> jax.Array:
    """Mean over users of ``sum_i -log q(a_i | z_0; D_i)``: every head reads the same ``z0 (B, d)`` (the inner
    maximisation of AFRL's Eq. 16 written as a minimisation)."""
    m = labels.shape[1]
    return weighted_mean(jnp.sum(head_nll(d_params, jnp.broadcast_to(z0, (m,) + z0.shape), labels, mask), axis=0),
                         weight)


def confusion_loss(d_params, z0, prior, weight, mask) -> jax.Array:
    """The bounded adversarial target: mean over users of ``sum_i CE(p(a_i), q(. | z_0; D_i))``.

    Smallest (equal to the prior's entropy) when every discriminator predicts the class prior for every user.
    """
    m = prior.shape[0]
    logp = head_log_probs(d_params, jnp.broadcast_to(z0, (m,) + z0.shape), mask)
    per_user = -jnp.sum(jnp.where(mask[:, None, :], prior[:, None, :] * logp, 0.0), axis=(0, 2))
    return weighted_mean(per_user, weight)
