"""ROC AUC from predicted probabilities (numpy).

AUC is always computed from scores or probabilities, never from argmax labels: AUC on hard labels measures a
single operating point and understates (or, for minority classes, distorts) what an attacker can infer.

All functions share one implementation, :func:`resampled_auc`, which counts each sample with a multiplicity so the
same code gives the plain AUC (all multiplicities 1) and bootstrap replicates (multinomial multiplicities) without
materialising resampled arrays.
"""

from __future__ import annotations

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
    y = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    counts = np.atleast_2d(np.asarray(counts))
    if proba.ndim != 2 or proba.shape[0] != y.shape[0] or counts.shape[1] != y.shape[0]:
        raise ValueError(f"shape mismatch: y_true {y.shape}, proba {proba.shape}, counts {counts.shape}")
    if np.isnan(proba).any():
        raise ValueError("proba contains NaN")
    num_classes = proba.shape[1]
    if num_classes < 2:
        return np.full(counts.shape[0], np.nan)
    if num_classes == 2:
        return _weighted_binary_auc(y == 1, proba[:, 1], counts)
    per_class = np.stack([_weighted_binary_auc(y == c, proba[:, c], counts) for c in range(num_classes)])
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


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks ``1..n`` along the last axis of ``scores (..., n)``, ties sharing their average rank."""
    n = scores.shape[-1]
    order = np.argsort(scores, axis=-1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=-1)
    index = np.broadcast_to(np.arange(n), ordered.shape)
    opens = np.ones(ordered.shape, bool)
    opens[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    closes = np.ones(ordered.shape, bool)
    closes[..., :-1] = opens[..., 1:]
    first = np.maximum.accumulate(np.where(opens, index, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(closes, index, n - 1), -1), axis=-1), -1)
    ranks = np.empty(ordered.shape, np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def batched_multiclass_auc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """:func:`multiclass_auc` of many probability tables against the same labels at once.

    Uses the rank form of the Mann-Whitney statistic, ``AUC_c = (sum of the positives' average ranks - P(P+1)/2) /
    (P N)``, so every table and class is ranked in one vectorised sort.

    Args:
      y_true: int ``(n,)`` class indices in ``[0, C)``.
      proba: float ``(..., n, C)``.

    Returns:
      float64 ``(...)``, equal to ``multiclass_auc(y_true, proba[i])`` for each leading index ``i`` (to rounding).
    """
    y = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    num_classes = proba.shape[-1]
    if proba.shape[-2] != y.shape[0]:
        raise ValueError(f"shape mismatch: y_true {y.shape}, proba {proba.shape}")
    if np.isnan(proba).any():
        raise ValueError("proba contains NaN")
    if num_classes < 2:
        return np.full(proba.shape[:-2], np.nan)
    classes = [1] if num_classes == 2 else list(range(num_classes))
    positive = np.stack([y == c for c in classes])  # (K, n)
    ranks = _average_ranks(np.moveaxis(proba[..., classes], -1, -2))  # (..., K, n)
    pos = positive.sum(axis=1).astype(np.float64)
    neg = y.shape[0] - pos
    num = (ranks * positive).sum(axis=-1) - pos * (pos + 1) / 2.0
    defined = (pos > 0) & (neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(defined, num / np.where(defined, pos * neg, 1.0), 0.0)
        count = defined.sum()
        return per_class.sum(axis=-1) / count if count else np.full(proba.shape[:-2], np.nan)


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
