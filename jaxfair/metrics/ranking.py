"""Top-k ranking metrics and the two evaluation protocols (``sampled`` and ``full``).

Ranking is by score, descending, with ties broken *against* relevant items: among equal scores every non-relevant
candidate is placed before every relevant one. A constant scorer therefore earns no credit, and a model cannot gain
from collapsing scores. Masked candidates are passed with score ``-inf`` and rank after every finite score.

Memory. Full ranking scores users against every item one block of users at a time. Its targets and masks come as
bool ``(U, I)`` matrices on small data, or, above :data:`jaxfair.data.dataset.DENSE_LIMIT`, as per-user item sets
(:class:`~jaxfair.data.dataset.UserItems`) from which each block's masks are built on the device
(:mod:`jaxfair.metrics.masks`); a block then holds at most ``memory_bytes / (BYTES_PER_ENTRY * I)`` users
(:func:`block_rows`, :data:`EVAL_MEMORY_BYTES` by default). Both forms give the same per-user metrics, bit for bit.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.data.dataset import UserItems
from jaxfair.metrics.masks import SparseRows, gather_mask

PROTOCOLS = ("sampled", "full")
# Device memory one block of full-ranking users may take, and the bytes each (user, item) entry of a block is charged
# (float32 scores, their masked copy and the sort or top_k's temporaries, and two bool masks).
EVAL_MEMORY_BYTES = 1 << 30
BYTES_PER_ENTRY = 16

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def metric_names(ks: tuple[int, ...]) -> tuple[str, ...]:
    """Keys returned by :func:`ranking_metrics` for cut-offs ``ks``, e.g. ``("ndcg@10", "hr@10", ...)``."""
    return tuple(f"{m}@{k}" for k in ks for m in ("ndcg", "hr", "recall", "precision"))


def ranking_metrics(scores: jax.Array, relevant: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """Per-row NDCG, hit rate, recall and precision at each cut-off.

    Candidates are sorted by the two keys ``(-score, relevant)``, so ties go exactly (no epsilon) to the
    non-relevant candidates. With ``hits@k`` the number of relevant candidates in the first ``k`` positions and
    ``n`` the number of relevant candidates in the row:

    * ``hr@k = 1[hits@k > 0]``
    * ``recall@k = hits@k / n`` (0 when ``n = 0``)
    * ``precision@k = hits@k / k``
    * ``ndcg@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{p<k} rel_p / log2(p + 2)`` over 0-based positions ``p`` and
      ``IDCG@k`` the DCG of ``min(n, k)`` relevant items at the top (``ndcg = 0`` when ``n = 0``).

    Jitted, with ``ks`` static.

    Args:
      scores: float ``(B, C)`` over ``C`` candidates; ``-inf`` marks a masked candidate.
      relevant: bool ``(B, C)``.
      ks: positive cut-offs; a ``k`` above ``C`` sees all ``C`` candidates (precision still divides by ``k``).

    Returns:
      ``{"ndcg@k", "hr@k", "recall@k", "precision@k"}`` for each ``k``, each float32 ``(B,)``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if 4 * max(ks) <= jnp.shape(scores)[-1]:
        return _ranking_metrics_topk(scores, relevant, ks)
    return _ranking_metrics(scores, relevant, ks)


def _cutoff_metrics(ranked_rel: jax.Array, num_relevant: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """Metrics from the relevance ``(B, P)`` of the first ``P >= min(max(ks), C)`` ranked positions."""
    ranked_rel = ranked_rel.astype(jnp.float32)
    positions = ranked_rel.shape[-1]
    discount = 1.0 / jnp.log2(jnp.arange(positions, dtype=jnp.float32) + 2.0)
    cum_hits = jnp.cumsum(ranked_rel, axis=-1)
    cum_dcg = jnp.cumsum(ranked_rel * discount, axis=-1)
    # ideal_dcg[m] = DCG of m relevant items at the top, m = 0..P.
    ideal_dcg = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(discount)])
    out = {}
    for k in ks:
        last = min(k, positions) - 1
        hits = cum_hits[..., last]
        idcg = ideal_dcg[jnp.minimum(num_relevant, min(k, positions))]
        out[f"ndcg@{k}"] = jnp.where(num_relevant > 0, cum_dcg[..., last] / jnp.where(idcg > 0, idcg, 1.0), 0.0)
        out[f"hr@{k}"] = (hits > 0).astype(jnp.float32)
        out[f"recall@{k}"] = jnp.where(num_relevant > 0, hits / jnp.maximum(num_relevant, 1), 0.0)
        out[f"precision@{k}"] = hits / k
    return out


