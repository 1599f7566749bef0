"""DifFaiRec: group vectors by mean pooling and PCA against numpy, the counterfactual module's group swap, the
combined objective against a hand computation (one step, both conditions sharing t, noise and dropout mask), the
step compiling once, the averaged and factual scorers against hand-rolled reverse loops, and config validation."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.backbones import diffusion
from jaxfair.methods import diffairec

U, I, G, D = 12, 9, 2, 4
GROUPS = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1], np.int32)  # 5 in group 0, 7 in group 1


def interactions(seed=0, users=U, items=I):
    rng = np.random.default_rng(seed)
    x = (rng.random((users, items)) < 0.4).astype(np.float32)
    x[:, 0] = 1.0  # no empty row
    return x


def np_normalised(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------- group vectors


def test_mean_group_vectors_average_the_normalised_rows_of_each_group():
    x = interactions()
    got = np.asarray(diffairec.mean_group_vectors(x, GROUPS, G))
    xn = np_normalised(x)
    expected = np.stack([xn[GROUPS == g].mean(axis=0) for g in range(G)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(diffairec.normalize_rows(jnp.zeros((1, 3)))), 0.0)  # empty row stays 0


@pytest.mark.parametrize("components", [1, 2])
def test_pca_tokens_are_the_scaled_leading_singular_vectors_signed_towards_the_group_mean(components):
    x = interactions(1)
    tokens = np.asarray(diffairec.pca_group_vectors(x, GROUPS, G, components), np.float64)
    assert tokens.shape == (G, components, I)
    xn = np_normalised(x)
    for g in range(G):
        rows = xn[GROUPS == g]
        mean = rows.mean(axis=0)
        _, s, vt = np.linalg.svd(rows - mean, full_matrices=False)
        assert s[components - 1] - s[components] > 1e-3  # the directions are well defined
        for k in range(components):
            # the documented sign convention: <v, y_g> >= 0
            assert tokens[g, k] @ mean >= 0
            v = vt[k] * (1.0 if vt[k] @ mean >= 0 else -1.0)
            np.testing.assert_allclose(tokens[g, k], s[k] / np.sqrt(len(rows)) * v, atol=2e-5)
            # the scale is the group's standard deviation along the direction
            np.testing.assert_allclose(np.linalg.norm(tokens[g, k]), np.std((rows - mean) @ vt[k]), rtol=1e-4)


def test_group_tokens_have_one_token_per_group_for_mean_pooling():
    x = interactions()
    mean = diffairec.group_tokens(x, GROUPS, G, diffairec.DifFaiRecConfig(group_vectors="mean", components=3))
    chex.assert_shape(mean, (G, 1, I))
    np.testing.assert_allclose(mean[:, 0], diffairec.mean_group_vectors(x, GROUPS, G))
    pca = diffairec.group_tokens(x, GROUPS, G, diffairec.DifFaiRecConfig(group_vectors="pca", components=2))
    chex.assert_shape(pca, (G, 2, I))


# ------------------------------------------------------------------------------------------ counterfactual module


def cf_params(seed=0, items=I):
    cf = diffairec.init_counterfactual(jax.random.key(seed), items, D)
    cf["encoder"]["b"] = jax.random.normal(jax.random.key(seed + 100), (D,))  # a nonzero bias
    return cf


def test_a_user_equal_to_their_group_vector_is_mapped_onto_the_other_groups_vector():
    x = interactions(2)
    x[GROUPS == 0] = x[0]  # group 0's users all share one row, so y_0 is that row normalised (norm 1)
    tokens = diffairec.group_tokens(x, GROUPS, G, diffairec.DifFaiRecConfig())
    y = np.asarray(tokens[:, 0], np.float64)
    np.testing.assert_allclose(y[0], np_normalised(x[:1])[0], rtol=1e-5)
    cf = cf_params()
    users = np.array([0, 3])  # both in group 0
    z = diffairec.user_latent(cf, jnp.asarray(x[users]))
    conditions = diffairec.counterfactual_latents(cf, z, jnp.asarray(GROUPS[users]), tokens)
    w, b = np.asarray(cf["encoder"]["w"], np.float64), np.asarray(cf["encoder"]["b"], np.float64)
    for row in range(2):
        np.testing.assert_allclose(conditions[1, row], y[1] @ w + b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_groups", [2, 3])
def test_mean_pooled_counterfactual_shifts_the_latent_by_the_encoded_group_difference(num_groups):
    x = interactions(3)
    groups = GROUPS if num_groups == 2 else np.arange(U, dtype=np.int32) % 3
    tokens = diffairec.group_tokens(x, groups, num_groups, diffairec.DifFaiRecConfig())
    cf = cf_params(1)
    z = diffairec.user_latent(cf, jnp.asarray(x))
    conditions = np.asarray(diffairec.counterfactual_latents(cf, z, jnp.asarray(groups), tokens), np.float64)
    assert conditions.shape == (num_groups, U, D)
    w = np.asarray(cf["encoder"]["w"], np.float64)
    y = np.asarray(tokens[:, 0], np.float64)
    xn = np_normalised(x)
    np.testing.assert_allclose(z, xn @ w + np.asarray(cf["encoder"]["b"]), rtol=1e-5, atol=1e-6)
    for g in range(num_groups):
        np.testing.assert_allclose(conditions[g] - np.asarray(z), (y[g][None] - y[groups]) @ w, atol=1e-5)
    # the own group's row is the user's latent itself
    np.testing.assert_allclose(conditions[groups, np.arange(U)], z, atol=1e-6)


def test_pca_counterfactual_keeps_the_own_row_and_moves_the_others():
    x = interactions(4)
    tokens = diffairec.group_tokens(x, GROUPS, G, diffairec.DifFaiRecConfig(group_vectors="pca", components=2))
    cf = cf_params(2)
    z = diffairec.user_latent(cf, jnp.asarray(x))
    conditions = np.asarray(diffairec.counterfactual_latents(cf, z, jnp.asarray(GROUPS), tokens))
    np.testing.assert_allclose(conditions[GROUPS, np.arange(U)], z, atol=1e-6)
    assert np.all(np.abs(conditions[1 - GROUPS, np.arange(U)] - np.asarray(z)).max(axis=1) > 1e-4)


@pytest.mark.parametrize("group_vectors, components", [("mean", 1), ("pca", 2)])
def test_input_shift_is_the_group_swap_in_interaction_space(group_vectors, components):
    """``xn_u + delta_g / ||x_u||`` encodes to the counterfactual latent ``C(z_u, g)``; the own group's shift is 0."""
    x = interactions(6) * 2.0  # rows of norm > 1: the shift scales with ||x_u||
    method = diffairec.DifFaiRecConfig(group_vectors=group_vectors, components=components)
    tokens = diffairec.group_tokens(x, GROUPS, G, method)
    cf = cf_params(3)
    z = diffairec.user_latent(cf, jnp.asarray(x))
    shifts = np.asarray(diffairec.input_shifts(cf, jnp.asarray(x), z, jnp.asarray(GROUPS), tokens), np.float64)
    conditions = np.asarray(diffairec.counterfactual_latents(cf, z, jnp.asarray(GROUPS), tokens), np.float64)
    assert shifts.shape == (G, U, I)
    np.testing.assert_allclose(shifts[GROUPS, np.arange(U)], 0.0, atol=1e-7)
    assert np.all(np.abs(shifts[1 - GROUPS, np.arange(U)]).max(axis=1) > 1e-3)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    w, b = np.asarray(cf["encoder"]["w"], np.float64), np.asarray(cf["encoder"]["b"], np.float64)
    for g in range(G):
        np.testing.assert_allclose((np_normalised(x) + shifts[g] / norms) @ w + b, conditions[g], atol=2e-5)
    if group_vectors == "mean":  # the shift is ||x_u|| (y_g - y_own)
        y = np.asarray(tokens[:, 0], np.float64)
        np.testing.assert_allclose(shifts[1 - GROUPS, np.arange(U)], norms * (y[1 - GROUPS] - y[GROUPS]), atol=1e-5)


