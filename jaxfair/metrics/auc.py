"""ROC AUC from predicted probabilities (numpy).

AUC is always computed from scores or probabilities, never from argmax labels: AUC on hard labels measures a
single operating point and understates (or, for minority classes, distorts) what an attacker can infer.

The host functions share one implementation, :func:`resampled_auc`, which counts each sample with a multiplicity so
the same code gives the plain AUC (all multiplicities 1) and bootstrap replicates (multinomial multiplicities) without
materialising resampled arrays. :func:`mean_resampled_auc`, the bootstrap of the unseen-user audit (a mean over many
tables), runs on the device as matrix products; ``tests/test_probe.py`` checks it against :func:`resampled_auc`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _weighted_binary_auc(positive: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of ``scores`` for each row of sample multiplicities.

    ``AUC = sum_{i pos, j neg} c_i c_j (1[s_i > s_j] + 1/2 1[s_i = s_j]) / (sum_pos c * sum_neg c)``, computed in
    ``O(R n)`` after one sort by grouping equal scores.

    Args:
      positive: bool ``(n,)``.
      scores: float ``(n,)``, no NaN.
      counts: ``(R, n)`` nonnegative multiplicities.

    Returns:
      float64 ``(R,)``; NaN in a row whose weighted positives or negatives are zero.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Start index of each run of equal scores in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = counts[:, order].astype(np.float64)
    pos = positive[order]
    w_pos = np.add.reduceat(w * pos, starts, axis=1)  # (R, G) positive weight per tie group
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg  # negative weight strictly below each group
    num = np.sum(w_pos * (neg_below + 0.5 * w_neg), axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def resampled_auc(y_true: np.ndarray, proba: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC (as in :func:`multiclass_auc`) of each resample described by per-sample multiplicities.

    Args:
      y_true: int ``(n,)`` class indices in ``[0, C)``.
      proba: float ``(n, C)`` class probabilities (or any per-class scores).
      counts: ``(R, n)`` multiplicity of each sample in each resample (e.g. a bootstrap's multinomial counts).

    Returns:
      float64 ``(R,)``. For ``C = 2`` the binary AUC of ``proba[:, 1]``; for ``C > 2`` the macro one-vs-rest mean
      over the classes present with both positives and negatives in that resample; NaN when there are none.
    """
    y, proba, counts = _checked(y_true, proba, counts, np.float64)
    num_classes = proba.shape[-1]
    if num_classes < 2:
        return np.full(counts.shape[0], np.nan)
    if num_classes == 2:
        return _weighted_binary_auc(y == 1, proba[:, 1], counts)
    return _macro([_weighted_binary_auc(y == c, proba[:, c], counts) for c in range(num_classes)])


def _checked(y_true, scores, counts, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y (n,), scores (..., n, C) as dtype, counts (R, n))`` after checking their shapes agree and no score is
    NaN."""
    y = np.asarray(y_true)
    scores = np.asarray(scores, dtype=dtype)
    counts = np.atleast_2d(np.asarray(counts))
    if scores.ndim < 2 or scores.shape[-2] != y.shape[0] or counts.shape[1] != y.shape[0]:
        raise ValueError(f"shape mismatch: y_true {y.shape}, scores {scores.shape}, counts {counts.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return y, scores, counts


def _macro(per_class: list[np.ndarray]) -> np.ndarray:
    """The mean over classes of per-class AUCs ``(R,)`` each, skipping a class where it is NaN (undefined); NaN
    where every class is."""
    per_class = np.stack(per_class)
    defined = ~np.isnan(per_class)
    total = np.where(defined, per_class, 0.0).sum(axis=0)
    num = defined.sum(axis=0)
    return np.where(num > 0, total / np.maximum(num, 1), np.nan)


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative, ties counting 1/2.

    Equals the Mann-Whitney U statistic with average ranks for ties, divided by ``n_pos * n_neg``.

    Args:
      y_true: ``(n,)`` bool or 0/1 labels (1 = positive).
      scores: float ``(n,)``; higher means more likely positive.

    Returns:
      AUC in ``[0, 1]``; ``nan`` (no exception) when either class is absent, so callers aggregating many
      attributes or resamples can skip undefined cases.
    """
    y = np.asarray(y_true)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("binary_auc expects labels in {0, 1}")
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return float(_weighted_binary_auc(y.astype(bool), scores, np.ones((1, y.shape[0])))[0])


