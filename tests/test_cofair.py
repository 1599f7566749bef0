"""Cofair: Eq. (10) and the monotonicity regulariser against hand computations, level 0 is the identity, the vmapped
levels equal a loop over the adapters, the filter objective equals a numpy reference (both adversaries), the
per-user and per-row batch forms agree, one jitted step runs, compiles once and updates D before the filter, and
bad inputs are rejected."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.methods import cofair
from jaxfair.methods.soft_exposure import soft_exposure_gap
from jaxfair.training.trainer import TrainConfig

from references import np_between_class_share, np_linear_share

U, I, D, T = 30, 40, 8, 3
LOG2 = np.log(2.0)


def dot(u, v):
    return jnp.sum(u * v, axis=-1)


def small_config(**overrides):
    base = dict(levels=T, shared_dim=6, adapter_dim=5, discriminator_hidden=7, lambda0=0.1, alpha=0.2, beta=0.5,
                discriminator_learning_rate=3e-2, train=TrainConfig(learning_rate=1e-2, batch_size=16))
    base.update(overrides)
    return cofair.CofairConfig(**base)


def player_adam_state(opt_state, player):
    """A player's Adam state (moments over its own subtree, and its count) inside the partitioned optimizer state,
    in the form ``optax.adam`` keeps for that subtree alone."""
    adam = opt_state.inner_states[player].inner_state[0]
    return optax.ScaleByAdamState(count=adam.count, mu=adam.mu[player], nu=adam.nu[player]), optax.EmptyState()


def random_params(seed, config, num_classes=2):
    """Initial parameters with non-zero biases everywhere, so every bias term is exercised."""
    params = cofair.init_params(jax.random.PRNGKey(seed), D, num_classes, config)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed + 100)
    new = []
    for path, leaf in leaves:
        if getattr(path[-1], "key", None) == "b":
            leaf = jnp.asarray(rng.normal(scale=0.3, size=leaf.shape), jnp.float32)
        new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


def make_toy_data(seed=0, num_classes=2, withheld=(3, 7, 11), with_exclude=False):
    rng = np.random.default_rng(seed)
    user_vecs = rng.normal(size=(U, D)).astype(np.float32)
    item_vecs = rng.normal(size=(I, D)).astype(np.float32)
    labels = np.arange(U) % num_classes  # every class present
    rng.shuffle(labels)
    label_weight = np.ones(U, np.float32)
    label_weight[list(withheld)] = 0.0
    exclude = rng.random((U, I)) < 0.1 if with_exclude else None
    return cofair.make_data(user_vecs, item_vecs, labels, num_classes, label_weight, exclude=exclude)


def make_batch(seed, rows, num_padding=3):
    rng = np.random.default_rng(seed)
    weight = np.ones(rows, np.float32)
    if num_padding:
        weight[-num_padding:] = 0.0
    return {
        "user": jnp.asarray(rng.integers(0, U, rows), jnp.int32),
        "pos": jnp.asarray(rng.integers(0, I, rows), jnp.int32),
        "neg": jnp.asarray(rng.integers(0, I, rows), jnp.int32),
        "weight": jnp.asarray(weight),
    }


# ----------------------------------------------------------------------------------------------- numpy reference


def np_leaky(x, slope):
    return np.where(x > 0, x, slope * x)


def np_levels(filter_params, u, config):
    """Levels 1..T by a Python loop over the adapter stack: e_t = W_o LeakyReLU([s; p_t]) + b_o (+ u)."""
    fp = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), filter_params)
    u = np.asarray(u, np.float64)
    shared = u @ fp["shared"]["w"] + fp["shared"]["b"]
    levels = []
    for t in range(fp["adapters"]["w"].shape[0]):
        private = u @ fp["adapters"]["w"][t] + fp["adapters"]["b"][t]
        hidden = np_leaky(np.concatenate([shared, private], axis=-1), config.negative_slope)
        e = hidden @ fp["out"]["w"] + fp["out"]["b"]
        levels.append(e + u if config.residual else e)
    return np.stack(levels)


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_disc_logits(disc_params, x):
    disc = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in disc_params]
    for layer in disc[:-1]:
        x = np.maximum(x @ layer["w"] + layer["b"], 0.0)
    return x @ disc[-1]["w"] + disc[-1]["b"]


def np_softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def np_filter_loss(params, data, batch, config):
    """The filter objective of one batch in float64, one entry per BPR row (the paper's per-row form)."""
    user = np.asarray(batch["user"])
    w = np.asarray(batch["weight"], np.float64)
    u = np.asarray(data.user_vecs, np.float64)[user]
    items = np.asarray(data.item_vecs, np.float64)
    pos, neg = items[np.asarray(batch["pos"])], items[np.asarray(batch["neg"])]
    levels = np_levels(params["filter"], u, config)  # (T, B, d)
    num_levels = levels.shape[0]

    diff = np.sum(levels * pos, -1) - np.sum(levels * neg, -1)
    bpr = np.sum(np_softplus(-diff) * w, axis=-1) / max(w.sum(), 1.0)  # -log sigmoid(x) = softplus(-x)

    labels = np.asarray(data.labels)[user]
    user_w = w * np.asarray(data.label_weight)[user]
    logp = np_log_softmax(np_disc_logits(params["D"], levels))  # (T, B, K)
    attacker = -logp[:, np.arange(len(user)), labels]  # (T, B)
    if config.adversary == "capped":  # no credit beyond the loss of guessing from the prior
        attacker = np.minimum(attacker, -np.log(np.asarray(data.prior, np.float64))[labels])
    level_losses = attacker @ user_w / user_w.sum()

    lambdas = [config.lambda0]
    for t in range(1, num_levels):
        lambdas.append(lambdas[-1] + config.alpha * (1.0 - (level_losses[t] - level_losses[t - 1])))
    lambdas = np.array(lambdas)

    pair_means = [
        np.sum(np.maximum(np_softplus(attacker[t] - attacker[t + 1]) - LOG2, 0.0) * user_w) / user_w.sum()
        for t in range(num_levels - 1)
    ]
    reg = np.mean(pair_means) if pair_means else 0.0

    if config.adversary == "confusion":
        prior = np.asarray(data.prior, np.float64)
        confusion = -np.sum(prior * logp, axis=-1)  # (T, B)
        adversarial = confusion @ user_w / user_w.sum()
    elif config.adversary == "mean_gap":
        adversarial = np.array([np_between_class_share(levels[t], labels, user_w) for t in range(num_levels)])
    elif config.adversary == "linear_share":
        adversarial = np.array([np_linear_share(levels[t], labels, user_w) for t in range(num_levels)])
    else:
        adversarial = -level_losses
    loss = np.mean(bpr + lambdas * adversarial) + config.beta * reg
    return loss, {"bpr": bpr, "attacker_loss": level_losses, "lambda": lambdas, "reg": reg}


def run_filter_loss(params, data, batch, config, per_user):
    users, row_user = cofair.batch_users(data, batch, per_user)
    rows = {"user": row_user, "pos": data.item_vecs[batch["pos"]], "neg": data.item_vecs[batch["neg"]],
            "weight": batch["weight"]}
    return cofair.filter_loss(params["filter"], params["D"], users, rows, dot, config, data.prior,
                              item_vecs=data.item_vecs)


@functools.partial(jax.jit, static_argnames=("config", "per_user"))
def filter_value_and_grad(params, data, batch, config, per_user=False):
    """``((loss, metrics), d loss / d filter)``, jitted (one compile instead of many eager ops)."""
    return jax.value_and_grad(
        lambda fp: run_filter_loss(dict(params, filter=fp), data, batch, config, per_user), has_aux=True
    )(params["filter"])


def jit_filter_loss(params, data, batch, config, per_user=False):
    return filter_value_and_grad(params, data, batch, config, per_user=per_user)[0]


# ----------------------------------------------------------------------------------------------- Eq. (10)


def test_adaptive_lambdas_matches_hand_computation():
    # lambda_1 = 0.1
    # lambda_2 = 0.1  + 0.2 * (1 - (0.7 - 0.5)) = 0.1  + 0.16 = 0.26
    # lambda_3 = 0.26 + 0.2 * (1 - (0.6 - 0.7)) = 0.26 + 0.22 = 0.48
    # lambda_4 = 0.48 + 0.2 * (1 - (1.0 - 0.6)) = 0.48 + 0.12 = 0.60
    got = cofair.adaptive_lambdas(jnp.array([0.5, 0.7, 0.6, 1.0]), 0.1, 0.2)
    np.testing.assert_allclose(np.asarray(got), [0.1, 0.26, 0.48, 0.6], rtol=1e-6)


def test_adaptive_lambdas_single_level_is_lambda0():
    np.testing.assert_allclose(np.asarray(cofair.adaptive_lambdas(jnp.array([3.0]), 0.05, 0.7)), [0.05])


def test_level_that_gains_no_attacker_loss_gets_a_larger_push():
    flat = cofair.adaptive_lambdas(jnp.array([1.0, 1.0]), 0.0, 0.1)
    gained = cofair.adaptive_lambdas(jnp.array([1.0, 1.5]), 0.0, 0.1)
    assert float(flat[1]) == pytest.approx(0.1)
    assert float(gained[1]) == pytest.approx(0.05)
    assert float(flat[1]) > float(gained[1])


# ----------------------------------------------------------------------------------------------- regulariser


def test_monotonicity_regularizer_is_zero_when_losses_never_drop():
    losses = jnp.array([[0.1, 0.5, 0.7, 0.3],
                        [0.2, 0.5, 0.9, 0.3],  # user 1 and 3 equal losses: still in order
                        [0.9, 0.5, 1.2, 0.3]])
    got = cofair.monotonicity_regularizer(losses, jnp.ones(4))
    assert float(got) == 0.0


def test_monotonicity_regularizer_is_positive_when_one_user_drops():
    losses = jnp.array([[0.1, 0.5, 0.7], [0.2, 0.4, 0.9], [0.3, 0.6, 1.0]])  # user 1 drops 0.5 -> 0.4
    assert float(cofair.monotonicity_regularizer(losses, jnp.ones(3))) > 0.0


def test_monotonicity_regularizer_matches_hand_computation_with_weights():
    losses = np.array([[1.0, 0.2, 0.5],
                       [0.4, 0.9, 0.1],
                       [0.6, 0.1, 0.3]], np.float32)  # rows are levels, columns users
    weight = np.array([2.0, 1.0, 0.5], np.float32)
    # pair (1,2): drops 0.6, -0.7, 0.4; pair (2,3): drops -0.2, 0.8, -0.2.
    def p(x):
        return max(0.0, np.log1p(np.exp(x)) - LOG2)
    pair1 = (2.0 * p(0.6) + 1.0 * p(-0.7) + 0.5 * p(0.4)) / 3.5
    pair2 = (2.0 * p(-0.2) + 1.0 * p(0.8) + 0.5 * p(-0.2)) / 3.5
    assert p(-0.7) == 0.0 and p(0.6) > 0.0
    got = cofair.monotonicity_regularizer(jnp.asarray(losses), jnp.asarray(weight))
    np.testing.assert_allclose(float(got), (pair1 + pair2) / 2, rtol=1e-5)


def test_monotonicity_regularizer_ignores_zero_weight_users():
    in_order = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)
    violating = in_order.copy()
    violating[:, 1] = [3.0, 1.0, 0.2]  # user 1 drops sharply, but has weight 0
    weight = jnp.array([1.0, 0.0])
    assert float(cofair.monotonicity_regularizer(jnp.asarray(violating), weight)) == 0.0
    counted = cofair.monotonicity_regularizer(jnp.asarray(violating), jnp.array([1.0, 1.0]))
    assert float(counted) > 0.0  # the same user with weight 1 is penalised


