"""Top-K exposure fairness (DP@K, EOpp@K) against hand computations, and the full-ranking report against the
per-user full protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from jaxfair.metrics.exposure import full_ranking_report, topk_exposure_gaps
from jaxfair.metrics.ranking import full_protocol


def dot(u, v):
    return jnp.sum(u * v, axis=-1)


def js_distance_base2(p, q):
    """sqrt(KL(p||m)/2 + KL(q||m)/2), m = (p+q)/2, base-2 logs, 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return np.sum(a[nz] * np.log2(a[nz] / m[nz]))

    return np.sqrt(kl(p) / 2 + kl(q) / 2)


# 4 users, 4 items, K = 2. Top-2 lists: u0 {0, 1}, u1 {0, 1}, u2 {1, 2}, u3 {2, 3}.
SCORES = np.array([[4.0, 3.0, 2.0, 1.0],
                   [4.0, 3.0, 1.0, 2.0],
                   [1.0, 4.0, 3.0, 2.0],
                   [1.0, 2.0, 4.0, 3.0]], np.float32)
GROUPS = np.array([0, 0, 1, 1])
# Held-out positives. Hits in the top-2: u0 item 1; u1 item 0 (item 3 is not in its list); u2 items 1, 2; u3 item 2.
RELEVANT = np.array([[0, 1, 0, 0],
                     [1, 0, 0, 1],
                     [0, 1, 1, 0],
                     [1, 0, 1, 0]], bool)


def test_dp_and_eopp_at_k_match_a_hand_computation():
    # DP exposure: group 0 shows items 0, 1, 0, 1 -> [1/2, 1/2, 0, 0]; group 1 shows 1, 2, 2, 3 -> [0, 1/4, 1/2, 1/4].
    # EOpp exposure (hit slots only): group 0 hits 1, 0 -> [1/2, 1/2, 0, 0]; group 1 hits 1, 2, 2 -> [0, 1/3, 2/3, 0].
    dp_g0, dp_g1 = [0.5, 0.5, 0, 0], [0, 0.25, 0.5, 0.25]
    eo_g0, eo_g1 = [0.5, 0.5, 0, 0], [0, 1 / 3, 2 / 3, 0]
    # DP by hand: m = [1/4, 3/8, 1/4, 1/8]; KL(p||m) = 1/2 log2 2 + 1/2 log2 (4/3); KL(q||m) = 1/4 log2 (2/3) + 1/2 log2 2
    # + 1/4 log2 2.
    kl_p = 0.5 + 0.5 * np.log2(4 / 3)
    kl_q = 0.25 * np.log2(2 / 3) + 0.5 + 0.25
    dp_hand = np.sqrt(kl_p / 2 + kl_q / 2)
    np.testing.assert_allclose(dp_hand, js_distance_base2(dp_g0, dp_g1), rtol=1e-12)

    got = topk_exposure_gaps(jnp.asarray(SCORES), jnp.asarray(RELEVANT), jnp.asarray(GROUPS), 2, (2,))
    assert set(got) == {"dp@2", "eopp@2"}
    np.testing.assert_allclose(float(got["dp@2"]), dp_hand, rtol=1e-5)
    np.testing.assert_allclose(float(got["eopp@2"]), js_distance_base2(eo_g0, eo_g1), rtol=1e-5)
    # SciPy's default (natural log) differs by the factor sqrt(ln 2), as documented
    np.testing.assert_allclose(jensenshannon(dp_g0, dp_g1), dp_hand * np.sqrt(np.log(2)), rtol=1e-9)
    np.testing.assert_allclose(jensenshannon(eo_g0, eo_g1, base=2), float(got["eopp@2"]), rtol=1e-5)


