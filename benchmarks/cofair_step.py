"""Benchmark Cofair's training step: the jaxfair step (all T levels in one ``jax.vmap``) against the same step with a
Python loop over the levels (also jitted, so the ratio isolates vmap vs loop) and against a PyTorch implementation of
the same step. Every number is measured in this one run.

    python -m benchmarks.cofair_step [--users 943 --items 1682 --dim 64 --levels 5 --batch 4096 --repeats 50]
    python -m benchmarks.cofair_step --quick --out /tmp/cofair_step.json     # tiny shapes, a few repeats
    python -m benchmarks.cofair_step --evaluation --repeats 15 --out benchmarks/results/cofair_evaluation.json
                                                     # the all-level evaluation: one vmap vs a loop over the levels

Shapes default to MovieLens-100k (943 users, 1682 items), d = 64, T = 5 levels, batches of 4096 BPR rows, a binary
attribute, synthetic random embeddings and random batches (numpy, seeded); run from the repository root. One step is,
in order: one Adam step of the discriminator D (d -> 32 -> K) on the stopped level embeddings, then one Adam step of
the filter (shared layer, T adapters, output layer) on ``mean_t (BPR_t - lambda_t L_t) + beta R`` with the adaptive
lambdas (Eq. 10) and the monotonicity regulariser, against the updated D (:mod:`jaxfair.methods.cofair`, adversary
``"paper"``). With ``--adversary mean_gap`` the filter's adversarial term is ``+ lambda_t S_t``, the share of the
level's variance between the class means, computed over the same rows in both frameworks:

    python -m benchmarks.cofair_step --adversary mean_gap --out /tmp/cofair_step_mean_gap.json

The configs' step (``configs/cofair_*_ml100k.toml``): a linear D updated 5 times per batch, a residual filter and
the ``capped`` adversary (each user's attacker loss capped at ``-log prior[a_u]`` in the adversarial term, Eq. 10 and
the regulariser; lambda_0, alpha and the step sizes stay at the module defaults, which the timing does not depend
on):

    python -m benchmarks.cofair_step --adversary capped --discriminator-layers 1 --discriminator-steps 5 --residual \
        --out benchmarks/results/cofair_step_config.json

With ``--exposure-weight G`` (> 0) every JAX variant also computes the soft top-10 exposure term (``G lambda_t X_t``,
:mod:`jaxfair.methods.soft_exposure`; a random 5% of each user's items masked), and one more variant,
``jax_vmap_without_exposure``, is the same step with the term off, so ``exposure_over_plain`` is the term's cost from
the same run. The PyTorch reference computes the same term (top-k, gather, scatter-add per level), and its metrics,
``exposure_gap`` included, are checked against the JAX step's like the others:

    python -m benchmarks.cofair_step --adversary capped --discriminator-layers 1 --discriminator-steps 5 --residual \
        --exposure-weight 1 --out benchmarks/results/cofair_step_exposure.json

Variants:

* ``jax_vmap``: ``jax.jit(cofair.make_train_step(...))``. As the dataset has no more users than a batch has rows, the
  filter and D run once per distinct user (weighted by row counts), jaxfair's automatic per-user mode.
* ``jax_loop``: jaxfair's own step with ``levels_fn`` computing each level separately from a slice of the adapter
  stack in a Python loop (unrolled inside one ``jax.jit``); everything else is shared, so the ratio isolates the
  level computation.
* ``jax_user_major``: the step with ``cofair.user_major = true`` (:func:`cofair.user_major_levels`: the levels
  as two 2-D matmuls, user-major, so the backward pass has no ``(T, N, d)`` transposes; equal to ``jax_vmap`` to
  float rounding, ``check_max_abs_diff_user_major_vs_vmap``).
* ``jax_vmap_per_row`` / ``jax_loop_per_row`` / ``jax_user_major_per_row``: the three again in per-row mode (one filter row per BPR row, as the public
  Cofair code does), forced by padding the dataset with unsampled users so it has more users than a batch has rows.
* ``torch_<mode>_<threads>t``: PyTorch (:class:`benchmarks.references.cofair.TorchCofair`; ``pip install
  torch==2.13.0``, the ``bench`` extra; skipped with a note if missing), per-row, ``nn.Linear`` layers and a Python
  loop over the T adapter Linears, eager and under ``torch.compile`` (``--no-compile`` drops it; its warm-up, compile
  included, is reported as ``torch_warmup_s``), each with 1 thread (the reference that suffers least when other
  processes share the cores) and with every core (:func:`benchmarks.timing.torch_variants`). It starts from the JAX
  parameters; the metrics (BPR_t, L_t, lambda_t, R, both losses) of a 1-thread eager copy's first two steps are
  compared with the JAX step's (``check_max_abs_diff_*``; the loop and per-row variants are checked the same way).

Same work: PyTorch runs the filter once per BPR row, so its headline ratios are over ``jax_vmap_per_row`` (the same
per-row work, ``torch_eager_1t_over_jax_vmap_per_row``, ``best_torch_over_jax_vmap_per_row``) and over
``jax_user_major_per_row``; the ratios over ``jax_vmap`` (per distinct user, jaxfair's default at this size) are
reported beside them. The roofline blocks give XLA's FLOP count of the per-row steps (``roofline``: the default
layout; ``roofline_user_major``) against this machine's matmul rate measured in the same run.

Timings: every variant first takes two steps (compiling / warm-up, and the checks); then ``--repeats`` steps of each
are timed one at a time, round-robin over the variants so that load from other processes falls on all of them alike
(JAX results blocked on, pre-drawn batches cycled), and the median (with quartiles) is reported in milliseconds. The
load average at the start and end is recorded: on a shared 2-core machine it bounds how far the numbers can be trusted.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.references import cofair as torch_cofair
from benchmarks.timing import (device_info, finish, interleaved_ms, jaxlib_version, matmul_rates, nothing,
                               parse_with_quick, quartiles, roofline, roofline_line, torch_modes, torch_or_reason,
                               torch_ratios, torch_variants, xla_flops)
from jaxfair.backbones.base import dot_score
from jaxfair.methods import cofair

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "cofair_step.json"
QUICK = {"users": 40, "items": 30, "dim": 8, "levels": 3, "batch": 64, "repeats": 3, "batches": 2}


def make_inputs(users, items, dim, batch, count, classes=2, seed=0):
    """Random frozen embeddings, a random attribute and ``count`` random BPR batches (numpy arrays)."""
    rng = np.random.default_rng(seed)
    user_vecs = rng.normal(size=(users, dim)).astype(np.float32)
    item_vecs = rng.normal(size=(items, dim)).astype(np.float32)
    labels = rng.integers(0, classes, users).astype(np.int32)
    batches = [
        {
            "user": rng.integers(0, users, batch).astype(np.int32),
            "pos": rng.integers(0, items, batch).astype(np.int32),
            "neg": rng.integers(0, items, batch).astype(np.int32),
            "weight": np.ones(batch, np.float32),
        }
        for _ in range(count)
    ]
    return user_vecs, item_vecs, labels, batches


def random_exclude(users, items, seed=1):
    """A random 5% of each user's items masked (the exposure term's known positives)."""
    return np.random.default_rng(seed).random((users, items)) < 0.05


def padded_data(user_vecs, item_vecs, labels, classes, batch, exclude=None):
    """The same data with unsampled zero-weight users appended so that ``U > B``: jaxfair's per-row mode."""
    users, dim = user_vecs.shape
    extra = max(0, batch + 1 - users)
    vecs = np.concatenate([user_vecs, np.zeros((extra, dim), np.float32)])
    labs = np.concatenate([labels, np.zeros(extra, np.int32)])
    weight = np.concatenate([np.ones(users, np.float32), np.zeros(extra, np.float32)])
    if exclude is not None:
        exclude = np.concatenate([exclude, np.zeros((extra, exclude.shape[1]), bool)])
    return cofair.make_data(vecs, item_vecs, labs, classes, label_weight=weight, exclude=exclude)