def test_other_groups_never_returns_the_own_group():
    own = jnp.asarray(np.tile([0, 1], 50), jnp.int32)
    np.testing.assert_array_equal(diffairec.other_groups(jax.random.key(0), own, 2), 1 - np.asarray(own))
    own3 = jnp.asarray(np.tile([0, 1, 2], 100), jnp.int32)
    picked = np.asarray(diffairec.other_groups(jax.random.key(1), own3, 3))
    assert np.all(picked != np.asarray(own3)) and np.all((picked >= 0) & (picked < 3))
    for g in range(3):  # both other groups are drawn
        assert set(picked[np.asarray(own3) == g].tolist()) == set(range(3)) - {g}


# ------------------------------------------------------------------------------------------------ training step


DC = diffusion.Config(steps=4, hidden=(16,), time_dim=4, dropout=0.5, history=2)
TX = optax.adam(1e-2)
BATCH = {"users": jnp.array([0, 1, 2, 3, 4, 5, 6, 0], jnp.int32),
         "weight": jnp.array([1, 1, 1, 1, 1, 1, 1, 0], jnp.float32)}


@pytest.fixture(scope="module")
def setup():
    x = interactions(5)
    method = diffairec.DifFaiRecConfig(latent_dim=D)
    tokens = diffairec.group_tokens(x, GROUPS, G, method)
    params = diffairec.init_params(jax.random.key(0), I, DC, method)
    params["counterfactual"]["encoder"]["b"] = jnp.full((D,), 0.3, jnp.float32)  # not weakly typed
    return x, tokens, params