def test_several_cutoffs_are_computed_independently():
    got = topk_exposure_gaps(jnp.asarray(SCORES), jnp.asarray(RELEVANT), jnp.asarray(GROUPS), 2, (1, 2))
    # K = 1: group 0 shows items 0, 0; group 1 shows 1, 2 -> disjoint
    np.testing.assert_allclose(float(got["dp@1"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(got["dp@2"]), js_distance_base2([0.5, 0.5, 0, 0], [0, 0.25, 0.5, 0.25]),
                               rtol=1e-5)


def test_identical_exposure_gives_zero():
    scores = np.array([[1.0, 5.0, 2.0, 4.0]] * 4, np.float32)
    relevant = np.array([[0, 1, 0, 1]] * 4, bool)
    got = topk_exposure_gaps(jnp.asarray(scores), jnp.asarray(relevant), jnp.asarray(GROUPS), 2, (2,))
    assert float(got["dp@2"]) == pytest.approx(0.0, abs=1e-6)
    assert float(got["eopp@2"]) == pytest.approx(0.0, abs=1e-6)


def test_disjoint_exposure_gives_one():
    scores = np.array([[4, 3, 0, 0], [3, 4, 0, 0], [0, 0, 4, 3], [0, 0, 3, 4]], np.float32)
    relevant = np.eye(4, dtype=bool)
    got = topk_exposure_gaps(jnp.asarray(scores), jnp.asarray(relevant), jnp.asarray(GROUPS), 2, (2,))
    np.testing.assert_allclose(float(got["dp@2"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(got["eopp@2"]), 1.0, rtol=1e-6)


def test_user_weight_leaves_users_out():
    weight = jnp.array([1.0, 1.0, 1.0, 0.0])  # drop u3: group 1 shows only items 1, 2
    got = topk_exposure_gaps(jnp.asarray(SCORES), jnp.asarray(RELEVANT), jnp.asarray(GROUPS), 2, (2,), weight)
    np.testing.assert_allclose(float(got["dp@2"]), js_distance_base2([0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]), rtol=1e-5)
    np.testing.assert_allclose(float(got["eopp@2"]), js_distance_base2([0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]),
                               rtol=1e-5)


def test_masked_items_leave_the_top_k():
    scores = SCORES.copy()
    scores[0, 0] = -np.inf  # u0 now shows items 1, 2
    got = topk_exposure_gaps(jnp.asarray(scores), jnp.asarray(RELEVANT), jnp.asarray(GROUPS), 2, (2,))
    np.testing.assert_allclose(float(got["dp@2"]), js_distance_base2([0.25, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.25]),
                               rtol=1e-5)


def test_three_groups_average_the_pairs_and_an_empty_group_is_ignored():
    groups = np.array([0, 1, 2, 2])
    got = topk_exposure_gaps(jnp.asarray(SCORES), jnp.asarray(RELEVANT), jnp.asarray(groups), 3, (2,))
    e = [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0.25, 0.5, 0.25]]
    pairs = [js_distance_base2(e[0], e[1]), js_distance_base2(e[0], e[2]), js_distance_base2(e[1], e[2])]
    np.testing.assert_allclose(float(got["dp@2"]), np.mean(pairs), rtol=1e-5)
    # a third group with no users changes nothing
    two = topk_exposure_gaps(jnp.asarray(SCORES), jnp.asarray(RELEVANT), jnp.asarray(GROUPS), 2, (2,))
    three = topk_exposure_gaps(jnp.asarray(SCORES), jnp.asarray(RELEVANT), jnp.asarray(GROUPS), 3, (2,))
    np.testing.assert_allclose(float(three["dp@2"]), float(two["dp@2"]), rtol=1e-6)


@pytest.fixture(scope="module")
def ranking_case():
    rng = np.random.default_rng(0)
    num_users, num_items, dim = 12, 30, 4
    user_vecs = rng.normal(size=(num_users, dim)).astype(np.float32)
    item_vecs = rng.normal(size=(num_items, dim)).astype(np.float32)
    targets = rng.random((num_users, num_items)) < 0.15
    targets[:3] = False  # users without targets
    targets[3, :] = False
    targets[3, 7] = True
    exclude = (rng.random((num_users, num_items)) < 0.2) & ~targets
    groups = rng.integers(0, 2, num_users)
    return user_vecs, item_vecs, targets, exclude, groups


def test_full_ranking_report_equals_full_protocol_over_users_with_targets(ranking_case):
    user_vecs, item_vecs, targets, exclude, groups = ranking_case
    ks = (2, 5)
    got = full_ranking_report(dot, jnp.asarray(user_vecs), jnp.asarray(item_vecs), jnp.asarray(targets),
                              jnp.asarray(exclude), jnp.asarray(groups), num_groups=2, ks=ks)
    per_user = full_protocol(dot, user_vecs, item_vecs, targets, exclude, ks=ks)
    has_target = targets.any(axis=1)
    assert 0 < has_target.sum() < len(has_target)
    for k in ks:
        for metric in ("recall", "ndcg", "hr", "precision"):
            name = f"{metric}@{k}"
            want = per_user[name][has_target].mean()
            np.testing.assert_allclose(float(got[name]), want, rtol=1e-5, err_msg=name)
            # including the users without targets would give a different (smaller) number
            if metric in ("recall", "ndcg"):
                assert want > per_user[name].mean()
    # the exposure gaps are those of the masked scores
    scores = np.where(exclude & ~targets, -np.inf, user_vecs @ item_vecs.T)
    gaps = topk_exposure_gaps(jnp.asarray(scores), jnp.asarray(targets), jnp.asarray(groups), 2, ks)
    for name, value in gaps.items():
        np.testing.assert_allclose(float(got[name]), float(value), rtol=1e-5, err_msg=name)


def test_full_ranking_report_vmaps_over_embedding_sets(ranking_case):
    user_vecs, item_vecs, targets, exclude, groups = ranking_case
    stacked = jnp.stack([jnp.asarray(user_vecs), -jnp.asarray(user_vecs)])
    report = jax.vmap(lambda u: full_ranking_report(dot, u, jnp.asarray(item_vecs), jnp.asarray(targets),
                                                    jnp.asarray(exclude), jnp.asarray(groups), num_groups=2,
                                                    ks=(5,)))(stacked)
    for level in range(2):
        single = full_ranking_report(dot, stacked[level], jnp.asarray(item_vecs), jnp.asarray(targets),
                                     jnp.asarray(exclude), jnp.asarray(groups), num_groups=2, ks=(5,))
        for name, value in single.items():
            np.testing.assert_allclose(float(report[name][level]), float(value), rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("num_sets", [1, 2])
def test_level_report_of_any_number_of_embedding_sets_equals_the_direct_report(num_sets):
    """One set must not go through a size-1 ``jax.vmap``: jax/jaxlib 0.10.2 on CPU miscompiles the scorer's broadcast
    product there at these shapes (30 users, 60 items, d = 4), giving wrong scores; with the vmap path forced for one
    set this test failed on that version."""
    from jaxfair.methods.cofair_evaluation import level_report

    rng = np.random.default_rng(1)
    user_vecs = jnp.asarray(rng.normal(size=(num_sets, 30, 4)), jnp.float32)
    item_vecs = jnp.asarray(rng.normal(size=(60, 4)), jnp.float32)
    targets = jnp.asarray(rng.random((30, 60)) < 0.1)
    exclude = jnp.asarray(rng.random((30, 60)) < 0.1) & ~targets
    groups = jnp.asarray(rng.integers(0, 2, 30))
    report = level_report(user_vecs, item_vecs, jax.tree_util.Partial(dot), targets, exclude, groups, 2, (3, 5))
    for s in range(num_sets):
        direct = full_ranking_report(dot, user_vecs[s], item_vecs, targets, exclude, groups, num_groups=2, ks=(3, 5))
        assert float(direct["recall@3"]) > 0
        for name, value in direct.items():
            np.testing.assert_allclose(float(report[name][s]), float(value), rtol=1e-5, err_msg=name)
