"""ITFR: per-group BPR equals a loop over the groups, the scatter-based group gradients equal one ``jax.grad`` per
group (at theta and at theta + eps_g, for a table lookup and a propagated nonlinear embedding map), SAM radii, the
collaborative exponents and the weight update against hand computations (absent groups keep their weight), the step
applies the optimizer at the point it started from with the direction sum_g q_g grad~_g, missing groups leave their
statistics alone, the jitted epoch compiles once, and bad configs are rejected."""

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxfair.backbones.lightgcn import graph_context, propagate
from jaxfair.methods import itfr
from jaxfair.training import optim
from jaxfair.training.step import make_epoch_fn
from jaxfair.training.trainer import TrainConfig

U, I, D = 6, 8, 3
A, C = 2, 2
G = A * C


def identity_embed(params):
    return params["user"], params["item"]


def _graph():
    rng = np.random.default_rng(7)
    users = np.repeat(np.arange(U), 3)
    items = np.concatenate([rng.choice(I, 3, replace=False) for _ in range(U)])
    split = types.SimpleNamespace(train_users=users, train_items=items, num_users=U, num_items=I)
    return graph_context(split)


GRAPH = _graph()


def propagated_embed(params):
    """LightGCN propagation (every embedding mixes its graph neighbours') followed by a shared nonlinear map with its
    own parameter, so the embedding map is neither linear nor a table lookup."""
    users, items = propagate(params["user"], params["item"], GRAPH, 2)
    return jnp.tanh(users @ params["mix"]), jnp.tanh(items @ params["mix"].T)


EMBEDS = {"identity": identity_embed, "propagated": propagated_embed}


def make_params(seed, embed_name="identity"):
    rng = np.random.default_rng(seed)
    params = {
        "user": jnp.asarray(rng.normal(scale=0.5, size=(U, D)), jnp.float32),
        "item": jnp.asarray(rng.normal(scale=0.5, size=(I, D)), jnp.float32),
    }
    if embed_name == "propagated":
        params["mix"] = jnp.asarray(np.eye(D) + rng.normal(scale=0.3, size=(D, D)), jnp.float32)
    return params


def make_batch(seed, present=tuple(range(G)), rows=14, num_padding=3, padding_group=None):
    """Rows cycle through the ``present`` groups (each gets at least one weighted row); the last ``num_padding``
    rows have weight 0 and group ``padding_group`` (default: the first present one)."""
    rng = np.random.default_rng(seed)
    group = np.array([present[k % len(present)] for k in range(rows)], np.int32)
    weight = np.ones(rows, np.float32)
    if num_padding:
        weight[-num_padding:] = 0.0
        group[-num_padding:] = present[0] if padding_group is None else padding_group
    return {
        "user": jnp.asarray(rng.integers(0, U, rows), jnp.int32),
        "pos": jnp.asarray(rng.integers(0, I, rows), jnp.int32),
        "neg": jnp.asarray(rng.integers(0, I, rows), jnp.int32),
        "group": jnp.asarray(group),
        "weight": jnp.asarray(weight),
    }


def config(**overrides):
    base = dict(tau=0.5, rho=0.05, eta=0.5, gamma=0.5, weight_floor=1e-4,
                train=TrainConfig(learning_rate=1e-2, weight_decay=1e-2))
    base.update(overrides)
    return itfr.ItfrConfig(**base)


TX = optim.make(config().train)  # Adam with coupled L2, shared so that jitted steps are reused


def adam(learning_rate):
    """Plain Adam from a loop section without weight decay."""
    return optim.make(TrainConfig(learning_rate=learning_rate))


def itfr_epoch_fn(step):
    """The trainer's jitted epoch with ITFR's end-of-epoch roll of its statistics."""
    return make_epoch_fn(step, end_epoch=itfr.end_epoch)


@functools.lru_cache(maxsize=None)
def jitted_step(cfg):
    """One compiled step per config (the tests share them to stay fast)."""
    assert cfg.train.weight_decay == 1e-2
    return jax.jit(itfr.make_train_step(identity_embed, G, cfg, TX))


