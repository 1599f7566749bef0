"""The soft top-K exposure gap: membership tends to the hard top-K indicator as the temperature shrinks, ignores the
scores' scale and offset and is 0 on masked items; the candidate form matches the dense form; the gap is the JS
divergence of the groups' exposure (the square of DP@K when membership is hard), 0 for groups shown the same items,
leaves out zero-weight users and empty groups, and has finite gradients that lower it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.methods.soft_exposure import (candidate_membership, exposure_gap, group_exposure, soft_exposure_gap,
                                           soft_topk_membership)
from jaxfair.metrics.exposure import topk_exposure_gaps


def random_scores(seed, users=12, items=30):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(users, items)), jnp.float32)


def test_membership_tends_to_the_hard_topk_indicator():
    scores = random_scores(0)
    exclude = jnp.zeros(scores.shape, bool).at[:, :3].set(True)
    soft = np.asarray(soft_topk_membership(scores, exclude, 5, 1e-6))
    hard = np.zeros(scores.shape)
    masked = np.where(np.asarray(exclude), -np.inf, np.asarray(scores))
    np.put_along_axis(hard, np.argsort(-masked, axis=1)[:, :5], 1.0, axis=1)
    np.testing.assert_allclose(soft, hard, atol=1e-3)
    assert np.all(soft[:, :3] == 0.0)


def test_membership_ignores_the_scores_scale_and_offset():
    scores = random_scores(1)
    exclude = jnp.zeros(scores.shape, bool)
    a = soft_topk_membership(scores, exclude, 4, 0.2)
    b = soft_topk_membership(3.0 * scores + 7.0, exclude, 4, 0.2)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # A wider sigmoid spreads membership further below the cut-off.
    wide = soft_topk_membership(scores, exclude, 4, 1.0)
    assert float(jnp.sum(wide)) > float(jnp.sum(a))


def dense_gap(membership, groups, weight, num_groups):
    items = jnp.broadcast_to(jnp.arange(membership.shape[-1]), membership.shape)
    return exposure_gap(*group_exposure(membership, items, groups, weight, num_groups, membership.shape[-1]))


def test_gap_of_hard_membership_is_the_square_of_dp_at_k():
    scores = random_scores(2, users=40, items=25)
    groups = jnp.asarray(np.arange(40) % 2)
    exclude = jnp.zeros(scores.shape, bool)
    soft = soft_topk_membership(scores, exclude, 5, 1e-5)
    gap = float(dense_gap(soft, groups, jnp.ones(40), 2))
    dp = float(topk_exposure_gaps(scores, exclude, groups, 2, (5,))["dp@5"])
    assert dp > 0.1
    np.testing.assert_allclose(gap, dp ** 2, rtol=1e-3)


def test_gap_is_zero_when_groups_are_shown_the_same_items():
    scores = random_scores(3, users=6)
    scores = jnp.concatenate([scores, scores])  # users 6..11 copy users 0..5
    groups = jnp.asarray([0] * 6 + [1] * 6)
    membership = soft_topk_membership(scores, jnp.zeros(scores.shape, bool), 5, 0.1)
    assert abs(float(dense_gap(membership, groups, jnp.ones(12), 2))) < 1e-6


def test_gap_leaves_out_zero_weight_users_and_empty_groups():
    scores = random_scores(4, users=9)
    membership = soft_topk_membership(scores, jnp.zeros(scores.shape, bool), 5, 0.1)
    groups = jnp.asarray([0, 0, 0, 1, 1, 1, 2, 2, 2])
    weight = jnp.asarray([1, 1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)  # group 2 has no weight: one pair is left
    three = float(dense_gap(membership, groups, weight, 3))
    two = float(dense_gap(membership[:6], groups[:6], jnp.ones(6), 2))
    np.testing.assert_allclose(three, two, rtol=1e-6)
    assert two > 0
    # Changing a zero-weight user changes nothing.
    moved = membership.at[7].set(1.0 - membership[7])
    np.testing.assert_allclose(float(dense_gap(moved, groups, weight, 3)), three, rtol=1e-6)


def test_gap_has_finite_gradients_and_lowering_it_moves_the_groups_together():
    scores = random_scores(5, users=20, items=30)
    groups = jnp.asarray(np.arange(20) % 2)
    exclude = jnp.zeros(scores.shape, bool).at[:, 0].set(True)

    def gap(s):
        return dense_gap(soft_topk_membership(s, exclude, 5, 0.3), groups, jnp.ones(20), 2)

    grad = jax.grad(gap)(scores)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[:, 0] == 0.0)  # a masked item gets no gradient
    stepped = scores - 0.05 * grad / jnp.max(jnp.abs(grad))
    assert float(gap(stepped)) < float(gap(scores))


@pytest.mark.parametrize("k", [1, 5])
def test_membership_sums_to_about_k_per_user(k):
    scores = random_scores(6, users=8, items=200)
    membership = soft_topk_membership(scores, jnp.zeros(scores.shape, bool), k, 0.01)
    np.testing.assert_allclose(np.asarray(jnp.sum(membership, axis=1)), k, atol=0.5)


def random_vectors(seed, users=50, items=300, dim=8, batch=()):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=batch + (users, dim)), jnp.float32),
            jnp.asarray(rng.normal(size=(items, dim)), jnp.float32),
            jnp.asarray(rng.random((users, items)) < 0.1))


def test_candidate_membership_equals_the_dense_form_on_its_candidates():
    users, items, exclude = random_vectors(7, batch=(3,))
    scores = jnp.einsum("tnd,id->tni", users, items)
    dense = np.asarray(soft_topk_membership(scores, exclude[None], 10, 0.05))
    membership, chosen = candidate_membership(users, items, exclude, 10, 0.05, 20)
    assert membership.shape == chosen.shape == (3, 50, 20)
    np.testing.assert_allclose(np.asarray(membership), np.take_along_axis(dense, np.asarray(chosen), axis=-1),
                               rtol=2e-3, atol=1e-5)
    assert not np.any(np.take_along_axis(np.asarray(exclude)[None], np.asarray(chosen), axis=-1))
    # What the dropped items would add is small: each user's dense mass outside the candidates.
    outside = dense.sum(-1) - np.asarray(membership).sum(-1)
    assert np.all(outside >= -1e-4) and outside.max() < 0.3, outside.max()


def test_candidate_gap_is_close_to_the_dense_gap_and_lowered_by_its_gradient():
    users, items, exclude = random_vectors(8, users=60)
    groups = jnp.asarray(np.arange(60) % 2)
    weight = jnp.ones(60)
    dense = float(dense_gap(soft_topk_membership(users @ items.T, exclude, 10, 0.05), groups, weight, 2))
    gap = lambda u: soft_exposure_gap(u, items, exclude, groups, weight, 2, 10, 0.05, 20)
    assert dense > 0.05
    np.testing.assert_allclose(float(gap(users)), dense, rtol=0.05)
    grad = jax.grad(gap)(users)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert float(gap(users - 0.5 * grad / jnp.max(jnp.abs(grad)))) < float(gap(users))
