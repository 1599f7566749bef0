"""Ratio hold-out splits (several validation and test positives per user) for the full-ranking protocols of
Cofair, ITFR and DifFaiRec: the rules that choose each user's held-out positives. The result is a
:class:`jaxfair.data.dataset.Split` of kind ``temporal_ratio`` or ``random_ratio``, whose validation and test
positives are ``(user, item)`` rows and which has no sampled evaluation negatives (it is ranked over all items).

Split rules, per user with ``n`` positives and ratios ``(r_train, r_valid, r_test)``:

    n_test  = max(1, round(r_test * n))
    n_valid = max(1, round(r_valid * n))
    n_train = n - n_valid - n_test            (at least 1: users with fewer than 3 positives are rejected)

* ``temporal_ratio``: positives sorted by timestamp (stable, so ties keep the file's order); the first ``n_train``
  train, the next ``n_valid`` validate, the last ``n_test`` test (Cofair's protocol: 80/10/10).
* ``random_ratio``: the same counts over a seeded random permutation of the user's positives (ITFR's protocol:
  70/10/20).

Full-ranking masks (see :meth:`jaxfair.data.dataset.Split.exclude_matrix`): validation ranks every item except the user's training
positives; test ranks every item except the training and validation positives. Training negatives are drawn outside
every known positive (train, validation and test), as in the leave-one-out split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jaxfair.data.dataset import DataError

def check_ratios(ratios) -> tuple[float, float, float]:
    """Validate ``(train, valid, test)`` fractions: three positive numbers summing to 1."""
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be three positive numbers (train, valid, test) summing to 1, got {list(ratios)}")
    return ratios


def holdout_counts(n: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user ``(n_train, n_valid, n_test)`` for positive counts ``n`` (int ``(U,)``); see the module docstring.

    Raises:
      DataError: a user has fewer than 3 positives (no room for one of each part).
    """
    n = np.asarray(n, dtype=np.int64)
    if n.size and n.min() < 3:
        raise DataError(
            f"a ratio split needs at least 3 positives per user, user {int(np.argmin(n))} has {int(n.min())}"
        )
    n_test = np.maximum(1, np.round(ratios[2] * n).astype(np.int64))
    n_valid = np.maximum(1, np.round(ratios[1] * n).astype(np.int64))
    # Rounding both up can leave no training row for tiny users; take the shortfall from validation then test.
    short = np.maximum(0, n_valid + n_test + 1 - n)
    take = np.minimum(short, n_valid - 1)
    n_valid -= take
    n_test -= short - take
    return n - n_valid - n_test, n_valid, n_test


def ratio_split(
    positives: pd.DataFrame, ratios, kind: str, rng: np.random.Generator | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split each user's positives into train / validation / test rows.

    Args:
      positives: re-indexed rows with ``user``, ``item``, ``timestamp``; every user has at least 3 rows.
      ratios: ``(train, valid, test)`` fractions.
      kind: ``"temporal_ratio"`` (by time) or ``"random_ratio"`` (by a permutation drawn from ``rng``).
      rng: required for ``random_ratio``.

    Returns:
      ``(train, valid, test)`` DataFrames, each sorted by user (then by time, or by draw order).
    """
    ratios = check_ratios(ratios)
    if kind == "temporal_ratio":
        ordered = positives.sort_values(["user", "timestamp"], kind="stable")
    elif kind == "random_ratio":
        if rng is None:
            raise ValueError("random_ratio needs a random generator")
        draw = rng.permutation(len(positives))
        ordered = positives.assign(_draw=draw).sort_values(["user", "_draw"], kind="stable").drop(columns="_draw")
    else:
        raise ValueError(f"kind must be 'temporal_ratio' or 'random_ratio', got {kind!r}")
    ordered = ordered.reset_index(drop=True)
    position = ordered.groupby("user").cumcount().to_numpy()
    counts = ordered.groupby("user")["item"].size()
    n_train, n_valid, _ = holdout_counts(counts.to_numpy(), ratios)
    users = ordered["user"].to_numpy()
    row_of_user = np.searchsorted(counts.index.to_numpy(), users)
    train_end = n_train[row_of_user]
    valid_end = train_end + n_valid[row_of_user]
    part = np.where(position < train_end, 0, np.where(position < valid_end, 1, 2))
    return tuple(ordered[part == k].reset_index(drop=True) for k in range(3))