# --- the loop-over-levels variant: jaxfair's own step, with levels 1..T computed one at a time -----------------------


def loop_adapted(filter_params: dict, user_vecs: jax.Array, config: cofair.CofairConfig) -> jax.Array:
    """Levels 1..T one at a time from slices of the adapter stack (the paper's concatenation form), stacked to
    ``(T, N, d)`` like :func:`cofair.adapted_embeddings`."""
    shared = user_vecs @ filter_params["shared"]["w"] + filter_params["shared"]["b"]
    out = filter_params["out"]
    levels = []
    for t in range(config.levels):
        adapter = jax.tree.map(lambda x: x[t], filter_params["adapters"])
        private = user_vecs @ adapter["w"] + adapter["b"]
        hidden = jax.nn.leaky_relu(jnp.concatenate([shared, private], axis=-1), config.negative_slope)
        levels.append(hidden @ out["w"] + out["b"] + (user_vecs if config.residual else 0.0))
    return jnp.stack(levels)


def make_loop_train_step(data: cofair.CofairData, score, config: cofair.CofairConfig):
    """:func:`cofair.make_train_step` with the levels computed by a Python loop instead of one vmap."""
    return cofair.make_train_step(data, score, config, levels_fn=loop_adapted)


# --- JAX timing ---------------------------------------------------------------------------------------------------