@functools.partial(jax.jit, static_argnames=("swap", "num_groups"))
def hand_losses(params, x, tokens, batch, key, sampler, swap="condition", groups=GROUPS, num_groups=G):
    """The step's losses written out: the key split as the step's, one shared dropout mask, the counterfactual of
    the drawn other group (for two groups, the other one) by the mean-pooling formula ``z + W_e^T (y_other -
    y_own)``; for ``swap = "input"`` the counterfactual pass also reads ``x_t + sqrt(abar_t) ||x_0|| (y_other -
    y_own)``."""
    schedule = diffusion.make_schedule(DC)
    users, weight = batch["users"], batch["weight"]
    x0 = x[users]
    k_t, k_noise, k_drop, k_group = jax.random.split(key, 4)
    t, p_t = diffusion.sample_timesteps(DC, sampler, k_t, users.shape[0])
    noise = jax.random.normal(k_noise, x0.shape)
    abar = schedule.abar[t][:, None]
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise
    keep = jax.random.bernoulli(k_drop, 0.5, x0.shape)
    dropped = jnp.where(keep, x_t / 0.5, 0.0)
    cf = params["counterfactual"]
    w = cf["encoder"]["w"]
    z = x0 / jnp.linalg.norm(x0, axis=1, keepdims=True) @ w + cf["encoder"]["b"]
    y = tokens[:, 0]
    own = jnp.asarray(groups)[users]
    other = diffairec.other_groups(k_group, own, num_groups)  # 1 - own for two groups (tested above)
    z_cf = z + (y[other] - y[own]) @ w
    if swap == "input":
        x_t_cf = x_t + jnp.sqrt(abar) * jnp.linalg.norm(x0, axis=1, keepdims=True) * (y[other] - y[own])
        dropped_cf = jnp.where(keep, x_t_cf / 0.5, 0.0)
    else:
        dropped_cf = dropped
    factual = diffusion.denoise(params["denoiser"], dropped, t, z)
    counter = diffusion.denoise(params["denoiser"], dropped_cf, t, z_cf)
    mse = jnp.mean((x0 - factual) ** 2, axis=1)
    mse_cf = jnp.mean((x0 - counter) ** 2, axis=1)
    scale = diffusion.timestep_weight(DC, schedule, t) / (DC.steps * p_t)
    mean = lambda v: jnp.sum(v * weight) / jnp.sum(weight)  # noqa: E731
    agreement = jnp.mean((factual - counter) ** 2, axis=1)
    return {"loss_factual": mean(scale * mse), "loss_cf": mean(scale * mse_cf), "mse": mean(mse),
            "mse_cf": mean(mse_cf), "agreement": mean(agreement)}


@pytest.fixture(scope="module")
def steps(setup):
    """The jitted steps with mean-pooled tokens, without and with the counterfactual term."""
    x, tokens, _ = setup

    def make(weight, swap="condition"):
        method = diffairec.DifFaiRecConfig(latent_dim=D, counterfactual_weight=weight, swap=swap)
        return jax.jit(diffairec.make_train_step(DC, method, x, GROUPS, tokens, TX))

    return {0.0: make(0.0), 1.0: make(1.0), "input": make(1.0, "input")}


@pytest.mark.parametrize("weight, importance", [(0.0, False), (1.0, False), (1.0, True), ("input", False)])
def test_step_losses_equal_a_hand_computation(setup, steps, weight, importance):
    x, tokens, params = setup
    state = diffusion.init_state(params, TX, DC)
    if importance:  # a full loss history: timesteps drawn by it, the loss divided by T p(t)
        history = jnp.array([[0.1, 0.2], [1.0, 3.0], [0.5, 0.5], [2.0, 0.0]], jnp.float32)
        state = state._replace(sampler=diffusion.TimestepSampler(history, jnp.full((DC.steps,), 2, jnp.int32)))
        assert not np.allclose(diffusion.timestep_law(DC, state.sampler), 1 / DC.steps)
    key = jax.random.key(7)
    _, metrics = steps[weight](state, BATCH, key)
    swap = "input" if weight == "input" else "condition"
    expected = {k: float(v) for k, v in
                hand_losses(params, jnp.asarray(x), tokens, BATCH, key, state.sampler, swap).items()}
    weight = 1.0 if weight == "input" else weight
    assert float(metrics["mse"]) == pytest.approx(expected["mse"], rel=1e-5)
    assert float(metrics["mse_cf"]) == pytest.approx(expected["mse_cf"], rel=1e-5)
    assert float(metrics["agreement"]) == pytest.approx(expected["agreement"], rel=1e-4)
    assert expected["agreement"] > 0  # the two conditions do predict differently
    assert float(metrics["loss"]) == pytest.approx(expected["loss_factual"] + weight * expected["loss_cf"], rel=1e-5)


