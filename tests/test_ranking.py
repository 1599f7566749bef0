import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.metrics.ranking import (PROTOCOLS, full_protocol, ranking_metrics, sampled_protocol, summarize,
                                    target_rank_metrics)

L3, L4, L5 = math.log2(3), math.log2(4), math.log2(5)


def dot_score(users, items):
    return jnp.sum(users * items, axis=-1)


def metrics_np(scores, relevant, ks):
    """Reference: pessimistic order via numpy lexsort, then metrics from their definitions, one row at a time."""
    out = {f"{m}@{k}": [] for k in ks for m in ("ndcg", "hr", "recall", "precision")}
    for s, r in zip(scores, relevant):
        order = np.lexsort((r.astype(int), -s))  # primary key -score, ties: non-relevant first
        ranked = r[order].astype(float)
        n = r.sum()
        for k in ks:
            hits = ranked[:k].sum()
            dcg = sum(ranked[p] / math.log2(p + 2) for p in range(min(k, len(ranked))))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(n, k)))
            out[f"ndcg@{k}"].append(dcg / idcg if n else 0.0)
            out[f"hr@{k}"].append(float(hits > 0))
            out[f"recall@{k}"].append(hits / n if n else 0.0)
            out[f"precision@{k}"].append(hits / k)
    return {k: np.array(v) for k, v in out.items()}


def test_hand_computed_metrics():
    scores = jnp.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # relevant at positions 1 and 3
            [0.1, 0.4, 0.3, 0.2, 0.9],  # relevant item scored highest
            [0.5, 0.4, 0.3, 0.2, 0.1],  # nothing relevant
            [1.0, 1.0, 1.0, 0.0, 0.0],  # relevant tied with two others: placed after them, position 2
        ]
    )
    relevant = jnp.array(
        [
            [False, True, False, True, False],
            [False, False, False, False, True],
            [False, False, False, False, False],
            [True, False, False, False, False],
        ]
    )
    m = ranking_metrics(scores, relevant, (1, 3, 5, 7))
    expected = {
        "hr@1": [0, 1, 0, 0],
        "recall@1": [0, 1, 0, 0],
        "precision@1": [0, 1, 0, 0],
        "ndcg@1": [0, 1, 0, 0],
        "hr@3": [1, 1, 0, 1],
        "recall@3": [0.5, 1, 0, 1],
        "precision@3": [1 / 3, 1 / 3, 0, 1 / 3],
        "ndcg@3": [(1 / L3) / (1 + 1 / L3), 1, 0, 1 / L4],
        "hr@5": [1, 1, 0, 1],
        "recall@5": [1, 1, 0, 1],
        "precision@5": [2 / 5, 1 / 5, 0, 1 / 5],
        "ndcg@5": [(1 / L3 + 1 / L5) / (1 + 1 / L3), 1, 0, 1 / L4],
        # k above the number of candidates: everything is seen, precision still divides by k.
        "recall@7": [1, 1, 0, 1],
        "precision@7": [2 / 7, 1 / 7, 0, 1 / 7],
        "ndcg@7": [(1 / L3 + 1 / L5) / (1 + 1 / L3), 1, 0, 1 / L4],
    }
    assert set(m) == {f"{n}@{k}" for k in (1, 3, 5, 7) for n in ("ndcg", "hr", "recall", "precision")}
    for name, values in expected.items():
        np.testing.assert_allclose(m[name], values, rtol=1e-6, atol=1e-7, err_msg=name)
        assert m[name].shape == (4,)


def test_constant_scores_give_no_credit():
    scores = jnp.zeros((3, 10))
    relevant = jnp.zeros((3, 10), bool).at[jnp.arange(3), jnp.array([0, 4, 9])].set(True)
    m = ranking_metrics(scores, relevant, (9, 10))
    # The target ranks last among the ties wherever it sits, so it is only found at k = 10.
    np.testing.assert_array_equal(m["hr@9"], [0, 0, 0])
    np.testing.assert_array_equal(m["hr@10"], [1, 1, 1])
    np.testing.assert_allclose(m["ndcg@10"], [1 / math.log2(11)] * 3, rtol=1e-6)


def test_ties_on_negative_zero():
    # -0.0 and 0.0 are equal scores, so the relevant item still loses the tie.
    m = ranking_metrics(jnp.array([[0.0, -0.0]]), jnp.array([[True, False]]), (1,))
    assert float(m["hr@1"][0]) == 0.0


