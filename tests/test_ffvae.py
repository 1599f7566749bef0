"""FFVAE baseline: losses against hand computations on linear nets, the requirement removes b_i at serving, players
move only by their own update, one compilation, and a two-epoch fit of its trainer model on a tiny synthetic split."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.methods import adversaries, ffvae
from jaxfair.methods.requirements import all_requirements
from jaxfair.training import optim
from jaxfair.training.trainer import TrainConfig, fit, tree_equal

M, D, B = 2, 4, 5
CLASSES = (2, 3)


def numpy_log_softmax(logits):
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.sum(np.exp(logits - top), axis=-1, keepdims=True))


def linear(layer, x):
    return x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)


def hand_nll(heads, inputs, labels):
    """Per user ``sum_i -log softmax(head_i(inputs[i]))[a_i]`` over each attribute's real classes (linear heads)."""
    total = np.zeros(labels.shape[0])
    for i, c in enumerate(CLASSES):
        layer = {"w": heads[0]["w"][i], "b": heads[0]["b"][i]}
        logp = numpy_log_softmax(linear(layer, inputs[i])[:, :c])
        total -= logp[np.arange(labels.shape[0]), labels[:, i]]
    return total


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(B, D)).astype(np.float32)
    labels = np.stack([rng.integers(0, c, B) for c in CLASSES], axis=1).astype(np.int32)
    attr_weight = np.array([1, 1, 0, 1, 1], np.float32)  # user 2's labels are withheld
    weight = np.array([1, 2, 1, 1, 0.5], np.float32)
    mask = adversaries.class_mask(CLASSES)
    prior = adversaries.class_prior(labels, attr_weight, mask)
    return u, labels, weight, attr_weight, jnp.asarray(mask), jnp.asarray(prior)


def test_config_validates():
    with pytest.raises(ValueError, match="adversary"):
        ffvae.FFVAEConfig(adversary="tc")
    with pytest.raises(ValueError, match="gamma"):
        ffvae.FFVAEConfig(gamma=-1.0)
    with pytest.raises(ValueError, match="attr_dim"):
        ffvae.FFVAEConfig(attr_dim=0)
    assert ffvae.FFVAEConfig().attr_dim == 4 and ffvae.FFVAEConfig().latent_dim == 32


def test_kl_term_matches_hand_computation():
    rng = np.random.default_rng(3)
    mean, logvar = rng.normal(size=(3, 6)), rng.normal(size=(3, 6)) * 0.5
    var = np.exp(logvar)
    expected = np.sum(0.5 * (var + mean**2 - 1.0 - np.log(var)), axis=1)
    np.testing.assert_allclose(ffvae.kl_divergence(jnp.asarray(mean), jnp.asarray(logvar)), expected, rtol=1e-5)
    np.testing.assert_allclose(ffvae.kl_divergence(jnp.zeros((2, 6)), jnp.zeros((2, 6))), 0.0, atol=1e-7)


@pytest.mark.parametrize("adversary", ["paper", "confusion"])
def test_vae_loss_terms_match_hand_computation_on_linear_nets(toy, adversary):
    u, labels, weight, attr_weight, mask, prior = toy
    config = ffvae.FFVAEConfig(
        attr_dim=2, latent_dim=3, layers=1, alpha=0.7, gamma=1.3, beta_kl=0.4, adversary=adversary
    )
    params = ffvae.init_params(jax.random.key(4), D, CLASSES, config)
    vae = jax.tree.map(lambda x: 0.3 * x, params["VAE"])  # keep exp(logvar) moderate
    width = ffvae.total_latent(M, config)
    eps = np.random.default_rng(5).normal(size=(B, width)).astype(np.float32)

    out = linear(vae["encoder"][0], u)
    mean, logvar = out[:, :width], out[:, width:]
    s = mean + np.exp(0.5 * logvar) * eps
    recon = np.sum((linear(vae["decoder"][0], s) - u) ** 2, axis=1)
    kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
    b = [s[:, ffvae.attribute_slice(i, config)] for i in range(M)]
    align = hand_nll(params["C"], b, labels)
    z_mean = mean[:, : config.latent_dim]
    if adversary == "paper":
        adv = -hand_nll(params["A"], [z_mean] * M, labels)
    else:
        adv = np.zeros(B)
        for i, c in enumerate(CLASSES):
            layer = {"w": params["A"][0]["w"][i], "b": params["A"][0]["b"][i]}
            adv -= numpy_log_softmax(linear(layer, z_mean)[:, :c]) @ np.asarray(prior)[i, :c]
    wmean = lambda x, w: np.sum(x * w) / np.sum(w)
    expected = {
        "reconstruction": wmean(recon, weight),
        "kl": wmean(kl, weight),
        "alignment": wmean(align, attr_weight),
        "adversarial": wmean(adv, attr_weight),
    }
    loss, parts = jax.jit(lambda v: ffvae.vae_loss(
        v, params["C"], params["A"], u, eps, labels, weight, attr_weight, mask, prior, config
    ))(vae)
    for name, value in expected.items():
        np.testing.assert_allclose(parts[name], value, rtol=1e-4, err_msg=name)
    total = expected["reconstruction"] + 0.4 * expected["kl"] + 0.7 * expected["alignment"] + 1.3 * expected["adversarial"]
    np.testing.assert_allclose(loss, total, rtol=1e-4)


