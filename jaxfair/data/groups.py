"""User groups, item groups and their intersections (ITFR's intersectional groups).

With ``A`` user groups (the classes of a user attribute) and ``C`` item groups (one per listed genre), the
intersectional group of a user ``u`` and an item ``i`` is

    g(u, i) = a(u) * C + c(i)          in [0, A * C)

so group ``g`` is user group ``g // C`` and item group ``g % C`` (row-major over the ``(A, C)`` matrix).
"""

from __future__ import annotations

import numpy as np

from jaxfair.data.dataset import DataError


def genre_item_groups(item_genres: np.ndarray, genre_names, genres) -> np.ndarray:
    """The item group of every item: the position in ``genres`` of the one listed genre the item has.

    Args:
      item_genres: bool ``(I, G)`` multi-hot genres.
      genre_names: the ``G`` column names.
      genres: the ``C`` group genres, in group order.

    Returns:
      int32 ``(I,)`` in ``[0, C)``.

    Raises:
      DataError: a genre is not a column, or an item has none or several of ``genres`` (preprocess with the same
        ``genre_groups`` so that every item has exactly one).
    """
    genre_names = list(genre_names)
    missing = [g for g in genres if g not in genre_names]
    if missing:
        raise DataError(f"item genres {missing} are not in the data (its genres: {genre_names})")
    columns = np.asarray(item_genres, bool)[:, [genre_names.index(g) for g in genres]]
    counts = columns.sum(axis=1)
    bad = np.nonzero(counts != 1)[0]
    if bad.size:
        raise DataError(
            f"item {int(bad[0])} has {int(counts[bad[0]])} of the group genres {list(genres)} (need exactly one; "
            f"{bad.size} items are like this): preprocess with data.genre_groups set to the same genres"
        )
    return np.argmax(columns, axis=1).astype(np.int32)


def intersectional_groups(user_group: np.ndarray, item_group: np.ndarray, users, items, num_item_groups: int):
    """``g = a(u) * C + c(i)`` for each ``(users[k], items[k])`` row. Returns int32 like ``users``."""
    return (np.asarray(user_group)[users] * num_item_groups + np.asarray(item_group)[items]).astype(np.int32)


def group_counts(groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Rows per group, int64 ``(num_groups,)``."""
    return np.bincount(np.asarray(groups), minlength=num_groups)