# --------------------------------------------------------------------------------------------- numpy references


def np_cos_score(u, v, tau):
    return np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1)) / tau


def reference_group_grads(params, batch, embed, score, rho):
    """One ``jax.grad`` of ``group_losses(...)[0][g]`` per group ``g`` (vmapped over ``g``): ``(L, grads, L~,
    grads~)`` as float64 numpy, the SAM point ``theta + rho grad_g / ||grad_g||`` built from the reference gradient."""
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def compute(flat, batch):
        def loss_g(f, g):
            return itfr.group_losses(unravel(f), batch, embed, score, G)[0][g]

        groups = jnp.arange(G)
        losses, grads = jax.vmap(lambda g: jax.value_and_grad(loss_g)(flat, g))(groups)
        if rho is None:
            return losses, grads, losses, grads
        norms = jnp.sqrt(jnp.sum(grads**2, axis=1, keepdims=True))
        points = flat[None] + rho * grads / (norms + 1e-12)
        sa_losses, sa_grads = jax.vmap(jax.value_and_grad(loss_g))(points, groups)
        return losses, grads, sa_losses, sa_grads

    return tuple(np.asarray(x, np.float64) for x in compute(flat, batch))


def np_collaborative_exponents(losses, grads, prev_grads, prev_loss, first_epoch, eta, gamma):
    """e_i = eta sum_j M_ij S_ij p_j, written out entry by entry."""
    n = len(losses)
    p = losses**gamma / np.sum(losses**gamma)
    out = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if i == j:
                s, m = 1.0, losses[i]
            elif first_epoch:
                s, m = 0.0, np.sqrt(losses[i] * losses[j])
            else:
                denom = np.linalg.norm(grads[i]) * np.linalg.norm(prev_grads[j])
                s = float(grads[i] @ prev_grads[j]) / denom if denom > 0 else 0.0
                m = np.sqrt(losses[i] * prev_loss[j])
            out[i] += m * s * p[j]
    return eta * out


def np_update_weights(weights, exponents, present, floor):
    weights = np.asarray(weights, np.float64)
    if not present.any():
        return np.maximum(weights, floor)
    new = weights.copy()
    idx = np.nonzero(present)[0]
    grown = weights[idx] * np.exp(exponents[idx] - exponents[idx].max())
    new[idx] = weights[idx].sum() * grown / grown.sum()
    return np.maximum(new, floor)


# ------------------------------------------------------------------------------------------------ group losses


def test_group_losses_equal_a_loop_over_groups_ignoring_padding_and_absent_groups():
    params, tau = make_params(0), 0.5
    batch = make_batch(1, present=(0, 2, 3), padding_group=1)  # group 1: only padding rows
    losses, counts = itfr.group_losses(params, batch, identity_embed, itfr.make_score(config(tau=tau)), G)

    u = np.asarray(params["user"], np.float64)[np.asarray(batch["user"])]
    p = np.asarray(params["item"], np.float64)[np.asarray(batch["pos"])]
    n = np.asarray(params["item"], np.float64)[np.asarray(batch["neg"])]
    rows = np.log1p(np.exp(-(np_cos_score(u, p, tau) - np_cos_score(u, n, tau))))
    group, weight = np.asarray(batch["group"]), np.asarray(batch["weight"])
    for g in range(G):
        members = [r for r in range(len(rows)) if group[r] == g and weight[r] > 0]
        assert counts[g] == len(members)
        expected = np.mean(rows[members]) if members else 0.0
        np.testing.assert_allclose(losses[g], expected, rtol=1e-5, atol=1e-7)
    assert counts[1] == 0 and losses[1] == 0.0


def test_inner_product_score_when_normalization_is_off():
    score = itfr.make_score(config(score_normalization=False))
    u, v = jnp.array([[3.0, 4.0]]), jnp.array([[1.0, 2.0]])
    np.testing.assert_allclose(score(u, v), [11.0])
    np.testing.assert_allclose(itfr.make_score(config(tau=0.5))(u, v), [11.0 / (5 * np.sqrt(5)) / 0.5], rtol=1e-6)