def test_input_swap_with_three_groups_shifts_towards_the_drawn_other_group(setup):
    x, _, params = setup
    groups = np.arange(U, dtype=np.int32) % 3
    method = diffairec.DifFaiRecConfig(latent_dim=D, swap="input")
    tokens = diffairec.group_tokens(x, groups, 3, method)
    step = jax.jit(diffairec.make_train_step(DC, method, x, groups, tokens, TX))
    state = diffusion.init_state(params, TX, DC)
    key = jax.random.key(11)
    _, metrics = step(state, BATCH, key)
    expected = hand_losses(params, jnp.asarray(x), tokens, BATCH, key, state.sampler, "input", groups, 3)
    assert float(metrics["mse_cf"]) == pytest.approx(float(expected["mse_cf"]), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(expected["loss_factual"] + expected["loss_cf"]), rel=1e-5)


def test_input_swap_needs_the_denoiser_to_predict_x0(setup):
    x, tokens, _ = setup
    method = diffairec.DifFaiRecConfig(latent_dim=D, swap="input")
    eps = dataclasses.replace(DC, mean_type="eps")
    for make in (lambda: diffairec.make_train_step(eps, method, x, GROUPS, tokens, TX),
                 lambda: diffairec.make_scorer(eps, method, GROUPS, tokens)):
        with pytest.raises(ValueError, match="x0"):
            make()
    diffairec.make_train_step(eps, diffairec.DifFaiRecConfig(latent_dim=D), x, GROUPS, tokens, TX)  # condition: fine


def test_mean_pooling_attends_over_a_single_token_so_query_and_key_get_no_gradient(setup, steps):
    _, _, params = setup
    state = diffusion.init_state(params, TX, DC)
    new, _ = steps[1.0](state, BATCH, jax.random.key(3))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    assert all(jax.tree.leaves(moved["denoiser"])) and all(jax.tree.leaves(moved["counterfactual"]["encoder"]))
    assert not moved["counterfactual"]["query"] and not moved["counterfactual"]["key"]


@pytest.mark.parametrize("swap", ["condition", "input"])
def test_pca_step_compiles_once_and_trains_every_part(setup, swap):
    x, _, params = setup
    method = diffairec.DifFaiRecConfig(latent_dim=D, group_vectors="pca", components=2, swap=swap)
    tokens = diffairec.group_tokens(x, GROUPS, G, method)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(diffairec.make_train_step(DC, method, x, GROUPS, tokens, TX), n=1))
    state = first = diffusion.init_state(params, TX, DC)
    for k in range(3):
        batch = jax.tree.map(lambda a: jnp.roll(a, k), BATCH)
        state, metrics = step(state, batch, jax.random.key(k))
    chex.assert_tree_all_finite((state.params, metrics))
    assert set(metrics) == {"loss", "mse", "mse_cf", "agreement", "grad_norm"}
    assert float(metrics["grad_norm"]) > 0 and float(metrics["agreement"]) > 0
    assert int(state.step) == 3
    # the sampler recorded one factual batch mean per present timestep and step
    assert 3 <= int(state.sampler.counts.sum()) <= 3 * DC.steps
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), first.params, state.params)
    assert all(jax.tree.leaves(moved))  # with two tokens per group the attention's query and key train too


# ----------------------------------------------------------------------------------------------------- scoring


@jax.jit
def hand_serving(params, x, conditions, shifts=None):
    """The reverse process with the denoiser's output averaged over ``conditions`` (a list of ``(B, d)``), as a
    loop, and the first hidden layer at the first reverse step averaged the same way; with ``shifts`` (a list of
    ``(B, I)``, one per condition) the denoiser reads ``x_t + sqrt(abar_t) shift`` under each condition."""
    schedule = diffusion.make_schedule(DC)
    shifts = shifts or [jnp.zeros_like(x)] * len(conditions)
    moved = lambda x_t, d, step: x_t + jnp.sqrt(schedule.abar[step]) * d  # noqa: E731
    x_t = x
    for step in range(DC.steps - 1, -1, -1):
        t = jnp.full((x.shape[0],), step, jnp.int32)
        out = sum(diffusion.denoise(params["denoiser"], moved(x_t, d, step), t, c)
                  for c, d in zip(conditions, shifts)) / len(conditions)
        x_t = schedule.coef_x0[step] * out + schedule.coef_xt[step] * x_t
    top = DC.steps - 1
    first = jnp.full((x.shape[0],), top, jnp.int32)
    latent = sum(diffusion.hidden_state(params["denoiser"], moved(x, d, top), first, c)
                 for c, d in zip(conditions, shifts)) / len(conditions)
    return x_t, latent


