"""Fairness-regularised MF: the squared gap of the groups' mean predicted preferences against a hand computation
(padding rows and absent groups left out), and the loss as the backbone's BPR plus gamma times that penalty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.backbones import make_backbone
from jaxfair.methods import fair_mf


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


POS = np.array([2.0, -1.0, 0.5, 3.0, 0.0, 9.0])
NEG = np.array([-2.0, 0.5, 1.0, -1.0, 2.0, 9.0])
GROUPS = np.array([0, 1, 0, 1, 2, 2], np.int32)


_penalty = jax.jit(fair_mf.score_gap_penalty, static_argnames="num_groups")


def penalty(pos, neg, groups, weight, num_groups):
    return float(_penalty(jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32), jnp.asarray(groups, jnp.int32),
                          jnp.asarray(weight, jnp.float32), num_groups=num_groups))


def test_two_groups_penalty_is_the_squared_gap_of_the_weighted_mean_preferences():
    weight = np.array([1.0, 2.0, 0.5, 1.0, 0.0, 0.0])  # rows 4, 5 (group 2) are padding
    m0 = (sigmoid(2.0) + sigmoid(-2.0) + 0.5 * (sigmoid(0.5) + sigmoid(1.0))) / 3.0
    m1 = (2.0 * (sigmoid(-1.0) + sigmoid(0.5)) + sigmoid(3.0) + sigmoid(-1.0)) / 6.0
    assert penalty(POS, NEG, GROUPS, weight, 3) == pytest.approx((m0 - m1) ** 2, rel=1e-5)
    assert penalty(POS, NEG, GROUPS, weight, 3) > 1e-4


def test_three_groups_penalty_is_the_squared_range():
    weight = np.ones(6)
    means = [np.mean(sigmoid([POS[r] for r in rows] + [NEG[r] for r in rows])) for rows in ([0, 2], [1, 3], [4, 5])]
    assert penalty(POS, NEG, GROUPS, weight, 3) == pytest.approx((max(means) - min(means)) ** 2, rel=1e-5)


def test_padding_rows_do_not_change_the_penalty():
    weight = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    base = penalty(POS, NEG, GROUPS, weight, 3)
    assert penalty(POS, NEG + np.array([0, 0, 0, 0, 50.0, -50.0]), GROUPS, weight, 3) == pytest.approx(base, rel=1e-6)
    assert penalty(POS, NEG, GROUPS, weight, 3) == pytest.approx(penalty(POS[:4], NEG[:4], GROUPS[:4], np.ones(4), 3),
                                                                rel=1e-6)


def test_a_single_present_group_gives_no_penalty():
    weight = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # only group 0 weighted
    assert penalty(POS, NEG, GROUPS, weight, 3) == 0.0
    assert penalty(POS, NEG, GROUPS, np.zeros(6), 3) == 0.0


def test_penalty_is_differentiable_and_pulls_the_groups_together():
    weight = jnp.ones(4)
    groups = jnp.array([0, 0, 1, 1], jnp.int32)
    pos, neg = jnp.array([1.0, 2.0, -1.0, 0.0]), jnp.array([0.5, 0.0, -2.0, -1.0])
    grad = jax.jit(jax.grad(lambda p: fair_mf.score_gap_penalty(p, neg, groups, weight, 2)))(pos)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[:2] > 0) and np.all(grad[2:] < 0)  # lower the higher group, raise the lower one


# ------------------------------------------------------------------------------------------------------ the loss


U, I = 5, 6
USER_GROUPS = np.array([0, 1, 0, 1, 1], np.int32)


@pytest.fixture(scope="module")
def pmf():
    backbone, _ = make_backbone("pmf", {"dim": 4, "l2": 0.01})
    rng = np.random.default_rng(0)
    params = {"user": jnp.asarray(rng.normal(size=(U, 4)), jnp.float32),
              "item": jnp.asarray(rng.normal(size=(I, 4)), jnp.float32)}
    batch = {"user": jnp.array([0, 1, 2, 3, 4, 0], jnp.int32), "pos": jnp.array([1, 2, 3, 4, 5, 0], jnp.int32),
             "neg": jnp.array([0, 5, 1, 2, 3, 4], jnp.int32), "weight": jnp.array([1, 1, 1, 1, 1, 0], jnp.float32)}
    return backbone, params, batch


def test_loss_with_gamma_zero_is_the_backbones_loss(pmf):
    backbone, params, batch = pmf
    loss = jax.jit(fair_mf.make_loss(backbone, {}, USER_GROUPS, 2, 0.0))
    value, metrics = loss(params, batch, jax.random.key(0))
    base, base_metrics = jax.jit(backbone.loss)(params, {}, batch, jax.random.key(0))
    assert float(value) == pytest.approx(float(base), rel=1e-6)
    assert float(metrics["bpr"]) == pytest.approx(float(base), rel=1e-6)
    assert float(metrics["reg"]) == pytest.approx(float(base_metrics["reg"]), rel=1e-6)
    assert float(metrics["score_gap_sq"]) > 0  # measured even when it is not penalised


def test_loss_adds_gamma_times_the_hand_computed_gap(pmf):
    backbone, params, batch = pmf
    gamma = 3.0
    value, metrics = jax.jit(fair_mf.make_loss(backbone, {}, USER_GROUPS, 2, gamma))(params, batch, jax.random.key(0))
    base, _ = jax.jit(backbone.loss)(params, {}, batch, jax.random.key(0))

    user, item = np.asarray(params["user"], np.float64), np.asarray(params["item"], np.float64)
    rows = np.arange(5)  # the weighted rows
    u, p, n = (np.asarray(batch[k])[rows] for k in ("user", "pos", "neg"))
    pos_pref, neg_pref = sigmoid(np.sum(user[u] * item[p], 1)), sigmoid(np.sum(user[u] * item[n], 1))
    g = USER_GROUPS[u]
    means = [np.mean(np.concatenate([pos_pref[g == k], neg_pref[g == k]])) for k in (0, 1)]
    gap_sq = (means[0] - means[1]) ** 2
    assert float(metrics["score_gap_sq"]) == pytest.approx(gap_sq, rel=1e-4)
    assert float(value) == pytest.approx(float(base) + gamma * gap_sq, rel=1e-5)
    assert gamma * gap_sq > 1e-3 * float(base)  # the test can tell the two apart


def test_gamma_moves_the_gradient_towards_closing_the_gap(pmf):
    backbone, params, batch = pmf

    @jax.jit
    def gradients(params):
        def value(gamma, output):
            loss = fair_mf.make_loss(backbone, {}, USER_GROUPS, 2, gamma)
            return jax.grad(lambda p: output(loss(p, batch, None)))(params)

        return (value(0.0, lambda out: out[0]), value(10.0, lambda out: out[0]),
                value(1.0, lambda out: out[1]["score_gap_sq"]))

    plain, fair, penalty_grad = gradients(params)
    for name in ("user", "item"):
        np.testing.assert_allclose(fair[name] - plain[name], 10.0 * penalty_grad[name], rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(penalty_grad["user"]).max()) > 0
