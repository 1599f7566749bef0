"""A diffusion recommender over user interaction vectors (DiffRec: Wang et al., "Diffusion Recommender Model",
SIGIR 2023), as pure functions over a parameter pytree.

A user is the binary vector ``x_0 in {0, 1}^I`` of their training positives. Training corrupts it with Gaussian
noise (forward process) and teaches an MLP denoiser to undo the corruption; recommending runs the learned reverse
process from the observed vector and ranks items by the denoised vector, with known positives masked.

Notation (``T`` diffusion steps, ``t in {0, ..., T-1}``, ``B`` users per batch, ``I`` items):

* schedule ``beta_t``, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``;
* forward (DDPM Eq. 4): ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``, i.e. ``x_t = sqrt(abar_t) x_0 +
  sqrt(1 - abar_t) eps``;
* posterior mean (DDPM Eq. 7): ``mu_t(x_t, x_0) = c1_t x_0 + c2_t x_t`` with ``c1_t = beta_t sqrt(abar_{t-1}) /
  (1 - abar_t)`` and ``c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)`` (``abar_{-1} = 1``, so ``c1_0 = 1``,
  ``c2_0 = 0``: the last reverse step returns the predicted ``x_0``);
* the denoiser predicts ``x_0`` (``mean_type = "x0"``) or ``eps`` (``"eps"``; then ``x_0 = (x_t - sqrt(1 - abar_t)
  eps) / sqrt(abar_t)``); the per-user loss is ``mean_i (target - prediction)^2``;
* ``reweight`` (x0 only, as DiffRec): the loss at ``t > 0`` is weighted by ``SNR(t-1) - SNR(t)``,
  ``SNR(t) = abar_t / (1 - abar_t)``, and by 1 at ``t = 0``;
* importance-sampled timesteps (DiffRec; Nichol & Dhariwal 2021): uniform until every ``t`` has ``history`` recorded
  losses, then ``p(t) ~ sqrt(mean of the recorded squared losses)`` mixed with ``floor`` of the uniform law, and the
  loss is divided by ``T p(t)`` (1 under the uniform law) so its expectation is unchanged.

Choices where DiffRec's text and code leave room (written down here, tested in ``tests/test_diffusion.py``):

* The loss history records, per step and per timestep present in the batch, the batch mean of that timestep's
  losses (one entry per timestep per batch, pushed into a ring of ``history`` entries); DiffRec pushes every row's
  loss one by one, which is a sequential loop a jitted step should not run.
* Inference is deterministic (no sampling noise, DiffRec's default): it starts from the observed, un-noised vector
  and runs the posterior mean for ``t = S-1, ..., 0`` with ``S = inference_steps`` (0 means all ``T``) as one
  ``jax.lax.scan``.
* Dropout (rate ``dropout``) is applied to the noisy input only, as DiffRec does; the input is not re-normalised.

Denoiser (DiffRec's MLP): ``[x_t, W_e emb(t), c] -> tanh -> ... -> I``, ``emb`` the sinusoidal embedding of size
``time_dim``, ``c`` an optional condition vector (empty for DiffRec; DifFaiRec's counterfactual latent).

This is not one of :data:`jaxfair.backbones.BACKBONES`: it has no user/item embedding tables to score with a dot
product, so it does not fulfil the :class:`~jaxfair.backbones.base.Backbone` contract; methods use it directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfair.training import init

SCHEDULES = ("linear", "linear-var", "cosine")
MEAN_TYPES = ("x0", "eps")


@dataclasses.dataclass(frozen=True)
class Config:
    """Diffusion settings (DiffRec's names where it has them).

    Attributes:
      steps: ``T``, the number of diffusion steps.
      schedule: ``"linear"`` (``beta_t`` linear from ``noise_scale * noise_min`` to ``noise_scale * noise_max``),
        ``"linear-var"`` (``1 - abar_t`` linear over that range: DiffRec's default) or ``"cosine"`` (Nichol &
        Dhariwal's ``abar``; ``noise_*`` unused).
      noise_scale, noise_min, noise_max: the noise range of the linear schedules.
      mean_type: what the denoiser predicts, ``"x0"`` or ``"eps"``.
      hidden: widths of the denoiser's hidden layers.
      time_dim: size of the timestep embedding.
      dropout: dropout rate on the noisy input during training.
      reweight: weight the x0 loss by the SNR difference (ignored for ``"eps"``).
      importance_sampling: sample timesteps by their loss history (uniform otherwise).
      history: recorded losses per timestep before importance sampling starts.
      floor: weight of the uniform law mixed into the importance law.
      inference_steps: reverse steps at inference, ``0 < S <= T`` (0 means ``T``).
    """

    steps: int = 10
    schedule: str = "linear-var"
    noise_scale: float = 0.1
    noise_min: float = 1e-3
    noise_max: float = 1e-2
    mean_type: str = "x0"
    hidden: tuple[int, ...] = (600,)
    time_dim: int = 10
    dropout: float = 0.5
    reweight: bool = True
    importance_sampling: bool = True
    history: int = 10
    floor: float = 1e-3
    inference_steps: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.mean_type not in MEAN_TYPES:
            raise ValueError(f"mean_type must be one of {list(MEAN_TYPES)}, got {self.mean_type!r}")
        if self.schedule != "cosine" and not 0 < self.noise_scale * self.noise_min <= self.noise_scale * self.noise_max < 1:
            raise ValueError("need 0 < noise_scale * noise_min <= noise_scale * noise_max < 1, got "
                             f"{self.noise_scale} * [{self.noise_min}, {self.noise_max}]")
        if not self.hidden or min(self.hidden) < 1 or self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"hidden must be positive widths and time_dim an even number >= 2, got "
                             f"{list(self.hidden)} and {self.time_dim}")
        if not 0 <= self.dropout < 1 or not 0 <= self.floor <= 1 or self.history < 1:
            raise ValueError("need 0 <= dropout < 1, 0 <= floor <= 1 and history >= 1")
        if not 0 <= self.inference_steps <= self.steps:
            raise ValueError(f"inference_steps must be in [0, steps={self.steps}], got {self.inference_steps}")

    @property
    def reverse_steps(self) -> int:
        return self.inference_steps or self.steps


class Schedule(NamedTuple):
    """Per-timestep constants, each float32 ``(T,)``."""

    betas: jax.Array
    abar: jax.Array
    abar_prev: jax.Array
    coef_x0: jax.Array  # c1_t
    coef_xt: jax.Array  # c2_t
    snr: jax.Array


def make_schedule(config: Config) -> Schedule:
    """The noise schedule's constants (computed in float64 numpy, stored as float32)."""
    T = config.steps
    start, end = config.noise_scale * config.noise_min, config.noise_scale * config.noise_max
    if config.schedule == "linear":
        betas = np.linspace(start, end, T, dtype=np.float64)
        abar = np.cumprod(1.0 - betas)
    else:
        if config.schedule == "linear-var":
            abar = 1.0 - np.linspace(start, end, T, dtype=np.float64)
        else:
            s = 0.008
            f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
            abar = np.maximum(f[1:] / f[0], 1e-5)
        betas = np.minimum(1.0 - abar / np.concatenate([[1.0], abar[:-1]]), 0.999)
        abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return Schedule(f32(betas), f32(abar), f32(abar_prev), f32(coef_x0), f32(coef_xt), f32(abar / (1.0 - abar)))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward noising ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. ``x0, noise (B, I)``, ``t`` int ``(B,)``."""
    abar = schedule.abar[t][:, None]
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]``, ``f_k = 10000^{-k / (dim/2)}``. ``t (B,) -> (B, dim)``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _glorot(key, fan_in: int, fan_out: int) -> dict:
    return {"w": init.normal(key, (fan_in, fan_out)) * math.sqrt(2.0 / (fan_in + fan_out)),
            "b": jnp.zeros((fan_out,))}


def init_denoiser(key: jax.Array, num_items: int, config: Config, cond_dim: int = 0) -> dict:
    """Denoiser parameters: ``{"time": {w (e, e), b}, "layers": [{w, b}, ...]}`` for input ``I + e + cond_dim``."""
    sizes = (num_items + config.time_dim + cond_dim, *config.hidden, num_items)
    keys = jax.random.split(key, len(sizes))
    return {
        "time": _glorot(keys[0], config.time_dim, config.time_dim),
        "layers": [_glorot(k, m, n) for k, m, n in zip(keys[1:], sizes[:-1], sizes[1:])],
    }


def input_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout of the noisy input: each entry kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _time_features(params: dict, t: jax.Array) -> jax.Array:
    """The learned projection ``(B, e)`` of the sinusoidal embedding of ``t``."""
    time = params["time"]
    return timestep_embedding(t, time["w"].shape[0]) @ time["w"] + time["b"]


def _hidden_layers(params: dict, h: jax.Array) -> jax.Array:
    """The tanh layers after the first: ``(..., hidden[0]) -> (..., hidden[-1])``."""
    for layer in params["layers"][1:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h


def _output_layer(params: dict, h: jax.Array) -> jax.Array:
    """The linear output layer: ``(..., hidden[-1]) -> (..., I)``."""
    last = params["layers"][-1]
    return h @ last["w"] + last["b"]


def _first_layer(params: dict, x_t, t, cond, dropout_key, rate: float):
    if dropout_key is not None and rate > 0:
        x_t = input_dropout(dropout_key, x_t, rate)
    parts = [x_t, _time_features(params, t)] + ([] if cond is None else [cond])
    first = params["layers"][0]
    return jnp.tanh(jnp.concatenate(parts, axis=-1) @ first["w"] + first["b"])


def denoise(params: dict, x_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
            dropout_key: jax.Array | None = None, rate: float = 0.0) -> jax.Array:
    """The denoiser's output ``(B, I)`` (``x_0`` or ``eps``, by ``mean_type``).

    Args:
      params: from :func:`init_denoiser`.
      x_t: float ``(B, I)``; t: int ``(B,)``; cond: float ``(B, c)`` or None (must match ``cond_dim``).
      dropout_key, rate: input dropout (training only).
    """
    return _output_layer(params, _hidden_layers(params, _first_layer(params, x_t, t, cond, dropout_key, rate)))


def denoise_averaged(params: dict, x_t: jax.Array, t: jax.Array, conds: jax.Array,
                     input_shifts: jax.Array | None = None) -> jax.Array:
    """``mean_g denoise(params, x_t + input_shifts[g], t, conds[g])`` ``(B, I)`` for ``conds (G, B, c)`` and
    optional ``input_shifts (G, B, I)``, without repeating the work the conditions share.

    The first layer's input is ``[x_t; emb(t); cond]``, so its pre-activation is ``x_t W_x + emb W_e + b`` (once)
    plus ``cond W_c`` (per condition); the last layer is linear, so the mean of the outputs is the last layer applied
    to the mean hidden state. The big products (``x_t W_x`` and the last layer, both ``O(B I h)``) run once instead
    of ``G`` times (input shifts add ``input_shifts[g] W_x`` per condition).
    """
    first = params["layers"][0]
    num_items, cond_dim = x_t.shape[-1], conds.shape[-1]
    w = first["w"]
    shared = x_t @ w[:num_items] + _time_features(params, t) @ w[num_items : w.shape[0] - cond_dim] + first["b"]
    per_condition = conds @ w[w.shape[0] - cond_dim :]
    if input_shifts is not None:
        per_condition = per_condition + input_shifts @ w[:num_items]
    h = _hidden_layers(params, jnp.tanh(shared[None] + per_condition))  # (G, B, h)
    return _output_layer(params, jnp.mean(h, axis=0))


def hidden_state(params: dict, x_t: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """The first hidden layer's activation ``(B, hidden[0])``: the user latent the probes read."""
    return _first_layer(params, x_t, t, cond, None, 0.0)


def predicted_x0(config: Config, schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """``x_0`` from the denoiser's output (itself for ``"x0"``; inverted forward process for ``"eps"``)."""
    if config.mean_type == "x0":
        return output
    abar = schedule.abar[t][:, None]
    return (x_t - jnp.sqrt(1.0 - abar) * output) / jnp.sqrt(abar)


def target_of(config: Config, x0: jax.Array, noise: jax.Array) -> jax.Array:
    return x0 if config.mean_type == "x0" else noise


def timestep_weight(config: Config, schedule: Schedule, t: jax.Array) -> jax.Array:
    """DiffRec's loss weight ``(B,)``: ``SNR(t-1) - SNR(t)`` at ``t > 0`` and 1 at ``t = 0`` when reweighting x0."""
    if not (config.reweight and config.mean_type == "x0"):
        return jnp.ones(t.shape, jnp.float32)
    previous = schedule.snr[jnp.maximum(t - 1, 0)]
    return jnp.where(t == 0, 1.0, previous - schedule.snr[t])


class TimestepSampler(NamedTuple):
    """The loss history behind importance sampling: ``losses (T, H)`` ring buffers and ``counts (T,)`` int32."""

    losses: jax.Array
    counts: jax.Array


def init_sampler(config: Config) -> TimestepSampler:
    return TimestepSampler(jnp.zeros((config.steps, config.history), jnp.float32),
                           jnp.zeros((config.steps,), jnp.int32))


def timestep_law(config: Config, sampler: TimestepSampler) -> jax.Array:
    """``p(t)`` ``(T,)``: uniform until every timestep has a full history, then ``(1 - floor) sqrt(E[L^2]) / Z +
    floor / T``."""
    T = config.steps
    uniform = jnp.full((T,), 1.0 / T)
    if not config.importance_sampling:
        return uniform
    root = jnp.sqrt(jnp.mean(sampler.losses ** 2, axis=1))
    law = (1.0 - config.floor) * root / jnp.maximum(jnp.sum(root), 1e-12) + config.floor / T
    return jnp.where(jnp.all(sampler.counts >= config.history) & (jnp.sum(root) > 0), law, uniform)


def sample_timesteps(config: Config, sampler: TimestepSampler, key: jax.Array, batch: int):
    """``(t (B,) int32, p(t) (B,))`` drawn from :func:`timestep_law`."""
    law = timestep_law(config, sampler)
    t = jax.random.categorical(key, jnp.log(law), shape=(batch,)).astype(jnp.int32)
    return t, law[t]


def record_losses(config: Config, sampler: TimestepSampler, t: jax.Array, losses: jax.Array,
                  weight: jax.Array) -> TimestepSampler:
    """Push, for every timestep present among the weighted rows, the mean of its rows' losses into its ring."""
    T = config.steps
    sums = jax.ops.segment_sum(losses * weight, t, num_segments=T)
    counts = jax.ops.segment_sum(weight, t, num_segments=T)
    present = counts > 0
    means = sums / jnp.maximum(counts, 1e-12)
    slot = sampler.counts % config.history
    pushed = sampler.losses.at[jnp.arange(T), slot].set(means)
    return TimestepSampler(
        losses=jnp.where(present[:, None], pushed, sampler.losses),
        counts=sampler.counts + present.astype(jnp.int32),
    )


def row_mse(target: jax.Array, prediction: jax.Array) -> jax.Array:
    """``mean_i (target - prediction)^2`` per row ``(B,)``."""
    return jnp.mean((target - prediction) ** 2, axis=-1)


def reverse(config: Config, schedule: Schedule, predict: Callable[[jax.Array, jax.Array], jax.Array],
            x_start: jax.Array) -> jax.Array:
    """Deterministic reverse process ``x_{t-1} = c1_t x0_hat(x_t, t) + c2_t x_t`` for ``t = S-1 .. 0`` from the
    observed vectors, as one ``lax.scan``.

    Args:
      predict: ``(x_t (B, I), t (B,)) -> output (B, I)`` (the denoiser with its condition bound).
      x_start: float ``(B, I)`` observed interaction vectors.

    Returns:
      float ``(B, I)``: the denoised vectors (ranking scores).
    """
    steps = jnp.arange(config.reverse_steps - 1, -1, -1, dtype=jnp.int32)

    def body(x_t, step):
        t = jnp.full((x_t.shape[0],), step, jnp.int32)
        x0_hat = predicted_x0(config, schedule, predict(x_t, t), x_t, t)
        return schedule.coef_x0[step] * x0_hat + schedule.coef_xt[step] * x_t, None

    x, _ = jax.lax.scan(body, x_start, steps)
    return x


# --- training: the shared denoising step, and DiffRec (the unconditional model) -------------------------------


class DiffusionState(NamedTuple):
    """``params``: the denoiser's; ``sampler``: the timestep loss history; ``step``: int32 scalar."""

    params: dict
    opt_state: optax.OptState
    sampler: TimestepSampler
    step: jax.Array


def init_state(params, tx: optax.GradientTransformation, config: Config) -> DiffusionState:
    return DiffusionState(params, tx.init(params), init_sampler(config), jnp.zeros((), jnp.int32))


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_denoising_step(config: Config, interactions: jax.Array, tx: optax.GradientTransformation,
                        row_losses: Callable) -> Callable:
    """The step skeleton shared by DiffRec and conditional models: ``(state, batch, key) -> (state, metrics)``.

    Draws the timesteps (importance-sampled when configured), the noise and the keys, noises ``x_0`` into ``x_t``,
    asks ``row_losses(params, batch, x0, x_t, t, target, dropout_key, extra_key) -> (rows (B,), aux)`` for each row's
    denoising loss, minimises ``sum_u w_u lambda(t_u) rows_u / (T p(t_u)) / sum_u w_u`` with ``tx``, and records
    ``aux["mse"]`` (the per-row factual error, ``(B,)``) in the loss history. ``aux``'s other entries are scalar
    metrics passed through. ``extra_key`` is for a model's own draws (DifFaiRec: the counterfactual groups).

    Args:
      interactions: float ``(U, I)`` training vectors ``x_0`` (a constant of the step).
      batch: ``{"users": int (B,), "weight": (B,)}`` (padding rows weigh 0).

    Metrics: ``loss``, ``mse`` (weighted mean of ``aux["mse"]``), ``aux``'s scalars, ``grad_norm``.
    """
    schedule = make_schedule(config)
    interactions = jnp.asarray(interactions, jnp.float32)

    def step(state: DiffusionState, batch: dict, key: jax.Array):
        weight = batch["weight"]
        x0 = interactions[batch["users"]]
        k_t, k_noise, k_drop, k_extra = jax.random.split(key, 4)
        t, p_t = sample_timesteps(config, state.sampler, k_t, x0.shape[0])
        noise = jax.random.normal(k_noise, x0.shape)
        x_t, target = q_sample(schedule, x0, t, noise), target_of(config, x0, noise)
        scale = timestep_weight(config, schedule, t) / (config.steps * p_t)

        def objective(params):
            rows, aux = row_losses(params, batch, x0, x_t, t, target, k_drop, k_extra)
            return weighted_mean(scale * rows, weight), aux

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sampler = record_losses(config, state.sampler, t, aux["mse"], weight)
        extra = {name: value for name, value in aux.items() if name != "mse"}
        metrics = {"loss": loss, "mse": weighted_mean(aux["mse"], weight), **extra, "grad_norm": optax.tree.norm(grads)}
        return DiffusionState(params, opt_state, sampler, state.step + 1), metrics

    return step


def make_train_step(config: Config, interactions: jax.Array, tx: optax.GradientTransformation) -> Callable:
    """DiffRec's step ``(state, batch, key) -> (state, metrics)`` (not jitted; scan or jit it): the unconditional
    case of :func:`make_denoising_step`, each row's loss its denoising error ``mse_u``.

    Loss: ``sum_u w_u lambda(t_u) mse_u / (T p(t_u)) / sum_u w_u``.
    """

    def row_losses(params, batch, x0, x_t, t, target, dropout_key, extra_key):
        del batch, x0, extra_key
        mse = row_mse(target, denoise(params, x_t, t, dropout_key=dropout_key, rate=config.dropout))
        return mse, {"mse": mse}

    return make_denoising_step(config, interactions, tx, row_losses)


def make_scorer(config: Config) -> Callable:
    """Jitted ``(params, x (B, I), users (B,)) -> scores (B, I)``: the unconditional reverse process (``users`` is
    unused; conditional models need it)."""
    schedule = make_schedule(config)

    @jax.jit
    def scores(params, x, users):
        del users
        return reverse(config, schedule, lambda x_t, t: denoise(params, x_t, t), x)

    return scores


def make_latent_fn(config: Config) -> Callable:
    """Jitted ``(params, x (B, I), users (B,)) -> (B, hidden[0])``: the first hidden layer on the observed vector at
    the first reverse step (the user latent the probes read)."""
    first = config.reverse_steps - 1

    @jax.jit
    def latent(params, x, users):
        del users
        return hidden_state(params, x, jnp.full((x.shape[0],), first, jnp.int32))

    return latent


def user_batches(num_users: int, rng: np.random.Generator | None, batch_size: int) -> dict:
    """One epoch of user rows: ``{"users": (N, B) int32, "weight": (N, B)}``, shuffled when ``rng`` is given; the
    last batch is padded with user 0 at weight 0 so every batch has the same shape."""
    order = rng.permutation(num_users) if rng is not None else np.arange(num_users)
    batches = max(1, -(-num_users // batch_size))
    pad = batches * batch_size - num_users
    users = np.concatenate([order, np.zeros(pad, np.int64)]).astype(np.int32)
    weight = np.concatenate([np.ones(num_users), np.zeros(pad)]).astype(np.float32)
    return {"users": users.reshape(batches, batch_size), "weight": weight.reshape(batches, batch_size)}


def all_scores(score_batch: Callable, interactions: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """``score_batch(x (B, I)) -> (B, I)`` over every user in fixed-size batches (the last padded): ``(U, I)``."""
    interactions = np.asarray(interactions, np.float32)
    n = interactions.shape[0]
    size = min(batch_size, n)
    out = []
    for start in range(0, n, size):
        block = interactions[start:start + size]
        rows = block.shape[0]
        if rows < size:
            block = np.concatenate([block, np.zeros((size - rows, block.shape[1]), np.float32)])
        out.append(np.asarray(score_batch(block, np.arange(start, start + size) % n))[:rows])
    return np.concatenate(out)
