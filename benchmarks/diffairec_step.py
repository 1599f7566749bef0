"""Benchmark DifFaiRec's training step and full-ranking inference: jaxfair's jitted JAX code against a PyTorch
implementation of the same computation written for this benchmark only, with DiffRec (the unconditional diffusion
model it builds on) alongside. Every number is measured in this one run.

    python -m benchmarks.diffairec_step [--users 897 --items 1447 --density 0.03 --groups 2 --batch 128
                                         --eval-batch 256 --hidden 300 --time-dim 10 --latent-dim 64 --steps 5
                                         --repeats 20 --epoch-repeats 5 --infer-repeats 5 --torch-threads 2
                                         --settle 0.2 --out benchmarks/results/diffairec_step.json]
    python -m benchmarks.diffairec_step --quick --out /tmp/diffairec_step.json    # tiny shapes, a few repeats

Run from the repository root. Shapes default to ``configs/diffairec_ml100k.toml`` on MovieLens-100k after its
preprocessing (897 users, 1,447 items, 3% dense): batches of 128 users, denoiser hidden [300], timestep embedding 10,
latent d = 64, T = 5 steps of the linear-variance schedule, dropout 0.5, SNR reweighting and importance-sampled
timesteps, mean-pooled group tokens, serving ``"average"`` over G = 2 groups with the condition-only swap (``--serve
factual --swap input`` times what the config trains and serves: the counterfactual pass also reads the group-shifted
input, and users are served under their own latent), :func:`jaxfair.training.optim.make`'s Adam at 1e-3 (the config
trains at 3e-4; the cost does not depend on it). The data are synthetic (numpy, seeded): binary interaction vectors of
density ``--density`` (every user has at least one item) and a uniformly drawn group per user; the group tokens are
:func:`jaxfair.methods.diffairec.group_tokens` of them, a constant given to both frameworks.

What is timed (milliseconds, median of round-robin repeats):

* ``*_step``: one training step on one batch of users. JAX: ``jax.jit`` of
  :func:`jaxfair.methods.diffairec.make_train_step` (DiffRec: :func:`jaxfair.backbones.diffusion.make_train_step`),
  blocked on. It draws its timesteps (by the loss history), noise, dropout mask and counterfactual groups inside
  the step; gathers ``x_0``; computes the user latent, the attention counterfactual, the factual and counterfactual
  denoiser passes (one batched pass of 2B rows sharing one dropout mask), SNR weights divided by ``T p(t)``; takes
  the gradient and the Adam update; records the loss history. ``*_epoch``: the same step inside
  :func:`jaxfair.training.step.make_epoch_fn` (a ``lax.scan`` over the epoch's ``ceil(U / B)`` batches, as
  training runs it), reported per epoch and per step (epoch / batches).
* ``*_infer``: one full-ranking inference pass, the (U, I) scores of every user: the deterministic reverse process
  over all T steps from the observed vectors, batches of ``--eval-batch`` users. JAX:
  :func:`jaxfair.backbones.diffusion.all_scores` over the jitted ``make_scorer`` (the evaluation's code path; the
  last batch is padded to a full one so one compiled shape serves all); DifFaiRec's denoiser output averaged over the
  G serving conditions at every reverse step.
* ``torch``: PyTorch (:class:`benchmarks.references.diffairec.TorchDiffusion`; ``pip install torch==2.13.0``, the
  ``bench`` extra; skipped with a note if missing): the same math with ``nn.Linear`` layers (DiffRec's DNN), one
  batched pass over the conditions, ``torch.optim.Adam`` (same lr, eps 1e-8 as optax), the loss history and importance
  law kept as tensors and updated vectorised as jaxfair does (one batch mean per timestep, a ring of ``history``;
  DiffRec's own code pushes every row in a Python loop, which would only be slower), its own ``torch`` random draws;
  the last inference batch is not padded. Timed as ``torch_<mode>_<threads>t``: the step eager and under
  ``torch.compile`` (``--no-compile`` drops it; the warm-up, compile included, is reported as ``torch_warmup_s``), each
  with 1 thread (a reference that suffers less when other processes share the cores) and with every core
  (:func:`benchmarks.timing.torch_variants`); inference eager at both thread counts, under ``torch.no_grad()``. Same
  work: both sides take the same batch of users through the same passes (JAX one jitted program, PyTorch its ops).

State: both frameworks start the timed steps from the JAX state after the warm-up epochs that fill every timestep's
loss history, so the importance-sampled path (not the uniform start) is the one timed; inference uses its parameters.

Same computation (``checks``): the PyTorch model is loaded with a JAX state (parameters, Adam moments and count,
loss history) and takes one step on the same batch as jaxfair's jitted step, with the step's own random draws
(timesteps, noise, dropout mask, counterfactual groups, replayed from the step's key as the step splits it) passed to
PyTorch; once from the initial state (uniform timesteps, first Adam step) and once from the warm state (importance
sampling on). Compared: parameters, Adam first moments, the loss history and the step's metrics, each with its
largest absolute difference and, for scale, the largest absolute JAX value; then the (U, I) inference scores of
both from the warm parameters. ``check_max_abs_diff_params`` / ``check_max_abs_diff_scores`` are the largest over
models and states.

Adam divides each gradient entry by ``sqrt(v_hat) + eps``; where that is of the order of ``eps = 1e-8`` (a gradient
entry of ~1e-8, so mostly on the first step, where the update is ``lr g / (|g| + eps)``), float32 rounding
differences of the gradient (~1e-9 absolute, from a different summation order) become parameter differences of up to
a fraction of ``lr = 1e-3``, although the gradients agree (the Adam first moments). So parameters are also compared
where the step is well conditioned (``sqrt(v_hat) >= 100 eps``: ``max_abs_diff_well_conditioned``, with the
fraction of entries that are). ``check_passed``: there, parameters differ by less than 1e-5, everywhere by less than
``lr``; Adam moments, loss history, metrics and scores by less than 1e-5 of ``max(1, largest absolute value)``.

Timings: every variant first runs untimed (compiling / warm-up, the checks); then the step variants are timed
``--repeats`` times, the epoch variants ``--epoch-repeats`` times and the inference variants ``--infer-repeats``
times, round-robin over the variants so that load from other processes falls on all of them alike, each call after
an untimed pause of ``--settle`` seconds: without it, a call right after a 2-thread PyTorch call was measured ~40%
slower on the shared 2-core machine (PyTorch's OpenMP workers still spinning). Reported: medians with quartiles.

Ratios (medians of this run): ``<variant>_over_jax_step`` (a PyTorch variant's step / one jitted JAX step call),
``<variant>_over_jax_epoch_per_step`` (/ the JAX step inside the epoch scan), ``<variant>_over_jax_infer``
(inference passes), and ``best_torch_over_*`` (the fastest PyTorch variant); per model under ``diffairec`` and
``diffrec``. Above 1: JAX is faster. The load average at the start and end is recorded: on a shared 2-core machine it
bounds how far the numbers can be trusted. ``roofline``: per model, XLA's FLOP count of one JAX step against this
machine's matmul rate measured in the same run (large, and at the step's first layer, (B, I, hidden)).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.references import diffairec as torch_diffairec
from benchmarks.timing import (device_info, finish, interleaved_ms, jax_epoch_caller, jax_step_caller, jaxlib_version,
                               matmul_rates, median_and_quartiles, nothing, parse_with_quick, roofline, roofline_line,
                               torch_modes, torch_or_reason, torch_ratios, torch_thread_counts, torch_variants,
                               xla_flops)
from jaxfair.backbones import diffusion
from jaxfair.methods import diffairec
from jaxfair.training import optim
from jaxfair.training.step import make_epoch_fn
from jaxfair.training.trainer import TrainConfig

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "diffairec_step.json"
QUICK = {"users": 48, "items": 40, "density": 0.1, "batch": 16, "eval_batch": 32, "hidden": [32], "latent_dim": 8,
         "repeats": 2, "epoch_repeats": 2, "infer_repeats": 2, "settle": 0.0}
LEARNING_RATE = 1e-3
TRAIN = TrainConfig(learning_rate=LEARNING_RATE)  # the optimizer's settings: optim.make(TRAIN), plain Adam
GROUP_VECTORS = tuple(g for g in diffairec.GROUP_VECTORS if g != "none")  # "none" is DiffRec, timed alongside
MODELS = ("diffairec", "diffrec")
ADAM_B2, ADAM_EPS = 0.999, 1e-8  # optax.adam's defaults, torch.optim.Adam's too
WELL_CONDITIONED = 100 * ADAM_EPS  # Adam's sqrt(v_hat) above this: its step does not amplify rounding (see checks)
PARAM_TOLERANCE = 1e-5  # absolute, on well-conditioned parameter entries (parameters are ~0.1-1)
RELATIVE_TOLERANCE = 1e-5  # of max(1, the largest absolute JAX value): Adam moments, loss history, metrics, scores


def make_inputs(users, items, density, num_groups, seed=0):
    """Binary interactions ``(U, I)`` float32 of the given density (at least one item per user) and a group per
    user ``(U,)`` int32 (numpy)."""
    rng = np.random.default_rng(seed)
    x = rng.random((users, items)) < density
    x[np.arange(users), rng.integers(0, items, users)] = True
    return x.astype(np.float32), rng.integers(0, num_groups, users).astype(np.int32)


# --- JAX ----------------------------------------------------------------------------------------------------------


class JaxSetup:
    """jaxfair's jitted step, epoch and scorer for one model, and the states the checks and timings start from.

    Attributes:
      step: ``jax.jit`` of the train step; epoch: :func:`make_epoch_fn` of it; scorer: the jitted batch scorer.
      batches: one epoch of user batches (device arrays, stacked); batch_list: its batches one by one.
      initial: the initial state; warm: the state after ``warm_epochs`` epochs (every timestep's loss history full).
    """

    def __init__(self, model, dc, method, interactions, groups, tokens, params, batches, max_warm_epochs=50):
        self.model, self.dc, self.method = model, dc, method
        tx = optim.make(TRAIN)
        if model == "diffairec":
            train_step = diffairec.make_train_step(dc, method, interactions, groups, tokens, tx)
            self.scorer = diffairec.make_scorer(dc, method, groups, tokens)
        else:
            train_step = diffusion.make_train_step(dc, interactions, tx)
            self.scorer = diffusion.make_scorer(dc)
        self.interactions, self.num_groups = interactions, tokens.shape[0]
        self.groups = jnp.asarray(groups)
        self.step = jax.jit(train_step)
        self.epoch = make_epoch_fn(train_step)
        self.key = jax.random.key(0)
        self.batches = jax.tree.map(jnp.asarray, batches)
        self.batch_list = [jax.tree.map(lambda x, i=i: x[i], self.batches) for i in range(len(batches["users"]))]
        self.initial = diffusion.init_state(jax.tree.map(jnp.asarray, params), tx, dc)
        state, self.warm_epochs = self.initial, 0
        while self.warm_epochs < 2 or not bool(jnp.all(state.sampler.counts >= dc.history)):
            if self.warm_epochs >= max_warm_epochs:
                raise RuntimeError(f"the loss history is not full after {max_warm_epochs} epochs")
            state, _ = jax.block_until_ready(self.epoch(state, self.batches, self.key))
            self.warm_epochs += 1
        self.warm = state

    def draws(self, state, batch, key) -> dict:
        """The random draws the step makes from ``key`` (replaying its key splits), as numpy arrays."""
        return jax.tree.map(np.asarray, self._draws(state.sampler, batch["users"], key))

    @functools.partial(jax.jit, static_argnums=0)
    def _draws(self, sampler, users, key):
        size, items = users.shape[0], self.interactions.shape[1]
        k_t, k_noise, k_drop, k_group = jax.random.split(key, 4)  # as diffusion.make_denoising_step splits it
        t, _ = diffusion.sample_timesteps(self.dc, sampler, k_t, size)
        out = {"t": t, "noise": jax.random.normal(k_noise, (size, items)),
               "keep": jax.random.bernoulli(k_drop, 1.0 - self.dc.dropout, (size, items))}
        if self.model == "diffairec":
            out["target_group"] = diffairec.other_groups(k_group, self.groups[users], self.num_groups)
        return out

    def step_variant(self, state):
        return jax_step_caller(self.step, state, self.batch_list, self.key)

    def epoch_variant(self, state):
        return jax_epoch_caller(self.epoch, state, self.batches, self.key)

    def scores(self, params, eval_batch) -> np.ndarray:
        """The (U, I) scores of every user, as the evaluation computes them (numpy, so blocked on)."""
        return diffusion.all_scores(lambda x, users: self.scorer(params, x, users), self.interactions, eval_batch)

    def infer_variant(self, params, eval_batch):
        self.scores(params, eval_batch)  # compiles
        return lambda r: self.scores(params, eval_batch)


# --- PyTorch and timing -------------------------------------------------------------------------------------------


def torch_model(state: diffusion.DiffusionState, dc, method, interactions, groups, tokens,
                threads: int) -> torch_diffairec.TorchDiffusion:
    """The PyTorch reference loaded from ``state``, with the JAX step's optimizer settings (:data:`TRAIN`)."""
    return torch_diffairec.TorchDiffusion(state, dc, method, interactions, groups, tokens, threads,
                                          learning_rate=TRAIN.learning_rate, weight_decay=TRAIN.weight_decay)


def settled(variants: dict, seconds: float) -> dict:
    """The variants with an untimed pause of ``seconds`` before each call (after its own ``prepare``): the worker
    threads the previous variant leaves spinning (PyTorch's OpenMP pool, XLA's) go idle before the next is timed."""
    if seconds <= 0:
        return variants

    def pause_then(prepare):
        def run():
            prepare()
            time.sleep(seconds)
        return run

    return {name: (pause_then(prepare), call) for name, (prepare, call) in variants.items()}


# --- checks -------------------------------------------------------------------------------------------------------


def largest(reference: dict, other: dict, where: dict | None = None) -> dict:
    """``max_abs_diff`` over matching arrays of two ``path -> array`` dicts, and ``max_abs`` of the reference; with
    ``where`` (``path -> bool array``), also ``max_abs_diff_well_conditioned`` over the entries it marks."""
    reference = {k: np.asarray(v, np.float64) for k, v in reference.items()}
    diff = {k: np.abs(reference[k] - np.asarray(other[k], np.float64)) for k in reference}
    out = {"max_abs_diff": max(float(np.max(v)) for v in diff.values()),
           "max_abs": max(float(np.max(np.abs(v))) for v in reference.values())}
    if where is not None:
        out["max_abs_diff_well_conditioned"] = max(float(np.max(v, where=where[k], initial=0.0))
                                                   for k, v in diff.items())
        entries = sum(v.size for v in diff.values())
        out["well_conditioned_fraction"] = float(sum(np.sum(where[k]) for k in diff) / entries)
    return out


def passes(quantity: str, values: dict) -> bool:
    """The tolerance of one compared quantity (see :data:`PARAM_TOLERANCE`, :data:`RELATIVE_TOLERANCE`)."""
    if quantity == "params":  # an ill-conditioned entry can move by at most about one Adam step, lr
        return values["max_abs_diff_well_conditioned"] < PARAM_TOLERANCE and values["max_abs_diff"] < LEARNING_RATE
    return values["max_abs_diff"] < RELATIVE_TOLERANCE * max(1.0, values["max_abs"])


def check_same_step(setup: JaxSetup, model: torch_diffairec.TorchDiffusion, torch_batch) -> dict:
    """One jaxfair step and one PyTorch step on batch 0 with the same random draws, from the initial and the warm
    state; parameters, Adam first moments, loss history and metrics compared."""
    tree_get = torch_diffairec.tree_get
    out = {}
    batch = setup.batch_list[0]
    for name, state in (("initial", setup.initial), ("warm", setup.warm)):
        key = jax.random.key(1)
        draws = setup.draws(state, batch, key)
        new_state, jax_metrics = jax.block_until_ready(setup.step(state, batch, key))
        model.load(state)
        torch_metrics = model.step(torch_batch, torch_diffairec.torch_draws(draws))
        exported = model.exported()
        mu = optax.tree_utils.tree_get(new_state.opt_state, "mu")
        nu = optax.tree_utils.tree_get(new_state.opt_state, "nu")
        count = int(optax.tree_utils.tree_get(new_state.opt_state, "count"))
        conditioned = {path: np.sqrt(np.asarray(tree_get(nu, path)) / (1.0 - ADAM_B2 ** count)) >= WELL_CONDITIONED
                       for path in exported["params"]}
        reference = {
            "params": {path: tree_get(new_state.params, path) for path in exported["params"]},
            "adam_first_moment": {path: tree_get(mu, path) for path in exported["params"]},
            "loss_history": {("losses",): new_state.sampler.losses, ("counts",): new_state.sampler.counts},
        }
        out[name] = {quantity: largest(reference[quantity], exported[quantity],
                                       conditioned if quantity == "params" else None) for quantity in reference}
        out[name]["metrics"] = largest({(k,): jax_metrics[k] for k in torch_metrics},
                                       {(k,): v.numpy() for k, v in torch_metrics.items()})
        out[name]["importance_sampling_active"] = bool(np.any(np.asarray(
            diffusion.timestep_law(setup.dc, state.sampler)) != np.float32(1.0 / setup.dc.steps)))
    return out


def check_same_scores(setup: JaxSetup, model: torch_diffairec.TorchDiffusion, eval_batch: int) -> dict:
    """The (U, I) inference scores of both from the warm parameters."""
    model.load(setup.warm)
    return largest({(): setup.scores(setup.warm.params, eval_batch)}, {(): model.scores(eval_batch).numpy()})


# --- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=897)
    parser.add_argument("--items", type=int, default=1447)
    parser.add_argument("--density", type=float, default=0.03, help="fraction of (user, item) pairs interacted")
    parser.add_argument("--groups", type=int, default=2, help="groups of the sensitive attribute, G")
    parser.add_argument("--group-vectors", choices=GROUP_VECTORS, default="mean")
    parser.add_argument("--components", type=int, default=1, help="PCA tokens per group")
    parser.add_argument("--serve", choices=diffairec.SERVE, default="average")
    parser.add_argument("--swap", choices=diffairec.SWAPS, default="condition",
                        help="what the group swap changes (the ML-100k config: input, with --serve factual)")
    parser.add_argument("--batch", type=int, default=128, help="users per training step")
    parser.add_argument("--eval-batch", type=int, default=256, help="users per inference batch")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300], help="denoiser hidden widths")
    parser.add_argument("--time-dim", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="diffusion steps T")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of every step variant (median reported)")
    parser.add_argument("--epoch-repeats", type=int, default=5, help="timed calls of every epoch variant")
    parser.add_argument("--infer-repeats", type=int, default=5, help="timed calls of every inference variant")
    parser.add_argument("--settle", type=float, default=0.2, help="untimed pause (s) before every timed call")
    parser.add_argument("--no-diffrec", action="store_true", help="time DifFaiRec only")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_with_quick(parser, argv, QUICK, DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2]))
    return args