def jax_variant(make_step, data, batches, config):
    """``step(r)``: one jitted step on batch ``r`` (cycling), blocked on; plus the metrics of the first two steps
    from the initial state (the first call compiles), that initial state, and ``(jitted step, its arguments)`` for
    the FLOP count."""
    step = jax.jit(make_step(data, dot_score, config))
    init = cofair.init_state(jax.random.key(0), data, config)
    device_batches = [jax.tree.map(jnp.asarray, b) for b in batches]
    key = jax.random.key(0)
    state, checked = init, []
    for i in range(2):
        state, metrics = jax.block_until_ready(step(state, device_batches[i % len(device_batches)], key))
        checked.append(jax.tree.map(np.asarray, metrics))
    state = [state]

    def one(r):
        state[0], metrics = step(state[0], device_batches[r % len(device_batches)], key)
        jax.block_until_ready((state[0], metrics))

    return one, checked, init, (step, (init, device_batches[0], key))


def max_metric_diff(a: list[dict], b: list[dict]) -> float:
    """Largest absolute difference between two runs' per-step metrics (losses, lambdas, regulariser, exposure gap)."""
    return max(
        float(np.max(np.abs(np.asarray(x[k], np.float64) - np.asarray(y[k], np.float64))))
        for x, y in zip(a, b, strict=True)
        for k in x
    )


# --- PyTorch ------------------------------------------------------------------------------------------------------


def torch_reference(torch, init_params, user_vecs, item_vecs, labels, batches, config, exclude=None):
    """``build(threads) -> (model, call)`` for :func:`benchmarks.timing.torch_variants`, and the metrics of the first
    two steps of a 1-thread eager copy (the checks). Every model is
    :class:`benchmarks.references.cofair.TorchCofair`, per-row, from the JAX initial parameters."""
    tb = torch_cofair.torch_batches(batches)

    def build(threads):
        torch.manual_seed(0)
        model = torch_cofair.TorchCofair(init_params, user_vecs, item_vecs, labels, config, exclude)
        return model, (lambda r: model.step(tb[r % len(tb)]))

    torch.set_num_threads(1)
    model, call = build(1)
    return build, [call(i) for i in range(2)]


# --- main ---------------------------------------------------------------------------------------------------------