@pytest.fixture(scope="module")
def served(setup):
    """Scores and latents of every user under each serving mode."""
    x, tokens, params = setup
    users = jnp.arange(U, dtype=jnp.int32)
    out = {}
    for serve, swap in (("factual", "condition"), ("average", "condition"), ("average", "input"),
                        ("factual", "input")):
        method = diffairec.DifFaiRecConfig(latent_dim=D, serve=serve, swap=swap)
        scores = diffairec.make_scorer(DC, method, GROUPS, tokens)(params, jnp.asarray(x), users)
        latents = diffairec.make_latent_fn(DC, method, GROUPS, tokens)(params, jnp.asarray(x), users)
        out[serve if swap == "condition" else f"{serve}_input"] = np.asarray(scores), np.asarray(latents)
    return out


@pytest.mark.parametrize("serve", ["factual", "average", "average_input"])
def test_scorer_runs_the_reverse_process_under_the_served_conditions(setup, served, serve):
    x, tokens, params = setup
    scores, latents = served[serve]
    assert scores.shape == (U, I) and np.all(np.isfinite(scores))
    assert latents.shape == (U, DC.hidden[0]) and np.all(np.isfinite(latents))

    cf = params["counterfactual"]
    w = cf["encoder"]["w"]
    z = jnp.asarray(np_normalised(x), jnp.float32) @ w + cf["encoder"]["b"]
    y = tokens[:, 0]
    shifts = None
    if serve == "factual":
        conditions = [z]
    else:  # the user's own latent and their counterfactual in the other group
        conditions = [z, z + (y[1 - GROUPS] - y[GROUPS]) @ w]
    if serve == "average_input":  # ... and the other group's input moved by ||x_u|| (y_other - y_own)
        norms = jnp.linalg.norm(jnp.asarray(x), axis=1, keepdims=True)
        shifts = [jnp.zeros_like(jnp.asarray(x)), norms * (y[1 - GROUPS] - y[GROUPS])]
    expected_scores, expected_latents = hand_serving(params, jnp.asarray(x), conditions, shifts)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(latents, expected_latents, rtol=1e-5, atol=1e-6)


def test_factual_serving_is_the_same_for_either_swap(served):
    """The swap is a training-time choice; a user served under their own latent and vector sees no shift."""
    np.testing.assert_array_equal(served["factual"][0], served["factual_input"][0])
    np.testing.assert_array_equal(served["factual"][1], served["factual_input"][1])


def test_average_and_factual_serving_differ(served):
    for a, b in (("factual", "average"), ("average", "average_input")):
        assert not np.allclose(served[a][0], served[b][0], atol=1e-5)
        assert not np.allclose(served[a][1], served[b][1], atol=1e-5)


def test_scorer_reads_each_users_own_group(setup):
    """The scorer takes the users' ids to look up their groups: the same rows served as other users (of the other
    group) get other counterfactuals, hence other scores."""
    x, tokens, params = setup
    method = diffairec.DifFaiRecConfig(latent_dim=D, serve="average")
    scorer = diffairec.make_scorer(DC, method, GROUPS, tokens)
    rows = jnp.asarray(x[[0, 1]])
    same = np.asarray(scorer(params, rows, jnp.array([0, 1], jnp.int32)))
    swapped = np.asarray(scorer(params, rows, jnp.array([1, 0], jnp.int32)))  # groups 0, 1 -> 1, 0
    assert not np.allclose(same, swapped, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("overrides, message", [
    ({"group_vectors": "median"}, "group_vectors"),
    ({"serve": "counterfactual"}, "serve"),
    ({"components": 0}, "components"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"counterfactual_weight": -0.5}, "counterfactual_weight"),
    ({"swap": "output"}, "swap"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        diffairec.DifFaiRecConfig(**overrides)


def test_default_config_is_valid_and_frozen():
    config = diffairec.DifFaiRecConfig()
    assert (config.group_vectors, config.serve, config.components, config.swap) == ("mean", "average", 1, "condition")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.serve = "factual"