def test_monotonicity_regularizer_is_zero_for_a_single_level():
    assert float(cofair.monotonicity_regularizer(jnp.array([[2.0, 0.1, 5.0]]), jnp.ones(3))) == 0.0


# ----------------------------------------------------------------------------------------------- levels


@pytest.mark.parametrize("residual", [False, True])
def test_level_zero_is_the_identity(residual):
    config = small_config(residual=residual)
    params = random_params(0, config)
    u = jnp.asarray(np.random.default_rng(1).normal(size=(6, D)), jnp.float32)
    levels = cofair.level_embeddings(params["filter"], u, config)
    assert levels.shape == (T + 1, 6, D)
    np.testing.assert_array_equal(np.asarray(levels[0]), np.asarray(u))
    np.testing.assert_array_equal(np.asarray(cofair.user_embeddings_at_level(params, u, 0, config)), np.asarray(u))
    np.testing.assert_array_equal(
        np.asarray(cofair.user_embeddings_at_level(params["filter"], u, jnp.zeros(6, jnp.int32), config)), np.asarray(u)
    )


def test_user_embeddings_at_level_picks_each_users_row():
    config = small_config()
    params = random_params(1, config)
    u = jnp.asarray(np.random.default_rng(2).normal(size=(7, D)), jnp.float32)
    chosen = np.array([0, 1, 2, 3, 3, 1, 0])
    levels = np.asarray(cofair.level_embeddings(params["filter"], u, config))
    got = np.asarray(cofair.user_embeddings_at_level(params, u, jnp.asarray(chosen), config))
    np.testing.assert_array_equal(got, levels[chosen, np.arange(7)])
    # a scalar level applies to everyone
    np.testing.assert_array_equal(np.asarray(cofair.user_embeddings_at_level(params, u, 2, config)), levels[2])
    assert not np.allclose(levels[1], levels[2])  # the levels are distinct, so picking the wrong one would fail