@pytest.fixture
def state_and_data():
    rng = np.random.default_rng(2)
    U, I = 30, 20
    labels = np.stack([rng.integers(0, c, U) for c in CLASSES], 1)
    data = adversaries.make_data(rng.normal(size=(U, D)) * 2.0 + 0.5, rng.normal(size=(I, D)), labels, CLASSES)
    config = ffvae.FFVAEConfig(attr_dim=2, latent_dim=3, hidden=8, train=TrainConfig(learning_rate=1e-2))
    batch = {
        "user": jnp.asarray(rng.integers(0, U, 8), jnp.int32),
        "pos": jnp.asarray(rng.integers(0, I, 8), jnp.int32),
        "neg": jnp.asarray(rng.integers(0, I, 8), jnp.int32),
        "weight": jnp.ones(8),
    }
    return ffvae.init_state(jax.random.key(0), data, config), data, config, batch


def perturb_encoder_columns(params, columns):
    """Add to the encoder's last-layer weights and bias on the given output columns only."""
    last = params["VAE"]["encoder"][-1]
    last = {"w": last["w"].at[:, columns].add(0.5), "b": last["b"].at[columns].add(0.5)}
    encoder = params["VAE"]["encoder"][:-1] + [last]
    return dict(params, VAE=dict(params["VAE"], encoder=encoder))


def test_sensitive_attribute_subspace_cannot_influence_the_fair_embedding(state_and_data):
    state, data, config, _ = state_and_data
    params, u = state.params, data.user_vecs[:6]
    perturbed = perturb_encoder_columns(params, ffvae.attribute_slice(1, config))  # mean of b_2 only
    second_sensitive = np.array([False, True])
    np.testing.assert_array_equal(
        ffvae.fair_user_embeddings(params, u, second_sensitive, config),
        ffvae.fair_user_embeddings(perturbed, u, second_sensitive, config),
    )
    for requirement in (np.zeros(M, bool), np.array([True, False])):
        assert not np.allclose(
            ffvae.fair_user_embeddings(params, u, requirement, config),
            ffvae.fair_user_embeddings(perturbed, u, requirement, config),
        )


def test_serving_uses_the_posterior_mean(state_and_data):
    state, data, config, _ = state_and_data
    width = ffvae.total_latent(M, config)
    perturbed = perturb_encoder_columns(state.params, slice(width, 2 * width))  # log-variance outputs only
    u = data.user_vecs[:6]
    np.testing.assert_array_equal(
        ffvae.fair_user_embeddings(state.params, u, np.zeros(M, bool), config),
        ffvae.fair_user_embeddings(perturbed, u, np.zeros(M, bool), config),
    )


def test_per_user_requirements_match_one_requirement_at_a_time(state_and_data):
    state, data, config, _ = state_and_data
    requirements = all_requirements(M)
    u = data.user_vecs[: len(requirements)]
    per_user = ffvae.fair_user_embeddings(state.params, u, requirements, config)
    stacked = ffvae.fair_embeddings_all_requirements(state.params, u, jnp.asarray(requirements), config)
    chex.assert_shape(stacked, (len(requirements), len(requirements), D))
    for r in range(len(requirements)):
        np.testing.assert_allclose(per_user[r], stacked[r, r], rtol=1e-5, atol=1e-6)


def test_aggregator_loss_is_bpr_on_the_fair_embedding_and_does_not_reach_the_encoder(state_and_data):
    state, data, config, batch = state_and_data
    params = state.params
    u = data.user_vecs[batch["user"]]
    pos, neg = data.item_vecs[batch["pos"]], data.item_vecs[batch["neg"]]
    sensitive = np.random.default_rng(1).random((8, M)) < 0.5
    weight = jnp.asarray([1, 1, 1, 0, 1, 1, 2, 1], jnp.float32)
    score = lambda a, b: jnp.sum(a * b, axis=-1)
    u_star = np.asarray(ffvae.fair_user_embeddings(params, u, sensitive, config), np.float64)
    diff = np.sum(u_star * np.asarray(pos), 1) - np.sum(u_star * np.asarray(neg), 1)
    expected = np.sum(np.log1p(np.exp(-diff)) * weight) / np.sum(weight)
    loss_fn = lambda p: ffvae.aggregator_loss(p["G"], p, u, pos, neg, sensitive, weight, score, config)
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["VAE"]))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["G"]))