def test_minus_inf_masked_items_rank_last():
    scores = jnp.array([[-jnp.inf, 0.5, -jnp.inf, 0.2, -jnp.inf]])
    relevant = jnp.array([[False, False, False, True, False]])
    m = ranking_metrics(scores, relevant, (2, 5))
    np.testing.assert_allclose(m["ndcg@2"], [1 / L3], rtol=1e-6)  # behind 0.5 only
    np.testing.assert_allclose(m["precision@5"], [1 / 5])
    # A very negative finite score still beats every masked item.
    m = ranking_metrics(jnp.array([[-jnp.inf, -jnp.inf, -1e30]]), jnp.array([[False, False, True]]), (1,))
    assert float(m["hr@1"][0]) == 1.0


def test_ranking_metrics_jits_and_matches_reference():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(20, 12)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    relevant = rng.random((20, 12)) < 0.25
    ks = (1, 5, 12)
    got = jax.jit(ranking_metrics, static_argnums=2)(scores, relevant, ks)
    ref = metrics_np(scores, relevant, ks)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)


def _tiny_model(seed=0, users=7, items=30, dim=4):
    rng = np.random.default_rng(seed)
    # Small integer vectors make exact score ties common.
    return (
        rng.integers(-1, 2, size=(users, dim)).astype(np.float32),
        rng.integers(-1, 2, size=(items, dim)).astype(np.float32),
        rng,
    )


def test_sampled_protocol_matches_numpy_loop():
    user_vecs, item_vecs, rng = _tiny_model()
    num_users, num_items = len(user_vecs), len(item_vecs)
    targets = rng.integers(0, num_items, num_users)
    negatives = np.stack([rng.choice(np.delete(np.arange(num_items), t), 6, replace=False) for t in targets])
    ks = (1, 3)
    got = sampled_protocol(dot_score, user_vecs, item_vecs, targets, negatives, ks=ks, batch_size=3)
    for u in range(num_users):
        target_score = item_vecs[targets[u]] @ user_vecs[u]
        rank = int(np.sum(item_vecs[negatives[u]] @ user_vecs[u] >= target_score))  # ties count against
        for k in ks:
            assert got[f"hr@{k}"][u] == float(rank < k)
            assert got[f"recall@{k}"][u] == float(rank < k)
            np.testing.assert_allclose(got[f"ndcg@{k}"][u], 1 / math.log2(rank + 2) if rank < k else 0.0, rtol=1e-6)
            np.testing.assert_allclose(got[f"precision@{k}"][u], float(rank < k) / k)
    assert all(v.shape == (num_users,) and isinstance(v, np.ndarray) for v in got.values())


def scaled_dot(scale, users, items):
    return jnp.sum(users * items, axis=-1) * scale


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_a_scorer_bound_to_other_parameters_reuses_the_compiled_batch(protocol):
    from jaxfair.metrics import ranking

    user_vecs, item_vecs, rng = _tiny_model()
    num_users, num_items = len(user_vecs), len(item_vecs)
    targets = rng.integers(0, num_items, num_users)
    if protocol == "sampled":
        batch, extra = ranking._sampled_batch, rng.integers(0, num_items, (num_users, 4))
        evaluate = ranking.sampled_protocol
    else:
        batch, extra = ranking._full_batch, rng.random((num_users, num_items)) < 0.2
        evaluate = ranking.full_protocol
    before = batch._cache_size()
    up = evaluate(jax.tree_util.Partial(scaled_dot, jnp.float32(2.0)), user_vecs, item_vecs, targets, extra, (10,), 3)
    compiled = batch._cache_size()
    down = evaluate(jax.tree_util.Partial(scaled_dot, jnp.float32(-1.0)), user_vecs, item_vecs, targets, extra, (10,),
                    3)
    assert compiled == before + 1 and batch._cache_size() == compiled  # the parameter is traced, not a constant
    assert not all(np.array_equal(up[k], down[k]) for k in up)  # and it is used


