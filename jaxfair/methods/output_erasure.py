"""Closed-form erasure on a trained method's own output (issue 22, item 2: "AFRL with erasure").

A method that serves every fairness requirement (AFRL) is trained as it always is; afterwards, for each requirement
``m`` (a bool mask over the ``M`` attributes), LEACE (:mod:`jaxfair.methods.erasure`) is fitted on the method's
fair embeddings ``u*_m`` of the labelled users (validation-time, the users whose labels the method trained on) and
erases the attributes of ``m`` from every user's ``u*_m``:

    u**_m = u*_m - (u*_m - mu_m) E_m          E_m = W_m P_m W_m^+, (mu_m, W_m, P_m) fitted on {u*_m(v): v labelled}

so at the fitting users no linear classifier of ``u**_m`` predicts a masked attribute better than a constant, and
what the method learned (its ranking signal, its own debiasing) is otherwise kept.

Choices:

* **One eraser per requirement**, fitted on that requirement's outputs: each requirement's ``u*_m`` is a different
  distribution (the aggregator sees different inputs), so one eraser fitted on the backbone would not remove what
  the aggregator re-encodes. All ``2^M`` are fitted (the empty requirement's erases nothing) after training, once
  per evaluation or serving call; each is a ``d x d`` eigendecomposition and a few SVDs.
* **Post-hoc, not in the loss**: the method's training, its early stopping (on the un-erased validation
  embeddings) and its checkpoints are exactly those of the plain method; only evaluation and serving differ, so a
  sweep over ``erase_output`` compares the same trained model with and without the erasure.
* **Full strength** in evaluation; serving's per-user strength scales the whole correction from the un-fair
  embedding (:mod:`jaxfair.serving`), the erasure included.
* ``max_rank`` as in :mod:`jaxfair.methods.erasure` (0: every direction of each masked attribute).
* A trained network's outputs may span fewer than ``d`` dimensions (a ReLU unit of the aggregator that is dead for
  every user leaves a direction without variance); the whitening is then the pseudo-inverse on their span, where
  every user's output lies, instead of the refusal the backbone-level erasure gives.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.methods.erasure import Eraser, erasure_matrix, fit_eraser, masks_by_code, requirement_codes


def fit_output_erasers(embed: Callable, data, max_rank: int = 0, attribute_names=None) -> Eraser:
    """One eraser per requirement, stacked on a leading ``2^M`` axis in :func:`masks_by_code` order.

    Args:
      embed: ``(user_vecs (U, d), sensitive (M,)) -> (U, d)``, the trained method's fair embeddings.
      data: :class:`~jaxfair.methods.adversaries.AttributeData` (validation-time ``user_vecs``, ``labels``,
        ``attribute_weight`` 0 for withheld labels, ``class_mask``).
      max_rank, attribute_names: as :func:`~jaxfair.methods.erasure.fit_eraser` (which raises
        :class:`~jaxfair.methods.erasure.ErasureError` on a labelled set that cannot define an erasure).
    """
    erasers = [fit_eraser(embed(data.user_vecs, jnp.asarray(mask)), data.labels, data.attribute_weight,
                          data.class_mask, attribute_names, max_rank, rank_deficient_ok=True)
               for mask in masks_by_code(data.labels.shape[1])]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *erasers)


@jax.jit
def erase_outputs(erasers: Eraser, fair: jax.Array, sensitive: jax.Array) -> jax.Array:
    """``u**``: each row of ``fair (U, d)`` erased by its own requirement's eraser; ``sensitive`` bool ``(M,)`` (one
    requirement for every row) or ``(U, M)`` (per row: the ``2^M`` matrices are built once and gathered)."""
    m = erasers.directions.shape[1]
    matrices = jax.vmap(erasure_matrix)(erasers, jnp.asarray(masks_by_code(m), fair.dtype))  # (2^M, d, d)
    code = requirement_codes(sensitive)
    if sensitive.ndim == 1:
        return fair - (fair - erasers.mean[code]) @ matrices[code]
    return fair - jnp.einsum("ud,ude->ue", fair - erasers.mean[code], matrices[code])


def with_output_erasure(embed: Callable, data, max_rank: int = 0, attribute_names=None) -> Callable:
    """``embed`` followed by the erasure of its output: the same ``(user_vecs, sensitive) -> (U, d)`` signature."""
    erasers = fit_output_erasers(embed, data, max_rank, attribute_names)
    return lambda user_vecs, sensitive: erase_outputs(erasers, embed(user_vecs, sensitive), sensitive)
