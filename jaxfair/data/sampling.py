"""Negative sampling that never returns a known positive, and the BPR training pairs built from it."""

from __future__ import annotations

import numpy as np

from jaxfair.data.dataset import Split, UserItems


def sample_negatives(
    positives: np.ndarray | UserItems, users: np.ndarray, num: int, rng: np.random.Generator, *,
    replace: bool = True,
) -> np.ndarray:
    """Draw ``num`` uniform negatives per row of ``users``, excluding each user's known positives.

    Args:
      positives: bool ``(U, I)``, True at every known positive (train, valid and test), or the same as
        :class:`~jaxfair.data.dataset.UserItems` (large data: no ``(U, I)`` array); both give the same draws.
      users: int ``(R,)`` user of each row.
      num: negatives per row.
      rng: the generator; the result is a pure function of its state.
      replace: when False, a row's negatives are distinct (used for the fixed 99 evaluation negatives).

    Returns:
      int32 ``(R, num)``.

    Raises:
      ValueError: a user has fewer than ``num`` non-positive items (with ``replace=False``) or none at all.
    """
    sparse = isinstance(positives, UserItems)
    num_items = positives.num_items if sparse else positives.shape[1]
    users = np.asarray(users)
    # Per user first: never gathers (R, I) rows.
    free = num_items - (positives.counts() if sparse else positives.sum(axis=1))[users]
    needed = num if not replace else 1
    if len(users) and free.min() < needed:
        bad = int(users[np.argmin(free)])
        raise ValueError(f"user {bad} has only {int(free.min())} non-positive items; cannot sample {num} negatives")
    out = rng.integers(0, num_items, size=(len(users), num), dtype=np.int64)
    rows = np.repeat(np.asarray(users)[:, None], num, axis=1)

    def invalid(candidates: np.ndarray) -> np.ndarray:
        bad = positives.contains(rows, candidates) if sparse else positives[rows, candidates]
        if not replace:
            srt = np.sort(candidates, axis=1)
            dup_sorted = np.zeros_like(bad)
            dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
            # Mark every later copy of a repeated item in its original position.
            order = np.argsort(candidates, axis=1, kind="stable")
            dup = np.zeros_like(bad)
            np.put_along_axis(dup, order, dup_sorted, axis=1)
            bad |= dup
        return bad

    bad = invalid(out)
    while bad.any():
        out[bad] = rng.integers(0, num_items, size=int(bad.sum()))
        bad = invalid(out)
    return out.astype(np.int32)


def bpr_pairs(split: Split, rng: np.random.Generator, positives=None) -> dict[str, np.ndarray]:
    """One epoch of BPR training rows: every training positive with one fresh negative (``positives`` as in
    :func:`sample_negatives`, default :meth:`~jaxfair.data.dataset.Split.known_positives`).

    Returns:
      ``{"user": (P,), "pos": (P,), "neg": (P,)}`` int32, in the split's order (shuffle when batching).
    """
    positives = split.known_positives() if positives is None else positives
    neg = sample_negatives(positives, split.train_users, 1, rng)[:, 0]
    return {"user": split.train_users.astype(np.int32), "pos": split.train_items.astype(np.int32), "neg": neg}
