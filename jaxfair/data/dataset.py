"""In-memory dataset containers shared by every reader, preprocessing step and model.

Two stages:

* :class:`RawDataset` is what a reader returns: one dataset with contiguous integer ids but no filtering,
  binarisation or split. Every reader (GroupLens ML-100k, ML-1M, RecBole atomic files, the synthetic generator)
  produces exactly this shape, so everything downstream is format-agnostic.
* :class:`Split` is what :func:`jaxfair.data.preprocess.prepare` returns: positives only, re-indexed, split
  leave-one-out by time, with fixed evaluation negatives, encoded attributes and a probe user split. It holds
  numpy arrays only (no model knowledge) and is saved next to every run's results.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Bad input data. The message names the file, the line (1-based, header included) where known, and the problem."""


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """One dataset as read from disk, with contiguous integer ids.

    Attributes:
      name: short dataset name, e.g. ``"ml-100k"``.
      interactions: DataFrame with columns ``user`` (int64 in ``[0, num_users)``), ``item`` (int64 in
        ``[0, num_items)``), ``rating`` (float64) and ``timestamp`` (int64), one row per rating.
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


class SplitAccessors:
    """What every split container (:class:`Split`, :class:`jaxfair.data.holdout.HoldoutSplit`) derives from its
    ``num_users``, ``num_items``, ``train_users``/``train_items``, positives CSR and attributes."""

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

    def attribute_class_counts(self) -> dict[str, dict[str, int]]:
        """Attribute name -> class label -> number of users."""
        return {
            name: {label: int(np.sum(values == k)) for k, label in enumerate(self.attribute_classes[name])}
            for name, values in self.user_attributes.items()
        }


@dataclasses.dataclass(frozen=True)
class Split(SplitAccessors):
    """A preprocessed leave-one-out split (AFRL paper section 4.1.1).

    Users and items are re-indexed after filtering: ``U = num_users``, ``I = num_items``. Item id ``I`` is the padding
    id used in sequences.

    Attributes:
      name: dataset name.
      num_users, num_items: ``U`` and ``I``.
      train_users, train_items: int32 ``(P,)``; the training positives, grouped by user, chronological within a user.
      valid_items, test_items: int32 ``(U,)``; each user's second-to-last and last positive by time.
      valid_negatives, test_negatives: int32 ``(U, N)`` (N = 99 by default); fixed sampled negatives for the
        ``sampled`` protocol, never a positive of that user.
      positives_indptr, positives_indices: CSR of every known positive of each user (train, valid and test), sorted
        by item id: user ``u``'s positives are ``positives_indices[positives_indptr[u]:positives_indptr[u + 1]]``.
      user_attributes: attribute name -> int32 ``(U,)`` class index.
      attribute_classes: attribute name -> class labels (index ``k`` names class ``k``).
      item_genres: bool ``(I, G)`` multi-hot genres; ``genre_names`` names the columns.
      probe_users: ``"train"``/``"valid"``/``"test"`` -> int32 sorted user indices for attribute probes.
      user_raw_ids, item_raw_ids: the source files' ids, for writing results people can join.
      seed: the seed that drew negatives and the probe split.
    """

    name: str
    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    valid_items: np.ndarray
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

    def histories(self, stage: str, max_len: int) -> np.ndarray:
        """Chronological item history each user has seen before ``stage``'s target, for sequential backbones.

        Args:
          stage: ``"train"`` (training positives only, used to build training windows), ``"valid"`` (training
            positives; the target is the validation item) or ``"test"`` (training positives then the validation
            item; the target is the test item).
          max_len: window length L; longer histories keep their most recent L items.

        Returns:
          int32 ``(U, L)``, left-padded with the padding id ``num_items``.
        """
        if stage not in ("train", "valid", "test"):
            raise ValueError(f"stage must be 'train', 'valid' or 'test', got {stage!r}")
        out = np.full((self.num_users, max_len), self.num_items, dtype=np.int32)
        starts = np.searchsorted(self.train_users, np.arange(self.num_users + 1))
        for u in range(self.num_users):
            seq = self.train_items[starts[u] : starts[u + 1]]
            if stage == "test":
                seq = np.append(seq, self.valid_items[u])
            seq = seq[-max_len:]
            if len(seq):
                out[u, max_len - len(seq) :] = seq
        return out

    def statistics(self) -> dict:
        """Counts after preprocessing: users, items, positives per part, class counts per attribute."""
        return {
            "dataset": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "positives": self.num_train + 2 * self.num_users,
            "train_positives": self.num_train,
            "valid_positives": self.num_users,
            "test_positives": self.num_users,
            "eval_negatives_per_user": int(self.test_negatives.shape[1]),
            "probe_users": {k: int(len(v)) for k, v in self.probe_users.items()},
            "attribute_class_counts": self.attribute_class_counts(),
        }


def save_split(split, path) -> None:
    """Write ``split`` (a :class:`Split` or a :class:`jaxfair.data.holdout.HoldoutSplit`; negatives and probe users
    included) to one ``.npz`` file, atomically."""
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
    meta["container"] = type(split).__name__
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_split(path):
    """Read a split written by :func:`save_split` (the container type it was saved from)."""
    import json

    from jaxfair.data.holdout import HoldoutSplit

    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        kwargs = {k: data[k] for k in data.files if "/" not in k and k != "meta"}
        attrs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("attr/")}
        probe = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("probe/")}
    meta["attribute_classes"] = {k: tuple(v) for k, v in meta["attribute_classes"].items()}
    meta["genre_names"] = tuple(meta["genre_names"])
    # JSON keeps the attribute order, so the attributes come back in the order they were saved.
    user_attributes = {k: attrs[k] for k in meta["attribute_classes"]}
    container = {"Split": Split, "HoldoutSplit": HoldoutSplit}[meta.pop("container", "Split")]
    return container(**kwargs, **meta, user_attributes=user_attributes, probe_users=probe)
