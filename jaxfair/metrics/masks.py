"""The bool rows of a block of users, built from per-user item sets instead of a ``(U, I)`` mask.

Above the memory rule (:data:`jaxfair.data.dataset.DENSE_LIMIT`) no ``(U, I)`` mask exists; the sets are CSR
(:class:`~jaxfair.data.dataset.UserItems` on the host, :class:`SparseRows` on the device). A training batch (Cofair's
exposure term) or an evaluation block needs the dense rows of its ``N`` users only: :func:`gather_mask`, inside the
jitted program, gathers those users' pairs into a fixed number of slots and scatters them into a bool ``(N, I)``
block, so the host sends nothing per block and the work is ``O(N I + pairs of those users)``; :func:`mask_rows` is
the same on the host, for loops that score one block at a time anyway.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.data.dataset import UserItems


class SparseRows(NamedTuple):
    """Per-user item sets on the device (CSR), the sparse form of a bool ``(U, I)`` mask.

    Attributes:
      indptr: int32 ``(U + 1,)``; indices: int32 ``(P,)``: user ``u``'s items are ``indices[indptr[u]:indptr[u+1]]``.
      largest: numpy int64 ``(U + 1,)``: ``largest[n]`` is the most pairs any ``n`` users hold together (the sum of
        the ``n`` largest set sizes), the static number of slots :func:`gather_mask` needs for ``n`` users.
    """

    indptr: jax.Array
    indices: jax.Array
    largest: np.ndarray

    @classmethod
    def from_sets(cls, sets) -> "SparseRows":
        """From host sets: :class:`~jaxfair.data.dataset.UserItems`, or a bool ``(U, I)`` array (its pairs)."""
        if not isinstance(sets, UserItems):
            mask = np.asarray(sets, bool)
            sets = UserItems.from_pairs(*np.nonzero(mask), *mask.shape)
        counts = np.sort(np.diff(np.asarray(sets.indptr)))[::-1]
        largest = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(jnp.asarray(sets.indptr, jnp.int32), jnp.asarray(sets.indices, jnp.int32), largest)

    def slots(self, num_rows: int) -> int:
        """The slots :func:`gather_mask` needs for any ``num_rows`` users (static)."""
        return int(self.largest[min(num_rows, self.largest.shape[0] - 1)])


def gather_mask(indptr: jax.Array, indices: jax.Array, users: jax.Array, num_items: int, slots: int) -> jax.Array:
    """Bool ``(N, I)``: row ``n`` is the set of ``users[n]`` (users may repeat); equal to ``dense[users]`` for the
    dense mask ``dense``.

    Args:
      indptr, indices: the CSR of :class:`SparseRows`.
      users: int ``(N,)``.
      num_items: ``I`` (static).
      slots: static, at least the pairs the ``N`` users hold together (:meth:`SparseRows.slots`).
    """
    n = users.shape[0]
    starts = indptr[users]
    counts = indptr[users + 1] - starts
    ends = jnp.cumsum(counts)  # slot ends[r] is the first of row r + 1
    slot = jnp.arange(slots, dtype=jnp.int32)
    # owner[s] = #{r: ends[r] <= s}, the row slot s belongs to (n past the last pair): a cumsum of marks, no search.
    owner = jnp.cumsum(jnp.zeros(slots, jnp.int32).at[ends].add(1, mode="drop"))
    used = owner < n
    owner = jnp.minimum(owner, n - 1)
    position = jnp.where(used, starts[owner] + slot - (ends[owner] - counts[owner]), 0)
    items = jnp.where(used, indices[position], num_items)  # num_items: dropped below
    return jnp.zeros((n, num_items), bool).at[owner, items].set(True, mode="drop")


def rows_mask(rows: SparseRows, users: jax.Array, num_items: int) -> jax.Array:
    """:func:`gather_mask` of ``rows`` (closed over, so its ``largest`` sizes the gather): bool ``(N, I)``."""
    return gather_mask(rows.indptr, rows.indices, users, num_items, rows.slots(users.shape[0]))


def mask_rows(mask, rows) -> np.ndarray:
    """On the host: bool ``(len(rows), I)``, the rows ``rows`` of ``mask``, a bool ``(U, I)`` matrix or
    :class:`~jaxfair.data.dataset.UserItems` (whose rows are built here, so no ``(U, I)`` array exists)."""
    return mask.dense_rows(rows) if isinstance(mask, UserItems) else np.asarray(mask[rows], bool)
