"""Synthetic MovieLens-shaped datasets at real scale: seeded, long-tailed, with user attributes planted in the data.

:func:`make_preset` builds a :class:`RawDataset` with exactly the users, items and interactions of a
:class:`Preset` (:data:`PRESETS`: ``"tiny"`` for tests, ``"ml-1m"`` 6,040 x 3,706 x 1,000,209 and ``"ml-20m"``
138,493 x 26,744 x 20,000,263). Users look like ML-1M's to the rest of the pipeline: attributes ``gender`` (``F``/
``M``), ``age`` (the ML-1M bucket codes ``1 18 25 35 45 50 56``) and ``occupation`` (codes ``0``..``20``), as str,
drawn with ML-1M's own marginal frequencies; items carry ML-1M genre names. As a data source the presets are named
``synthetic:<preset>`` or ``synthetic:<preset>:seed=<n>`` (seed 0 when left out; :func:`load_source`).

The scheme, vectorised numpy throughout (Python loops run only over user chunks, sampling rounds and row blocks):

1. Users. Attributes are drawn independently from ML-1M's marginals. Activity is ``min_per_user`` plus a
   lognormal (``activity_sigma``) share of the remaining interactions, capped at ``max_share * items`` in all
   (the scale is found by bisection, then floors and the largest remainders make the total exact).
2. Items. Log-popularity is normal (``popularity_sigma``): a rank-frequency curve that is Zipf-like over the head
   and falls faster in the tail, as MovieLens's does. (With a pure power law the heaviest users, who take half the
   catalogue, reach so deep into its flat tail that no ML-1M item gets fewer than about 25 interactions.) Items
   are dealt evenly into ``clusters`` latent clusters, each with a centroid ``c_k ~ N(0, I_dim)``.
3. Planted attributes. A user's factor ``f_u`` is ``N(0, I_dim)`` plus ``signal`` times a shift per attribute
   value: ``-0.6``/``+0.6`` (F/M) along a random unit gender direction, ``-0.6`` to ``+0.6`` across the age
   buckets in order along a random unit age direction, plus a small per-bucket offset, and a random offset of norm
   0.5 per occupation. The affinity of user ``u`` to cluster ``k`` is
   ``a_uk = affinity_scale * f_u . c_k / sqrt(dim)``. Which clusters a user draws from therefore depends on
   gender, age and occupation, and so does any embedding learned from the interactions. On ML-1M a least-squares
   probe on the users' shares of the 100 most popular items separates held-out genders with AUC about 0.73
   (0.5 with ``signal=0``).
4. Interactions. Each user's items are drawn without replacement from ``P(i | u) ~ pop_i * exp(a_u,cluster(i))``,
   with no ``(U, I)`` array. A draw is two steps: a cluster from the ``(chunk, clusters)`` weights
   ``mass_k * exp(a_uk)`` (``mass_k``: the cluster's total popularity), then an item by popularity inside the
   cluster, each a ``searchsorted`` on per-row cumulative sums offset by the row number. Users are processed in
   chunks of :data:`_CHUNK_USERS`. In each of :data:`_DRAW_ROUNDS` rounds every user short of its count draws
   ``1.2 * 2**round`` times its shortfall i.i.d., and keeps its new distinct items in order of first draw up to
   the shortfall. That is sequential sampling without replacement. Users still short after the rounds (a few
   dozen of the heaviest on ML-1M, none on ML-20M) are completed exactly by a Gumbel top-k over their unseen items,
   in blocks of at most :data:`_GUMBEL_ENTRIES` ``(user, item)`` scores. Every item is seen: before sampling,
   each item goes to the owner of one of the interaction slots, drawn at random without replacement. So
   ``items`` interactions (0.4% on ML-1M, 0.1% on ML-20M) ignore popularity and affinity, and no user exceeds its
   count.
5. Ratings are ``1``..``5`` by quantiles of ``a_u,cluster(i) + quality_i + noise``, with ML-1M's rating
   frequencies (5.6%, 10.8%, 26.1%, 34.9%, 22.6%; 57.5% are 4 or 5). Timestamps increase strictly within each
   user: a start in the preset's ``time_range`` and exponential gaps scaled to a random span.

Rows are grouped by user (in id order) and ordered by time within a user. Memory is
``O(interactions + chunk * clusters + block)``. ML-1M generates in about 1.5 s; ML-20M in about 23 s with a peak
RSS of about 2.6 GiB (2-core machine, numpy 2.4).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd

from jaxfair.config import ConfigError
from jaxfair.data.dataset import RawDataset

# ML-1M's marginals (users.dat, ratings.dat), so the presets' attributes and ratings look like ML-1M's.
ML1M_GENDERS = {"F": 1_709, "M": 4_331}
ML1M_AGES = {"1": 222, "18": 1_103, "25": 2_096, "35": 1_193, "45": 550, "50": 496, "56": 380}
ML1M_OCCUPATIONS = (711, 528, 267, 173, 759, 112, 236, 679, 17, 92, 195, 129, 388, 142, 302, 144, 241, 502, 70, 72,
                    281)  # codes 0..20
ML1M_RATINGS = (0.056, 0.108, 0.261, 0.349, 0.226)  # stars 1..5
ML1M_GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
               "Western")  # fmt: skip
SOURCE_PREFIX = "synthetic:"
_CHUNK_USERS = 16_384
_DRAW_ROUNDS = 6
_GUMBEL_ENTRIES = 1 << 22  # entries of one (users, items) block of the exact completion


@dataclasses.dataclass(frozen=True)
class Preset:
    """The shape of one synthetic dataset and the knobs of its generator (module docstring, steps 1-5).

    Attributes:
      name: the preset's name; the dataset is called ``synthetic-<name>``.
      users, items, interactions: exact sizes of the result.
      clusters: latent item clusters (step 2).
      min_per_user: every user's fewest interactions (MovieLens keeps users with at least 20).
      max_share: every user's most interactions, as a share of ``items``.
      activity_sigma: sigma of the lognormal user activity.
      popularity_sigma: standard deviation of the items' log-popularity.
      dim: latent dimension.
      affinity_scale: how sharply users prefer their clusters.
      signal: scale of the planted attribute shifts (0 plants none).
      time_range: first and last Unix timestamp.
    """

    name: str
    users: int
    items: int
    interactions: int
    clusters: int
    min_per_user: int = 20
    max_share: float = 0.5
    activity_sigma: float = 1.1
    popularity_sigma: float = 2.0
    dim: int = 16
    affinity_scale: float = 1.5
    signal: float = 1.0
    time_range: tuple[int, int] = (956_703_932, 1_046_454_590)  # ML-1M's

    def __post_init__(self):
        if min(self.users, self.items, self.clusters) < 1 or self.clusters > self.items:
            raise ValueError(f"{self.name}: need users, items >= 1 and 1 <= clusters <= items")
        cap = int(self.max_share * self.items)
        if not self.min_per_user <= cap or not self.users * self.min_per_user <= self.interactions <= self.users * cap:
            raise ValueError(f"{self.name}: {self.interactions} interactions do not fit {self.users} users with "
                             f"{self.min_per_user}..{cap} each")
        if self.interactions < self.items:
            raise ValueError(f"{self.name}: fewer interactions than items, some item would go unseen")


PRESETS = {
    "tiny": Preset("tiny", users=300, items=400, interactions=15_000, clusters=16),
    "ml-1m": Preset("ml-1m", users=6_040, items=3_706, interactions=1_000_209, clusters=200),
    "ml-20m": Preset("ml-20m", users=138_493, items=26_744, interactions=20_000_263, clusters=400,
                     time_range=(789_652_009, 1_427_784_002)),
}


def make_preset(preset: str | Preset, seed: int = 0) -> RawDataset:
    """Generate the dataset ``preset`` (a name in :data:`PRESETS` or a :class:`Preset`), a function of ``seed``.

    Returns:
      A :class:`RawDataset` named ``synthetic-<name>`` with exactly ``preset.users`` users, ``preset.items`` items
      and ``preset.interactions`` distinct ``(user, item)`` rows; every user and every item has at least one.

    Raises:
      ConfigError: ``preset`` names no preset (the message lists the known ones).
    """
    p = _lookup(preset) if isinstance(preset, str) else preset
    rng = np.random.default_rng(seed)

    gender = _draw(rng, ML1M_GENDERS.values(), p.users)
    age = _draw(rng, ML1M_AGES.values(), p.users)
    occupation = _draw(rng, ML1M_OCCUPATIONS, p.users)
    counts = _activity(rng, p)

    log_popularity = p.popularity_sigma * rng.normal(size=p.items)
    cluster = rng.permutation(np.arange(p.items) % p.clusters)
    centroids = rng.normal(size=(p.clusters, p.dim))
    quality = rng.normal(scale=0.5, size=p.items)

    factors = rng.normal(size=(p.users, p.dim)) + p.signal * _attribute_shifts(rng, p.dim, gender, age, occupation)

    # Every item once, to the owner of a random slot among all interactions (so no user exceeds its count).
    slots = np.sort(rng.choice(p.interactions, size=p.items, replace=False))
    ends = np.cumsum(counts)
    seeded_users = np.searchsorted(ends, slots, side="right")
    seeded_keys = np.sort(seeded_users * np.int64(p.items) + rng.permutation(p.items))

    sampler = _ClusterSampler(np.exp(log_popularity), cluster, p.clusters)
    keys, scores = [], []
    for start in range(0, p.users, _CHUNK_USERS):
        stop = min(start + _CHUNK_USERS, p.users)
        affinity = p.affinity_scale * (factors[start:stop] @ centroids.T) / np.sqrt(p.dim)
        lo, hi = np.searchsorted(seeded_keys, [start * p.items, stop * p.items])
        chunk = _sample_chunk(rng, sampler, affinity, start, counts[start:stop], seeded_keys[lo:hi], log_popularity,
                              cluster)
        user, item = np.divmod(chunk, p.items)
        keys.append(chunk)
        scores.append((affinity[user - start, cluster[item]] + quality[item]).astype(np.float32))
    keys = np.concatenate(keys)
    score = np.concatenate(scores) + rng.normal(size=len(keys)).astype(np.float32)
    user, item = np.divmod(keys, p.items)

    cuts = np.quantile(score, np.cumsum(ML1M_RATINGS)[:-1])
    rating = np.searchsorted(cuts, score, side="right") + 1.0
    order, times = _timestamps(rng, counts, p.time_range)

    interactions = pd.DataFrame({"user": user[order], "item": item[order], "rating": rating[order],
                                 "timestamp": times})
    raw_users = np.arange(1, p.users + 1).astype(str).astype(object)
    users = pd.DataFrame({
        "raw_id": raw_users,
        "gender": np.array(list(ML1M_GENDERS), dtype=object)[gender],
        "age": np.array(list(ML1M_AGES), dtype=object)[age],
        "occupation": occupation.astype(str).astype(object),
    })
    raw_items = np.arange(1, p.items + 1).astype(str).astype(object)
    items = pd.DataFrame({"raw_id": raw_items, "title": "Synthetic item " + raw_items,
                          "genres": list(_cluster_genres(rng, p.clusters)[cluster])})
    return RawDataset(name=f"synthetic-{p.name}", interactions=interactions, users=users, items=items)


def parse_source(source: str) -> tuple[Preset, int]:
    """``"synthetic:<preset>"`` or ``"synthetic:<preset>:seed=<n>"`` -> (the preset, the seed; 0 when left out).

    Raises:
      ConfigError: not of that form, or an unknown preset (the message lists the known ones).
    """
    match = re.fullmatch(re.escape(SOURCE_PREFIX) + r"([^:]*)(?::seed=(\d+))?", source)
    if not match:
        raise ConfigError(f"data.source: {source!r} is not synthetic:<preset> or synthetic:<preset>:seed=<n> "
                          f"(presets: {', '.join(PRESETS)})")
    name, seed = match.groups()
    return _lookup(name, "data.source: "), int(seed or 0)


def load_source(source: str) -> RawDataset:
    """The dataset a ``synthetic:...`` data source names (:func:`parse_source`)."""
    return make_preset(*parse_source(source))


def _lookup(name: str, where: str = "") -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"{where}unknown synthetic preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def _draw(rng: np.random.Generator, weights, size: int) -> np.ndarray:
    weights = np.asarray(list(weights), dtype=np.float64)
    return rng.choice(len(weights), size=size, p=weights / weights.sum())


def _activity(rng: np.random.Generator, p: Preset) -> np.ndarray:
    """int64 ``(U,)`` interactions per user: ``min_per_user`` plus lognormal, summing to ``p.interactions``."""
    cap = int(p.max_share * p.items) - p.min_per_user
    extra = p.interactions - p.users * p.min_per_user
    raw = rng.lognormal(sigma=p.activity_sigma, size=p.users)
    lo, hi = 0.0, extra / raw.sum()
    while np.minimum(hi * raw, cap).sum() < extra:
        hi *= 2
    for _ in range(100):  # bisection on the scale s with sum(min(s * raw, cap)) == extra
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(mid * raw, cap).sum() < extra else (lo, mid)
    share = np.minimum(hi * raw, cap)
    whole = np.floor(share).astype(np.int64)
    room = np.flatnonzero(whole < cap)
    short = extra - int(whole.sum())
    whole[room[np.argsort(-(share - whole)[room], kind="stable")[:short]]] += 1
    return whole + p.min_per_user


def _attribute_shifts(rng, dim, gender, age, occupation) -> np.ndarray:
    """float64 ``(U, dim)``: each user's planted shift from gender, age bucket and occupation (module docstring)."""
    unit = rng.normal(size=(2, dim))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    buckets = len(ML1M_AGES)
    age_pos = np.linspace(-0.6, 0.6, buckets)[:, None] * unit[1] + rng.normal(scale=0.1, size=(buckets, dim))
    occ = rng.normal(size=(len(ML1M_OCCUPATIONS), dim))
    occ *= 0.5 / np.linalg.norm(occ, axis=1, keepdims=True)
    return np.where(gender[:, None] == 1, 0.6, -0.6) * unit[0] + age_pos[age] + occ[occupation]