@pytest.mark.parametrize("residual", [False, True])
def test_vmapped_levels_equal_a_loop_over_the_adapters(residual):
    config = small_config(residual=residual, negative_slope=0.3)
    params = random_params(2, config)
    u = np.random.default_rng(3).normal(size=(9, D)).astype(np.float32)
    got = np.asarray(cofair.adapted_embeddings(params["filter"], jnp.asarray(u), config))
    want = np_levels(params["filter"], u, config)
    assert got.shape == (T, 9, D)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cofair.level_embeddings(params["filter"], jnp.asarray(u), config))[1:],
                               want, rtol=1e-5, atol=1e-5)


def test_leaky_relu_slope_and_residual_switch_change_the_output():
    u = jnp.asarray(np.random.default_rng(4).normal(size=(5, D)), jnp.float32)
    params = random_params(3, small_config())
    plain = cofair.adapted_embeddings(params["filter"], u, small_config())
    residual = cofair.adapted_embeddings(params["filter"], u, small_config(residual=True))
    np.testing.assert_allclose(np.asarray(residual - plain), np.broadcast_to(np.asarray(u), plain.shape), atol=1e-5)
    sloped = cofair.adapted_embeddings(params["filter"], u, small_config(negative_slope=0.5))
    assert not np.allclose(np.asarray(sloped), np.asarray(plain))


# ----------------------------------------------------------------------------------------------- shapes, one step


@pytest.mark.parametrize("num_classes", [2, 3])
def test_init_params_shapes(num_classes):
    config = small_config()
    params = cofair.init_params(jax.random.PRNGKey(0), D, num_classes, config)
    f = params["filter"]
    chex.assert_shape(f["shared"]["w"], (D, 6))
    chex.assert_shape(f["shared"]["b"], (6,))
    chex.assert_shape(f["adapters"]["w"], (T, D, 5))
    chex.assert_shape(f["adapters"]["b"], (T, 5))
    chex.assert_shape(f["out"]["w"], (6 + 5, D))
    chex.assert_shape(f["out"]["b"], (D,))
    assert [layer["w"].shape for layer in params["D"]] == [(D, 7), (7, num_classes)]
    assert [layer["b"].shape for layer in params["D"]] == [(7,), (num_classes,)]
    linear = cofair.init_params(jax.random.PRNGKey(0), D, num_classes, small_config(discriminator_layers=1))
    assert [layer["w"].shape for layer in linear["D"]] == [(D, num_classes)]
    # adapters are independently initialised, not copies of one another
    assert not np.allclose(np.asarray(f["adapters"]["w"][0]), np.asarray(f["adapters"]["w"][1]))


