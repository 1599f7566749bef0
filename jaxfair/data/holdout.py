"""Ratio hold-out splits (several validation and test positives per user) for the full-ranking protocols of
Cofair, ITFR and DifFaiRec.

:class:`HoldoutSplit` offers the same read interface as the leave-one-out :class:`jaxfair.data.dataset.Split` where
the two protocols agree (``num_users``, ``num_items``, ``train_users``/``train_items``, ``positive_matrix()``,
``train_matrix()``, attributes, probe users, raw ids), so the embedding-table backbones (PMF, LightGCN, cosine MF)
train on either. It differs where they differ: validation and test are sets of positives per user, stored as
``(user, item)`` rows, and there are no sampled evaluation negatives (hold-out splits are ranked over all items).

Split rules, per user with ``n`` positives and ratios ``(r_train, r_valid, r_test)``:

    n_test  = max(1, round(r_test * n))
    n_valid = max(1, round(r_valid * n))
    n_train = n - n_valid - n_test            (at least 1: users with fewer than 3 positives are rejected)

* ``temporal_ratio``: positives sorted by timestamp (stable, so ties keep the file's order); the first ``n_train``
  train, the next ``n_valid`` validate, the last ``n_test`` test (Cofair's protocol: 80/10/10).
* ``random_ratio``: the same counts over a seeded random permutation of the user's positives (ITFR's protocol:
  70/10/20).

Full-ranking masks (see :meth:`HoldoutSplit.exclude_matrix`): validation ranks every item except the user's training
positives; test ranks every item except the training and validation positives. Training negatives are drawn outside
every known positive (train, validation and test), as in the leave-one-out split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from jaxfair.data.dataset import DataError, SplitAccessors

SPLIT_KINDS = ("leave_one_out", "temporal_ratio", "random_ratio")


@dataclasses.dataclass(frozen=True)
class HoldoutSplit(SplitAccessors):
    """A ratio hold-out split. ``U = num_users``, ``I = num_items``.

    Attributes:
      name: dataset name.
      kind: ``"temporal_ratio"`` or ``"random_ratio"``.
      num_users, num_items: ``U`` and ``I``.
      train_users, train_items: int32 ``(P,)`` training positives, grouped by user (chronological within a user for
        the temporal kind).
      valid_users, valid_items, test_users, test_items: int32 rows of the validation and test positives.
      positives_indptr, positives_indices: CSR of every known positive per user, sorted by item id.
      user_attributes: attribute name -> int32 ``(U,)`` class index; ``attribute_classes`` names the classes.
      item_genres: bool ``(I, G)``; ``genre_names`` names the columns.
      probe_users: ``"train"``/``"valid"``/``"test"`` -> sorted user indices for attribute probes.
      user_raw_ids, item_raw_ids: the source files' ids.
      seed: the seed of the probe split (and, for ``random_ratio``, of the hold-out draw).
    """

    name: str
    kind: str
    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    positives_indptr: np.ndarray
    positives_indices: np.ndarray
    user_attributes: dict[str, np.ndarray]
    attribute_classes: dict[str, tuple[str, ...]]
    item_genres: np.ndarray
    genre_names: tuple[str, ...]
    probe_users: dict[str, np.ndarray]
    user_raw_ids: np.ndarray
    item_raw_ids: np.ndarray
    seed: int

    def valid_matrix(self) -> np.ndarray:
        """Bool ``(U, I)``, True at the validation positives."""
        return self.dense(self.valid_users, self.valid_items)

    def test_matrix(self) -> np.ndarray:
        """Bool ``(U, I)``, True at the test positives."""
        return self.dense(self.test_users, self.test_items)

    def target_matrix(self, stage: str) -> np.ndarray:
        """The positives ``stage`` (``"valid"`` or ``"test"``) ranks for."""
        return {"valid": self.valid_matrix, "test": self.test_matrix}[_check_stage(stage)]()

    def exclude_matrix(self, stage: str) -> np.ndarray:
        """Bool ``(U, I)`` of the items masked when ranking ``stage``: training positives for ``"valid"``; training
        and validation positives for ``"test"``."""
        if _check_stage(stage) == "valid":
            return self.train_matrix()
        return self.train_matrix() | self.valid_matrix()

    def statistics(self) -> dict:
        """Counts after preprocessing: users, items, positives per part, class counts per attribute."""
        return {
            "dataset": self.name,
            "split": self.kind,
            "users": self.num_users,
            "items": self.num_items,
            "positives": int(self.positives_indices.shape[0]),
            "train_positives": self.num_train,
            "valid_positives": int(self.valid_users.shape[0]),
            "test_positives": int(self.test_users.shape[0]),
            "probe_users": {k: int(len(v)) for k, v in self.probe_users.items()},
            "attribute_class_counts": self.attribute_class_counts(),
        }


def _check_stage(stage: str) -> str:
    if stage not in ("valid", "test"):
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
    return stage


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