# --------------------------------------------------------------------------------------------- group gradients


@pytest.mark.parametrize("embed_name", list(EMBEDS))
def test_group_gradients_equal_one_jax_grad_per_group_at_theta_and_at_theta_plus_eps(embed_name):
    embed, rho = EMBEDS[embed_name], 0.05
    params = make_params(2, embed_name)
    batch = make_batch(3, present=(0, 1, 3), padding_group=2)  # group 2 absent
    score = itfr.make_score(config())
    fn = jax.jit(lambda p, b: itfr.group_gradients(p, b, embed, score, G, rho))
    losses, counts, grads, sa_losses, sa_grads = map(np.asarray, fn(params, batch))
    ref_l, ref_g, ref_sal, ref_sag = reference_group_grads(params, batch, embed, score, rho)

    np.testing.assert_array_equal(counts, [4, 4, 0, 3])
    np.testing.assert_allclose(losses, ref_l, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads, ref_g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sa_losses, ref_sal, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sa_grads, ref_sag, rtol=1e-4, atol=1e-6)
    # SAM changes something (the check above is not vacuous) and the absent group has nothing at all.
    assert np.all(sa_losses[[0, 1, 3]] > losses[[0, 1, 3]])
    assert np.all(grads[2] == 0) and np.all(sa_grads[2] == 0) and sa_losses[2] == 0


def test_perturbations_have_norm_rho_and_zero_gradient_gives_zero():
    grads = jnp.asarray([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1e-3, -2e-3, 5e-4], [-7.0, 0.5, 2.0]], jnp.float32)
    eps = np.asarray(itfr.perturbations(grads, 0.02))
    norms = np.linalg.norm(eps, axis=1)
    np.testing.assert_allclose(norms[[0, 2, 3]], 0.02, rtol=1e-5)
    assert np.all(eps[1] == 0)
    np.testing.assert_allclose(eps[0], [0.012, 0.016, 0.0], rtol=1e-5)  # along the gradient


# ------------------------------------------------------------------------------------- exponents and weights