@pytest.mark.parametrize("num_classes, rows", [(2, 16), (3, 48)])  # rows >= U takes the per-user path
def test_jitted_step_runs_compiles_once_and_reports_documented_shapes(num_classes, rows):
    config = small_config()
    data = make_toy_data(0, num_classes)
    state = cofair.init_state(jax.random.PRNGKey(0), data, config)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(cofair.make_train_step(data, dot, config), n=1))
    first = state
    for k in range(3):
        state, metrics = step(state, make_batch(10 + k, rows), jax.random.PRNGKey(k))
    chex.assert_tree_all_finite((state.params, state.opt_state, metrics))
    for name in ("bpr", "attacker_loss", "lambda"):
        chex.assert_shape(metrics[name], (T,))
    for name in ("reg", "loss", "discriminator_loss"):
        chex.assert_shape(metrics[name], ())
    assert int(state.step) == 3
    # both players moved
    for player in ("filter", "D"):
        moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), first.params[player], state.params[player])
        assert all(jax.tree_util.tree_leaves(moved)), player


def test_step_updates_D_first_then_the_filter_against_the_updated_D():
    """One step == one Adam step of D (its own step size) on (1/T) sum_t L_t over the stopped levels, then one Adam
    step of the filter on the objective evaluated with the new D; the filter's update leaves D alone."""
    config = small_config()
    data = make_toy_data(1, 3)
    state = cofair.init_state(jax.random.PRNGKey(5), data, config)
    batch = make_batch(20, 16)
    new_state, metrics = jax.jit(cofair.make_train_step(data, dot, config))(state, batch, jax.random.PRNGKey(0))

    @jax.jit
    def by_hand(state, batch):
        users, _ = cofair.batch_users(data, batch, per_user=False)
        levels = cofair.adapted_embeddings(state.params["filter"], users["vecs"], config)
        d_loss, d_grads = jax.value_and_grad(cofair.discriminator_loss)(state.params["D"], levels, users["labels"],
                                                                        users["weight"])
        d_updates, _ = optax.adam(config.discriminator_learning_rate).update(d_grads,
                                                                             player_adam_state(state.opt_state, "D"),
                                                                             state.params["D"])
        new_d = optax.apply_updates(state.params["D"], d_updates)
        (loss, _), f_grads = jax.value_and_grad(
            lambda fp: run_filter_loss(dict(state.params, D=new_d, filter=fp), data, batch, config, False), has_aux=True
        )(state.params["filter"])
        f_updates, _ = optax.adam(config.train.learning_rate).update(f_grads,
                                                                     player_adam_state(state.opt_state, "filter"),
                                                               state.params["filter"])
        return new_d, optax.apply_updates(state.params["filter"], f_updates), d_loss, loss

    new_d, new_filter, d_loss, loss = by_hand(state, batch)
    chex.assert_trees_all_close(new_state.params["D"], new_d, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(new_state.params["filter"], new_filter, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["discriminator_loss"]), float(d_loss), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)


# ----------------------------------------------------------------------------------------------- per-user == per-row


