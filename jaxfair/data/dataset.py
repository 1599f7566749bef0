"""In-memory dataset containers shared by every reader, preprocessing step and model.

Two stages:

* :class:`RawDataset` is what a reader returns: one dataset with contiguous integer ids but no filtering,
  binarisation or split. Every reader (GroupLens ML-100k, ML-1M, RecBole atomic files, the synthetic generator)
  produces exactly this shape, so everything downstream is format-agnostic.
* :class:`Split` is what :func:`jaxfair.data.preprocess.prepare` returns: positives only, re-indexed, split into
  train / validation / test positives (leave-one-out by time, or by ratio), with fixed evaluation negatives where
  the protocol samples them, encoded attributes and a probe user split. It carries its own evaluation protocol, holds
  numpy arrays only (no model knowledge) and is saved next to every run's results.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pandas as pd

# The memory rule. A user-by-item array is built only while ``U * I <= DENSE_LIMIT`` entries (2**26: a bool array of
# 64 MiB, float32 scores of 256 MiB); MovieLens-100k (1.6 M entries) and ML-1M (22 M) stay far below it, so their
# results keep the dense computations bit for bit. Above it, the user-item sets stay CSR (:class:`UserItems`), and
# masks and scores are built for blocks of users (evaluation) or for a batch's users (training). Functions that take
# ``limit`` read this constant when it is None, so a test or a caller can force the sparse paths on small data.
DENSE_LIMIT = 1 << 26


def use_dense(num_users: int, num_items: int, limit: int | None = None) -> bool:
    """True when a ``(num_users, num_items)`` array fits the memory rule (``U I <= limit``, default
    :data:`DENSE_LIMIT`)."""
    return num_users * num_items <= (DENSE_LIMIT if limit is None else limit)


class UserItems(NamedTuple):
    """A set of items per user in CSR form, the sparse counterpart of a bool ``(U, I)`` matrix: user ``u``'s items
    are ``indices[indptr[u]:indptr[u + 1]]``, sorted, without repeats. Memory ``O(U + P)`` for ``P`` pairs.

    Attributes:
      indptr: int64 ``(U + 1,)``; indices: int32 ``(P,)``; num_items: ``I``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    num_items: int

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> "UserItems":
        """The sets holding the ``(users[k], items[k])`` pairs (repeats count once)."""
        codes = np.unique(np.asarray(users, np.int64) * num_items + np.asarray(items, np.int64))
        counts = np.bincount(codes // num_items, minlength=num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, (codes % num_items).astype(np.int32), int(num_items))

    @property
    def num_users(self) -> int:
        return int(self.indptr.shape[0] - 1)

    def counts(self) -> np.ndarray:
        """int64 ``(U,)``: the size of each user's set."""
        return np.diff(self.indptr)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` int64/int32 ``(P,)``: every pair, by user then item."""
        return np.repeat(np.arange(self.num_users), self.counts()), self.indices

    def union(self, other: "UserItems") -> "UserItems":
        """The per-user union of two sets over the same users and items."""
        (u1, i1), (u2, i2) = self.pairs(), other.pairs()
        return UserItems.from_pairs(np.concatenate([u1, u2]), np.concatenate([i1, i2]), self.num_users,
                                    self.num_items)

    def dense_rows(self, rows) -> np.ndarray:
        """Bool ``(len(rows), I)``: the dense mask of the users ``rows`` only (a block, never the whole matrix)."""
        block = self.select(rows)
        out = np.zeros((block.num_users, self.num_items), dtype=bool)
        out[block.pairs()] = True
        return out

    def select(self, rows) -> "UserItems":
        """The sets of the users ``rows``, in that order (row ``r`` of the result is user ``rows[r]``)."""
        rows = np.asarray(rows, np.int64)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return UserItems(indptr, self.indices[np.repeat(starts, counts) + offset], self.num_items)

    def dense(self) -> np.ndarray:
        """Bool ``(U, I)``: the whole matrix (small data only; see :data:`DENSE_LIMIT`)."""
        return self.dense_rows(np.arange(self.num_users))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Bool, the shape of ``users`` (broadcast with ``items``): whether ``items`` is in ``users``' set, by binary
        search over the sorted pairs (``O(log P)`` each)."""
        users, items = np.broadcast_arrays(np.asarray(users, np.int64), np.asarray(items, np.int64))
        row_users, _ = self.pairs()
        keys = row_users.astype(np.int64) * self.num_items + self.indices
        query = users * self.num_items + items
        if keys.shape[0] == 0:
            return np.zeros(query.shape, bool)
        found = np.minimum(np.searchsorted(keys, query), keys.shape[0] - 1)
        return keys[found] == query


class DataError(ValueError):
    """Bad input data. The message names the file, the line (1-based, header included) where known, and the problem."""


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """One dataset as read from disk, with contiguous integer ids.

    Attributes:
      name: short dataset name, e.g. ``"ml-100k"``.
      interactions: DataFrame with columns ``user`` (int64 in ``[0, num_users)``), ``item`` (int64 in
        ``[0, num_items)``), ``rating`` (float64) and ``timestamp`` (int64), one row per rating; read from files, also
        ``line`` (int64, the rating's 1-based line in its file, for messages).
      users: DataFrame indexed ``0..num_users-1`` with column ``raw_id`` (str, the id in the source files) and one
        column per user attribute holding raw values as str (``gender``, ``age``, ``occupation``, ...).
      items: DataFrame indexed ``0..num_items-1`` with columns ``raw_id`` (str), ``title`` (str, may be empty) and
        ``genres`` (tuple of str, possibly empty).
    """

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(c for c in self.users.columns if c != "raw_id")


SPLIT_KINDS = ("leave_one_out", "temporal_ratio", "random_ratio")
PROTOCOLS = ("sampled", "full")


@dataclasses.dataclass(frozen=True)
class Split:
    """A preprocessed split; it carries its own evaluation protocol.

    Users and items are re-indexed after filtering: ``U = num_users``, ``I = num_items``. Item id ``I`` is the padding
    id used in sequences.

    ``kind`` says how the held-out positives were chosen, and with it how they are ranked:

    * ``leave_one_out`` (AFRL section 4.1.1): each user's second-to-last positive by time validates and the last one
      tests. Ranked under the ``sampled`` protocol (the target among the user's fixed negatives) and the ``full``
      one (among all items, every other known positive of the user masked). Validation during training is
      ``sampled``.
    * ``temporal_ratio`` / ``random_ratio`` (:mod:`jaxfair.data.holdout`): several validation and test positives per
      user. Ranked over all items only (``full``): validation masks the training positives, test the training and
      validation positives. There are no sampled negatives.

    Attributes:
      name: dataset name.
      kind: one of :data:`SPLIT_KINDS`.
      num_users, num_items: ``U`` and ``I``.
      train_users, train_items: int32 ``(P,)``; the training positives, grouped by user (chronological within a
        user for the leave-one-out and temporal kinds).
      valid_users, valid_items, test_users, test_items: int32 rows of the held-out positives (leave-one-out: one row
        per user, in user order, so ``valid_items[u]`` is user ``u``'s validation item).
      valid_negatives, test_negatives: int32 ``(U, N)`` fixed sampled negatives (``N = 99`` by default), never a
        positive of that user; ``(U, 0)`` for the ratio kinds.
      positives_indptr, positives_indices: CSR of every known positive of each user (train, valid and test), sorted
        by item id: user ``u``'s positives are ``positives_indices[positives_indptr[u]:positives_indptr[u + 1]]``.
      user_attributes: attribute name -> int32 ``(U,)`` class index.
      attribute_classes: attribute name -> class labels (index ``k`` names class ``k``).
      item_genres: bool ``(I, G)`` multi-hot genres; ``genre_names`` names the columns.
      probe_users: ``"train"``/``"valid"``/``"test"`` -> int32 sorted user indices for attribute probes.
      user_raw_ids, item_raw_ids: the source files' ids, for writing results people can join.
      seed: the seed that drew negatives, the probe split and (``random_ratio``) the hold-out.
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
    valid_negatives: np.ndarray
    test_negatives: np.ndarray
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

    def __post_init__(self):
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"kind must be one of {list(SPLIT_KINDS)}, got {self.kind!r}")

    # --- the protocol ------------------------------------------------------------------------------------------

    @property
    def protocols(self) -> tuple[str, ...]:
        """The ranking protocols this split supports: ``("sampled", "full")`` or ``("full",)``."""
        return PROTOCOLS if self.kind == "leave_one_out" else ("full",)

    @property
    def validation_protocol(self) -> str:
        """The protocol that validates during training: ``sampled`` on leave-one-out, else ``full``."""
        return self.protocols[0]

    def stage_items(self, stage: str) -> np.ndarray:
        """Leave-one-out only: int32 ``(U,)``, user ``u``'s held-out item of ``stage``."""
        if self.kind != "leave_one_out":
            raise ValueError(f"a {self.kind} split holds several {stage} positives per user, not one")
        return {"valid": self.valid_items, "test": self.test_items}[_check_stage(stage)]

    def negatives(self, stage: str) -> np.ndarray:
        """int32 ``(U, N)``: the fixed sampled negatives of ``stage`` (``N = 0`` for the ratio kinds)."""
        return {"valid": self.valid_negatives, "test": self.test_negatives}[_check_stage(stage)]

    def target_matrix(self, stage: str) -> np.ndarray:
        """Bool ``(U, I)``: the positives ``stage`` (``"valid"`` or ``"test"``) ranks for."""
        if _check_stage(stage) == "valid":
            return self.dense(self.valid_users, self.valid_items)
        return self.dense(self.test_users, self.test_items)

    def exclude_matrix(self, stage: str) -> np.ndarray:
        """Bool ``(U, I)`` of the items masked when ``stage`` is ranked over all items (a target is never masked).

        Leave-one-out: every known positive of the user. Ratio kinds: the training positives for ``"valid"``, the
        training and validation positives for ``"test"``.
        """
        _check_stage(stage)
        if self.kind == "leave_one_out":
            return self.positive_matrix()
        if stage == "valid":
            return self.train_matrix()
        return self.train_matrix() | self.target_matrix("valid")

    def target_sets(self, stage: str) -> UserItems:
        """:meth:`target_matrix` as per-user item sets (no ``(U, I)`` array)."""
        if _check_stage(stage) == "valid":
            return UserItems.from_pairs(self.valid_users, self.valid_items, self.num_users, self.num_items)
        return UserItems.from_pairs(self.test_users, self.test_items, self.num_users, self.num_items)

    def exclude_sets(self, stage: str) -> UserItems:
        """:meth:`exclude_matrix` as per-user item sets (no ``(U, I)`` array)."""
        _check_stage(stage)
        if self.kind == "leave_one_out":
            return self.positive_sets()
        if stage == "valid":
            return self.train_sets()
        return self.train_sets().union(self.target_sets("valid"))

    def ranking_masks(self, stage: str, limit: int | None = None):
        """``(targets, exclude)`` of ``stage`` for full ranking: the bool ``(U, I)`` matrices (:meth:`target_matrix`,
        :meth:`exclude_matrix`) when they fit the memory rule (:func:`use_dense` with ``limit``), else the
        :class:`UserItems` sets, which the ranking functions turn into masks one block of users at a time."""
        if use_dense(self.num_users, self.num_items, limit):
            return self.target_matrix(stage), self.exclude_matrix(stage)
        return self.target_sets(stage), self.exclude_sets(stage)

    def protocol_description(self, protocol: str) -> str:
        if protocol == "sampled":
            return f"target ranked among {self.test_negatives.shape[1]} fixed sampled negatives"
        if self.kind == "leave_one_out":
            return f"target ranked among all {self.num_items} items, other known positives masked"
        return (f"held-out positives ranked among all {self.num_items} items, training (and for test, validation) "
                "positives masked")

    # --- derived views ------------------------------------------------------------------------------------------

    @property
    def num_train(self) -> int:
        return int(self.train_users.shape[0])

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(self.user_attributes)

    def positives_of(self, user: int) -> np.ndarray:
        """Sorted item ids of every known positive of ``user``."""
        return self.positives_indices[self.positives_indptr[user] : self.positives_indptr[user + 1]]

    def dense(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Bool ``(U, I)``, True at the ``(users[k], items[k])`` pairs."""
        dense = np.zeros((self.num_users, self.num_items), dtype=bool)
        dense[users, items] = True
        return dense

    def positive_matrix(self) -> np.ndarray:
        """Bool ``(U, I)``: True where the item is a known positive (train, valid or test) of the user."""
        rows = np.repeat(np.arange(self.num_users), np.diff(self.positives_indptr))
        return self.dense(rows, self.positives_indices)

    def train_matrix(self) -> np.ndarray:
        """Bool ``(U, I)``: True at the training positives."""
        return self.dense(self.train_users, self.train_items)

    def positive_sets(self) -> UserItems:
        """:meth:`positive_matrix` as per-user item sets: the split's own CSR, no copy."""
        return UserItems(self.positives_indptr, self.positives_indices, self.num_items)

    def train_sets(self) -> UserItems:
        """:meth:`train_matrix` as per-user item sets."""
        return UserItems.from_pairs(self.train_users, self.train_items, self.num_users, self.num_items)

    def known_positives(self, limit: int | None = None):
        """Every known positive, for negative sampling: :meth:`positive_matrix` when it fits the memory rule
        (:func:`use_dense`), else :meth:`positive_sets`. Both draw the same negatives
        (:func:`jaxfair.data.sampling.sample_negatives`)."""
        if use_dense(self.num_users, self.num_items, limit):
            return self.positive_matrix()
        return self.positive_sets()

    def attribute_class_counts(self) -> dict[str, dict[str, int]]:
        """Attribute name -> class label -> number of users."""
        return {
            name: {label: int(np.sum(values == k)) for k, label in enumerate(self.attribute_classes[name])}
            for name, values in self.user_attributes.items()
        }

    def histories(self, stage: str, max_len: int) -> np.ndarray:
        """Chronological item history each user has seen before ``stage``'s targets, for sequential backbones.

        Args:
          stage: ``"train"`` or ``"valid"`` (training positives only) or ``"test"`` (training positives, then the
            user's validation positives).
          max_len: window length L; longer histories keep their most recent L items.

        Returns:
          int32 ``(U, L)``, left-padded with the padding id ``num_items``.
        """
        if stage not in ("train", "valid", "test"):
            raise ValueError(f"stage must be 'train', 'valid' or 'test', got {stage!r}")
        out = np.full((self.num_users, max_len), self.num_items, dtype=np.int32)
        starts = np.searchsorted(self.train_users, np.arange(self.num_users + 1))
        valid_starts = np.searchsorted(self.valid_users, np.arange(self.num_users + 1))
        for u in range(self.num_users):
            seq = self.train_items[starts[u] : starts[u + 1]]
            if stage == "test":
                seq = np.append(seq, self.valid_items[valid_starts[u] : valid_starts[u + 1]])
            seq = seq[-max_len:]
            if len(seq):
                out[u, max_len - len(seq) :] = seq
        return out

    def statistics(self) -> dict:
        """Counts after preprocessing: users, items, positives per part, class counts per attribute."""
        stats = {"dataset": self.name, "split": self.kind, "users": self.num_users, "items": self.num_items,
                 "positives": int(self.positives_indices.shape[0]), "train_positives": self.num_train,
                 "valid_positives": int(self.valid_users.shape[0]), "test_positives": int(self.test_users.shape[0])}
        if self.kind == "leave_one_out":
            stats["eval_negatives_per_user"] = int(self.test_negatives.shape[1])
        stats["probe_users"] = {k: int(len(v)) for k, v in self.probe_users.items()}
        stats["attribute_class_counts"] = self.attribute_class_counts()
        return stats


def _check_stage(stage: str) -> str:
    if stage not in ("valid", "test"):
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
    return stage


def save_split(split: Split, path) -> None:
    """Write ``split`` (negatives and probe users included) to one ``.npz`` file, atomically."""
    import json
    import os
    import pathlib

    path = pathlib.Path(path)
    arrays = {}
    meta = {}
    for field in dataclasses.fields(split):
        value = getattr(split, field.name)
        if isinstance(value, np.ndarray):
            arrays[field.name] = value
        elif field.name == "user_attributes":
            arrays.update({f"attr/{k}": v for k, v in value.items()})
        elif field.name == "probe_users":
            arrays.update({f"probe/{k}": v for k, v in value.items()})
        else:
            meta[field.name] = value
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_split(path) -> Split:
    """Read a split written by :func:`save_split`, including files written before the two split containers
    became one (``container`` = ``Split`` or ``HoldoutSplit`` in their metadata)."""
    import json

    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        kwargs = {k: data[k] for k in data.files if "/" not in k and k != "meta"}
        attrs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("attr/")}
        probe = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("probe/")}
    meta["attribute_classes"] = {k: tuple(v) for k, v in meta["attribute_classes"].items()}
    meta["genre_names"] = tuple(meta["genre_names"])
    container = meta.pop("container", None)
    if container == "Split":  # leave-one-out, from before held-out rows were stored
        users = np.arange(meta["num_users"], dtype=np.int32)
        meta["kind"] = "leave_one_out"
        kwargs.update(valid_users=users, test_users=users)
    elif container == "HoldoutSplit":  # ratio kinds, from before they carried an empty negatives array
        empty = np.zeros((meta["num_users"], 0), np.int32)
        kwargs.update(valid_negatives=empty, test_negatives=empty)
    # JSON keeps the attribute order, so the attributes come back in the order they were saved.
    user_attributes = {k: attrs[k] for k in meta["attribute_classes"]}
    return Split(**kwargs, **meta, user_attributes=user_attributes, probe_users=probe)