def _cluster_genres(rng, clusters: int) -> np.ndarray:
    """Object ``(clusters,)`` of sorted genre tuples, one to three genres per cluster."""
    picks = np.argsort(rng.random((clusters, len(ML1M_GENRES))), axis=1)[:, :3]
    keep = np.arange(3) < rng.integers(1, 4, clusters)[:, None]
    return np.fromiter((tuple(sorted(ML1M_GENRES[g] for g in row[k])) for row, k in zip(picks, keep)), dtype=object,
                       count=clusters)


class _ClusterSampler:
    """Draws an item inside given clusters with probability proportional to its popularity."""

    def __init__(self, popularity: np.ndarray, cluster: np.ndarray, clusters: int):
        by_cluster = np.argsort(cluster, kind="stable")
        sizes = np.bincount(cluster, minlength=clusters)
        column = np.arange(len(cluster)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        self.table = np.full((clusters, sizes.max()), -1)  # padded with weightless -1s, never drawn
        self.table[cluster[by_cluster], column] = by_cluster
        weights = np.zeros(self.table.shape)
        weights[cluster[by_cluster], column] = popularity[by_cluster]
        self.cdf = _row_cdf(weights)
        self.mass = weights.sum(axis=1)

    def items(self, rng, clusters: np.ndarray) -> np.ndarray:
        return self.table[clusters, _draw_in_rows(rng, self.cdf, self.table.shape[1], clusters)]


def _row_cdf(weights: np.ndarray) -> np.ndarray:
    """The rows' cumulative distributions plus the row numbers, flattened into one nondecreasing float64 array."""
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]  # so each row ends at exactly 1
    cdf += np.arange(len(cdf))[:, None]
    return cdf.ravel()


