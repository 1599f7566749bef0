"""Intersectional two-sided fairness metrics (ITFR, section 5): the recall matrix over user groups x item groups and
the dispersion statistics computed from it.

For user ``u``, item group ``c`` and cut-off ``K``, with ``T_uc`` the user's test positives in item group ``c``:

    recall_uc@K = |top-K(u) ∩ T_uc| / |T_uc|                          (defined when |T_uc| > 0)
    R[a, c]@K   = mean of recall_uc@K over the users u of user group a with |T_uc| > 0      (NaN if there are none)

Top-K lists rank every item except the masked ones (training and validation positives for test), ties broken
against relevant items as in :mod:`jaxfair.metrics.ranking`. From the ``(A, C)`` matrix ``R`` (all ``A C`` cells):

    CV   = std(R) / mean(R)                     population std over every cell (lower is fairer)
    MIN  = mean of the floor(A C / 4) smallest cells (at least one)      (higher is fairer)
    UCV  = mean over item groups c of std_a(R[:, c]) / mean_a(R[:, c])   (user-side dispersion)
    ICV  = mean over user groups a of std_c(R[a, :]) / mean_c(R[a, :])   (item-side dispersion)

A set of cells that are all zero has CV 0 (no dispersion); a NaN cell makes every statistic NaN.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.data.dataset import UserItems
from jaxfair.metrics.masks import mask_rows
from jaxfair.metrics.ranking import block_rows


@functools.partial(jax.jit, static_argnames=("num_item_groups", "ks"))
def _group_hits(scores, relevant, item_group, *, num_item_groups: int, ks: tuple[int, ...]):
    """``(len(ks), B, C)`` hits per item group in the top K of each row (pessimistic ties)."""
    num_items = scores.shape[-1]
    index = jnp.broadcast_to(jnp.arange(num_items), scores.shape)
    # Ascending on (-score, relevant): best first, and within a tie non-relevant items first.
    _, ranked_rel, ranked_item = jax.lax.sort((-scores, relevant.astype(jnp.int32), index), dimension=-1, num_keys=2)
    top = min(max(ks), num_items)
    onehot = jax.nn.one_hot(item_group[ranked_item[:, :top]], num_item_groups, dtype=jnp.float32)
    cumulative = jnp.cumsum(ranked_rel[:, :top, None].astype(jnp.float32) * onehot, axis=1)
    return jnp.stack([cumulative[:, min(k, num_items) - 1] for k in ks])


def user_group_recall(
    score_fn: Callable[[jax.Array, jax.Array], jax.Array],
    user_vecs: jax.Array,
    item_vecs: jax.Array,
    targets: np.ndarray,
    exclude: np.ndarray,
    item_group: np.ndarray,
    num_item_groups: int,
    ks: tuple[int, ...] = (10, 20, 50),
    batch_size: int = 256,
) -> np.ndarray:
    """``recall_uc@K`` for every user and item group.

    Args:
      score_fn: ``(users (B, 1, d), items (1, I, d)) -> (B, I)``.
      user_vecs, item_vecs: ``(U, d)``, ``(I, d)``.
      targets: bool ``(U, I)`` held-out positives; exclude: bool ``(U, I)`` items to mask (never a target). Either
        may be :class:`~jaxfair.data.dataset.UserItems` (large data): each block's rows are then built from the sets
        and a block holds at most :func:`~jaxfair.metrics.ranking.block_rows` users; the result is the same.
      item_group: int ``(I,)`` in ``[0, C)``.

    Returns:
      float64 ``(len(ks), U, C)``; NaN where the user has no target in the item group.
    """
    ks = tuple(int(k) for k in ks)
    sparse = isinstance(targets, UserItems) or isinstance(exclude, UserItems)
    if not isinstance(targets, UserItems):
        targets = np.asarray(targets, bool)
    if sparse:
        batch_size = min(batch_size, block_rows(item_vecs.shape[0]))
    groups_np = np.asarray(item_group)
    item_group = jnp.asarray(item_group, jnp.int32)
    user_vecs, item_vecs = jnp.asarray(user_vecs), jnp.asarray(item_vecs)
    num_users = user_vecs.shape[0]
    hits = np.zeros((len(ks), num_users, num_item_groups))
    for start in range(0, num_users, batch_size):
        stop = min(start + batch_size, num_users)
        rows = np.arange(start, stop)
        block_targets = mask_rows(targets, rows)
        scores = score_fn(user_vecs[start:stop][:, None, :], item_vecs[None])
        scores = jnp.where(jnp.asarray(mask_rows(exclude, rows) & ~block_targets), -jnp.inf, scores)
        hits[:, rows] = np.asarray(
            _group_hits(scores, jnp.asarray(block_targets), item_group, num_item_groups=num_item_groups, ks=ks)
        )
    pair_users, pair_items = targets.pairs() if isinstance(targets, UserItems) else np.nonzero(targets)
    relevant = np.zeros((num_users, num_item_groups))  # (U, C) |T_uc|
    np.add.at(relevant, (pair_users, groups_np[pair_items]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant[None] > 0, hits / relevant[None], np.nan)


def recall_matrix(per_user: np.ndarray, user_group: np.ndarray, num_user_groups: int) -> np.ndarray:
    """``R[a, c]``: mean over the users of group ``a`` with a defined ``recall_uc`` (NaN when none).

    Args:
      per_user: ``(..., U, C)`` from :func:`user_group_recall`.
      user_group: int ``(U,)`` in ``[0, A)``.

    Returns:
      ``(..., A, C)``.
    """
    per_user = np.asarray(per_user, np.float64)
    membership = np.eye(num_user_groups)[np.asarray(user_group)].T  # (A, U)
    defined = ~np.isnan(per_user)
    sums = np.einsum("au,...uc->...ac", membership, np.where(defined, per_user, 0.0))
    counts = np.einsum("au,...uc->...ac", membership, defined.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _cv(values: np.ndarray, axis=None) -> np.ndarray:
    """std / mean; 0 for a set of all-zero recalls (no dispersion: e.g. a genre nobody is recommended at K)."""
    std, mean = np.std(values, axis=axis), np.mean(values, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), np.where(std == 0, 0.0, np.nan))


def matrix_fairness(matrix: np.ndarray) -> dict[str, float]:
    """``{"cv", "min", "ucv", "icv"}`` of one ``(A, C)`` recall matrix (module docstring). A NaN cell makes every
    statistic NaN (a group pair without test users cannot be judged)."""
    matrix = np.asarray(matrix, np.float64)
    cells = np.sort(matrix.ravel())
    lowest = max(1, cells.size // 4)
    return {
        "cv": float(_cv(cells)),
        "min": float(np.mean(cells[:lowest])) if not np.isnan(cells).any() else float("nan"),
        "ucv": float(np.mean(_cv(matrix, axis=0))),
        "icv": float(np.mean(_cv(matrix, axis=1))),
    }


def intersectional_report(
    score_fn, user_vecs, item_vecs, targets, exclude, user_group, item_group, num_user_groups: int,
    num_item_groups: int, ks: tuple[int, ...] = (10, 20, 50), batch_size: int = 256,
) -> dict:
    """Recall matrix and its statistics at each cut-off.

    Returns:
      ``{f"@{k}": {"matrix": (A, C) nested lists, "cv", "min", "ucv", "icv"}}``.
    """
    per_user = user_group_recall(
        score_fn, user_vecs, item_vecs, targets, exclude, item_group, num_item_groups, ks, batch_size
    )
    matrices = recall_matrix(per_user, user_group, num_user_groups)
    return {f"@{k}": {"matrix": matrices[n].tolist(), **matrix_fairness(matrices[n])} for n, k in enumerate(ks)}