@pytest.mark.parametrize("first_epoch", [True, False])
def test_collaborative_exponents_match_hand_computation(first_epoch):
    losses = np.array([0.7, 0.2, 1.1])
    grads = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]])
    prev_grads = np.array([[0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    prev_loss = np.array([0.5, 0.9, 0.3])
    eta, gamma = 0.05, 0.5
    got = itfr.collaborative_exponents(
        jnp.asarray(losses, jnp.float32), jnp.asarray(grads, jnp.float32), jnp.asarray(prev_grads, jnp.float32),
        jnp.asarray(prev_loss, jnp.float32), jnp.asarray(first_epoch), eta, gamma,
    )
    expected = np_collaborative_exponents(losses, grads, prev_grads, prev_loss, first_epoch, eta, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if first_epoch:  # S = I: each group pushed by its own loss only
        p = np.sqrt(losses) / np.sum(np.sqrt(losses))
        np.testing.assert_allclose(got, eta * losses * p, rtol=1e-5)
    else:  # e.g. e_0 by hand: S_01 = cos([1,0],[1,1]), S_02 = cos([1,0],[3,0]) = 1
        p = np.sqrt(losses) / np.sum(np.sqrt(losses))
        e0 = eta * (0.7 * p[0] + np.sqrt(0.7 * 0.9) * (1 / np.sqrt(2)) * p[1] + np.sqrt(0.7 * 0.3) * 1.0 * p[2])
        np.testing.assert_allclose(got[0], e0, rtol=1e-5)


def test_update_weights_renormalises_present_groups_to_their_mass_and_keeps_absent_ones_exactly():
    weights = jnp.asarray([0.2, 0.3, 0.5], jnp.float32)
    exponents = jnp.asarray([1.0, 2.0, 0.5], jnp.float32)
    present = jnp.asarray([True, False, True])
    got = np.asarray(itfr.update_weights(weights, exponents, present, 1e-5))
    grown = np.array([0.2 * np.exp(0.0), 0.5 * np.exp(-0.5)])
    np.testing.assert_allclose(got[[0, 2]], 0.7 * grown / grown.sum(), rtol=1e-6)
    assert got[1] == np.float32(0.3)  # exactly
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-6)
    assert got[0] > 0.2 and got[2] < 0.5  # the larger exponent gained weight


def test_update_weights_all_present_is_the_groupdro_softmax_update():
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    exponents = np.array([0.3, -1.0, 2.0, 0.0])
    got = itfr.update_weights(jnp.asarray(weights, jnp.float32), jnp.asarray(exponents, jnp.float32),
                              jnp.ones(4, bool), 1e-5)
    expected = weights * np.exp(exponents) / np.sum(weights * np.exp(exponents))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_update_weights_floor_and_no_group_present():
    weights = jnp.asarray([0.5, 0.5], jnp.float32)
    got = itfr.update_weights(weights, jnp.asarray([0.0, -50.0]), jnp.asarray([True, True]), 1e-3)
    np.testing.assert_allclose(got, [1.0, 1e-3], rtol=1e-6)  # exp(-50) is below the floor
    unchanged = itfr.update_weights(weights, jnp.asarray([3.0, 1.0]), jnp.asarray([False, False]), 1e-3)
    np.testing.assert_array_equal(unchanged, weights)
    assert np.all(np.isfinite(unchanged))


# ------------------------------------------------------------------------------------------------------ steps

STEP_CASES = {
    "itfr_first_epoch": dict(balance="collaborative", sam=True, epoch=0),
    "itfr_later_epoch": dict(balance="collaborative", sam=True, epoch=1),
    "itfr_no_sam_no_norm": dict(balance="collaborative", sam=False, score_normalization=False, epoch=1),
    "itfr_no_balance": dict(balance="groupdro", sam=True, epoch=1),
    "groupdro": dict(balance="groupdro", sam=False, epoch=1),
    "bpr": dict(balance="none", sam=False, epoch=0),
}
STEP_PARAMS, STEP_BATCH = make_params(10), make_batch(11)


@functools.lru_cache(maxsize=None)
def step_reference(sam, score_normalization):
    cfg = config(score_normalization=score_normalization)
    return reference_group_grads(STEP_PARAMS, STEP_BATCH, identity_embed, itfr.make_score(cfg),
                                 cfg.rho if sam else None)


def later_epoch_state(state, seed):
    """A state as after one epoch: non-uniform weights, a previous-epoch gradient and loss per group, and an Adam
    state that has seen one update (so the next update depends on the gradient's size, not only its sign)."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, G)
    seen = jax.tree.map(lambda x: jnp.asarray(rng.normal(scale=0.1, size=x.shape), jnp.float32), state.params)
    return state._replace(
        opt_state=TX.update(seen, state.opt_state, state.params)[1],
        weights=jnp.asarray(weights / weights.sum(), jnp.float32),
        prev_grads=jnp.asarray(rng.normal(size=state.prev_grads.shape), jnp.float32),
        prev_loss=jnp.asarray(rng.uniform(0.3, 1.0, G), jnp.float32),
        epoch=jnp.asarray(1, jnp.int32),
    )


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_applies_the_optimizer_at_theta_with_direction_sum_of_weighted_group_gradients(case):
    spec = dict(STEP_CASES[case])
    epoch = spec.pop("epoch")
    cfg = config(**spec)
    tx, params, batch = TX, STEP_PARAMS, STEP_BATCH
    state = itfr.init_state(params, tx, G)
    if epoch:
        state = later_epoch_state(state, 12)
    before = jax.tree.map(np.array, state)
    new_state, metrics = jitted_step(cfg)(state, batch, jax.random.key(0))

    losses, grads, sa_losses, sa_grads = step_reference(cfg.sam, cfg.score_normalization)
    counts = np.bincount(np.asarray(batch["group"])[np.asarray(batch["weight"]) > 0], minlength=G)
    present = counts > 0
    old_q = np.asarray(before.weights, np.float64)
    if cfg.balance == "collaborative":
        exponents = np_collaborative_exponents(sa_losses, sa_grads, before.prev_grads, before.prev_loss, epoch == 0,
                                               cfg.eta, cfg.gamma)
        q = np_update_weights(old_q, exponents, present, cfg.weight_floor)
    elif cfg.balance == "groupdro":
        q = np_update_weights(old_q, cfg.eta * sa_losses, present, cfg.weight_floor)
    else:
        q = old_q
    coefficients = q if cfg.balance != "none" else counts / counts.sum()
    np.testing.assert_allclose(new_state.weights, q, rtol=1e-5)

    flat, unravel = ravel_pytree(params)
    if cfg.sam:  # the check below tells SAM gradients from point gradients
        assert np.abs(coefficients @ (sa_grads - grads)).max() > 1e-3 * np.abs(coefficients @ grads).max()
    direction = unravel(jnp.asarray(coefficients @ sa_grads, jnp.float32))
    updates, opt_state = tx.update(direction, before.opt_state, params)
    expected = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(new_state.opt_state, opt_state, rtol=1e-5, atol=1e-7)
    # The input state is untouched (no SAM perturbation left behind).
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), before)
    assert int(new_state.step) == 1 and int(new_state.epoch) == epoch

    np.testing.assert_allclose(metrics["loss"], np.sum(counts * losses) / counts.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["objective"], np.sum(q * sa_losses), rtol=1e-5)
    np.testing.assert_allclose([metrics["weight_min"], metrics["weight_max"]], [q.min(), q.max()], rtol=1e-5)
    if cfg.needs_group_gradients:
        np.testing.assert_allclose(new_state.loss_sum, counts * sa_losses, rtol=1e-5)
        np.testing.assert_array_equal(new_state.count_sum, counts)
    if cfg.balance == "collaborative":  # point gradients, not the perturbed ones
        np.testing.assert_allclose(new_state.grad_sum, counts[:, None] * grads, rtol=1e-4, atol=1e-6)


def test_groupdro_weights_after_one_step_follow_the_exponentiated_losses():
    cfg = config(balance="groupdro", sam=False)
    params, batch = make_params(20), make_batch(21)
    q = np.array([0.4, 0.3, 0.2, 0.1])
    state = itfr.init_state(params, TX, G)._replace(weights=jnp.asarray(q, jnp.float32))
    new_state, _ = jitted_step(cfg)(state, batch, jax.random.key(0))
    losses = np.asarray(itfr.group_losses(params, batch, identity_embed, itfr.make_score(cfg), G)[0], np.float64)
    grown = q * np.exp(cfg.eta * losses - np.max(cfg.eta * losses))
    np.testing.assert_allclose(new_state.weights, grown / grown.sum(), rtol=1e-5)
    assert np.argmax(np.asarray(new_state.weights) / q) == np.argmax(losses)


@pytest.mark.parametrize("balance,sam", [("collaborative", True), ("groupdro", False)])
def test_batch_missing_groups_leaves_their_weights_and_statistics_untouched(balance, sam):
    cfg = config(balance=balance, sam=sam)
    params = make_params(30)
    batch = make_batch(31, present=(0, 2), padding_group=3)  # groups 1 and 3 absent (3 only on padding rows)
    state = later_epoch_state(itfr.init_state(params, TX, G), 32)
    rng = np.random.default_rng(33)
    state = state._replace(
        grad_sum=jnp.asarray(rng.normal(size=state.grad_sum.shape), jnp.float32),
        loss_sum=jnp.asarray([1.0, 2.0, 3.0, 4.0], jnp.float32),
        count_sum=jnp.asarray([5.0, 6.0, 7.0, 8.0], jnp.float32),
    )
    new_state, metrics = jitted_step(cfg)(state, batch, jax.random.key(0))
    absent = np.array([1, 3])
    np.testing.assert_array_equal(np.asarray(new_state.weights)[absent], np.asarray(state.weights)[absent])
    np.testing.assert_allclose(np.sum(np.asarray(new_state.weights)[[0, 2]]), np.sum(np.asarray(state.weights)[[0, 2]]),
                               rtol=1e-6)
    assert not np.allclose(new_state.weights, state.weights)  # the present groups did move
    np.testing.assert_array_equal(np.asarray(new_state.loss_sum)[absent], [2.0, 4.0])
    np.testing.assert_array_equal(np.asarray(new_state.count_sum)[absent], [6.0, 8.0])
    np.testing.assert_array_equal(np.asarray(new_state.grad_sum)[absent], np.asarray(state.grad_sum)[absent])
    if cfg.needs_group_gradients:
        np.testing.assert_array_equal(np.asarray(new_state.count_sum)[[0, 2]], [5.0 + 6, 7.0 + 5])
    for leaf in jax.tree.leaves((new_state, metrics)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def test_batch_with_no_weighted_rows_changes_no_weight():
    cfg = config(balance="collaborative", sam=True)
    state = later_epoch_state(itfr.init_state(make_params(40), TX, G), 41)
    batch = make_batch(42)
    batch["weight"] = jnp.zeros_like(batch["weight"])
    new_state, metrics = jitted_step(cfg)(state, batch, jax.random.key(0))
    np.testing.assert_array_equal(new_state.weights, state.weights)
    np.testing.assert_array_equal(new_state.count_sum, state.count_sum)
    for leaf in jax.tree.leaves((new_state, metrics)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def test_end_epoch_rolls_statistics_and_keeps_prev_loss_of_unseen_groups():
    tx = adam(1e-2)
    state = itfr.init_state(make_params(50), tx, G)
    grad_sum = jnp.asarray(np.random.default_rng(0).normal(size=state.grad_sum.shape), jnp.float32)
    state = state._replace(
        grad_sum=grad_sum,
        loss_sum=jnp.asarray([2.0, 0.0, 6.0, 0.0], jnp.float32),
        count_sum=jnp.asarray([4.0, 0.0, 3.0, 0.0], jnp.float32),
        prev_loss=jnp.asarray([9.0, 0.7, 9.0, 0.4], jnp.float32),
        epoch=jnp.asarray(2, jnp.int32),
    )
    rolled = itfr.end_epoch(state)
    np.testing.assert_allclose(rolled.prev_loss, [0.5, 0.7, 2.0, 0.4])
    np.testing.assert_array_equal(rolled.prev_grads, grad_sum)
    assert not np.any(rolled.grad_sum) and not np.any(rolled.loss_sum) and not np.any(rolled.count_sum)
    assert int(rolled.epoch) == 3


# ------------------------------------------------------------------------------------------------------ epochs


def toy_rows(seed=60):
    rng = np.random.default_rng(seed)
    positives = rng.random((U, I)) < 0.35
    positives[np.arange(U), np.arange(U) % I] = True  # everyone has a positive
    positives[:, -1] = False  # and a free negative
    users, items = np.nonzero(positives)
    user_group, item_group = np.arange(U) % A, np.arange(I) % C
    groups = (user_group[users] * C + item_group[items]).astype(np.int32)
    return users, items, groups, positives


def test_epoch_fn_compiles_once_and_reports_finite_metrics_and_state_shapes():
    cfg = config()
    tx = adam(1e-2)
    params = make_params(61)
    traces = {"n": 0}
    step = itfr.make_train_step(identity_embed, G, cfg, tx)

    def counted(state, batch, key):
        traces["n"] += 1
        return step(state, batch, key)

    epoch_fn = itfr_epoch_fn(chex.assert_max_traces(counted, n=1))
    users, items, groups, positives = toy_rows()
    state = itfr.init_state(params, tx, G)
    for epoch in range(2):
        batches = itfr.epoch_batches(users, items, groups, positives, np.random.default_rng(epoch), 8)
        state, metrics = epoch_fn(state, batches, jax.random.key(epoch))
        assert set(metrics) == {"loss", "objective", "weight_min", "weight_max"}
        assert all(np.isfinite(float(v)) and np.shape(v) == () for v in metrics.values())
    assert traces["n"] == 1
    num_batches = batches["user"].shape[0]
    size = ravel_pytree(params)[0].shape[0]
    assert size == (U + I) * D
    assert int(state.step) == 2 * num_batches and int(state.epoch) == 2
    assert state.weights.shape == (G,) and state.weights.dtype == jnp.float32
    assert state.grad_sum.shape == state.prev_grads.shape == (G, size)
    assert state.loss_sum.shape == state.count_sum.shape == state.prev_loss.shape == (G,)
    np.testing.assert_allclose(np.sum(state.weights), 1.0, rtol=1e-5)
    assert np.any(state.prev_grads) and np.all(state.prev_loss > 0)  # every group had rows in the epoch
    assert not np.any(state.count_sum)  # cleared by end_epoch


def test_epoch_batches_stack_rows_with_groups_and_padding_and_negatives_avoid_positives():
    users, items, groups, positives = toy_rows()
    batches = itfr.epoch_batches(users, items, groups, positives, np.random.default_rng(0), 8)
    num_batches = -(-len(users) // 8)
    assert set(batches) == {"user", "pos", "neg", "group", "weight"}
    assert all(v.shape == (num_batches, 8) for v in batches.values())
    real = batches["weight"].ravel() > 0
    assert real.sum() == len(users)
    u, p, g = batches["user"].ravel()[real], batches["pos"].ravel()[real], batches["group"].ravel()[real]
    assert sorted(zip(u, p, g)) == sorted(zip(users, items, groups))
    assert not positives[u, batches["neg"].ravel()[real]].any()


def test_plain_bpr_step_reduces_the_bpr_loss():
    cfg = config(balance="none", sam=False, tau=0.2)
    tx = adam(5e-2)
    epoch_fn = itfr_epoch_fn(itfr.make_train_step(identity_embed, G, cfg, tx))
    users, items, groups, positives = toy_rows()
    batches = itfr.epoch_batches(users, items, groups, positives, np.random.default_rng(0), 8)
    state = itfr.init_state(make_params(70), tx, G)
    flat_batch = jax.tree.map(lambda x: x.reshape(-1), batches)

    def full_loss(params):
        losses, counts = itfr.group_losses(params, flat_batch, identity_embed, itfr.make_score(cfg), G)
        return float(jnp.sum(losses * counts) / jnp.sum(counts))

    start = full_loss(state.params)
    for epoch in range(8):
        state, _ = epoch_fn(state, batches, jax.random.key(epoch))
    assert full_loss(state.params) < 0.5 * start
    np.testing.assert_array_equal(state.weights, np.full(G, 1 / G, np.float32))  # "none" keeps no weights


# ------------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"balance": "dro"}, "balance must be one of"),
        ({"tau": 0.0}, "tau must be positive"),
        ({"tau": -0.2}, "tau must be positive"),
        ({"rho": 0.0}, "rho must be positive"),
        ({"item_genres": ()}, "item_genres"),
        ({"weight_floor": 1.0}, "weight_floor must be below 1"),
        ({"train": {"weight_decay": -1e-3}}, "weight_decay"),
    ],
)
def test_config_rejects_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):  # a "train" entry holds the fields of the [itfr.train] section
        itfr.ItfrConfig(**{k: TrainConfig(**v) if k == "train" else v for k, v in overrides.items()})


def test_group_gradients_are_needed_for_sam_or_collaborative_balance_only():
    assert itfr.ItfrConfig().needs_group_gradients
    assert itfr.ItfrConfig(sam=False).needs_group_gradients
    assert itfr.ItfrConfig(balance="groupdro").needs_group_gradients
    assert not itfr.ItfrConfig(balance="groupdro", sam=False).needs_group_gradients
    assert not itfr.ItfrConfig(balance="none", sam=False).needs_group_gradients
