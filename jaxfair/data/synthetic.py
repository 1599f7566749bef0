"""A small synthetic MovieLens-like dataset whose user attributes leak into the interactions.

Used by the tests and by anyone trying the pipeline without downloading data. Users prefer items through latent
factors, and each user's factors are shifted by a direction tied to their gender and age bucket, so a model trained
on the interactions learns user embeddings from which these attributes can be predicted (probe AUC > 0.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jaxfair.data.dataset import RawDataset

GENRES = ("Action", "Comedy", "Drama", "Romance", "Sci-Fi")
OCCUPATIONS = ("artist", "engineer", "student", "writer")
AGES = (16, 21, 30, 40, 47, 52, 60)


def make_synthetic(
    num_users: int = 120, num_items: int = 160, per_user: int = 24, dim: int = 8, seed: int = 0
) -> RawDataset:
    """Generate a :class:`RawDataset` with ``per_user`` rated items per user (about 2/3 rated >= 4).

    Args:
      num_users, num_items: sizes.
      per_user: ratings per user (must be below ``num_items``).
      dim: latent dimension of the planted preferences.
      seed: everything is a function of this seed.
    """
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, num_users)
    age = rng.integers(0, len(AGES), num_users)
    occupation = rng.integers(0, len(OCCUPATIONS), num_users)
    gender_dir = rng.normal(size=dim) * 1.5
    age_dir = rng.normal(size=dim)
    user_f = rng.normal(size=(num_users, dim)) + np.where(gender[:, None] == 1, gender_dir, -gender_dir)
    user_f += (age[:, None] / (len(AGES) - 1) - 0.5) * age_dir
    item_f = rng.normal(size=(num_items, dim))
    affinity = user_f @ item_f.T / np.sqrt(dim)

    rows = []
    for u in range(num_users):
        noisy = affinity[u] + rng.gumbel(size=num_items)
        chosen = np.argsort(-noisy)[:per_user]
        liked = np.argsort(-affinity[u, chosen])
        ratings = np.empty(per_user)
        ratings[liked[: 2 * per_user // 3]] = rng.integers(4, 6, 2 * per_user // 3)
        ratings[liked[2 * per_user // 3 :]] = rng.integers(1, 4, per_user - 2 * per_user // 3)
        times = np.sort(rng.integers(880_000_000, 890_000_000, per_user))
        rows.append(pd.DataFrame({"user": u, "item": rng.permutation(chosen), "rating": ratings, "timestamp": times}))
    interactions = pd.concat(rows, ignore_index=True).astype(
        {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64}
    )
    users = pd.DataFrame(
        {
            "raw_id": [str(u + 1) for u in range(num_users)],
            "gender": np.array(["F", "M"])[gender],
            "age": np.array(AGES)[age].astype(str),
            "occupation": np.array(OCCUPATIONS)[occupation],
        }
    )
    genre_idx = rng.integers(0, len(GENRES), (num_items, 2))
    items = pd.DataFrame(
        {
            "raw_id": [str(i + 1) for i in range(num_items)],
            "title": [f"Item {i + 1}" for i in range(num_items)],
            "genres": [tuple(sorted({GENRES[a], GENRES[b]})) for a, b in genre_idx],
        }
    )
    return RawDataset(name="synthetic", interactions=interactions, users=users, items=items)


def write_ml100k_folder(raw: RawDataset, folder) -> None:
    """Write ``raw`` in the GroupLens MovieLens-100k layout (``u.data``, ``u.user``, ``u.item``, ``u.genre``).

    Lets tests and demos drive the real readers and the CLI end to end on synthetic data.
    """
    import pathlib

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter = raw.interactions
    users, items = raw.users, raw.items
    with open(folder / "u.data", "w") as f:
        for u, i, r, t in zip(inter["user"], inter["item"], inter["rating"], inter["timestamp"]):
            f.write(f"{users['raw_id'][u]}\t{items['raw_id'][i]}\t{int(r)}\t{t}\n")
    with open(folder / "u.user", "w") as f:
        for row in users.itertuples():
            f.write(f"{row.raw_id}|{row.age}|{row.gender}|{row.occupation}|00000\n")
    genres = sorted({g for gs in items["genres"] for g in gs})
    with open(folder / "u.genre", "w") as f:
        f.writelines(f"{g}|{k}\n" for k, g in enumerate(genres))
    with open(folder / "u.item", "w", encoding="latin-1") as f:
        for row in items.itertuples():
            flags = "|".join("1" if g in row.genres else "0" for g in genres)
            f.write(f"{row.raw_id}|{row.title}|01-Jan-1995||http://example.invalid|{flags}\n")