def _draw_in_rows(rng, cdf: np.ndarray, columns: int, rows: np.ndarray) -> np.ndarray:
    """One column drawn from each of ``rows`` of a :func:`_row_cdf` with ``columns`` columns.

    ``row + u`` lands in row ``row``'s stretch ``(row, row + 1]``; ``u`` stays ``2**-20`` below 1 so that rounding
    never carries it to ``row + 1``.
    """
    u = rng.random(len(rows)) * (1 - 2.0**-20)
    return np.searchsorted(cdf, rows + u, side="right") - rows * columns


def _sample_chunk(rng, sampler: _ClusterSampler, affinity: np.ndarray, start: int, counts: np.ndarray,
                  seeded: np.ndarray, log_popularity: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Sorted int64 keys ``user * I + item`` of users ``start..start+len(counts)-1``: ``counts[u]`` distinct items
    each, the ``seeded`` keys among them, the rest drawn without replacement (module docstring, step 4)."""
    n, clusters = affinity.shape
    num_items = len(cluster)
    cdf = _row_cdf(sampler.mass * np.exp(affinity - affinity.max(axis=1, keepdims=True)))
    taken = seeded
    deficit = counts - np.bincount(seeded // num_items - start, minlength=n)
    for round_ in range(_DRAW_ROUNDS):
        owed = np.flatnonzero(deficit)
        user = np.repeat(owed, np.ceil(1.2 * 2.0**round_ * deficit[owed]).astype(np.int64) + 2)
        key = (user + start) * np.int64(num_items) + sampler.items(rng, _draw_in_rows(rng, cdf, clusters, user))
        by_key = np.argsort(key, kind="stable")
        sorted_key = key[by_key]
        seen = np.append(taken, -1)[np.searchsorted(taken, sorted_key)] == sorted_key  # -1: no key, a sentinel
        # each new distinct item at its first draw, grouped by user and in draw order
        first = np.sort(by_key[np.append(True, sorted_key[1:] != sorted_key[:-1]) & ~seen])
        user = user[first]
        wanted = np.arange(len(first)) - np.searchsorted(user, user) < deficit[user]
        taken = np.sort(np.concatenate([taken, key[first[wanted]]]))
        deficit -= np.bincount(user[wanted], minlength=n)
    owed = np.flatnonzero(deficit)
    block = max(1, _GUMBEL_ENTRIES // num_items)
    for lo in range(0, len(owed), block):
        rows = owed[lo : lo + block]
        # Gumbel top-k over the unseen items: the exact continuation of sampling without replacement.
        score = log_popularity + affinity[rows][:, cluster] + rng.gumbel(size=(len(rows), num_items))
        begin, end = np.searchsorted(taken, [(rows + start) * num_items, (rows + 1 + start) * num_items])
        seen = _ranges(begin, end)
        score[np.repeat(np.arange(len(rows)), end - begin), taken[seen] % num_items] = -np.inf
        best = np.argsort(-score, axis=1)
        pick = np.arange(num_items) < deficit[rows][:, None]
        taken = np.sort(np.concatenate([taken, ((rows + start)[:, None] * np.int64(num_items) + best)[pick]]))
    return taken


def _ranges(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``concatenate([arange(b, e) for b, e in zip(begin, end)])``, without the loop."""
    sizes = end - begin
    return np.arange(sizes.sum()) + np.repeat(begin - (np.cumsum(sizes) - sizes), sizes)


def _timestamps(rng, counts: np.ndarray, time_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Times for rows grouped by user (``counts[u]`` rows each): a permutation that shuffles the rows within each
    user, and the int64 timestamps of the permuted rows, strictly increasing within each user."""
    users, total = len(counts), int(counts.sum())
    first, last = time_range
    owner = np.repeat(np.arange(users), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(owner + rng.random(total))
    begin = first + rng.random(users) * (last - first) * 0.9
    span = np.maximum(last - counts - begin, 0) * rng.random(users) ** 2
    gaps = rng.exponential(size=total)
    position = np.cumsum(gaps)
    position = position - np.repeat(position[offsets] - gaps[offsets], counts)
    ends = np.repeat(position[offsets + counts - 1] + rng.exponential(size=users), counts)
    rank = np.arange(total) - np.repeat(offsets, counts)
    times = np.repeat(begin, counts) + np.floor(position / ends * np.repeat(span, counts)) + rank
    return order, times.astype(np.int64)