def summarise(ms: dict, model: str, batches: int) -> dict:
    """Per-model times and ratios from the medians."""
    out = {"jax_step_ms": ms[f"{model}_jax_step"], "jax_epoch_ms": ms[f"{model}_jax_epoch"],
           "jax_epoch_per_step_ms": ms[f"{model}_jax_epoch"] / batches, "jax_infer_ms": ms[f"{model}_jax_infer"]}
    label = lambda name, end: name[len(model) + 1 : -len(end)]  # noqa: E731 - "diffairec_torch_eager_1t_step"
    steps = {label(n, "_step"): v for n, v in ms.items() if n.startswith(f"{model}_torch_") and n.endswith("_step")}
    infers = {label(n, "_infer"): v for n, v in ms.items() if n.startswith(f"{model}_torch_") and n.endswith("_infer")}
    out.update({f"{name}_ms": value for name, value in steps.items()})
    out.update({f"{name}_infer_ms": value for name, value in infers.items()})
    out.update(torch_ratios(steps, out["jax_step_ms"], "jax_step"))
    out.update(torch_ratios(steps, out["jax_epoch_per_step_ms"], "jax_epoch_per_step"))
    out.update(torch_ratios(infers, out["jax_infer_ms"], "jax_infer"))
    return out


def main(argv=None):
    args = parse_args(argv)
    out = args.out if args.out or args.quick else str(DEFAULT_OUT)
    dc = diffusion.Config(steps=args.steps, hidden=tuple(args.hidden), time_dim=args.time_dim)
    method = diffairec.DifFaiRecConfig(group_vectors=args.group_vectors, components=args.components,
                                       latent_dim=args.latent_dim, serve=args.serve, swap=args.swap, diffusion=dc,
                                       train=dataclasses.replace(TRAIN, batch_size=args.batch))
    interactions, groups = make_inputs(args.users, args.items, args.density, args.groups, args.seed)
    tokens = np.asarray(diffairec.group_tokens(interactions, groups, args.groups, method))
    batches = diffusion.user_batches(args.users, np.random.default_rng(args.seed), args.batch)
    num_batches = len(batches["users"])
    models = MODELS[:1] if args.no_diffrec else MODELS
    key = jax.random.key(args.seed)
    init = {"diffairec": jax.jit(diffairec.init_params, static_argnums=(1, 2, 3)),
            "diffrec": jax.jit(diffusion.init_denoiser, static_argnums=(1, 2))}
    params = {"diffairec": init["diffairec"](key, args.items, dc, method),
              "diffrec": init["diffrec"](key, args.items, dc)}

    results = {
        "shapes": {"users": args.users, "items": args.items, "density": float(interactions.mean()),
                   "groups": args.groups, "tokens_per_group": int(tokens.shape[1]), "batch": args.batch,
                   "batches_per_epoch": num_batches, "eval_batch": args.eval_batch},
        "diffusion_config": dataclasses.asdict(dc), "diffairec_config": dataclasses.asdict(method),
        "learning_rate": LEARNING_RATE, "models": list(models), "repeats": args.repeats,
        "epoch_repeats": args.epoch_repeats, "infer_repeats": args.infer_repeats, "settle_s": args.settle,
        "quick": args.quick,
        "device": device_info(),
        "python_version": sys.version.split()[0], "numpy_version": np.__version__, "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version(), "optax_version": optax.__version__,
    }
    torch, skipped = torch_or_reason(args.no_torch)
    if torch is None:
        results["torch_skipped"] = skipped
    else:
        results.update(torch_version=torch.__version__, torch_warmup_s={}, torch_failed={})
        tbatches = torch_diffairec.torch_batches(batches)

    step_variants, epoch_variants, infer_variants, checks, warm_epochs, flops = {}, {}, {}, {}, {}, {}
    for model in models:
        setup = JaxSetup(model, dc, None if model == "diffrec" else method, interactions, groups, tokens,
                         params[model], batches)
        warm_epochs[model] = setup.warm_epochs
        step_variants[f"{model}_jax_step"] = (nothing, setup.step_variant(setup.warm))
        epoch_variants[f"{model}_jax_epoch"] = (nothing, setup.epoch_variant(setup.warm))
        infer_variants[f"{model}_jax_infer"] = (nothing, setup.infer_variant(setup.warm.params, args.eval_batch))
        flops[model] = xla_flops(setup.step, setup.warm, setup.batch_list[0], setup.key)
        if torch is not None:
            torch_method = None if model == "diffrec" else method
            reference = torch_model(setup.initial, dc, torch_method, interactions, groups, tokens, threads=1)
            checks[model] = check_same_step(setup, reference, tbatches[0])
            checks[model]["scores"] = check_same_scores(setup, reference, args.eval_batch)

            def build(threads, setup=setup, torch_method=torch_method):
                timed = torch_model(setup.warm, dc, torch_method, interactions, groups, tokens, threads)
                return timed, timed.step_variant(tbatches)[1]

            built, warmups, failed = torch_variants(torch, build, prefix=f"{model}_torch",
                                                    modes=torch_modes(args.no_compile), suffix="_step")
            step_variants.update(built)
            results["torch_warmup_s"].update(warmups)
            results["torch_failed"].update(failed)
            for threads in torch_thread_counts():
                timed = torch_model(setup.warm, dc, torch_method, interactions, groups, tokens, threads)
                timed.scores(args.eval_batch)  # warm-up
                infer_variants[f"{model}_torch_eager_{threads}t_infer"] = timed.infer_variant(args.eval_batch)
    results["warm_epochs"] = warm_epochs

    times = {**interleaved_ms(settled(step_variants, args.settle), args.repeats),
             **interleaved_ms(settled(epoch_variants, args.settle), args.epoch_repeats),
             **interleaved_ms(settled(infer_variants, args.settle), args.infer_repeats)}
    ms, results["quartiles_ms"] = {}, {}
    for name, values in times.items():
        ms[name], results["quartiles_ms"][name] = median_and_quartiles(values)
    results["median_ms"] = ms
    for model in models:
        results[model] = summarise(ms, model, num_batches)
    rates = matmul_rates({"large": (1024, 1024, 1024), "step": (args.batch, args.items, args.hidden[0])})
    results["roofline"] = {model: roofline(results[model]["jax_epoch_per_step_ms"], flops[model], rates)
                           for model in models}

    if checks:
        results["checks"] = checks
        results["check_max_abs_diff_params"] = max(c[state]["params"]["max_abs_diff"] for c in checks.values()
                                                   for state in ("initial", "warm"))
        results["check_max_abs_diff_params_well_conditioned"] = max(
            c[state]["params"]["max_abs_diff_well_conditioned"] for c in checks.values()
            for state in ("initial", "warm"))
        results["check_max_abs_diff_scores"] = max(c["scores"]["max_abs_diff"] for c in checks.values())
        results["check_passed"] = all(passes(quantity, values) for c in checks.values()
                                      for block in (c["initial"], c["warm"], {"scores": c["scores"]})
                                      for quantity, values in block.items() if isinstance(values, dict))
    return finish(results, out, lambda r: report(r, args))


