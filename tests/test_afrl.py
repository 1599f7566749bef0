"""AFRL: each loss against a hand computation, players move only by their own update, the requirement removes z_i,
shapes/finiteness/single compilation, and an end-to-end run in which a planted attribute stops leaking."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.methods import adversaries, afrl
from jaxfair.methods.requirements import all_requirements, requirement_name
from jaxfair.training import optim
from jaxfair.training.trainer import TrainConfig, tree_equal

from references import np_between_class_share, np_linear_share

M, D, B = 3, 4, 5
CLASSES = (2, 3, 4)


def linear_stack(weights):
    """A stack of one-layer heads/encoders with the given weight matrices and zero bias."""
    w = jnp.stack([jnp.asarray(x, jnp.float32) for x in weights])
    return [{"w": w, "b": jnp.zeros((w.shape[0], w.shape[2]))}]


def numpy_nll(logits, label, num_classes):
    logits = logits[:num_classes]
    logp = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
    return -logp[label]


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(B, D)).astype(np.float32)
    labels = np.stack([rng.integers(0, c, B) for c in CLASSES], axis=1).astype(np.int32)
    weight = np.array([1, 1, 0, 1, 1], np.float32)  # user 2 is withheld
    head_w = [rng.normal(size=(D, max(CLASSES))) for _ in range(M)]
    mask = jnp.asarray(adversaries.class_mask(CLASSES))
    return u, labels, weight, head_w, mask


def hand_classification(z, labels, weight, head_w):
    """mean_u sum_i -log softmax(z_i W_i)[a_i] over the users with weight 1."""
    per_user = np.zeros(B)
    for i, c in enumerate(CLASSES):
        for b in range(B):
            per_user[b] += numpy_nll(z[i][b] @ head_w[i], labels[b, i], c)
    return np.sum(per_user * weight) / weight.sum()


def test_class_mask_marks_each_attributes_classes():
    assert adversaries.class_mask(CLASSES).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_classifier_loss_eq10_matches_hand_computation(toy):
    u, labels, weight, head_w, mask = toy
    z = np.stack([u, 2 * u, -u])
    got = adversaries.classifier_loss(linear_stack(head_w), jnp.asarray(z), labels, weight, mask)
    np.testing.assert_allclose(got, hand_classification(z, labels, weight, head_w), rtol=1e-5)


def test_encoder_loss_eq13_is_compression_plus_beta_classification(toy):
    u, labels, weight, head_w, mask = toy
    scales = [np.eye(D), 2 * np.eye(D), -np.eye(D)]  # E_i(u) = s_i * u
    z = np.stack([u @ s for s in scales])
    compression = np.sum(0.5 * np.sum(z**2, axis=-1), axis=0)
    expected = np.sum(compression * weight) / weight.sum() + 0.7 * hand_classification(z, labels, weight, head_w)
    got = afrl.encoder_loss(linear_stack(scales), linear_stack(head_w), u, labels, weight, mask, beta=0.7)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_discriminator_and_collaborative_losses_eq16(toy):
    u, labels, weight, head_w, mask = toy
    z0 = u @ (0.5 * np.eye(D))  # F(u) = u / 2
    adversarial = hand_classification(np.stack([z0] * M), labels, weight, head_w)
    got_d = adversaries.discriminator_loss(linear_stack(head_w), jnp.asarray(z0), labels, weight, mask)
    np.testing.assert_allclose(got_d, adversarial, rtol=1e-5)
    f_params = [{"w": jnp.asarray(0.5 * np.eye(D), jnp.float32), "b": jnp.zeros(D)}]
    recon_weight = np.ones(B, np.float32)
    reconstruction = np.mean(np.sum((z0 - u) ** 2, axis=-1))
    got_f = afrl.collaborative_loss(f_params, linear_stack(head_w), u, labels, recon_weight, weight, mask, lam=3.0)
    np.testing.assert_allclose(got_f, reconstruction - 3.0 * adversarial, rtol=1e-5)


def test_aggregator_loss_eq18_is_bpr_through_the_frozen_scorer(toy):
    u, labels, weight, head_w, mask = toy
    config = afrl.AFRLConfig(encoder_layers=1, aggregator_layers=1)
    params = afrl.init_params(jax.random.key(1), D, CLASSES, config)
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=(B, D)).astype(np.float32), rng.normal(size=(B, D)).astype(np.float32)
    sensitive = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1]], bool)
    z0 = u @ np.asarray(params["F"][0]["w"]) + np.asarray(params["F"][0]["b"])
    zs = [u @ np.asarray(params["E"][0]["w"][i]) + np.asarray(params["E"][0]["b"][i]) for i in range(M)]
    x = np.concatenate([z0] + [zs[i] * (1 - sensitive[:, i : i + 1]) for i in range(M)], axis=1)
    u_star = x @ np.asarray(params["G"][0]["w"]) + np.asarray(params["G"][0]["b"])
    diff = np.sum(u_star * pos, 1) - np.sum(u_star * neg, 1)
    expected = np.sum(np.log1p(np.exp(-diff)) * weight) / weight.sum()
    score = lambda a, b: jnp.sum(a * b, axis=-1)
    got = afrl.aggregator_loss(params["G"], params, u, pos, neg, sensitive, weight, score, config)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.fixture
def state_and_data():
    rng = np.random.default_rng(2)
    U, I = 30, 20
    labels = np.stack([rng.integers(0, c, U) for c in CLASSES], 1)
    data = adversaries.make_data(rng.normal(size=(U, D)) * 3.0 + 1.0, rng.normal(size=(I, D)), labels, CLASSES)
    config = afrl.AFRLConfig(hidden=8, train=TrainConfig(learning_rate=1e-2))
    batch = {
        "user": jnp.asarray(rng.integers(0, U, 8), jnp.int32),
        "pos": jnp.asarray(rng.integers(0, I, 8), jnp.int32),
        "neg": jnp.asarray(rng.integers(0, I, 8), jnp.int32),
        "weight": jnp.ones(8),
    }
    return afrl.init_state(jax.random.key(0), data, config), data, config, batch


@pytest.mark.parametrize("player", afrl.PLAYERS)
def test_a_players_update_leaves_every_other_player_and_optimizer_state_unchanged(state_and_data, player):
    state, data, config, _ = state_and_data
    loss = lambda p: sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(p))
    params, opt, _ = optim.update_player(afrl.make_players(config), state.params, state.opt_state, player, loss)
    assert not tree_equal(params[player], state.params[player])
    assert not tree_equal(opt.inner_states[player], state.opt_state.inner_states[player])
    for other in afrl.PLAYERS:
        if other != player:
            assert tree_equal(params[other], state.params[other])
            assert tree_equal(opt.inner_states[other], state.opt_state.inner_states[other])


def test_train_step_updates_every_player_compiles_once_and_stays_finite(state_and_data):
    state, data, config, batch = state_and_data
    step = jax.jit(chex.assert_max_traces(afrl.make_train_step(data, lambda a, b: jnp.sum(a * b, -1), config), n=1))
    new, metrics = step(state, batch, jax.random.key(1))
    new, metrics = step(new, jax.tree.map(lambda x: x[::-1], batch), jax.random.key(2))
    chex.assert_tree_all_finite((new.params, metrics))
    assert set(metrics) == {"loss", "loss_C", "loss_E", "loss_D", "loss_F"}
    for player in afrl.PLAYERS:
        assert not tree_equal(new.params[player], state.params[player]), player
    assert int(new.step) == 2


def test_sensitive_attribute_encoder_cannot_influence_the_fair_embedding(state_and_data):
    state, data, config, _ = state_and_data
    params = state.params
    u = data.user_vecs[:6]
    perturbed = dict(params, E=jax.tree.map(lambda leaf: leaf.at[1].add(0.5), params["E"]))  # change E_age only
    age_sensitive = np.array([False, True, False])
    before = afrl.fair_user_embeddings(params, u, age_sensitive, config)
    after = afrl.fair_user_embeddings(perturbed, u, age_sensitive, config)
    np.testing.assert_array_equal(before, after)
    not_sensitive = np.zeros(M, bool)
    assert not np.allclose(
        afrl.fair_user_embeddings(params, u, not_sensitive, config),
        afrl.fair_user_embeddings(perturbed, u, not_sensitive, config),
    )


def test_per_user_requirements_match_one_requirement_at_a_time(state_and_data):
    state, data, config, _ = state_and_data
    u = data.user_vecs[:8]
    requirements = all_requirements(M)
    per_user = afrl.fair_user_embeddings(state.params, u, requirements, config)  # user r gets requirement r
    for r in range(8):
        alone = afrl.fair_user_embeddings(state.params, u[r : r + 1], requirements[r], config)
        np.testing.assert_allclose(per_user[r], alone[0], rtol=1e-5, atol=1e-6)
    stacked = afrl.fair_embeddings_all_requirements(state.params, u, jnp.asarray(requirements), config)
    chex.assert_shape(stacked, (8, 8, D))
    np.testing.assert_allclose(stacked[3], afrl.fair_user_embeddings(state.params, u, requirements[3], config), rtol=1e-5)


def test_all_requirements_are_the_2_to_the_m_combinations_in_table_order():
    reqs = all_requirements(3)
    names = [requirement_name(r, ("gender", "age", "occupation")) for r in reqs]
    assert names == ["none", "G", "A", "O", "G+A", "G+O", "A+O", "G+A+O"]
    assert len({tuple(r) for r in reqs}) == 8


def test_ablation_switches_remove_their_inputs(state_and_data):
    state, data, _, _ = state_and_data
    u = data.user_vecs[:4]
    no_zi = afrl.AFRLConfig(hidden=8, use_attribute_embeddings=False)
    np.testing.assert_allclose(  # without z_i, the requirement has no effect
        afrl.fair_user_embeddings(state.params, u, np.zeros(M, bool), no_zi),
        afrl.fair_user_embeddings(state.params, u, np.ones(M, bool), no_zi),
    )
    no_z0 = afrl.AFRLConfig(hidden=8, use_collaborative_embedding=False)
    perturbed = dict(state.params, F=jax.tree.map(lambda leaf: leaf + 1.0, state.params["F"]))
    np.testing.assert_array_equal(
        afrl.fair_user_embeddings(state.params, u, np.zeros(M, bool), no_z0),
        afrl.fair_user_embeddings(perturbed, u, np.zeros(M, bool), no_z0),
    )
    with pytest.raises(ValueError, match="at least one"):
        afrl.AFRLConfig(use_attribute_embeddings=False, use_collaborative_embedding=False)
    with pytest.raises(ValueError, match="confusion_on_all_users needs"):
        afrl.AFRLConfig(confusion_on_all_users=True)  # the paper's adversary needs every user's label


def test_class_prior_is_the_weighted_class_frequency():
    labels = np.array([[0, 2], [1, 2], [1, 0], [1, 1]])
    prior = adversaries.class_prior(labels, np.array([1.0, 1.0, 1.0, 0.0]), adversaries.class_mask((2, 3)))
    np.testing.assert_allclose(prior, [[1 / 3, 2 / 3, 0], [1 / 3, 0, 2 / 3]], rtol=1e-6)


def test_confusion_adversary_is_cross_entropy_to_the_prior_and_bounded(toy):
    u, labels, weight, head_w, mask = toy
    prior = np.asarray(adversaries.class_prior(labels, weight, np.asarray(mask)))
    z0 = u
    expected = 0.0
    for i, c in enumerate(CLASSES):
        logits = z0 @ head_w[i][:, :c]
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        expected += -(logp * prior[i, :c]).sum(1)
    expected = np.sum(expected * weight) / weight.sum()
    got = adversaries.confusion_loss(linear_stack(head_w), jnp.asarray(z0), jnp.asarray(prior), weight, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    entropy = -sum(np.sum(p[p > 0] * np.log(p[p > 0])) for p in prior)
    assert got >= entropy - 1e-5  # never below the prior's entropy: F cannot win by making D confidently wrong


@pytest.mark.parametrize(
    "adversary, loss_fn, reference, rtol",
    [
        ("mean_gap", afrl.mean_gap_loss, np_between_class_share, 1e-5),
        ("linear_share", afrl.linear_share_loss, np_linear_share, 1e-4),
    ],
)
def test_attacker_free_adversaries_add_lambda_times_each_attributes_statistic(toy, adversary, loss_fn, reference,
                                                                               rtol):
    u, labels, weight, head_w, mask = toy
    z0 = 0.5 * u  # F(u) = u / 2
    kept = weight > 0
    expected = sum(reference(z0[kept].astype(np.float64), labels[kept, i]) for i in range(M))
    got = loss_fn(jnp.asarray(z0), labels, weight, mask)
    np.testing.assert_allclose(got, expected, rtol=rtol)
    assert 0 < expected < M
    f_params = [{"w": jnp.asarray(0.5 * np.eye(D), jnp.float32), "b": jnp.zeros(D)}]
    reconstruction = np.mean(np.sum((z0 - u) ** 2, axis=-1))
    got_f = afrl.collaborative_loss(f_params, linear_stack(head_w), u, labels, np.ones(B, np.float32), weight, mask,
                                    lam=3.0, adversary=adversary)
    np.testing.assert_allclose(got_f, reconstruction + 3.0 * expected, rtol=rtol)


def test_confusion_on_all_users_also_pushes_unlabelled_users_to_the_prior(toy):
    # F's confusion term needs no labels, so with confusion_on_all_users it covers the users whose labels are
    # withheld (weight 0 here: user 2) as well; D still trains on labelled users only.
    u, labels, weight, head_w, mask = toy
    prior = jnp.asarray(adversaries.class_prior(labels, weight, np.asarray(mask)))
    f_params = [{"w": jnp.eye(D, dtype=jnp.float32), "b": jnp.zeros(D)}]  # F(u) = u: no reconstruction error
    everyone = np.ones(B, np.float32)
    heads = linear_stack(head_w)

    def loss(confusion_weight):
        return afrl.collaborative_loss(f_params, heads, u, labels, everyone, weight, mask, lam=2.0, prior=prior,
                                       adversary="confusion", confusion_weight=confusion_weight)

    labelled_only = adversaries.confusion_loss(heads, jnp.asarray(u), prior, weight, mask)
    all_users = adversaries.confusion_loss(heads, jnp.asarray(u), prior, everyone, mask)
    np.testing.assert_allclose(loss(None), 2.0 * labelled_only, rtol=1e-5)  # the default: labelled users only
    np.testing.assert_allclose(loss(everyone), 2.0 * all_users, rtol=1e-5)
    assert abs(float(all_users - labelled_only)) > 1e-3  # user 2 counts only in the second


def test_confusion_on_all_users_is_what_the_train_step_uses(state_and_data):
    _, data, config, _ = state_and_data
    import dataclasses

    batch = {"user": jnp.arange(8, dtype=jnp.int32), "pos": jnp.arange(8, dtype=jnp.int32),
             "neg": jnp.arange(8, 16, dtype=jnp.int32), "weight": jnp.ones(8)}
    withheld = data._replace(attribute_weight=jnp.zeros_like(data.attribute_weight))  # no labels at all
    losses = {}
    for flag in (False, True):
        cfg = dataclasses.replace(config, adversary="confusion", confusion_on_all_users=flag, lam=1.0)
        state = afrl.init_state(jax.random.key(0), withheld, cfg)
        _, metrics = jax.jit(afrl.make_train_step(withheld, lambda a, b: jnp.sum(a * b, -1), cfg))(
            state, batch, jax.random.key(1))
        losses[flag] = float(metrics["loss_F"])
    # without labels F's adversarial term vanishes unless it covers every user (it is >= the prior entropy > 0)
    assert losses[True] > losses[False] + 1e-3


def test_vmapped_requirement_metrics_equal_a_loop_over_requirements(state_and_data):
    from jaxfair.methods.requirements import embedding_metrics, requirement_metrics

    state, data, config, _ = state_and_data
    rng = np.random.default_rng(5)
    targets = jnp.asarray(rng.integers(0, 20, 30), jnp.int32)
    negatives = jnp.asarray(rng.integers(0, 20, (30, 9)), jnp.int32)
    score = jax.tree_util.Partial(lambda a, b: jnp.sum(a * b, -1))
    reqs = jnp.asarray(all_requirements(M))
    together = requirement_metrics(
        state.params, score, data.user_vecs, data.item_vecs, targets, negatives, reqs,
        config=config, ks=(3,), embed=afrl.fair_user_embeddings,
    )
    fair = afrl.fair_embeddings_all_requirements(state.params, data.user_vecs, reqs, config)
    for r in range(8):
        alone = embedding_metrics(score, fair[r : r + 1], data.item_vecs, targets, negatives, ks=(3,))
        for name in ("ndcg@3", "hr@3"):
            np.testing.assert_allclose(together[name][r], alone[name][0], rtol=1e-6)
    assert together["hr@3"].shape == (8,)


def test_residual_aggregator_adds_z0_to_g_output_and_still_hides_masked_encoders(state_and_data):
    state, data, config, _ = state_and_data
    u = data.user_vecs[:6]
    residual = afrl.AFRLConfig(hidden=8, aggregator_residual=True)
    requirement = np.array([True, False, False])
    z0, _ = afrl.encode(state.params, u)
    np.testing.assert_allclose(
        afrl.fair_user_embeddings(state.params, u, requirement, residual),
        afrl.fair_user_embeddings(state.params, u, requirement, config) + z0, rtol=1e-5, atol=1e-6,
    )
    perturbed = dict(state.params, E=jax.tree.map(lambda leaf: leaf.at[0].add(0.5), state.params["E"]))
    np.testing.assert_array_equal(
        afrl.fair_user_embeddings(state.params, u, requirement, residual),
        afrl.fair_user_embeddings(perturbed, u, requirement, residual),
    )