def evaluation_levels(args, out):
    """``--evaluation``: the all-level full-ranking report (``cofair_evaluation.level_report``, one ``jax.vmap`` over
    the T + 1 levels) against a Python loop calling the same jitted ``full_ranking_report`` once per level, on
    random embeddings, 1% targets and 5% masked items per user at the step's shapes, interleaved; the largest
    metric difference between the two is checked."""
    from jaxfair.methods.cofair_evaluation import level_report
    from jaxfair.metrics.exposure import full_ranking_report

    rng = np.random.default_rng(0)
    levels = jnp.asarray(rng.normal(size=(args.levels + 1, args.users, args.dim)), jnp.float32)
    items = jnp.asarray(rng.normal(size=(args.items, args.dim)), jnp.float32)
    targets = jnp.asarray(rng.random((args.users, args.items)) < 0.01)
    exclude = jnp.asarray(rng.random((args.users, args.items)) < 0.05)
    groups = jnp.asarray(rng.integers(0, args.classes, args.users), jnp.int32)
    ks = (10, 20)

    def vmapped(_=None):
        return jax.block_until_ready(level_report(levels, items, dot_score, targets, exclude, groups, args.classes,
                                                  ks))

    def loop(_=None):
        return jax.block_until_ready([full_ranking_report(dot_score, levels[t], items, targets, exclude, groups,
                                                          num_groups=args.classes, ks=ks)
                                      for t in range(args.levels + 1)])

    a, b = vmapped(), loop()
    diff = max(float(jnp.abs(a[k] - jnp.stack([x[k] for x in b])).max()) for k in a)
    times = interleaved_ms({"evaluation_vmap": (nothing, vmapped), "evaluation_loop": (nothing, loop)},
                           args.repeats)
    ms = {name: statistics.median(values) for name, values in times.items()}
    results = {"shapes": {"users": args.users, "items": args.items, "dim": args.dim, "levels": args.levels},
               "repeats": args.repeats, "device": device_info(), "check_max_abs_diff": diff,
               **{f"{name}_ms": value for name, value in ms.items()},
               "quartiles_ms": {name: quartiles(v) for name, v in times.items()},
               "evaluation_loop_over_vmap": ms["evaluation_loop"] / ms["evaluation_vmap"]}

    def show(r):
        print(f"Cofair all-level evaluation, U={args.users} I={args.items} T+1={args.levels + 1}: vmap "
              f"{r['evaluation_vmap_ms']:.1f} ms, loop {r['evaluation_loop_ms']:.1f} ms, loop_over_vmap "
              f"{r['evaluation_loop_over_vmap']:.3g} (max metric difference {r['check_max_abs_diff']:.2g})")

    return finish(results, out, show)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--adversary", choices=("paper", "capped", "mean_gap"), default="paper")
    parser.add_argument("--discriminator-layers", type=int, choices=(1, 2), default=2)
    parser.add_argument("--discriminator-steps", type=int, default=1)
    parser.add_argument("--residual", action="store_true", help="e_t = e + W_o ... (the configs' filter)")
    parser.add_argument("--exposure-weight", type=float, default=0.0,
                        help="gamma of the soft top-10 exposure term (all variants, PyTorch included, compute it)")
    parser.add_argument("--repeats", type=int, default=50, help="timed steps per variant (median reported)")
    parser.add_argument("--batches", type=int, default=10, help="distinct random batches the timed steps cycle through")
    parser.add_argument("--evaluation", action="store_true",
                        help="time the all-level evaluation against a loop over the levels instead of the step")
    args = parse_with_quick(parser, argv, QUICK, DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2]))
    out = args.out if args.out or args.quick else str(DEFAULT_OUT)
    if args.evaluation:
        return evaluation_levels(args, out)

    config = cofair.CofairConfig(levels=args.levels, shared_dim=args.dim, adapter_dim=args.dim,
                                 adversary=args.adversary,
                                 discriminator_layers=args.discriminator_layers,
                                 discriminator_steps=args.discriminator_steps, residual=args.residual,
                                 train=dataclasses.replace(cofair.CofairConfig().train, batch_size=args.batch),
                                 exposure_weight=args.exposure_weight,
                                 exposure_candidates=min(20, args.items - 1), exposure_k=min(10, args.items - 2))
    user_vecs, item_vecs, labels, batches = make_inputs(args.users, args.items, args.dim, args.batch, args.batches,
                                                        args.classes)
    exclude = random_exclude(args.users, args.items)
    data = cofair.make_data(user_vecs, item_vecs, labels, args.classes, exclude=exclude)
    row_data = padded_data(user_vecs, item_vecs, labels, args.classes, args.batch, exclude)
    results = {
        "shapes": {"users": args.users, "items": args.items, "dim": args.dim, "levels": args.levels,
                   "classes": args.classes, "batch": args.batch, "shared_dim": config.shared_dim,
                   "adapter_dim": config.adapter_dim, "discriminator_hidden": config.discriminator_hidden},
        "adversary": config.adversary, "discriminator_layers": config.discriminator_layers,
        "discriminator_steps": config.discriminator_steps, "residual": config.residual,
        "exposure_weight": config.exposure_weight, "exposure_k": config.exposure_k,
        "exposure_candidates": config.exposure_candidates,
        "repeats": args.repeats, "batches": args.batches, "quick": args.quick,
        "default_mode": "per_user" if args.users <= args.batch else "per_row",
        "device": device_info(),
        "jax_version": jax.__version__, "jaxlib_version": jaxlib_version(),
    }
    variants, checked, lowered_steps = {}, {}, {}
    user_major = dataclasses.replace(config, user_major=True)
    for name, make_step, variant_data, variant_config in (
            ("jax_vmap", cofair.make_train_step, data, config),
            ("jax_loop", make_loop_train_step, data, config),
            ("jax_user_major", cofair.make_train_step, data, user_major),
            ("jax_vmap_per_row", cofair.make_train_step, row_data, config),
            ("jax_loop_per_row", make_loop_train_step, row_data, config),
            ("jax_user_major_per_row", cofair.make_train_step, row_data, user_major)):
        one, checked[name], state, lowered = jax_variant(make_step, variant_data, batches, variant_config)
        variants[name] = (nothing, one)
        if name == "jax_vmap":
            init = state
        if name in ("jax_vmap_per_row", "jax_user_major_per_row"):
            lowered_steps[name] = lowered
    if config.exposure_weight > 0:
        plain = dataclasses.replace(config, exposure_weight=0.0)
        variants["jax_vmap_without_exposure"] = (nothing, jax_variant(cofair.make_train_step, data, batches, plain)[0])
    results["torch_warmup_s"], results["torch_failed"] = {}, {}

    torch, skipped = torch_or_reason(args.no_torch)
    if torch is None:
        results["torch_skipped"] = skipped
    else:
        results["torch_version"] = torch.__version__
        build, checked["torch"] = torch_reference(torch, init.params, user_vecs, item_vecs, labels, batches, config,
                                                  exclude)
        built, results["torch_warmup_s"], results["torch_failed"] = torch_variants(
            torch, build, modes=torch_modes(args.no_compile), warmup_calls=2)
        variants.update(built)

    times = interleaved_ms(variants, args.repeats)
    for name, values in times.items():
        results[f"{name}_ms"] = statistics.median(values)
    results["quartiles_ms"] = {name: quartiles(v) for name, v in times.items()}
    ms = {name: results[f"{name}_ms"] for name in times}
    results.update({
        "loop_over_vmap": ms["jax_loop"] / ms["jax_vmap"],
        "loop_over_vmap_per_row": ms["jax_loop_per_row"] / ms["jax_vmap_per_row"],
        "per_row_over_per_user": ms["jax_vmap_per_row"] / ms["jax_vmap"],
        "vmap_over_user_major": ms["jax_vmap"] / ms["jax_user_major"],
        "loop_over_user_major": ms["jax_loop"] / ms["jax_user_major"],
        "vmap_over_user_major_per_row": ms["jax_vmap_per_row"] / ms["jax_user_major_per_row"],
        "loop_over_user_major_per_row": ms["jax_loop_per_row"] / ms["jax_user_major_per_row"],
    })
    if "jax_vmap_without_exposure" in ms:
        results["exposure_over_plain"] = ms["jax_vmap"] / ms["jax_vmap_without_exposure"]
    torch_ms = {name: value for name, value in ms.items() if name.startswith("torch_")}
    results.update(torch_ratios(torch_ms, ms["jax_vmap_per_row"], "jax_vmap_per_row"))
    results.update(torch_ratios(torch_ms, ms["jax_user_major_per_row"], "jax_user_major_per_row"))
    results.update(torch_ratios(torch_ms, ms["jax_vmap"], "jax_vmap"))
    rates = matmul_rates({"large": (1024, 1024, 1024), "step": (args.batch, args.dim, args.dim)})
    for name, key in (("jax_vmap_per_row", "roofline"), ("jax_user_major_per_row", "roofline_user_major")):
        step, step_args = lowered_steps[name]
        results[key] = roofline(ms[name], xla_flops(step, *step_args), rates)
    for name in checked:
        if name != "jax_vmap":
            label = {"jax_loop": "loop_vs_vmap", "jax_vmap_per_row": "per_row_vs_per_user",
                     "jax_loop_per_row": "loop_per_row_vs_vmap", "jax_user_major": "user_major_vs_vmap",
                     "jax_user_major_per_row": "user_major_per_row_vs_vmap", "torch": "torch_vs_jax"}[name]
            results[f"check_max_abs_diff_{label}"] = max_metric_diff(checked["jax_vmap"], checked[name])

    return finish(results, out, lambda r: report(r, args))