@pytest.mark.parametrize("adversary", ["paper", "capped", "confusion", "mean_gap", "linear_share"])
def test_per_user_and_per_row_batches_give_the_same_loss_and_gradients(adversary):
    config = small_config(adversary=adversary)
    data = make_toy_data(2, 3, withheld=(0, 5, 9, 17))
    params = random_params(4, config, num_classes=3)
    batch = make_batch(30, 20, num_padding=5)  # duplicate users, padding rows and withheld labels
    batch_user = np.asarray(batch["user"])
    assert len(np.unique(batch_user)) < len(batch_user)
    assert (np.asarray(data.label_weight)[batch_user] == 0).any()

    (row_loss, row_metrics), row_grads = filter_value_and_grad(params, data, batch, config, per_user=False)
    (user_loss, user_metrics), user_grads = filter_value_and_grad(params, data, batch, config, per_user=True)
    assert float(row_metrics["reg"]) > 0.0  # the regulariser contributes to what is compared
    np.testing.assert_allclose(float(user_loss), float(row_loss), rtol=1e-5)
    chex.assert_trees_all_close(user_metrics, row_metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(user_grads, row_grads, rtol=1e-4, atol=1e-6)

    @functools.partial(jax.jit, static_argnums=0)
    def d_loss(per_user):
        users, _ = cofair.batch_users(data, batch, per_user)
        levels = cofair.adapted_embeddings(params["filter"], users["vecs"], config)
        return cofair.discriminator_loss(params["D"], levels, users["labels"], users["weight"])

    np.testing.assert_allclose(float(d_loss(True)), float(d_loss(False)), rtol=1e-5)


# ----------------------------------------------------------------------------------------------- user-major layout


def test_user_major_levels_are_the_vmapped_levels_transposed_bit_for_bit():
    config = small_config(residual=True, negative_slope=0.3)
    params = random_params(6, config)
    u = jnp.asarray(np.random.default_rng(6).normal(size=(U, D)), jnp.float32)
    level_major = cofair.adapted_embeddings(params["filter"], u, config)
    user_major = cofair.user_major_levels(params["filter"], u, config)
    assert user_major.shape == (U, T, D)
    np.testing.assert_array_equal(np.asarray(user_major), np.swapaxes(np.asarray(level_major), 0, 1))


@pytest.mark.parametrize("per_user", [False, True])
@pytest.mark.parametrize("adversary", ["paper", "capped", "confusion", "mean_gap", "linear_share"])
def test_user_major_layout_gives_the_same_loss_metrics_and_gradients(adversary, per_user):
    config = small_config(adversary=adversary)
    data = make_toy_data(2, 3, withheld=(0, 5, 9, 17))
    params = random_params(4, config, num_classes=3)
    batch = make_batch(30, 20, num_padding=5)
    (loss, metrics), grads = filter_value_and_grad(params, data, batch, config, per_user=per_user)
    (um_loss, um_metrics), um_grads = filter_value_and_grad(params, data, batch,
                                                            dataclasses.replace(config, user_major=True),
                                                            per_user=per_user)
    assert float(metrics["reg"]) > 0.0
    np.testing.assert_allclose(float(um_loss), float(loss), rtol=1e-5)
    chex.assert_trees_all_close(um_metrics, metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(um_grads, grads, rtol=1e-4, atol=1e-6)


def test_user_major_train_step_matches_the_default_step_with_the_exposure_term():
    config = small_config(adversary="capped", exposure_weight=1.5, exposure_k=3, exposure_candidates=8,
                          exposure_temperature=0.2, discriminator_steps=2)
    data = make_toy_data(3, 2, withheld=(0, 5, 9), with_exclude=True)
    state = cofair.init_state(jax.random.PRNGKey(1), data, config)
    steps = {layout: jax.jit(cofair.make_train_step(data, dot, dataclasses.replace(config, user_major=layout)))
             for layout in (False, True)}
    batch = make_batch(31, 24, num_padding=4)
    (default, default_metrics), (user_major, user_major_metrics) = (
        steps[layout](state, batch, jax.random.PRNGKey(0)) for layout in (False, True))
    assert np.all(np.asarray(default_metrics["exposure_gap"]) > 0)
    chex.assert_trees_all_close(user_major_metrics, default_metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(user_major.params, default.params, rtol=1e-4, atol=1e-6)


def test_batch_users_per_user_weights_are_label_weighted_row_counts():
    data = make_toy_data(3, 2, withheld=(4,))
    batch = {"user": jnp.array([4, 1, 1, 2, 1, 4], jnp.int32), "pos": jnp.zeros(6, jnp.int32),
             "neg": jnp.ones(6, jnp.int32), "weight": jnp.array([1, 1, 1, 1, 0, 1], jnp.float32)}
    users, row_user = cofair.batch_users(data, batch, per_user=True)
    expected = np.zeros(U)
    expected[1], expected[2] = 2.0, 1.0  # user 1: one padding row; user 4: withheld label
    np.testing.assert_array_equal(np.asarray(users["weight"]), expected)
    np.testing.assert_array_equal(np.asarray(row_user), np.asarray(batch["user"]))
    users, row_user = cofair.batch_users(data, batch, per_user=False)
    np.testing.assert_array_equal(np.asarray(users["weight"]), [0, 1, 1, 1, 0, 0])
    assert row_user is None  # row b is user entry b: no gather


# ----------------------------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("adversary", ["paper", "capped", "confusion", "mean_gap", "linear_share"])
def test_filter_loss_matches_numpy_reference(adversary):
    config = small_config(adversary=adversary)
    data = make_toy_data(4, 3)
    params = random_params(5, config, num_classes=3)
    batch = make_batch(40, 20)
    loss, metrics = jit_filter_loss(params, data, batch, config)
    want_loss, want = np_filter_loss(params, data, batch, config)
    assert want["reg"] > 0.0
    if adversary == "capped":  # the cap binds for some users, so the reference differs from the paper's
        assert not np.isclose(want_loss, np_filter_loss(params, data, batch, small_config())[0], rtol=1e-4)
    for name in ("bpr", "attacker_loss", "lambda", "reg"):
        np.testing.assert_allclose(np.asarray(metrics[name]), want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4)


def test_paper_adversary_subtracts_lambda_times_attacker_loss():
    config = small_config(adversary="paper")
    data = make_toy_data(5, 3)
    params = random_params(6, config, num_classes=3)
    loss, m = jit_filter_loss(params, data, make_batch(50, 20), config)
    expected = np.mean(np.asarray(m["bpr"]) - np.asarray(m["lambda"]) * np.asarray(m["attacker_loss"]))
    expected += config.beta * float(m["reg"])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_paper_loss_falls_as_the_attacker_loss_grows():
    """T = 1 (no regulariser, lambda = lambda_0): a D that is confidently wrong gives a larger attacker loss and a
    lower filter loss, by exactly lambda_0 times the difference; BPR does not depend on D."""
    config = small_config(levels=1, adversary="paper", lambda0=0.3)
    data = make_toy_data(6, 2)
    params = random_params(7, config)
    batch = make_batch(60, 20)
    right = params
    wrong = dict(params, D=[params["D"][0], {"w": -3.0 * params["D"][1]["w"], "b": -3.0 * params["D"][1]["b"]}])
    loss_r, m_r = jit_filter_loss(right, data, batch, config)
    loss_w, m_w = jit_filter_loss(wrong, data, batch, config)
    assert float(m_w["attacker_loss"][0]) != pytest.approx(float(m_r["attacker_loss"][0]))
    grows = float(m_w["attacker_loss"][0]) > float(m_r["attacker_loss"][0])
    assert (float(loss_w) < float(loss_r)) == grows
    np.testing.assert_allclose(float(loss_w - loss_r),
                               -0.3 * float(m_w["attacker_loss"][0] - m_r["attacker_loss"][0]), rtol=1e-4)


def test_capped_adversary_gives_no_credit_past_chance():
    """Every labelled user in class 0 (prior [1, 0]): any D is at or past chance, so with T = 1 the capped objective
    is the BPR loss alone, value and gradient, while the paper's objective still rewards the attacker loss."""
    rng = np.random.default_rng(8)
    labels = np.zeros(U, np.int32)
    labels[0] = 1
    weight = np.ones(U, np.float32)
    weight[0] = 0.0  # the only class-1 user is withheld
    data = cofair.make_data(rng.normal(size=(U, D)).astype(np.float32), rng.normal(size=(I, D)).astype(np.float32),
                            labels, 2, weight)
    np.testing.assert_array_equal(np.asarray(data.prior), [1.0, 0.0])
    batch = make_batch(80, 20)
    config = small_config(levels=1, adversary="capped", lambda0=0.3)
    params = random_params(9, config)
    (loss, m), grads = filter_value_and_grad(params, data, batch, config, per_user=False)
    (bpr_only, _), bpr_grads = filter_value_and_grad(params, data, batch, small_config(levels=1, lambda0=0.0),
                                                     per_user=False)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(bpr_only), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m["attacker_loss"]), [0.0], atol=1e-7)
    chex.assert_trees_all_close(grads, bpr_grads, rtol=1e-5, atol=1e-7)
    paper = jit_filter_loss(params, data, batch, small_config(levels=1, lambda0=0.3))
    assert float(paper[0]) < float(loss)


def test_confusion_adversary_uses_the_prior_cross_entropy():
    config = small_config(adversary="confusion")
    data = make_toy_data(7, 3)
    params = random_params(8, config, num_classes=3)
    batch = make_batch(70, 20)
    loss, m = jit_filter_loss(params, data, batch, config)
    # the adversarial term, recovered from the loss, is the weighted prior cross-entropy of D's prediction
    user = np.asarray(batch["user"])
    w = np.asarray(batch["weight"]) * np.asarray(data.label_weight)[user]
    levels = np_levels(params["filter"], np.asarray(data.user_vecs)[user], config)
    logp = np_log_softmax(np_disc_logits(params["D"], levels))
    confusion = -np.sum(np.asarray(data.prior) * logp, axis=-1) @ w / w.sum()
    expected = np.mean(np.asarray(m["bpr"]) + np.asarray(m["lambda"]) * confusion) + config.beta * float(m["reg"])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    # ... which is not the paper's term
    paper = np.mean(np.asarray(m["bpr"]) - np.asarray(m["lambda"]) * np.asarray(m["attacker_loss"]))
    assert abs(float(loss) - paper - config.beta * float(m["reg"])) > 1e-3


def test_confusion_term_is_smallest_when_D_predicts_the_prior():
    prior = jnp.array([0.2, 0.5, 0.3])
    at_prior = [{"w": jnp.zeros((D, 3)), "b": jnp.log(prior)}]
    elsewhere = [{"w": jnp.zeros((D, 3)), "b": jnp.log(jnp.array([0.4, 0.3, 0.3]))}]
    e = jnp.ones((1, 4, D))
    c_prior = cofair.confusion_losses(at_prior, e, prior)
    c_else = cofair.confusion_losses(elsewhere, e, prior)
    entropy = -float(jnp.sum(prior * jnp.log(prior)))
    np.testing.assert_allclose(np.asarray(c_prior), entropy, rtol=1e-6)
    assert np.all(np.asarray(c_else) > np.asarray(c_prior))


def test_mean_gap_adversary_adds_lambda_times_the_between_class_share():
    config = small_config(adversary="mean_gap", lambda0=0.4, alpha=0.2)
    data = make_toy_data(11, 3, withheld=(2, 7))
    params = random_params(12, config, num_classes=3)
    batch = make_batch(90, 20)
    loss, m = jit_filter_loss(params, data, batch, config)
    user = np.asarray(batch["user"])
    w = np.asarray(batch["weight"], np.float64) * np.asarray(data.label_weight)[user]
    levels = np_levels(params["filter"], np.asarray(data.user_vecs, np.float64)[user], config)
    share = np.array([np_between_class_share(level, np.asarray(data.labels)[user], w) for level in levels])
    assert np.all((share > 0) & (share < 1))
    expected = np.mean(np.asarray(m["bpr"]) + np.asarray(m["lambda"]) * share) + config.beta * float(m["reg"])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_between_class_share_is_zero_for_equal_class_means_and_one_without_spread_inside_classes():
    rng = np.random.default_rng(13)
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    weight = jnp.ones(6)
    centred = rng.normal(size=(1, 3, 1, D))
    same_means = jnp.asarray(np.concatenate([centred, -centred], axis=2).reshape(1, 6, D))  # every class mean is 0
    np.testing.assert_allclose(np.asarray(cofair.between_class_share(same_means, labels, weight, 3)), [0.0], atol=1e-6)
    on_means = jnp.asarray(np.repeat(rng.normal(size=(1, 3, D)), 2, axis=1))  # each user sits on their class mean
    np.testing.assert_allclose(np.asarray(cofair.between_class_share(on_means, labels, weight, 3)), [1.0], rtol=1e-5)


def test_between_class_share_ignores_scale_and_zero_weight_users():
    """Shrinking a level does not lower its share, and a user with weight 0 (withheld label, padding) has no say."""
    rng = np.random.default_rng(14)
    x = jnp.asarray(rng.normal(size=(2, 8, D)) + np.arange(8)[None, :, None] % 2, jnp.float32)
    labels = jnp.array([0, 1, 0, 1, 0, 1, 0, 1])
    weight = jnp.array([1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 0.0, 1.0])
    share = np.asarray(cofair.between_class_share(x, labels, weight, 2))
    np.testing.assert_allclose(np.asarray(cofair.between_class_share(0.1 * x, labels, weight, 2)), share, rtol=1e-5)
    moved = x.at[:, 6].set(100.0)
    np.testing.assert_allclose(np.asarray(cofair.between_class_share(moved, labels, weight, 2)), share, rtol=1e-5)
    assert np.all(share > 0)


# ----------------------------------------------------------------------------------------------- validation


def test_make_data_prior_counts_only_labelled_users():
    data = cofair.make_data(np.zeros((4, 2)), np.zeros((3, 2)), [0, 1, 1, 2], 3, label_weight=[1, 1, 0, 1])
    np.testing.assert_allclose(np.asarray(data.prior), [1 / 3, 1 / 3, 1 / 3])
    assert data.num_classes == 3 and data.labels.dtype == jnp.int32


@pytest.mark.parametrize(
    "labels, num_classes",
    [
        ([0, 1, 2], 2),  # label out of range
        ([0, -1, 1], 2),  # negative label
        ([0, 0, 0], 1),  # fewer than two classes
        ([0, 1], 2),  # wrong length
        ([[0, 1, 0]], 2),  # wrong rank
    ],
)
def test_make_data_rejects_bad_labels(labels, num_classes):
    with pytest.raises(ValueError):
        cofair.make_data(np.zeros((3, 2)), np.zeros((5, 2)), labels, num_classes)


@pytest.mark.parametrize("overrides", [dict(levels=0), dict(beta=-0.1), dict(adversary="wasserstein"),
                                       dict(alpha=-1.0), dict(train=dict(learning_rate=0.0)),
                                       dict(discriminator_learning_rate=0.0),
                                       dict(discriminator_layers=0), dict(exposure_weight=-1.0),
                                       dict(exposure_temperature=0.0), dict(exposure_k=0),
                                       dict(exposure_candidates=0)])
def test_config_rejects_invalid_values(overrides):
    with pytest.raises(ValueError):  # a "train" entry holds the fields of the [cofair.train] loop section
        cofair.CofairConfig(**{k: TrainConfig(**v) if k == "train" else v for k, v in overrides.items()})


# ----------------------------------------------------------------------------------------------- mean_gap end to end


def test_mean_gap_levels_remove_a_planted_attribute_in_order():
    """Users whose embedding carries their binary attribute along one direction: after training with the
    ``mean_gap`` adversary, the share of variance between the class means falls from level to level, and the top
    level keeps little of level 0's, for the training users and for fresh users drawn the same way."""
    rng = np.random.default_rng(21)
    num_users, num_items, dim = 256, 40, 8

    def draw_users(n):
        labels = rng.integers(0, 2, n)
        return rng.normal(size=(n, dim)) + 1.5 * (2 * labels[:, None] - 1) * np.eye(dim)[0], labels

    user_vecs, labels = draw_users(num_users)
    item_vecs = rng.normal(size=(num_items, dim))
    data = cofair.make_data(user_vecs.astype(np.float32), item_vecs.astype(np.float32), labels, 2)
    config = cofair.CofairConfig(levels=3, shared_dim=16, adapter_dim=16, lambda0=0.05, alpha=0.5, beta=0.02,
                                 adversary="mean_gap", residual=True,
                                 train=TrainConfig(learning_rate=1e-2, batch_size=512))
    scores = user_vecs @ item_vecs.T
    pos = np.argmax(scores + rng.gumbel(size=scores.shape), axis=1)
    neg = rng.integers(0, num_items, (300, 512))
    users = rng.integers(0, num_users, (300, 512))
    batches = {"user": jnp.asarray(users, jnp.int32), "pos": jnp.asarray(pos[users], jnp.int32),
               "neg": jnp.asarray(neg, jnp.int32), "weight": jnp.ones((300, 512))}
    step = cofair.make_train_step(data, dot, config)
    state = cofair.init_state(jax.random.PRNGKey(3), data, config)
    state, _ = jax.jit(lambda s: jax.lax.scan(lambda c, b: step(c, b, jax.random.PRNGKey(0)), s, batches))(state)
    fresh_vecs, fresh_labels = draw_users(num_users)
    for vecs, classes in ((data.user_vecs, data.labels), (fresh_vecs, fresh_labels)):
        levels = cofair.level_embeddings(state.params["filter"], jnp.asarray(vecs, jnp.float32), config)
        share = np.asarray(cofair.between_class_share(levels, jnp.asarray(classes), jnp.ones(num_users), 2))
        assert share[0] > 0.2  # the attribute is planted
        assert np.all(np.diff(share) < 0), share
        assert share[-1] < 0.25 * share[0], share


# ----------------------------------------------------------------------------------------------- exposure term


@pytest.mark.parametrize("adversary", ["capped", "mean_gap"])
def test_exposure_term_adds_gamma_lambda_times_the_soft_exposure_gap(adversary):
    """Per user (U <= rows), the labelled users present in the batch each count once in the exposure gap."""
    data = make_toy_data(31, with_exclude=True)
    base = small_config(adversary=adversary, exposure_k=3, exposure_candidates=8, exposure_temperature=0.2)
    params = random_params(32, base)
    batch = make_batch(33, 40)
    loss0, m0 = jit_filter_loss(params, data, batch, base, per_user=True)
    assert np.all(np.asarray(m0["exposure_gap"]) == 0.0)
    gamma = 2.5
    loss, m = jit_filter_loss(params, data, batch, dataclasses.replace(base, exposure_weight=gamma), per_user=True)
    rows = np.asarray(batch["user"])[np.asarray(batch["weight"]) > 0]
    present = np.zeros(U, np.float32)
    present[rows] = 1.0
    present *= np.asarray(data.label_weight)
    levels = cofair.adapted_embeddings(params["filter"], data.user_vecs, base)
    gap = soft_exposure_gap(levels, data.item_vecs, data.exclude, data.labels, jnp.asarray(present), 2, 3, 0.2, 8)
    np.testing.assert_allclose(np.asarray(m["exposure_gap"]), np.asarray(gap), rtol=1e-5)
    assert np.all(np.asarray(gap) > 0)
    expected = float(loss0) + gamma * float(np.mean(np.asarray(m["lambda"]) * np.asarray(gap)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_exposure_term_needs_the_items_to_mask_and_a_well_shaped_mask():
    config = small_config(exposure_weight=1.0)
    with pytest.raises(ValueError, match="exclude"):
        cofair.make_train_step(make_toy_data(0), dot, config)
    cofair.make_train_step(make_toy_data(0, with_exclude=True), dot, config)
    with pytest.raises(ValueError, match="exclude"):
        cofair.make_data(np.zeros((3, 2)), np.zeros((5, 2)), [0, 1, 0], 2, exclude=np.zeros((3, 4), bool))


def test_exposure_term_trains_the_levels_toward_equal_exposure():
    """Two groups that prefer different items: training with the exposure term lowers the top level's soft gap
    more than training without it, from the same start."""
    rng = np.random.default_rng(41)
    num_users, num_items, dim = 128, 60, 8
    labels = rng.integers(0, 2, num_users)
    user_vecs = rng.normal(size=(num_users, dim)) + 1.5 * (2 * labels[:, None] - 1) * np.eye(dim)[0]
    item_vecs = rng.normal(size=(num_items, dim))
    exclude = rng.random((num_users, num_items)) < 0.05
    data = cofair.make_data(user_vecs.astype(np.float32), item_vecs.astype(np.float32), labels, 2, exclude=exclude)
    scores = user_vecs @ item_vecs.T
    pos = np.argmax(scores + rng.gumbel(size=scores.shape), axis=1)
    users = rng.integers(0, num_users, (150, 256))
    batches = {"user": jnp.asarray(users, jnp.int32), "pos": jnp.asarray(pos[users], jnp.int32),
               "neg": jnp.asarray(rng.integers(0, num_items, (150, 256)), jnp.int32), "weight": jnp.ones((150, 256))}
    gaps = {}
    for gamma in (0.0, 5.0):
        config = cofair.CofairConfig(levels=2, shared_dim=16, adapter_dim=16, lambda0=0.2, alpha=0.2,
                                     adversary="capped", discriminator_layers=1, residual=True,
                                     train=TrainConfig(learning_rate=1e-2, batch_size=256), exposure_weight=gamma, exposure_k=5, exposure_candidates=12)
        step = cofair.make_train_step(data, dot, config)
        state = cofair.init_state(jax.random.PRNGKey(5), data, config)
        state, _ = jax.jit(lambda s: jax.lax.scan(lambda c, b: step(c, b, jax.random.PRNGKey(0)), s, batches))(state)
        levels = cofair.level_embeddings(state.params["filter"], data.user_vecs, config)
        gaps[gamma] = np.asarray(soft_exposure_gap(levels, data.item_vecs, data.exclude, data.labels,
                                                   jnp.ones(num_users), 2, 5, 0.05, 12))
    assert gaps[0.0][0] > 0.05  # level 0: the groups are shown different items
    assert gaps[5.0][-1] < 0.5 * gaps[0.0][-1], gaps


def test_per_user_and_per_row_batches_give_the_same_exposure_term():
    """Each labelled user of the batch counts once in the exposure term, however many rows they have."""
    config = small_config(adversary="capped", exposure_weight=1.5, exposure_k=3, exposure_candidates=8,
                          exposure_temperature=0.2)
    data = make_toy_data(3, 2, withheld=(0, 5, 9), with_exclude=True)
    params = random_params(5, config)
    batch = make_batch(31, 24, num_padding=4)
    assert len(np.unique(np.asarray(batch["user"]))) < 24
    (row_loss, row_metrics), row_grads = filter_value_and_grad(params, data, batch, config, per_user=False)
    (user_loss, user_metrics), user_grads = filter_value_and_grad(params, data, batch, config, per_user=True)
    assert np.all(np.asarray(user_metrics["exposure_gap"]) > 0)
    np.testing.assert_allclose(float(user_loss), float(row_loss), rtol=1e-5)
    chex.assert_trees_all_close(user_metrics, row_metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(user_grads, row_grads, rtol=1e-4, atol=1e-6)
