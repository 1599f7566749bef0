"""Group gaps of a full-ranking evaluation: absolute-equality gaps of Recall/NDCG and the top-K equal-opportunity
gap against hand computations (users without held-out positives left out, an empty group NaN and ignored), and the
EO gap as the true-positive-rate gap of the classifier "item is in the user's top K" over (user, item) pairs."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.metrics.equality import group_rates, ranking_gaps
from jaxfair.metrics.group import equal_opportunity_gap
from jaxfair.metrics.ranking import ranking_metrics

# user:             0    1    2    3    4    5    6
GROUPS = np.array([0, 0, 1, 1, 1, 2, 3])
RELEVANT = np.array([2, 4, 1, 3, 0, 2, 0])  # users 4 and 6 have no held-out positives; group 3 is only user 6
HITS = {2: np.array([1, 2, 0, 1, 2, 2, 1]), 3: np.array([2, 2, 1, 1, 2, 2, 1])}  # users 4, 6: garbage to ignore
NDCG = {2: np.array([0.6, 1.0, 0.0, 0.3, 1.0, 1.0, 1.0]), 3: np.array([0.7, 0.8, 0.5, 0.25, 1.0, 1.0, 1.0])}


def per_user():
    out = {}
    for k in (2, 3):
        out[f"recall@{k}"] = np.where(RELEVANT > 0, HITS[k] / np.maximum(RELEVANT, 1), 1.0).astype(np.float32)
        out[f"precision@{k}"] = (HITS[k] / k).astype(np.float32)
        out[f"ndcg@{k}"] = NDCG[k].astype(np.float32)
    return out


@pytest.fixture(scope="module")
def gaps():
    return ranking_gaps(per_user(), RELEVANT, GROUPS, 4, (2, 3))


def test_gaps_have_every_cutoff_and_field(gaps):
    assert set(gaps) == {"@2", "@3"}
    for block in gaps.values():
        assert set(block) == {"recall_gap", "ndcg_gap", "eo_gap", "recall_by_group", "ndcg_by_group", "tpr_by_group"}
        for name in ("recall_gap", "ndcg_gap", "eo_gap"):
            assert isinstance(block[name], float) and np.isfinite(block[name])
        for name in ("recall_by_group", "ndcg_by_group", "tpr_by_group"):
            assert len(block[name]) == 4 and np.isnan(block[name][3])  # group 3 has no held-out positives


def test_recall_and_ndcg_gaps_average_users_within_groups(gaps):
    at2, at3 = gaps["@2"], gaps["@3"]
    np.testing.assert_allclose(at2["recall_by_group"][:3], [(1 / 2 + 2 / 4) / 2, (0 + 1 / 3) / 2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(at3["recall_by_group"][:3], [(1 + 2 / 4) / 2, (1 + 1 / 3) / 2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(at2["ndcg_by_group"][:3], [0.8, 0.15, 1.0], rtol=1e-6)
    np.testing.assert_allclose(at3["ndcg_by_group"][:3], [0.75, 0.375, 1.0], rtol=1e-6)
    assert at2["recall_gap"] == pytest.approx(1 - 1 / 6, rel=1e-6)
    assert at3["recall_gap"] == pytest.approx(1 - 2 / 3, rel=1e-6)
    assert at2["ndcg_gap"] == pytest.approx(0.85, rel=1e-6)
    assert at3["ndcg_gap"] == pytest.approx(0.625, rel=1e-6)


def test_eo_gap_pools_the_groups_held_out_positives(gaps):
    np.testing.assert_allclose(gaps["@2"]["tpr_by_group"][:3], [3 / 6, 1 / 4, 2 / 2])
    np.testing.assert_allclose(gaps["@3"]["tpr_by_group"][:3], [4 / 6, 2 / 4, 2 / 2])
    assert gaps["@2"]["eo_gap"] == pytest.approx(0.75)
    assert gaps["@3"]["eo_gap"] == pytest.approx(0.5)
    # pooling differs from averaging users: group 1's recall@2 is 1/6, its TPR 1/4
    assert gaps["@2"]["tpr_by_group"][1] != pytest.approx(gaps["@2"]["recall_by_group"][1])


def test_two_groups_gap_is_the_absolute_difference():
    groups = np.array([0, 1, 1])
    relevant = np.array([1, 2, 2])
    block = ranking_gaps({"recall@1": np.array([1.0, 0.5, 0.0], np.float32),
                          "ndcg@1": np.array([1.0, 1.0, 0.0], np.float32),
                          "precision@1": np.array([1.0, 1.0, 0.0], np.float32)}, relevant, groups, 2, (1,))["@1"]
    assert block["recall_gap"] == pytest.approx(0.75)
    assert block["ndcg_gap"] == pytest.approx(0.5)
    assert block["eo_gap"] == pytest.approx(1 - 1 / 4)


def test_group_rates_are_nan_for_a_group_without_positives():
    rates = group_rates(np.array([1, 2, 0]), np.array([2, 2, 0]), np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(rates[0], 3 / 4)
    assert np.isnan(rates[1]) and np.isnan(rates[2])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_eo_gap_is_the_tpr_gap_of_the_top_k_classifier_over_user_item_pairs(k):
    rng = np.random.default_rng(k)
    num_users, num_items, num_groups = 30, 12, 3
    scores = rng.normal(size=(num_users, num_items)).astype(np.float32)
    relevant = rng.random((num_users, num_items)) < 0.25
    relevant[:3] = False  # users without held-out positives
    groups = rng.integers(0, num_groups, num_users)
    metrics = {name: np.asarray(v) for name, v in ranking_metrics(jnp.asarray(scores), jnp.asarray(relevant),
                                                                   (k,)).items()}
    got = ranking_gaps(metrics, relevant.sum(axis=1), groups, num_groups, (k,))[f"@{k}"]

    top = np.argsort(-scores, axis=1)[:, :k]
    in_top = np.zeros_like(relevant)
    np.put_along_axis(in_top, top, True, axis=1)
    predicted, labels = in_top.ravel(), relevant.ravel()
    pair_groups = np.repeat(groups, num_items)
    expected = float(equal_opportunity_gap(jnp.asarray(predicted), jnp.asarray(labels), jnp.asarray(pair_groups),
                                           num_groups))
    assert got["eo_gap"] == pytest.approx(expected, abs=1e-6)
    assert expected > 0
    # and the recall gap is the gap of the per-user recall averaged within groups
    has = relevant.any(axis=1)
    recall = (in_top & relevant).sum(axis=1)[has] / relevant.sum(axis=1)[has]
    means = [recall[groups[has] == g].mean() for g in range(num_groups)]
    assert got["recall_gap"] == pytest.approx(max(means) - min(means), abs=1e-6)