def multiclass_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """AUC of class probabilities: binary for two classes, macro one-vs-rest for more.

    Args:
      y_true: int ``(n,)`` class indices in ``[0, C)``.
      proba: float ``(n, C)``.

    Returns:
      ``C = 2``: :func:`binary_auc` of ``proba[:, 1]`` with class 1 positive. ``C > 2``: the mean over classes ``c``
      that have both positives and negatives in ``y_true`` of ``binary_auc(y_true == c, proba[:, c])``. ``nan``
      when no class qualifies.
    """
    y = np.asarray(y_true)
    return float(resampled_auc(y, proba, np.ones((1, y.shape[0])))[0])


_REPEAT_BLOCK = 8  # draws per call of the pair-count program: one program however many draws an audit makes


@jax.jit
def _add_pair_sums(total: jax.Array, scores: jax.Array, weight: jax.Array, positive: jax.Array) -> jax.Array:
    """``total + S`` with ``S[i, j] = sum_r weight[r] (2 [s_ri > s_rj] + [s_ri = s_rj])`` for positive ``i`` and
    negative ``j`` (0 elsewhere): ``(n, n), scores (B, n), weight (B,), positive (n,) -> (n, n)`` float32,
    integer-valued."""
    greater = (scores[:, :, None] > scores[:, None, :]).astype(jnp.float32)
    equal = (scores[:, :, None] == scores[:, None, :]).astype(jnp.float32)
    pairs = jnp.einsum("r,rij->ij", weight, 2.0 * greater + equal)
    return total + pairs * (positive[:, None] & ~positive[None, :])


@jax.jit
def _resample_products(counts: jax.Array, pair_sums: jax.Array) -> jax.Array:
    """``counts (R, n) @ S (n, n)``: row ``r`` holds, per user ``i``, the pair weight of ``i`` against every
    resampled negative."""
    return counts @ pair_sums


def mean_resampled_auc(y_true: np.ndarray, probas: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over ``D`` probability tables of their AUC in each resample: equals
    ``np.mean([resampled_auc(y_true, p, counts) for p in probas], axis=0)`` (to float64 rounding), computed on the
    device.

    Per AUC class, a resample's positive-negative pair count summed over the tables is ``c^T S c`` with ``c`` the
    resample's multiplicities and ``S[i, j]`` the pair weights of positive ``i`` over negative ``j`` summed over the
    tables, because the AUC's denominator (positives x negatives in the resample) is the same for every table. So the
    work is one ``(R, n) x (n, n)`` matrix product per class instead of a sort per table, class and resample.
    Everything is integer-valued and exact in float32 while ``n * 2 * D * max(counts) < 2**24`` (the final sums are
    taken in float64 on the host); beyond it, it is float32-accurate.

    Args:
      y_true: int ``(n,)`` class indices in ``[0, C)``.
      probas: float ``(D, n, C)``.
      counts: ``(R, n)`` multiplicities of each sample in each resample.

    Returns:
      float64 ``(R,)``; NaN where a resample has no class with both positives and negatives.
    """
    y, probas, counts = _checked(y_true, probas, counts, np.float32)
    if probas.ndim != 3:
        raise ValueError(f"probas must be (tables, n, C), got {probas.shape}")
    tables, _, num_classes = probas.shape
    if num_classes < 2:
        return np.full(counts.shape[0], np.nan)
    blocks = -(-tables // _REPEAT_BLOCK)
    padded = np.zeros((blocks * _REPEAT_BLOCK,) + probas.shape[1:], np.float32)
    padded[:tables] = probas
    weight = (np.arange(len(padded)) < tables).astype(np.float32).reshape(blocks, _REPEAT_BLOCK)
    padded = padded.reshape((blocks, _REPEAT_BLOCK) + probas.shape[1:])
    counts_device = jax.device_put(counts.astype(np.float32))
    counts = counts.astype(np.float64)
    per_class = []
    for c in ([1] if num_classes == 2 else range(num_classes)):
        positive = y == c
        pair_sums = np.zeros((len(y), len(y)), np.float32)
        for b in range(blocks):
            pair_sums = _add_pair_sums(pair_sums, padded[b, :, :, c], weight[b], positive)
        products = np.asarray(_resample_products(counts_device, pair_sums), dtype=np.float64)
        num = (counts * products).sum(axis=1) / 2.0
        den = (counts @ positive.astype(np.float64)) * (counts @ (~positive).astype(np.float64)) * tables
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
    return per_class[0] if num_classes == 2 else _macro(per_class)