def report(results, args):
    """The readable table."""
    print(f"Cofair train step ({results['adversary']} adversary, {results['discriminator_layers']}-layer D x "
          f"{results['discriminator_steps']}{', residual' if results['residual'] else ''}), U={args.users} "
          f"I={args.items} d={args.dim} T={args.levels} K={args.classes} "
          f"B={args.batch}, median of {args.repeats} steps ({results['device']['jax_backend']}, "
          f"{results['device']['cpu_count']} cpus)")
    rows = [("jax vmap (jaxfair, %s)" % results["default_mode"], "jax_vmap_ms"),
            ("jax loop over levels", "jax_loop_ms"),
            ("jax vmap, per-row", "jax_vmap_per_row_ms"),
            ("jax loop, per-row", "jax_loop_per_row_ms"),
            ("jax user-major (cofair.user_major)", "jax_user_major_ms"),
            ("jax user-major, per-row", "jax_user_major_per_row_ms"),
            ("jax vmap, without the exposure term", "jax_vmap_without_exposure_ms"),
            *[(f"{name} (per-row; warm-up {results['torch_warmup_s'][name]:.1f} s)", f"{name}_ms")
              for name in results["torch_warmup_s"]]]
    for name, key in rows:
        if key in results:
            q1, q3 = results["quartiles_ms"][key[:-3]]
            print(f"  {name:44s} {results[key]:10.3f} ms   (quartiles {q1:.3f} .. {q3:.3f})")
    for key, value in results.items():
        if ("_over_" in key and isinstance(value, float)) or key.startswith("check_"):
            print(f"  {key:44s} {value:10.4g}")
    for name, error in results["torch_failed"].items():
        print(f"  {name} failed: {error}")
    if "torch_skipped" in results:
        print(f"  torch skipped: {results['torch_skipped']}")
    print("  per-row:             " + roofline_line(results["roofline"]))
    print("  per-row, user-major: " + roofline_line(results["roofline_user_major"]))


if __name__ == "__main__":
    main()
