"""Preprocessing of the AFRL paper (section 4.1.1), one named step per function, composed by :func:`prepare`.

Steps, in order:

1. :func:`binarize` - ratings ``>= threshold`` (4 by default) are positives; the rest are dropped.
   Optional (off by default): :func:`filter_genre_items` keeps the items whose genre set holds exactly one of
   ``genre_groups``, then :func:`k_core` keeps, iteratively, users and items with at least ``k_core`` positives.
2. :func:`filter_users` - drop users with fewer than ``min_positives`` (10) positives.
3. :func:`reindex` - contiguous ids over the remaining users and items (items seen only in dropped users vanish).
4. :func:`leave_one_out` - per user, by timestamp: last positive = test, second last = validation, rest = train.
   Ties in time keep the file's order (stable sort), so the split is a function of the input alone; data whose
   timestamps are all equal is refused (:func:`check_timestamps`). The rows may come in any order.
5. :func:`encode_attributes` - gender to 2 classes, age to the 7 MovieLens-1M buckets, any other attribute to its
   sorted categories.
6. :func:`sample_eval_negatives` - 99 distinct negatives per user for validation and test (``sampled`` protocol).
7. :func:`split_probe_users` - a seeded train/validation/test split of users for attribute probes.

With ``split = "temporal_ratio"`` or ``"random_ratio"`` step 4 is :func:`jaxfair.data.holdout.ratio_split` (several
validation and test positives per user, ranked over all items) and step 6 is skipped; :func:`prepare` returns a
:class:`jaxfair.data.dataset.Split` of that kind either way. Cofair's recipe is ``rating_threshold = 0`` (every rating is a positive)
with ``temporal_ratio`` 80/10/10.

Named recipes (:data:`RECIPES`, chosen with ``[data] recipe = "..."``; explicit keys override a recipe's values):

* ``afrl`` - the defaults above (ratings >= 4, users with >= 10 positives, leave-one-out).
* ``cofair`` - every rating a positive, per-user temporal 80/10/10.
* ``itfr`` - every rating a positive; items whose genres hold exactly one of Sci-Fi, Adventure, Children's, Crime,
  Horror, Romance (that genre is the item's group); iterative 5-core; per-user random 70/10/20 drawn with seed 2022.
  On MovieLens-100k: 942 users, 491 items, 41,810 positives (the ITFR authors' preprocessing, applied to ML-100k).
* ``diffairec`` - ratings >= 4 are positives (DiffRec's "clean" setting), users with >= 10 of them, per-user random
  70/10/20 drawn with seed 2024 (DiffRec's 7:1:2 proportions; DifFaiRec's paper gives no split).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from jaxfair.data.dataset import SPLIT_KINDS, DataError, RawDataset, Split, UserItems, use_dense
from jaxfair.data.holdout import check_ratios, ratio_split
from jaxfair.data.sampling import sample_negatives

# MovieLens-1M age codes and the bucket each stands for; ML-100k raw ages are mapped onto the same buckets.
AGE_BUCKET_STARTS = (1, 18, 25, 35, 45, 50, 56)
AGE_BUCKET_LABELS = ("Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
GENDER_LABELS = ("F", "M")
ITFR_GENRES = ("Sci-Fi", "Adventure", "Children's", "Crime", "Horror", "Romance")

# Named preprocessing recipes: the keys a recipe sets; anything else keeps PrepConfig's default (AFRL's).
RECIPES: dict[str, dict] = {
    "afrl": {},
    "cofair": {"rating_threshold": 0.0, "split": "temporal_ratio", "ratios": (0.8, 0.1, 0.1)},
    "itfr": {
        "rating_threshold": 0.0,
        "genre_groups": ITFR_GENRES,
        "k_core": 5,
        "min_positives": 3,
        "split": "random_ratio",
        "ratios": (0.7, 0.1, 0.2),
        "seed": 2022,
    },
    "diffairec": {"split": "random_ratio", "ratios": (0.7, 0.1, 0.2), "seed": 2024},
}


DUPLICATE_POLICIES = ("error", "keep_last", "keep_first")


@dataclasses.dataclass(frozen=True)
class PrepConfig:
    """Knobs of :func:`prepare`; defaults follow the AFRL paper. ``duplicates`` is what a repeated (user, item)
    rating does: ``"error"`` (the default: a repeated pair most often means a broken export, and left in it can put
    the same item in a user's training and evaluation parts), ``"keep_last"`` (the latest rating by time, then the
    last in the file) or ``"keep_first"`` (the earliest by time, then the first in the file)."""

    rating_threshold: float = 4.0
    min_positives: int = 10
    eval_negatives: int = 99
    attributes: tuple[str, ...] = ("gender", "age", "occupation")
    probe_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    split: str = "leave_one_out"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    genre_groups: tuple[str, ...] = ()
    k_core: int = 0
    duplicates: str = "error"

    def __post_init__(self):
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {list(DUPLICATE_POLICIES)}, got {self.duplicates!r}")
        if self.k_core < 0:
            raise ValueError(f"k_core must be non-negative (0 = off), got {self.k_core}")
        if len(set(self.genre_groups)) != len(self.genre_groups):
            raise ValueError(f"genre_groups lists a genre twice: {list(self.genre_groups)}")
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {list(SPLIT_KINDS)}, got {self.split!r}")
        check_ratios(self.ratios)
        if self.min_positives < 3:
            raise ValueError("min_positives must be at least 3 (one train, one validation and one test positive)")
        if self.eval_negatives < 1:
            raise ValueError("eval_negatives must be positive")
        if len(self.probe_fractions) != 3 or abs(sum(self.probe_fractions) - 1.0) > 1e-6 or min(self.probe_fractions) <= 0:
            raise ValueError("probe_fractions must be three positive numbers summing to 1")


def deduplicate(interactions: pd.DataFrame, policy: str = "error", name: str = "the data",
                raw_ids: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """Apply a duplicates policy (:data:`DUPLICATE_POLICIES`) to repeated ``(user, item)`` rows.

    Args:
      raw_ids: the file's user and item ids by code (``RawDataset.users["raw_id"]``, ``items["raw_id"]``), so the
        error names the pair as the file writes it.

    Raises:
      DataError: ``policy == "error"`` and a pair repeats; the message names the first one, its lines in the
        ratings file (the ``line`` column; interaction rows for data not read from a file) and the count.
    """
    repeated = interactions.duplicated(["user", "item"], keep=False).to_numpy()
    if not repeated.any():
        return interactions
    if policy == "error":
        rows = np.flatnonzero(repeated)
        first = interactions.iloc[rows[0]]
        same = rows[(interactions["user"].to_numpy()[rows] == first["user"])
                    & (interactions["item"].to_numpy()[rows] == first["item"])]
        count = int(repeated.sum() - len(interactions.loc[repeated, ["user", "item"]].drop_duplicates()))
        user, item = int(first["user"]), int(first["item"])
        if raw_ids is not None:
            user, item = raw_ids[0][user], raw_ids[1][item]
        where = (f"lines {', '.join(str(n) for n in interactions['line'].to_numpy()[same])} of the ratings file"
                 if "line" in interactions else f"interaction rows {same.tolist()}")
        raise DataError(f"{name}: {count} repeated (user, item) ratings, the first user {user}, item {item} on "
                        f"{where}; set data.duplicates = \"keep_last\" or \"keep_first\" to keep one of each")
    ordered = interactions.sort_values("timestamp", kind="stable")
    kept = ordered.drop_duplicates(["user", "item"], keep="last" if policy == "keep_last" else "first")
    return kept.sort_index().reset_index(drop=True)


def check_held_out(split: "Split") -> None:
    """No validation or test positive of a user is also one of their training positives, and no user has the same
    item among their validation and test positives: a leak into evaluation otherwise. Compares (user, item) pair
    codes, so memory grows with the positives, not with users x items.

    Raises:
      DataError: naming the first user at fault.
    """
    width = np.int64(split.num_items)

    def codes(users, items):
        return np.asarray(users, np.int64) * width + np.asarray(items, np.int64)

    train = codes(split.train_users, split.train_items)
    held = {"valid": codes(split.valid_users, split.valid_items), "test": codes(split.test_users, split.test_items)}
    for stage, pairs in held.items():
        leak = pairs[np.isin(pairs, train)]
        if leak.size:
            raise DataError(f"{split.name}: user index {int(leak[0] // width)} has item index {int(leak[0] % width)} "
                            f"in both its training and its {stage} positives ({leak.size} such pairs)")
    both = held["valid"][np.isin(held["valid"], held["test"])]
    if both.size:
        raise DataError(f"{split.name}: user index {int(both[0] // width)} has item index {int(both[0] % width)} "
                        "among both its validation and its test positives")


def binarize(interactions: pd.DataFrame, threshold: float = 4.0) -> pd.DataFrame:
    """Keep the rows whose rating is at least ``threshold`` (implicit positives)."""
    return interactions[interactions["rating"] >= threshold].reset_index(drop=True)


def filter_genre_items(positives: pd.DataFrame, items: pd.DataFrame, genres: tuple[str, ...]) -> pd.DataFrame:
    """Keep the rows whose item has exactly one of ``genres`` among its genres (ITFR's item groups).

    Args:
      positives: rows with an ``item`` column indexing ``items``.
      items: the raw item table with a ``genres`` column (tuples of str).
      genres: the group genres; an empty tuple keeps everything.

    Raises:
      DataError: a listed genre occurs in no item (most often a spelling mistake), or no row is left.
    """
    if not genres:
        return positives
    known = {g for gs in items["genres"] for g in gs}
    unknown = [g for g in genres if g not in known]
    if unknown:
        raise DataError(f"genre_groups: {unknown} occur in no item; the dataset's genres are {sorted(known)}")
    wanted = set(genres)
    exactly_one = items["genres"].map(lambda gs: len(wanted.intersection(gs)) == 1).to_numpy()
    kept = positives[exactly_one[positives["item"].to_numpy()]].reset_index(drop=True)
    if kept.empty:
        raise DataError(f"no positive is on an item with exactly one of the genres {list(genres)}")
    return kept


def k_core(positives: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users, then items, with fewer than ``k`` rows until every user and item has at least ``k``
    (duplicate ``(user, item)`` rows are dropped first, keeping the earliest). ``k = 0`` returns the input.

    Raises:
      DataError: nothing survives.
    """
    if k <= 0:
        return positives
    rows = positives.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"]).sort_index()
    while True:
        rows = rows[rows.groupby("user")["item"].transform("size") >= k]
        rows = rows[rows.groupby("item")["user"].transform("size") >= k]
        if rows.empty:
            raise DataError(f"the {k}-core is empty: no set of users and items with {k} positives each")
        if rows.groupby("user")["item"].size().min() >= k:
            return rows.reset_index(drop=True)


def filter_users(positives: pd.DataFrame, min_positives: int = 10) -> pd.DataFrame:
    """Drop users with fewer than ``min_positives`` positives. Raises DataError if nobody is left."""
    counts = positives.groupby("user")["item"].transform("size")
    kept = positives[counts >= min_positives].reset_index(drop=True)
    if kept.empty:
        raise DataError(f"no user has at least {min_positives} positives: nothing is left after filtering")
    return kept


def reindex(positives: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Map the remaining user and item ids onto ``0..n-1`` (in increasing old id).

    Returns:
      (re-indexed positives, old user id of each new user, old item id of each new item).
    """
    old_users = np.unique(positives["user"].to_numpy())
    old_items = np.unique(positives["item"].to_numpy())
    out = positives.copy()
    out["user"] = np.searchsorted(old_users, positives["user"].to_numpy())
    out["item"] = np.searchsorted(old_items, positives["item"].to_numpy())
    return out, old_users, old_items


def leave_one_out(positives: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Split each user's positives by time: last -> test, second last -> validation, the rest -> train.

    Args:
      positives: re-indexed positives; every user has at least 3 rows.

    Returns:
      (train rows sorted by user then time, validation item per user ``(U,)``, test item per user ``(U,)``).
    """
    ordered = positives.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    rank_from_end = ordered.groupby("user").cumcount(ascending=False).to_numpy()
    num_users = int(ordered["user"].max()) + 1
    valid = np.empty(num_users, np.int32)
    test = np.empty(num_users, np.int32)
    users = ordered["user"].to_numpy()
    items = ordered["item"].to_numpy()
    test[users[rank_from_end == 0]] = items[rank_from_end == 0]
    valid[users[rank_from_end == 1]] = items[rank_from_end == 1]
    return ordered[rank_from_end >= 2].reset_index(drop=True), valid, test


def age_bucket(age: int) -> int:
    """Index of the MovieLens-1M age bucket holding ``age`` years (ML-1M codes map onto themselves)."""
    return int(np.searchsorted(AGE_BUCKET_STARTS, age, side="right") - 1) if age >= 1 else 0


def encode_attributes(users: pd.DataFrame, names: tuple[str, ...]) -> tuple[dict, dict]:
    """Encode raw attribute strings to class indices.

    ``gender`` -> ``F``/``M``; ``age`` -> the 7 ML-1M buckets; anything else -> its sorted distinct values.

    Raises:
      DataError: an attribute of ``names`` is not a column of ``users`` (most often a spelling mistake).

    Returns:
      (name -> int32 ``(U,)`` class index, name -> class labels).
    """
    values, classes = {}, {}
    unknown = [name for name in names if name not in users.columns]
    if unknown:
        have = [c for c in users.columns if c != "raw_id"]
        raise DataError(f"data.attributes: {unknown} are not user attributes of this dataset (it has {have})")
    for name in names:
        raw = users[name].astype(str).str.strip()
        if name == "gender":
            labels = GENDER_LABELS
            codes = raw.str.upper().map({g: k for k, g in enumerate(labels)})
            if codes.isna().any():
                bad = users.loc[codes.isna()].iloc[0]
                raise DataError(f"user {bad['raw_id']}: unknown gender {bad[name]!r} (expected F or M)")
        elif name == "age":
            labels = AGE_BUCKET_LABELS
            years = pd.to_numeric(raw, errors="coerce")
            if years.isna().any():
                bad = users.loc[years.isna()].iloc[0]
                raise DataError(f"user {bad['raw_id']}: age {bad[name]!r} is not a number")
            codes = years.map(age_bucket)
        else:
            labels = tuple(sorted(raw.unique()))
            codes = raw.map({v: k for k, v in enumerate(labels)})
        values[name] = codes.to_numpy().astype(np.int32)
        classes[name] = labels
    return values, classes


def sample_eval_negatives(positives, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` distinct negatives for every user, none a known positive (``positives``: bool ``(U, I)`` or
    :class:`~jaxfair.data.dataset.UserItems`). Returns int32 ``(U, num)``.

    Raises:
      DataError: a user has fewer than ``num`` items that are not their positives.
    """
    try:
        num_users = positives.num_users if isinstance(positives, UserItems) else positives.shape[0]
        return sample_negatives(positives, np.arange(num_users), num, rng, replace=False)
    except ValueError as err:
        raise DataError(f"eval_negatives: {err} (lower data.eval_negatives, or use a ratio split)") from err


def split_probe_users(num_users: int, fractions, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random disjoint train/validation/test user sets for attribute probes (each non-empty, sorted)."""
    if num_users < 3:
        raise DataError(f"need at least 3 users for a probe split, have {num_users}")
    order = rng.permutation(num_users)
    n_valid = max(1, int(round(fractions[1] * num_users)))
    n_test = max(1, int(round(fractions[2] * num_users)))
    n_train = num_users - n_valid - n_test
    parts = np.split(order, [n_train, n_train + n_valid])
    return {k: np.sort(p).astype(np.int32) for k, p in zip(("train", "valid", "test"), parts)}


def _item_genres(raw: RawDataset, old_items: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Bool ``(I, G)`` multi-hot genres of the kept items and the genre names (sorted)."""
    genre_names = tuple(sorted({g for gs in raw.items["genres"] for g in gs}))
    genres = np.zeros((len(old_items), len(genre_names)), dtype=bool)
    column = {g: k for k, g in enumerate(genre_names)}
    for row, gs in enumerate(raw.items.iloc[old_items]["genres"]):
        for g in gs:
            genres[row, column[g]] = True
    return genres, genre_names


def _positives_csr(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int):
    """``(known, indptr, indices)`` of the positives ``(users, items)``: ``known`` is the bool ``(U, I)`` matrix when
    it fits the memory rule (:func:`~jaxfair.data.dataset.use_dense`), else the same sets as
    :class:`~jaxfair.data.dataset.UserItems` (both draw the same negatives)."""
    sets = UserItems.from_pairs(users, items, num_users, num_items)
    known = sets.dense() if use_dense(num_users, num_items) else sets
    return known, sets.indptr, sets.indices


def _split_metadata(raw: RawDataset, config: PrepConfig, old_users: np.ndarray, old_items: np.ndarray) -> dict:
    """The fields every split container shares besides its interactions: sizes, encoded attributes, genres, raw ids
    and the seed (no randomness is drawn here)."""
    kept_users = raw.users.iloc[old_users].reset_index(drop=True)
    attributes, classes = encode_attributes(kept_users, config.attributes)
    genres, genre_names = _item_genres(raw, old_items)
    return {
        "name": raw.name,
        "num_users": len(old_users),
        "num_items": len(old_items),
        "user_attributes": attributes,
        "attribute_classes": classes,
        "item_genres": genres,
        "genre_names": genre_names,
        "user_raw_ids": kept_users["raw_id"].to_numpy().astype(str),
        "item_raw_ids": raw.items.iloc[old_items]["raw_id"].to_numpy().astype(str),
        "seed": config.seed,
    }


def prepare(raw: RawDataset, config: PrepConfig = PrepConfig()) -> Split:
    """Run every step on ``raw``; returns a :class:`Split` of kind ``config.split`` (checked by
    :func:`check_held_out`).

    Before step 1, repeated ``(user, item)`` rows meet ``config.duplicates`` (:func:`deduplicate`) and a
    leave-one-out split needs timestamps (:func:`check_timestamps`)."""
    split = _prepare(raw, config)
    check_held_out(split)
    return split


def check_timestamps(interactions: pd.DataFrame, split: str, name: str = "the data") -> None:
    """A leave-one-out split holds out each user's latest positives, so the data must carry times: all-equal
    timestamps (a file without a timestamp column reads as all zeros) would make "latest" mean "last in the file".

    Raises:
      DataError: ``split == "leave_one_out"`` and every timestamp is the same.
    """
    times = interactions["timestamp"].to_numpy()
    if split == "leave_one_out" and len(times) > 1 and (times == times[0]).all():
        raise DataError(f"{name}: every timestamp is {times[0]}, so leave-one-out cannot tell a user's latest "
                        "positives; give the interactions their times, or set data.split = \"random_ratio\"")


def _prepare(raw: RawDataset, config: PrepConfig) -> Split:
    check_timestamps(raw.interactions, config.split, raw.name)
    interactions = deduplicate(raw.interactions, config.duplicates, raw.name,
                               (raw.users["raw_id"].to_numpy(), raw.items["raw_id"].to_numpy()))
    positives = binarize(interactions, config.rating_threshold)
    positives = k_core(filter_genre_items(positives, raw.items, config.genre_groups), config.k_core)
    positives = filter_users(positives, config.min_positives)
    positives, old_users, old_items = reindex(positives)
    if config.split != "leave_one_out":
        return _prepare_holdout(raw, config, positives, old_users, old_items)
    train, valid_items, test_items = leave_one_out(positives)
    num_users, num_items = len(old_users), len(old_items)
    known, indptr, indices = _positives_csr(
        positives["user"].to_numpy(), positives["item"].to_numpy(), num_users, num_items
    )

    rng = np.random.default_rng(config.seed)
    valid_negatives = sample_eval_negatives(known, config.eval_negatives, rng)
    test_negatives = sample_eval_negatives(known, config.eval_negatives, rng)
    probe = split_probe_users(num_users, config.probe_fractions, rng)

    users = np.arange(num_users, dtype=np.int32)
    return Split(**_split_metadata(raw, config, old_users, old_items), kind="leave_one_out",
                 train_users=train["user"].to_numpy().astype(np.int32),
                 train_items=train["item"].to_numpy().astype(np.int32), valid_users=users, valid_items=valid_items,
                 test_users=users, test_items=test_items, valid_negatives=valid_negatives,
                 test_negatives=test_negatives, positives_indptr=indptr, positives_indices=indices, probe_users=probe)


def _prepare_holdout(raw, config: PrepConfig, positives, old_users, old_items) -> Split:
    """Steps 4-7 for a ratio split (no sampled evaluation negatives)."""
    num_users, num_items = len(old_users), len(old_items)
    rng = np.random.default_rng(config.seed)
    train, valid, test = ratio_split(positives, config.ratios, config.split, rng)
    sets = UserItems.from_pairs(positives["user"].to_numpy(), positives["item"].to_numpy(), num_users, num_items)
    indptr, indices = sets.indptr, sets.indices
    probe = split_probe_users(num_users, config.probe_fractions, rng)
    column = lambda frame, name: frame[name].to_numpy().astype(np.int32)
    no_negatives = np.zeros((num_users, 0), np.int32)
    return Split(**_split_metadata(raw, config, old_users, old_items), kind=config.split,
                 train_users=column(train, "user"), train_items=column(train, "item"),
                 valid_users=column(valid, "user"), valid_items=column(valid, "item"),
                 test_users=column(test, "user"), test_items=column(test, "item"), valid_negatives=no_negatives,
                 test_negatives=no_negatives, positives_indptr=indptr, positives_indices=indices, probe_users=probe)