@functools.partial(jax.jit, static_argnums=2)
def _ranking_metrics_topk(scores: jax.Array, relevant: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """The same metrics from ``lax.top_k`` instead of a full sort (much faster when ``K << C``), ties still exact.

    With ``tau`` the K-th largest score of a row (``K = max(ks)``), every candidate scoring above ``tau`` is in the
    top K; the remaining ``K - #(score > tau)`` positions hold candidates scoring exactly ``tau``, non-relevant ones
    first. So: take ``top_k``, re-sort those K entries by ``(-score, relevant)``, and give the positions of the
    ``tau``-valued entries the relevance the pessimistic order implies from the row's counts at ``tau``.
    """
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    rel = jnp.asarray(relevant).astype(jnp.int32)
    top_k = max(ks)
    values, index = jax.lax.top_k(scores, top_k)
    top_rel = jnp.take_along_axis(rel, index, axis=-1)
    values, top_rel = jax.lax.sort((-values, top_rel), dimension=-1, num_keys=2)
    values = -values
    tau = values[..., -1:]
    above = jnp.sum(scores > tau, axis=-1, keepdims=True)
    at_tau_negative = jnp.sum((scores == tau) & (rel == 0), axis=-1, keepdims=True)
    at_tau_relevant = jnp.sum((scores == tau) & (rel == 1), axis=-1, keepdims=True)
    position = jnp.arange(top_k)
    first_relevant = above + at_tau_negative
    boundary_rel = (position >= first_relevant) & (position < first_relevant + at_tau_relevant)
    ranked_rel = jnp.where(values == tau, boundary_rel, top_rel)
    return _cutoff_metrics(ranked_rel, rel.sum(axis=-1), ks)


@functools.partial(jax.jit, static_argnums=2)
def _ranking_metrics(scores: jax.Array, relevant: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    rel = jnp.asarray(relevant).astype(jnp.int32)
    # Ascending sort on (-score, rel): best score first, and within a tie rel=0 precedes rel=1.
    _, ranked_rel = jax.lax.sort((-scores, rel), dimension=-1, num_keys=2)
    return _cutoff_metrics(ranked_rel, rel.sum(axis=-1), ks)


def target_rank_metrics(scores: jax.Array, ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """:func:`ranking_metrics` when the only relevant candidate is column 0 (the sampled protocol): equal to
    ``ranking_metrics(scores, relevant)`` with ``relevant`` true in column 0 only, bit for bit
    (``tests/test_ranking.py``), without a sort or ``top_k``.

    Ties go against the relevant candidate, so its 0-based position is a count: ``rank = #(other candidates scoring
    at or above it)``. Then ``hits@k = 1[rank < k]``, ``ndcg@k = 1 / log2(rank + 2)`` for a hit (the ideal DCG of one
    relevant item is 1), ``recall@k = hits@k``, ``precision@k = hits@k / k``.

    Args:
      scores: float ``(..., 1 + N)``, the target first.
      ks: positive cut-offs; a ``k`` above ``1 + N`` sees every candidate.

    Returns:
      The metrics of :func:`ranking_metrics`, each float32 ``(...)``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    candidates = scores.shape[-1]
    rank = jnp.sum(scores[..., 1:] >= scores[..., :1], axis=-1)
    discount = 1.0 / jnp.log2(jnp.arange(candidates, dtype=jnp.float32) + 2.0)
    out = {}
    for k in ks:
        hit = rank < min(k, candidates)
        hits = hit.astype(jnp.float32)
        out[f"ndcg@{k}"] = jnp.where(hit, discount[rank], 0.0)
        out[f"hr@{k}"] = hits
        out[f"recall@{k}"] = hits
        out[f"precision@{k}"] = hits / k
    return out


def block_rows(num_items: int, copies: int = 1, memory_bytes: int | None = None) -> int:
    """Users per full-ranking block: ``memory_bytes // (copies * I * BYTES_PER_ENTRY)``, at least 1.

    Args:
      num_items: ``I``.
      copies: score matrices per user held at once (e.g. one per fairness level evaluated side by side).
      memory_bytes: the block's budget; None reads :data:`EVAL_MEMORY_BYTES`.
    """
    budget = EVAL_MEMORY_BYTES if memory_bytes is None else memory_bytes
    return max(1, int(budget) // (max(1, copies) * max(1, num_items) * BYTES_PER_ENTRY))


def _run_batched(
    fn: Callable, shared: tuple, per_user: tuple[np.ndarray, ...], batch_size: int
) -> dict[str, np.ndarray]:
    """Call ``fn(*shared, *batch)`` on fixed-size row batches of ``per_user`` and concatenate the per-row outputs.

    The last batch is zero-padded to the same size (zeros are valid indices / False masks) so a jitted ``fn``
    compiles once; padded rows are dropped from the result.
    """
    n = per_user[0].shape[0]
    size = max(1, min(batch_size, n))
    pending = []
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in per_user]
        rows = chunk[0].shape[0]
        if rows < size:
            chunk = [np.concatenate([c, np.zeros((size - rows,) + c.shape[1:], c.dtype)]) for c in chunk]
        pending.append((rows, fn(*shared, *chunk)))  # dispatched asynchronously; fetched below
    results = [{k: np.asarray(v)[:rows] for k, v in jax.device_get(out).items()} for rows, out in pending]
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def sampled_protocol(
    score_fn: ScoreFn,
    user_vecs: jax.Array,
    item_vecs: jax.Array,
    targets: np.ndarray,
    negatives: np.ndarray,
    ks: tuple[int, ...] = (10,),
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Rank each user's target among that user's fixed sampled negatives.

    Candidates of user ``u`` are ``[targets[u], *negatives[u]]``; only the first is relevant.

    Args:
      score_fn: ``score_fn(users (B, 1, d), items (B, 1 + N, d)) -> (B, 1 + N)``; broadcasts leading axes.
      user_vecs: ``(U, d)`` user representations.
      item_vecs: ``(I, d)`` item representations.
      targets: int ``(U,)`` held-out item per user.
      negatives: int ``(U, N)`` sampled negatives per user.
      ks: cut-offs.
      batch_size: users per jitted call.

    Returns:
      Metric name -> float ``(U,)`` numpy array (see :func:`ranking_metrics`).
    """
    ks = tuple(int(k) for k in ks)
    user_vecs, item_vecs = jnp.asarray(user_vecs), jnp.asarray(item_vecs)
    targets = np.asarray(targets, dtype=np.int32)
    negatives = np.asarray(negatives, dtype=np.int32)
    if targets.shape[0] == 0:
        return {name: np.zeros(0, np.float32) for name in metric_names(ks)}

    users = np.arange(targets.shape[0], dtype=np.int32)
    # The scorer and the embeddings are arguments, not closed-over constants: one compilation per scorer function
    # and batch shape, whatever parameters the scorer holds.
    return _run_batched(functools.partial(_sampled_batch, ks=ks), (as_partial(score_fn), user_vecs, item_vecs),
                        (users, targets, negatives), batch_size)


def as_partial(score_fn: ScoreFn) -> jax.tree_util.Partial:
    """``score_fn`` as a ``jax.tree_util.Partial``: a pytree whose bound arguments (a backbone's parameters, say) are
    traced when it is passed to a jitted function, and whose function is part of the compilation key."""
    return score_fn if isinstance(score_fn, jax.tree_util.Partial) else jax.tree_util.Partial(score_fn)


@functools.partial(jax.jit, static_argnames="ks")
def _sampled_batch(score_fn, user_vecs, item_vecs, users, tgt, neg, *, ks):
    """The per-batch body of :func:`sampled_protocol`."""
    cands = jnp.concatenate([tgt[:, None], neg], axis=1)
    return target_rank_metrics(score_fn(user_vecs[users][:, None, :], item_vecs[cands]), ks)


def full_protocol(
    score_fn: ScoreFn,
    user_vecs: jax.Array,
    item_vecs: jax.Array,
    targets: np.ndarray,
    exclude: np.ndarray,
    ks: tuple[int, ...] = (10,),
    batch_size: int = 256,
    memory_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Rank each user's targets among all items, with the user's other known positives masked out.

    Users are scored in blocks of ``batch_size`` (``(batch_size, I)`` scores at a time). With the sets form of
    ``targets`` or ``exclude`` (large data), the sets go to the device once as CSR, each block's masks are built
    there (:mod:`jaxfair.metrics.masks`), and a block holds at most :func:`block_rows` ``(I, 1, memory_bytes)`` users;
    the per-user metrics are the dense form's, bit for bit.

    Args:
      score_fn: ``score_fn(users (B, 1, d), items (1, I, d)) -> (B, I)``; broadcasts leading axes.
      targets: int ``(U,)`` one target per user, or multi-hot: bool ``(U, I)`` or
        :class:`~jaxfair.data.dataset.UserItems`.
      exclude: bool ``(U, I)`` or :class:`~jaxfair.data.dataset.UserItems`: known positives to mask (score
        ``-inf``); a target is never masked, even when it is also marked here.
      user_vecs, item_vecs, ks, batch_size: as in :func:`sampled_protocol`.
      memory_bytes: the sets form's block budget (None: :data:`EVAL_MEMORY_BYTES`).

    Returns:
      Metric name -> float ``(U,)`` numpy array (see :func:`ranking_metrics`).
    """
    ks = tuple(int(k) for k in ks)
    user_vecs, item_vecs = jnp.asarray(user_vecs), jnp.asarray(item_vecs)
    num_items = item_vecs.shape[0]
    sparse = isinstance(targets, UserItems) or isinstance(exclude, UserItems)
    if not isinstance(targets, UserItems):
        targets = np.asarray(targets)
        targets = targets.astype(bool if targets.ndim == 2 else np.int32)
    if not isinstance(exclude, UserItems):
        exclude = np.asarray(exclude, dtype=bool)
    num_users = targets.num_users if isinstance(targets, UserItems) else targets.shape[0]
    shape = (exclude.num_users, exclude.num_items) if isinstance(exclude, UserItems) else exclude.shape
    if shape != (num_users, num_items):
        raise ValueError(f"exclude must have shape {(num_users, num_items)}, got {shape}")
    if num_users == 0:
        return {name: np.zeros(0, np.float32) for name in metric_names(ks)}

    users = np.arange(num_users, dtype=np.int32)
    shared = (as_partial(score_fn), user_vecs, item_vecs)
    if not sparse:
        return _run_batched(functools.partial(_full_batch, ks=ks), shared, (users, targets, exclude), batch_size)
    if not isinstance(targets, UserItems) and targets.ndim == 1:  # one target per user: the same relevance
        targets = UserItems.from_pairs(users, targets, num_users, num_items)
    targets, exclude = SparseRows.from_sets(targets), SparseRows.from_sets(exclude)
    size = max(1, min(batch_size, block_rows(num_items, 1, memory_bytes), num_users))
    fn = functools.partial(_full_batch_sets, ks=ks, target_slots=targets.slots(size), exclude_slots=exclude.slots(size))
    return _run_batched(fn, shared + ((targets.indptr, targets.indices), (exclude.indptr, exclude.indices)), (users,),
                        size)


@functools.partial(jax.jit, static_argnames="ks")
def _full_batch(score_fn, user_vecs, item_vecs, users, tgt, excl, *, ks):
    """The per-batch body of :func:`full_protocol`; ``tgt`` is int ``(B,)`` or multi-hot bool ``(B, I)``."""
    scores = score_fn(user_vecs[users][:, None, :], item_vecs[None])
    relevant = tgt if tgt.ndim == 2 else jnp.arange(item_vecs.shape[0])[None, :] == tgt[:, None]
    scores = jnp.where(excl & ~relevant, -jnp.inf, scores)
    return ranking_metrics(scores, relevant, ks)


@functools.partial(jax.jit, static_argnames=("ks", "target_slots", "exclude_slots"))
def _full_batch_sets(score_fn, user_vecs, item_vecs, targets, exclude, users, *, ks, target_slots, exclude_slots):
    """:func:`_full_batch` with the batch's masks built on the device from the CSR ``targets`` and ``exclude``
    (``(indptr, indices)``)."""
    num_items = item_vecs.shape[0]
    return _full_batch(score_fn, user_vecs, item_vecs, users, gather_mask(*targets, users, num_items, target_slots),
                       gather_mask(*exclude, users, num_items, exclude_slots), ks=ks)


def has_target_rows(targets) -> np.ndarray:
    """Bool ``(U,)``: the users with at least one target in ``targets`` (bool ``(U, I)`` or
    :class:`~jaxfair.data.dataset.UserItems`)."""
    return targets.counts() > 0 if isinstance(targets, UserItems) else np.asarray(targets).any(axis=1)


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over users of each per-user metric array."""
    return {name: float(np.mean(values)) for name, values in per_user.items()}


def split_ranking(
    score_fn: ScoreFn,
    user_vecs: dict,
    item_vecs: jax.Array,
    split,
    protocols: tuple[str, ...],
    ks: tuple[int, ...],
    batch_size: int = 256,
    stages: tuple[str, ...] = ("valid", "test"),
) -> dict:
    """Ranking metrics of one model on a :class:`~jaxfair.data.dataset.Split`, under each of ``protocols``.

    ``sampled`` ranks each user's held-out item among the split's fixed negatives (leave-one-out splits);
    ``full`` ranks each user's held-out positives among all items with the split's
    :meth:`~jaxfair.data.dataset.Split.exclude_matrix` masked, and averages over the users that have a positive in
    the stage. Its masks are :meth:`~jaxfair.data.dataset.Split.ranking_masks`: dense on small data, per-user sets
    above the memory rule (the same metrics; no ``(U, I)`` array).

    Args:
      score_fn: ``(users (..., d), items (..., d)) -> (...)``.
      user_vecs: stage -> ``(U, d)`` user representations; item_vecs: ``(I, d)``.

    Returns:
      ``{protocol: {"protocol": name, "description": ..., stage: {metric@k: mean}}}``.
    """
    unsupported = [p for p in protocols if p not in split.protocols]
    if unsupported:
        raise ValueError(f"a {split.kind} split is ranked under {list(split.protocols)}, not {unsupported}")
    out = {}
    for protocol in protocols:
        block = {"protocol": protocol, "description": split.protocol_description(protocol)}
        for stage in stages:
            if protocol == "sampled":
                per_user = sampled_protocol(score_fn, user_vecs[stage], item_vecs, split.stage_items(stage),
                                            split.negatives(stage), ks, batch_size)
                block[stage] = summarize(per_user)
            else:
                targets, exclude = split.ranking_masks(stage)
                per_user = full_protocol(score_fn, user_vecs[stage], item_vecs, targets, exclude, ks, batch_size)
                has_targets = has_target_rows(targets)
                block[stage] = summarize({k: v[has_targets] for k, v in per_user.items()})
        out[protocol] = block
    return out