@pytest.mark.parametrize("player", ffvae.PLAYERS)
def test_a_players_update_leaves_every_other_player_and_optimizer_state_unchanged(state_and_data, player):
    state, _, config, _ = state_and_data
    loss = lambda p: sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(p))
    update = jax.jit(lambda p, o: optim.update_player(ffvae.make_players(config), p, o, player, loss))
    params, opt, _ = update(state.params, state.opt_state)
    assert not tree_equal(params[player], state.params[player])
    assert not tree_equal(opt.inner_states[player], state.opt_state.inner_states[player])
    for other in ffvae.PLAYERS:
        if other != player:
            assert tree_equal(params[other], state.params[other])
            assert tree_equal(opt.inner_states[other], state.opt_state.inner_states[other])


@pytest.mark.parametrize("adversary", ["paper", "confusion"])
def test_train_step_updates_every_player_compiles_once_and_stays_finite(state_and_data, adversary):
    state, data, config, batch = state_and_data
    config = ffvae.FFVAEConfig(attr_dim=2, latent_dim=3, hidden=8, train=TrainConfig(learning_rate=1e-2), adversary=adversary)
    chex.clear_trace_counter()  # the counter is keyed by the step's code, shared by both parametrisations
    step = jax.jit(chex.assert_max_traces(ffvae.make_train_step(data, lambda a, b: jnp.sum(a * b, -1), config), n=1))
    new, metrics = step(state, batch, jax.random.key(1))
    new, metrics = step(new, jax.tree.map(lambda x: x[::-1], batch), jax.random.key(2))
    chex.assert_tree_all_finite((new.params, new.opt_state, metrics))
    assert set(metrics) == {"loss", "loss_C", "loss_A", "loss_VAE", "reconstruction", "kl", "alignment", "adversarial"}
    for player in ffvae.PLAYERS:
        assert not tree_equal(new.params[player], state.params[player]), player
    assert int(new.step) == 2


@pytest.fixture(scope="module")
def tiny_run():
    """A PMF backbone trained two epochs on a tiny synthetic split, frozen, and FFVAE's data on it."""
    from jaxfair.backbones import make_backbone
    from jaxfair.backbones.base import freeze
    from jaxfair.backbones.fit import backbone_model
    from jaxfair.data.preprocess import prepare
    from jaxfair.data.synthetic import make_synthetic
    from jaxfair.methods.base import Context

    split = prepare(make_synthetic(num_users=60, num_items=150, per_user=20))
    backbone, backbone_config = make_backbone("pmf", {"dim": 8})
    backbone_context = backbone.context(split)
    trained = fit(backbone_model("train", split, backbone, backbone_context, TrainConfig(epochs=2), (10, 20)), 0,
                  log=lambda message: None)
    frozen = freeze(backbone, backbone_context, trained.best_params)
    context = Context(split=split, frozen=frozen, backbone=backbone, backbone_config=backbone_config, evaluate=None,
                      probe=None, seed=0)
    data = adversaries.split_attribute_data(split, frozen)
    return split, data, context, frozen.user_vecs


def test_train_runs_two_epochs_on_a_tiny_split(tiny_run, tmp_path):
    split, data, context, user_vecs = tiny_run
    config = ffvae.FFVAEConfig(attr_dim=2, latent_dim=4, hidden=8,
                               train=TrainConfig(batch_size=128, epochs=2, patience=5))
    (model,) = ffvae.METHOD.models(context, data, config, {})
    assert model.name == "ffvae"
    messages = []
    result = fit(model, 0, tmp_path, log=messages.append)
    assert result.epochs_run == 2 and 1 <= result.best_epoch <= 2
    assert 0.0 < result.best_valid["ndcg@10"] <= 1.0
    assert len(messages) == 2 and messages[0].startswith("[ffvae] epoch 1/2")
    records = [json.loads(line) for line in (tmp_path / "ffvae_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and np.isfinite(records[-1]["train"]["loss_VAE"])
    everything = np.ones(len(split.attribute_names), bool)
    fair = ffvae.fair_user_embeddings(result.best_params, user_vecs["test"], everything, config)
    chex.assert_shape(fair, (split.num_users, data.user_vecs.shape[1]))
    chex.assert_tree_all_finite(fair)