def test_full_protocol_matches_numpy_loop_single_and_multi_hot():
    user_vecs, item_vecs, rng = _tiny_model(seed=1, users=9, items=12)
    num_users, num_items = len(user_vecs), len(item_vecs)
    exclude = rng.random((num_users, num_items)) < 0.3
    targets = rng.integers(0, num_items, num_users)
    exclude[np.arange(num_users), targets] = True  # targets also listed as known positives
    ks = (1, 4, 12)
    scores = user_vecs @ item_vecs.T

    one_hot = np.zeros((num_users, num_items), bool)
    one_hot[np.arange(num_users), targets] = True
    multi_hot = one_hot | (rng.random((num_users, num_items)) < 0.2)

    for tgt, relevant in ((targets, one_hot), (multi_hot, multi_hot)):
        got = full_protocol(dot_score, user_vecs, item_vecs, tgt, exclude, ks=ks, batch_size=4)
        masked = np.where(exclude & ~relevant, -np.inf, scores)
        ref = metrics_np(masked, relevant, ks)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)

    # The single-target case by plain counting: items scored at least as high and not masked beat the target.
    got = full_protocol(dot_score, user_vecs, item_vecs, targets, exclude, ks=(4,), batch_size=4)
    for u in range(num_users):
        others = np.delete(np.arange(num_items), targets[u])
        competing = others[~exclude[u, others]]
        rank = int(np.sum(scores[u, competing] >= scores[u, targets[u]]))
        assert got["hr@4"][u] == float(rank < 4)


def test_full_protocol_never_masks_a_target():
    user_vecs, item_vecs, _ = _tiny_model(seed=2, users=5, items=10)
    scores = user_vecs @ item_vecs.T
    worst = scores.argmin(axis=1)  # targets that would rank last without masking
    exclude = np.ones((5, 10), bool)
    got = full_protocol(dot_score, user_vecs, item_vecs, worst, exclude, ks=(1,))
    np.testing.assert_array_equal(got["hr@1"], np.ones(5))
    np.testing.assert_allclose(got["ndcg@1"], np.ones(5))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batch_size_does_not_change_results(protocol):
    user_vecs, item_vecs, rng = _tiny_model(seed=3, users=11, items=20)
    targets = rng.integers(0, 20, 11)
    if protocol == "sampled":
        extra = rng.integers(0, 20, size=(11, 5))
        run = lambda bs: sampled_protocol(dot_score, user_vecs, item_vecs, targets, extra, ks=(2, 5), batch_size=bs)
    else:
        extra = rng.random((11, 20)) < 0.3
        run = lambda bs: full_protocol(dot_score, user_vecs, item_vecs, targets, extra, ks=(2, 5), batch_size=bs)
    reference = run(11)
    for bs in (1, 4, 64):  # 4 leaves a padded last batch of 3
        out = run(bs)
        assert set(out) == set(reference)
        for name in reference:
            np.testing.assert_array_equal(out[name], reference[name], err_msg=f"{name} batch_size={bs}")


def test_summarize_means():
    assert summarize({"hr@10": np.array([1.0, 0.0, 0.0, 1.0]), "ndcg@10": np.array([0.5, 0.25])}) == {
        "hr@10": 0.5,
        "ndcg@10": 0.375,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_path_equals_full_sort_under_heavy_ties(seed):
    """The fast path (top_k, used when 4 * max(k) <= candidates) is exact: same metrics as the full two-key sort,
    even with most scores tied, signed zeros, and -inf masked candidates."""
    from jaxfair.metrics.ranking import _ranking_metrics, _ranking_metrics_topk

    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 4, size=(200, 64)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = -0.0
    relevant = rng.random(scores.shape) < 0.15
    relevant[:5] = False  # rows without any relevant candidate
    scores[relevant & np.isinf(scores)] = 0.0  # a target is never masked
    ks = (1, 3, 5, 10, 16)
    fast = _ranking_metrics_topk(jnp.asarray(scores), jnp.asarray(relevant), ks)
    exact = _ranking_metrics(jnp.asarray(scores), jnp.asarray(relevant), ks)
    for name in exact:
        np.testing.assert_allclose(np.asarray(fast[name]), np.asarray(exact[name]), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_target_rank_count_equals_the_sorted_ranking_bit_for_bit(seed):
    # The sampled protocol's single relevant candidate (column 0): a count of candidates at or above it, with ties
    # against it, gives exactly the sort's metrics, for ties, -inf scores, and cut-offs at and beyond the row.
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, (300, 101)).astype(np.float32)  # heavy ties, the target's among them
    scores[:20, 0] = -np.inf
    scores[10:30, 1:50] = -np.inf
    relevant = np.zeros(scores.shape, bool)
    relevant[:, 0] = True
    for ks in ((10,), (1, 5, 20), (101, 150)):
        expected = ranking_metrics(jnp.asarray(scores), jnp.asarray(relevant), ks)
        got = target_rank_metrics(jnp.asarray(scores), ks)
        assert set(got) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)