def report(results, args):
    """The readable table."""
    q, ms, shapes = results["quartiles_ms"], results["median_ms"], results["shapes"]
    device = results["device"]
    print(f"DifFaiRec / DiffRec, U={args.users} I={args.items} (density {shapes['density']:.3f}) G={args.groups} "
          f"({args.group_vectors} tokens, serve {args.serve}, swap {args.swap}), B={args.batch} users, "
          f"{shapes['batches_per_epoch']} batches/epoch, hidden {args.hidden}, d={args.latent_dim}, T={args.steps}; "
          f"median of {args.repeats} steps "
          f"/ {args.epoch_repeats} epochs / {args.infer_repeats} inference passes ({device['jax_backend']}, "
          f"{device['cpu_count']} cpus, load average {device['load_average_at_start'][0]:.2f} -> "
          f"{device['load_average_at_end'][0]:.2f})")
    for model in results["models"]:
        print(f"{model}:")
        lines = [("train step: jax, one jitted call", f"{model}_jax_step", 1),
                 ("train step: jax inside the epoch scan", f"{model}_jax_epoch", shapes["batches_per_epoch"]),
                 *[(f"train step: {name[len(model) + 1:-5]} (warm-up {warm:.1f} s)", name, 1)
                   for name, warm in results.get("torch_warmup_s", {}).items() if name.startswith(model + "_")],
                 ("inference (U x I): jax", f"{model}_jax_infer", 1),
                 *[(f"inference (U x I): {name[len(model) + 1:-6]}", name, 1)
                   for name in ms if name.startswith(f"{model}_torch_") and name.endswith("_infer")]]
        for label, name, per in lines:
            if name in ms:
                value, (q1, q3) = ms[name], q[name]
                unit = "ms/step" if "step" in label else "ms/pass"
                epoch = f"   epoch {value:9.2f} ms" if per > 1 else ""
                print(f"  {label:42s} {value / per:9.3f} {unit} (quartiles {q1 / per:.3f} .. {q3 / per:.3f}){epoch}")
        for key, value in results[model].items():
            if "_over_" in key:
                print(f"  {key:42s} {value:9.3g}")
        print("  " + roofline_line(results["roofline"][model]))
        for state, quantities in results.get("checks", {}).get(model, {}).items():
            if state == "scores":
                print(f"  check scores: max abs diff {quantities['max_abs_diff']:.2g} (of {quantities['max_abs']:.2g})")
                continue
            cells = ", ".join(f"{k} {v['max_abs_diff']:.2g} (of {v['max_abs']:.2g})" for k, v in quantities.items()
                              if isinstance(v, dict))
            params = quantities["params"]
            print(f"  check step from {state} state (importance sampling "
                  f"{'on' if quantities['importance_sampling_active'] else 'off'}): max abs diff {cells}; "
                  f"params where Adam is well conditioned ({100 * params['well_conditioned_fraction']:.3f}% of "
                  f"entries) {params['max_abs_diff_well_conditioned']:.2g}")
    for key in ("check_max_abs_diff_params", "check_max_abs_diff_params_well_conditioned", "check_max_abs_diff_scores",
                "check_passed"):
        if key in results:
            print(f"  {key:44s} {results[key]:.3g}" if key != "check_passed" else f"  {key:44s} {results[key]}")
    for name, error in results.get("torch_failed", {}).items():
        print(f"  {name} failed: {error}")
    if "torch_skipped" in results:
        print(f"  torch skipped: {results['torch_skipped']}")


if __name__ == "__main__":
    main()
