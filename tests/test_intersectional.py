"""Intersectional metrics: per-user recall per item group from known top-K lists (masking, pessimistic ties, NaN
where a user has no target in a group), the recall matrix over user groups, and CV/MIN/UCV/ICV against hand
computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.metrics.intersectional import intersectional_report, matrix_fairness, recall_matrix, user_group_recall

NAN = np.nan
ITEM_GROUP = np.array([0, 0, 1, 1, 2, 2])  # 6 items, 3 item groups
USER_GROUP = np.array([0, 0, 1, 1])  # 4 users, 2 user groups

# Item vectors are the identity, so a user's vector is their score row.
SCORES = np.array(
    [
        [6, 5, 4, 3, 2, 1],  # item 0 masked: ranking 1, 2, 3, 4, 5
        [1, 1, 1, 0.5, 0, 0],  # ties: non-relevant 1, 2 before relevant 0; then 3; then 4 before 5
        [0, 1, 2, 3, 4, 5],  # item 5 masked: ranking 4, 3, 2, 1, 0; no target in item group 2
        [3, 2, 1, 6, 5, 4],  # item 4 masked; item 3 is "masked" too but is a target, so it stays: 3, 5, 0, 1, 2
    ],
    np.float32,
)
TARGETS = np.zeros((4, 6), bool)
TARGETS[0, [1, 2, 4]] = True
TARGETS[1, [0, 3, 5]] = True
TARGETS[2, [0, 3]] = True
TARGETS[3, [0, 2, 3, 5]] = True
EXCLUDE = np.zeros((4, 6), bool)
EXCLUDE[0, 0] = EXCLUDE[2, 5] = EXCLUDE[3, 4] = EXCLUDE[3, 3] = True

# recall_uc@K for item groups c = 0, 1, 2 (hits in the group / the user's targets in the group)
EXPECTED_AT_2 = np.array(
    [
        [1, 1, 0],  # top 2 = {1, 2}
        [0, 0, 0],  # top 2 = {1, 2}: the tied relevant item 0 loses the tie
        [0, 1, NAN],  # top 2 = {4, 3}
        [0, 0.5, 1],  # top 2 = {3, 5}; targets in group 1 are {2, 3}
    ]
)
EXPECTED_AT_3 = np.array(
    [
        [1, 1, 0],  # top 3 = {1, 2, 3}
        [1, 0, 0],  # top 3 = {1, 2, 0}
        [0, 1, NAN],  # top 3 = {4, 3, 2}
        [1, 0.5, 1],  # top 3 = {3, 5, 0}
    ]
)


def dot(u, v):
    return jnp.sum(u * v, axis=-1)


def per_user(ks=(2, 3), batch_size=3):
    return user_group_recall(dot, SCORES, np.eye(6, dtype=np.float32), TARGETS, EXCLUDE, ITEM_GROUP, 3, ks,
                             batch_size=batch_size)


def test_user_group_recall_matches_known_top_k_lists():
    got = per_user()
    assert got.shape == (2, 4, 3)
    np.testing.assert_allclose(got[0], EXPECTED_AT_2)
    np.testing.assert_allclose(got[1], EXPECTED_AT_3)


def test_user_group_recall_does_not_depend_on_the_user_batch_size():
    np.testing.assert_allclose(per_user(batch_size=1), per_user(batch_size=256))


def test_recall_at_every_item_is_one_where_defined():
    got = per_user(ks=(6, 10))  # K >= I: every target is in the list
    expected = np.where(np.isnan(EXPECTED_AT_2), NAN, 1.0)
    np.testing.assert_allclose(got[0], expected)
    np.testing.assert_allclose(got[1], expected)


def test_recall_matrix_averages_over_the_users_with_targets_in_the_group():
    matrices = recall_matrix(per_user(), USER_GROUP, 2)
    assert matrices.shape == (2, 2, 3)
    # user group 1, item group 2: only user 3 has targets there (user 2's NaN is skipped, not counted as 0)
    np.testing.assert_allclose(matrices[0], [[0.5, 0.5, 0.0], [0.0, 0.75, 1.0]])
    np.testing.assert_allclose(matrices[1], [[1.0, 0.5, 0.0], [0.5, 0.75, 1.0]])


def test_recall_matrix_cell_without_users_is_nan():
    values = np.array([[0.2, NAN], [0.4, NAN], [NAN, 1.0]])  # 3 users, 2 item groups
    got = recall_matrix(values, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(got, [[0.3, NAN], [NAN, 1.0]])


def test_matrix_fairness_matches_hand_computation():
    matrix = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    got = matrix_fairness(matrix)
    # mean 0.45; squared deviations 2 * (0.35^2 + 0.25^2 + 0.15^2 + 0.05^2) / 8 = 0.0525 (population variance)
    np.testing.assert_allclose(got["cv"], np.sqrt(0.0525) / 0.45)
    np.testing.assert_allclose(got["min"], (0.1 + 0.2) / 2)  # floor(8 / 4) = 2 smallest cells
    # every column has std 0.2 and means 0.3, 0.4, 0.5, 0.6
    np.testing.assert_allclose(got["ucv"], np.mean([0.2 / 0.3, 0.2 / 0.4, 0.2 / 0.5, 0.2 / 0.6]))
    # both rows have std sqrt((0.15^2 + 0.05^2) / 2) = sqrt(0.0125), means 0.25 and 0.65
    np.testing.assert_allclose(got["icv"], np.mean([np.sqrt(0.0125) / 0.25, np.sqrt(0.0125) / 0.65]))


def test_matrix_fairness_min_uses_at_least_one_cell_and_equal_cells_have_zero_cv():
    got = matrix_fairness(np.array([[0.3, 0.1, 0.2]]))  # floor(3 / 4) = 0 -> the single smallest cell
    assert got["min"] == pytest.approx(0.1)
    assert got["icv"] == pytest.approx(np.std([0.3, 0.1, 0.2]) / 0.2)
    assert got["ucv"] == 0.0  # one user group: no user-side dispersion
    flat = matrix_fairness(np.full((2, 3), 0.4))
    assert [flat[k] for k in ("cv", "ucv", "icv")] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert flat["min"] == pytest.approx(0.4)


def test_matrix_fairness_nan_cell_makes_every_statistic_nan():
    got = matrix_fairness(np.array([[0.5, 0.5, 0.0], [0.0, 0.75, NAN]]))
    assert all(np.isnan(got[k]) for k in ("cv", "min", "ucv", "icv"))


def test_report_bundles_matrix_and_statistics_per_cut_off():
    report = intersectional_report(dot, SCORES, np.eye(6, dtype=np.float32), TARGETS, EXCLUDE, USER_GROUP,
                                   ITEM_GROUP, 2, 3, ks=(2, 3))
    assert set(report) == {"@2", "@3"}
    np.testing.assert_allclose(report["@3"]["matrix"], [[1.0, 0.5, 0.0], [0.5, 0.75, 1.0]])
    cells = np.array([1.0, 0.5, 0.0, 0.5, 0.75, 1.0])
    assert report["@3"]["cv"] == pytest.approx(np.std(cells) / np.mean(cells))
    assert report["@3"]["min"] == pytest.approx(0.0)  # floor(6 / 4) = 1 smallest cell


def test_an_all_zero_column_or_row_has_no_dispersion():
    stats = matrix_fairness(np.array([[0.0, 0.5], [0.0, 0.5]]))
    assert stats["ucv"] == 0.0 and stats["icv"] == 1.0 and stats["cv"] == 1.0 and stats["min"] == 0.0
