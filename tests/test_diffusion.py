"""The DiffRec diffusion backbone: the schedules' constants, the forward process's statistics, the DDPM posterior
coefficients, the eps parametrisation, the denoiser's shapes and dropout, the scanned reverse process against a plain
loop, the SNR loss weights, the importance-sampling history (law and ring buffer), and the jitted training step
(compiles once, learns a planted dataset) with its padded user batches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.backbones import diffusion

B, I = 5, 7


def config(**overrides):
    base = dict(steps=5, hidden=(16,), time_dim=4, dropout=0.0)
    base.update(overrides)
    return diffusion.Config(**base)


# ------------------------------------------------------------------------------------------- schedule constants


def test_linear_schedule_has_linear_betas_and_abar_their_cumulative_product():
    cfg = config(schedule="linear", steps=4, noise_scale=0.5, noise_min=0.02, noise_max=0.2)
    schedule = diffusion.make_schedule(cfg)
    betas = np.array([0.01, 0.04, 0.07, 0.10])  # 0.5 * linspace(0.02, 0.2, 4)
    abar = np.array([0.99, 0.99 * 0.96, 0.99 * 0.96 * 0.93, 0.99 * 0.96 * 0.93 * 0.90])
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(schedule.abar, abar, rtol=1e-6)
    np.testing.assert_allclose(schedule.abar_prev, np.concatenate([[1.0], abar[:-1]]), rtol=1e-6)
    np.testing.assert_allclose(schedule.snr, abar / (1 - abar), rtol=1e-5)


def test_linear_var_schedule_makes_one_minus_abar_the_linear_range():
    cfg = config(schedule="linear-var", steps=4, noise_scale=0.5, noise_min=0.02, noise_max=0.2)
    schedule = diffusion.make_schedule(cfg)
    np.testing.assert_allclose(1 - np.asarray(schedule.abar, np.float64), [0.01, 0.04, 0.07, 0.10], rtol=1e-5)
    # the betas are the ones whose cumulative product is that abar
    np.testing.assert_allclose(np.cumprod(1 - np.asarray(schedule.betas, np.float64)), schedule.abar, rtol=1e-6)


def test_cosine_schedule_is_decreasing_in_zero_one():
    abar = np.asarray(diffusion.make_schedule(config(schedule="cosine", steps=8)).abar)
    assert np.all(np.diff(abar) < 0) and abar[0] < 1 and abar[-1] > 0


def test_forward_noising_has_mean_sqrt_abar_x0_and_variance_one_minus_abar():
    cfg = config(schedule="linear", steps=4, noise_scale=1.0, noise_min=0.1, noise_max=0.4)
    schedule = diffusion.make_schedule(cfg)
    n, t = 40_000, 2
    x0_row = np.array([0.0, 1.0, 1.0, 0.0, 1.0], np.float32)
    x0 = jnp.broadcast_to(jnp.asarray(x0_row), (n, x0_row.size))
    noise = jax.random.normal(jax.random.key(0), x0.shape)
    x_t = np.asarray(diffusion.q_sample(schedule, x0, jnp.full((n,), t, jnp.int32), noise), np.float64)

    abar_t = np.prod(1 - np.array([0.1, 0.2, 0.3]))  # betas are linspace(0.1, 0.4, 4)
    std = np.sqrt(1 - abar_t)
    mean_tol = 5 * std / np.sqrt(n)  # 5 standard errors
    var_tol = 5 * (1 - abar_t) * np.sqrt(2 / n)
    np.testing.assert_allclose(x_t.mean(axis=0), np.sqrt(abar_t) * x0_row, atol=mean_tol)
    np.testing.assert_allclose(x_t.var(axis=0), 1 - abar_t, atol=var_tol)
    # and the sample really is noisy: the variance is far from 0 and from 1
    assert 0.3 < x_t.var(axis=0).mean() < 0.8


# ---------------------------------------------------------------------------------------- posterior coefficients


def test_last_reverse_step_returns_the_predicted_x0():
    schedule = diffusion.make_schedule(config())
    assert float(schedule.coef_x0[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(schedule.coef_xt[0]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("schedule_name", ["linear", "linear-var", "cosine"])
def test_posterior_mean_is_the_product_of_the_two_gaussians(schedule_name):
    """q(x_{t-1} | x_t, x_0) ~ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}):
    completing the square gives the mean (sqrt(alpha_t)/beta_t x_t + sqrt(abar_{t-1})/(1-abar_{t-1}) x_0) / precision
    with precision alpha_t/beta_t + 1/(1-abar_{t-1})."""
    cfg = config(schedule=schedule_name, steps=6, noise_scale=1.0, noise_min=0.05, noise_max=0.5)
    schedule = diffusion.make_schedule(cfg)
    betas = np.asarray(schedule.betas, np.float64)
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    x0, x_t = rng.normal(size=I), rng.normal(size=I)
    for t in (1, 3, 5):
        alpha, prev = 1 - betas[t], abar[t - 1]
        precision = alpha / betas[t] + 1 / (1 - prev)
        expected = (np.sqrt(alpha) / betas[t] * x_t + np.sqrt(prev) / (1 - prev) * x0) / precision
        got = float(schedule.coef_x0[t]) * x0 + float(schedule.coef_xt[t]) * x_t
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_eps_prediction_inverts_the_forward_process():
    cfg = config(mean_type="eps", steps=6)
    schedule = diffusion.make_schedule(cfg)
    x0 = jax.random.bernoulli(jax.random.key(0), 0.4, (B, I)).astype(jnp.float32)
    noise = jax.random.normal(jax.random.key(1), (B, I))
    t = jnp.array([0, 1, 2, 4, 5], jnp.int32)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    np.testing.assert_allclose(diffusion.predicted_x0(cfg, schedule, noise, x_t, t), x0, atol=2e-5)
    # x0 mean type passes the output through; the training target follows the mean type
    np.testing.assert_array_equal(diffusion.predicted_x0(config(), schedule, noise, x_t, t), noise)
    np.testing.assert_array_equal(diffusion.target_of(cfg, x0, noise), noise)
    np.testing.assert_array_equal(diffusion.target_of(config(), x0, noise), x0)


# ---------------------------------------------------------------------------------------------------- denoiser


@pytest.fixture(scope="module")
def denoiser():
    cfg = config(hidden=(16, 8))
    plain = diffusion.init_denoiser(jax.random.key(0), I, cfg)
    return cfg, plain, diffusion.init_denoiser(jax.random.key(1), I, cfg, cond_dim=3)


def test_denoiser_maps_users_to_items_with_and_without_a_condition(denoiser):
    cfg, plain, conditioned = denoiser
    x_t = jax.random.normal(jax.random.key(2), (B, I))
    t = jnp.arange(B, dtype=jnp.int32) % cfg.steps
    cond = jax.random.normal(jax.random.key(3), (B, 3))
    out = diffusion.denoise(plain, x_t, t)
    out_c = diffusion.denoise(conditioned, x_t, t, cond)
    chex.assert_shape([out, out_c], (B, I))
    chex.assert_tree_all_finite((out, out_c))
    assert conditioned["layers"][0]["w"].shape == (I + cfg.time_dim + 3, 16)
    # the condition and the timestep both reach the output
    assert not np.allclose(out_c, diffusion.denoise(conditioned, x_t, t, cond + 1.0))
    assert not np.allclose(out, diffusion.denoise(plain, x_t, (t + 1) % cfg.steps))
    hidden = diffusion.hidden_state(conditioned, x_t, t, cond)
    chex.assert_shape(hidden, (B, 16))
    assert np.all(np.abs(hidden) <= 1)  # tanh


def test_averaged_denoiser_equals_the_mean_of_one_pass_per_condition(denoiser):
    cfg, _, conditioned = denoiser  # two hidden layers: the middle one runs per condition
    x_t = jax.random.normal(jax.random.key(2), (B, I))
    t = jnp.arange(B, dtype=jnp.int32) % cfg.steps
    conds = jax.random.normal(jax.random.key(4), (3, B, 3))
    looped = np.mean([np.asarray(diffusion.denoise(conditioned, x_t, t, c)) for c in conds], axis=0)
    np.testing.assert_allclose(diffusion.denoise_averaged(conditioned, x_t, t, conds), looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(  # one condition: the plain pass
        diffusion.denoise_averaged(conditioned, x_t, t, conds[:1]), diffusion.denoise(conditioned, x_t, t, conds[0]),
        rtol=1e-5, atol=1e-6)
    shifts = jax.random.normal(jax.random.key(5), (3, B, I))  # a per-condition move of the input
    looped = np.mean([np.asarray(diffusion.denoise(conditioned, x_t + d, t, c)) for c, d in zip(conds, shifts)], axis=0)
    np.testing.assert_allclose(diffusion.denoise_averaged(conditioned, x_t, t, conds, shifts), looped,
                               rtol=1e-5, atol=1e-6)


def test_dropout_changes_the_output_only_when_a_key_is_given(denoiser):
    _, params, _ = denoiser
    x_t = jax.random.normal(jax.random.key(2), (B, I))
    t = jnp.zeros((B,), jnp.int32)
    clean = diffusion.denoise(params, x_t, t)
    np.testing.assert_array_equal(diffusion.denoise(params, x_t, t, rate=0.5), clean)
    np.testing.assert_array_equal(diffusion.denoise(params, x_t, t, dropout_key=jax.random.key(0), rate=0.0), clean)
    dropped = diffusion.denoise(params, x_t, t, dropout_key=jax.random.key(0), rate=0.5)
    assert not np.allclose(dropped, clean)
    np.testing.assert_array_equal(diffusion.denoise(params, x_t, t, dropout_key=jax.random.key(0), rate=0.5), dropped)


# ---------------------------------------------------------------------------------------------- reverse process


def loop_reverse(cfg, schedule, predict, x, steps):
    """x_{t-1} = c1_t x0_hat(x_t, t) + c2_t x_t for t = steps-1 .. 0, one Python iteration per step."""
    for step in range(steps - 1, -1, -1):
        t = jnp.full((x.shape[0],), step, jnp.int32)
        x0_hat = diffusion.predicted_x0(cfg, schedule, predict(x, t), x, t)
        x = schedule.coef_x0[step] * x0_hat + schedule.coef_xt[step] * x
    return x


@pytest.mark.parametrize("mean_type", ["x0", "eps"])
@pytest.mark.parametrize("inference_steps", [0, 3])
def test_scanned_reverse_equals_a_python_loop(denoiser, mean_type, inference_steps):
    cfg, params, _ = denoiser
    cfg = diffusion.Config(**{**cfg.__dict__, "mean_type": mean_type, "inference_steps": inference_steps})
    schedule = diffusion.make_schedule(cfg)
    x = jax.random.bernoulli(jax.random.key(4), 0.4, (B, I)).astype(jnp.float32)
    predict = lambda x_t, t: diffusion.denoise(params, x_t, t)  # noqa: E731
    got = np.asarray(diffusion.reverse(cfg, schedule, predict, x))
    steps = inference_steps or cfg.steps
    np.testing.assert_allclose(got, loop_reverse(cfg, schedule, predict, x, steps), rtol=1e-5, atol=1e-5)
    # and the number of steps matters: the loop with one step fewer gives something else
    assert not np.allclose(got, loop_reverse(cfg, schedule, predict, x, steps - 1), atol=1e-4)


def test_reverse_visits_timesteps_s_minus_one_down_to_zero():
    cfg = config(steps=6, inference_steps=4)
    schedule = diffusion.make_schedule(cfg)
    visited = []

    def predict(x_t, t):
        jax.debug.callback(lambda t: visited.append(int(t[0])), t, ordered=True)
        return x_t

    jax.block_until_ready(diffusion.reverse(cfg, schedule, predict, jnp.ones((2, 3))))
    jax.effects_barrier()
    assert visited == [3, 2, 1, 0]


def test_scorer_is_the_unconditional_reverse_process_and_all_scores_pads_the_last_batch(denoiser):
    cfg, params, _ = denoiser
    schedule = diffusion.make_schedule(cfg)
    x = np.asarray(jax.random.bernoulli(jax.random.key(5), 0.4, (B, I)), np.float32)
    scorer = diffusion.make_scorer(cfg)
    scores = diffusion.all_scores(lambda rows, users: scorer(params, rows, users), x, batch_size=3)  # 3 + 2 padded
    expected = loop_reverse(cfg, schedule, lambda x_t, t: diffusion.denoise(params, x_t, t), jnp.asarray(x), cfg.steps)
    assert scores.shape == (B, I)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    latents = diffusion.make_latent_fn(cfg)(params, jnp.asarray(x), jnp.arange(B))
    first = jnp.full((B,), cfg.steps - 1, jnp.int32)
    np.testing.assert_allclose(latents, diffusion.hidden_state(params, jnp.asarray(x), first), rtol=1e-6)


def test_all_scores_passes_each_row_with_its_user_id():
    seen = []

    def score_batch(rows, users):
        assert rows.shape == (4, 2)  # every call has the same shape
        seen.append(np.asarray(users))
        return rows * 10 + np.asarray(users)[:, None]

    x = np.arange(18, dtype=np.float32).reshape(9, 2)
    out = diffusion.all_scores(score_batch, x, batch_size=4)
    np.testing.assert_array_equal(out, x * 10 + np.arange(9)[:, None])
    np.testing.assert_array_equal(np.concatenate(seen)[:9], np.arange(9))


@pytest.mark.parametrize("overrides", [
    {"steps": 0}, {"schedule": "sqrt"}, {"mean_type": "v"}, {"noise_scale": 200.0},
    {"noise_min": 0.2, "noise_max": 0.1}, {"hidden": ()}, {"time_dim": 3}, {"dropout": 1.0}, {"history": 0}, {"inference_steps": 6},
])
def test_config_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        config(**overrides)


def test_inference_steps_zero_means_every_step():
    assert config(steps=5).reverse_steps == 5 and config(steps=5, inference_steps=2).reverse_steps == 2


# ------------------------------------------------------------------------------------------------- loss weights


def test_timestep_weight_is_the_snr_difference_for_x0_and_one_otherwise():
    cfg = config(steps=5)  # linear-var: 1 - abar = 0.1 * linspace(1e-3, 1e-2, 5)
    schedule = diffusion.make_schedule(cfg)
    abar = 1 - 0.1 * np.linspace(1e-3, 1e-2, 5)
    snr = abar / (1 - abar)
    t = jnp.array([0, 1, 2, 4, 0], jnp.int32)
    expected = [1.0, snr[0] - snr[1], snr[1] - snr[2], snr[3] - snr[4], 1.0]
    np.testing.assert_allclose(diffusion.timestep_weight(cfg, schedule, t), expected, rtol=1e-5)
    assert np.all(np.asarray(expected[1:4]) > 0)
    for other in (config(steps=5, mean_type="eps"), config(steps=5, reweight=False)):
        np.testing.assert_array_equal(diffusion.timestep_weight(other, schedule, t), np.ones(5))


# ------------------------------------------------------------------------------------------ importance sampling


def test_timestep_law_is_uniform_until_every_history_is_full_then_root_mean_square():
    cfg = config(steps=4, history=3, floor=0.1)
    losses = jnp.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 4.0, 0.0], [0.5, 0.5, 0.5]])
    almost = diffusion.TimestepSampler(losses, jnp.array([3, 5, 2, 3], jnp.int32))
    np.testing.assert_allclose(diffusion.timestep_law(cfg, almost), np.full(4, 0.25))

    full = diffusion.TimestepSampler(losses, jnp.array([3, 5, 3, 3], jnp.int32))
    root = np.sqrt([1.0, 4.0, 25 / 3, 0.25])
    expected = 0.9 * root / root.sum() + 0.1 / 4
    law = np.asarray(diffusion.timestep_law(cfg, full))
    np.testing.assert_allclose(law, expected, rtol=1e-5)
    assert law.sum() == pytest.approx(1.0, abs=1e-6)
    # without importance sampling the law stays uniform whatever the history
    np.testing.assert_allclose(diffusion.timestep_law(config(steps=4, history=3, importance_sampling=False), full),
                               np.full(4, 0.25))
    # sampled timesteps follow the law and carry their probability
    t, p_t = diffusion.sample_timesteps(cfg, full, jax.random.key(0), 20_000)
    np.testing.assert_allclose(p_t, law[np.asarray(t)], rtol=1e-6)
    frequencies = np.bincount(np.asarray(t), minlength=4) / 20_000
    np.testing.assert_allclose(frequencies, law, atol=5 * np.sqrt(0.25 / 20_000))


def test_record_losses_pushes_per_timestep_batch_means_of_weighted_rows_into_the_ring():
    cfg = config(steps=4, history=3)
    losses = np.arange(12, dtype=np.float32).reshape(4, 3)
    sampler = diffusion.TimestepSampler(jnp.asarray(losses), jnp.array([0, 4, 3, 1], jnp.int32))
    t = jnp.array([0, 0, 2, 1, 2, 3, 0], jnp.int32)
    row_losses = jnp.array([1.0, 3.0, 5.0, 7.0, 9.0, 100.0, 50.0])
    weight = jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # t = 3 only on padding, a padded t = 0 row
    new = diffusion.record_losses(cfg, sampler, t, row_losses, weight)

    expected = losses.copy()
    expected[0, 0] = 2.0  # count 0 -> slot 0: mean(1, 3), the padded 50 left out
    expected[1, 1] = 7.0  # count 4 -> slot 1
    expected[2, 0] = 7.0  # count 3 -> slot 0 (the ring wraps): mean(5, 9)
    np.testing.assert_allclose(new.losses, expected)  # row 3 untouched
    np.testing.assert_array_equal(new.counts, [1, 5, 4, 1])


# ------------------------------------------------------------------------------------------------ training step


def test_user_batches_pad_with_weightless_rows_and_cover_every_user_once():
    batches = diffusion.user_batches(10, np.random.default_rng(0), 4)
    assert batches["users"].shape == batches["weight"].shape == (3, 4)
    users, weight = batches["users"].ravel(), batches["weight"].ravel()
    assert sorted(users[weight > 0].tolist()) == list(range(10))
    np.testing.assert_array_equal(weight, [1.0] * 10 + [0.0] * 2)
    assert users[weight > 0].tolist() != list(range(10))  # shuffled
    ordered = diffusion.user_batches(8, None, 4)
    np.testing.assert_array_equal(ordered["users"], np.arange(8).reshape(2, 4))
    np.testing.assert_array_equal(ordered["weight"], np.ones((2, 4)))


def planted_interactions(num_users=16, num_items=12):
    """Two user types, each liking its own half of the items (a few flips)."""
    rng = np.random.default_rng(0)
    kind = np.arange(num_users) % 2
    x = (np.arange(num_items)[None, :] < num_items // 2) == (kind[:, None] == 0)
    flips = rng.random(x.shape) < 0.05
    return np.logical_xor(x, flips).astype(np.float32)


def test_train_step_compiles_once_and_learns_the_planted_interactions():
    cfg = config(steps=4, hidden=(32,), history=2, dropout=0.1)
    x = planted_interactions()
    tx = optax.adam(1e-2)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(diffusion.make_train_step(cfg, x, tx), n=1))
    params = diffusion.init_denoiser(jax.random.key(0), x.shape[1], cfg)
    state = diffusion.init_state(params, tx, cfg)

    schedule = diffusion.make_schedule(cfg)
    noise = jax.random.normal(jax.random.key(99), x.shape)
    t_eval = jnp.arange(x.shape[0], dtype=jnp.int32) % cfg.steps
    x_eval = diffusion.q_sample(schedule, jnp.asarray(x), t_eval, noise)

    @jax.jit
    def denoising_error(params):
        return jnp.mean((diffusion.denoise(params, x_eval, t_eval) - x) ** 2)

    before = float(denoising_error(state.params))
    rng = np.random.default_rng(0)
    for epoch in range(8):
        batches = diffusion.user_batches(x.shape[0], rng, 6)  # 16 users: the last batch has 2 padding rows
        for b in range(batches["users"].shape[0]):
            batch = jax.tree.map(lambda a: a[b], batches)
            state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(1), int(state.step)))
    chex.assert_tree_all_finite((state.params, metrics))
    assert set(metrics) == {"loss", "mse", "grad_norm"}
    assert int(state.step) == 24
    # every timestep has been recorded, so importance sampling is on by now
    assert np.all(np.asarray(state.sampler.counts) >= cfg.history)
    assert not np.allclose(diffusion.timestep_law(cfg, state.sampler), 1 / cfg.steps)
    after = float(denoising_error(state.params))
    assert after < 0.3 * before, (before, after)


@pytest.mark.parametrize("mean_type", ["x0", "eps"])
def test_train_step_loss_equals_a_hand_computation_and_ignores_padding(mean_type):
    """DiffRec's loss written out: the key split in four as the step's, t from the (warm, non-uniform) importance
    law, x_t by the closed-form forward process, input dropout, the SNR weight over T p(t), padding rows weighing 0."""
    cfg = config(steps=4, hidden=(8,), dropout=0.5, history=2, mean_type=mean_type)
    x = jnp.asarray(planted_interactions()[:6])
    tx = optax.sgd(0.0)
    state = diffusion.init_state(diffusion.init_denoiser(jax.random.key(0), x.shape[1], cfg), tx, cfg)
    warm = jnp.asarray([[0.5, 0.4], [0.1, 0.2], [0.3, 0.3], [0.05, 0.1]], jnp.float32)  # (T, history)
    state = state._replace(sampler=diffusion.TimestepSampler(warm, jnp.full((4,), 2, jnp.int32)))
    batch = {"users": jnp.array([0, 3, 5, 2, 0], jnp.int32), "weight": jnp.array([1, 1, 1, 1, 0], jnp.float32)}
    key = jax.random.key(7)
    _, metrics = jax.jit(diffusion.make_train_step(cfg, x, tx))(state, batch, key)

    schedule = diffusion.make_schedule(cfg)
    k_t, k_noise, k_drop, _ = jax.random.split(key, 4)
    t, p_t = diffusion.sample_timesteps(cfg, state.sampler, k_t, 5)
    root = np.sqrt(np.mean(np.asarray(warm) ** 2, axis=1))
    law = (1 - cfg.floor) * root / root.sum() + cfg.floor / 4
    np.testing.assert_allclose(p_t, law[np.asarray(t)], rtol=1e-5)
    x0 = np.asarray(x)[np.asarray(batch["users"])]
    noise = np.asarray(jax.random.normal(k_noise, x0.shape))
    abar = np.asarray(schedule.abar)[np.asarray(t)][:, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    keep = np.asarray(jax.random.bernoulli(k_drop, 0.5, x0.shape))
    output = np.asarray(diffusion.denoise(state.params, jnp.asarray(np.where(keep, x_t / 0.5, 0.0)), t))
    target = x0 if mean_type == "x0" else noise
    mse = np.mean((target - output) ** 2, axis=1)
    snr = np.asarray(schedule.snr)
    tt = np.asarray(t)
    lam = np.where(tt == 0, 1.0, snr[np.maximum(tt - 1, 0)] - snr[tt]) if mean_type == "x0" else np.ones(5)
    w = np.asarray(batch["weight"])
    expected = np.sum(w * lam * mse / (4 * np.asarray(p_t))) / w.sum()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(metrics["mse"], np.sum(w * mse) / w.sum(), rtol=1e-5)
