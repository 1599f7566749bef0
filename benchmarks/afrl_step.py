"""Benchmark AFRL's training step against a PyTorch implementation of the same step, and the vmapped all-requirement
evaluation against a Python loop over requirements. Every number is a ratio measured in this one run.

    python -m benchmarks.afrl_step [--users 897 --items 1447 --steps 200 --out benchmarks/results/afrl_step.json]
    python -m benchmarks.afrl_step --quick --out /tmp/afrl_step.json      # tiny shapes, one repeat

Run from the repository root. Shapes follow the paper's setting on MovieLens-100k: batch 256, d = 64, attributes
(gender 2, age 7, occupation 21 classes), 6-layer encoders E_i and F, 2-layer C_i and D_i, 2-layer G, Adam, a
dot-product (PMF) scorer. The PyTorch step (:class:`benchmarks.references.afrl.TorchAFRL`) performs the same five
updates in the same order (C, E, D, F, G), each player with its own Adam, from PyTorch's own initialisation and its
own requirement draws; it exists only for the benchmarks (``pip install torch==2.13.0``, the ``bench`` extra; skipped
with a note, ``torch_skipped``, if missing). ``tests/test_torch_references.py`` checks that it computes the same step
as jaxfair's.

Variants, each call one pass over the ``--steps`` pre-drawn batches, reported per step:

* ``jax_jit_step``: ``jax.jit(afrl.make_train_step(...))`` called once per batch from Python;
* ``jax_scan_epoch``: :func:`jaxfair.training.step.make_epoch_fn` of the same step (a ``lax.scan`` over the
  stacked batches), as training runs it;
* ``torch_<mode>_<threads>t``: the PyTorch step eager and under ``torch.compile`` (``--no-compile`` drops it),
  each with 1 thread and with every core (:func:`benchmarks.timing.torch_variants`); the compile warm-up is run
  before timing and reported as ``torch_warmup_s``.

Both sides do the same work: one row of every player per BPR row (neither side deduplicates users).
Requirements: ``vmapped_all_requirements`` (all 2^M requirement masks in one vmapped call of
:func:`jaxfair.methods.requirements.requirement_metrics`) against ``loop_over_requirements`` (the same jitted function
called once per requirement).

Timings: every variant first runs untimed (compiling / warm-up); then the variants are timed ``--repeats`` times
round-robin (:func:`benchmarks.timing.interleaved_ms`, JAX results blocked on), medians and quartiles reported. The
roofline block gives XLA's FLOP count of one JAX step against this machine's matmul rate measured in the same run, at
a large square shape and at the step's own (batch, d, d) shape: it says what bounds the step.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.references import afrl as torch_afrl
from benchmarks.timing import (device_info, finish, interleaved_ms, jaxlib_version, matmul_rates, nothing,
                               parse_with_quick, quartiles, roofline, roofline_line, torch_modes, torch_or_reason,
                               torch_ratios, torch_variants, xla_flops)
from jaxfair.methods import adversaries, afrl
from jaxfair.methods.requirements import all_requirements, requirement_metrics
from jaxfair.training.step import make_epoch_fn

CLASSES = (2, 7, 21)
QUICK = {"users": 40, "items": 30, "batch": 8, "steps": 3, "repeats": 1}


def make_inputs(users, items, dim, batch, steps, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, c, users) for c in CLASSES], 1)
    data = adversaries.make_data(rng.normal(size=(users, dim)), rng.normal(size=(items, dim)), labels, CLASSES)
    batches = {
        "user": rng.integers(0, users, (steps, batch)).astype(np.int32),
        "pos": rng.integers(0, items, (steps, batch)).astype(np.int32),
        "neg": rng.integers(0, items, (steps, batch)).astype(np.int32),
        "weight": np.ones((steps, batch), np.float32),
    }
    return data, batches


def jax_variants(data, batches, config):
    """``(variants, jitted step, one batch, key, state)``: the per-batch jitted step and the scanned epoch, each a
    ``(prepare, call)`` whose call is one pass over the batches (compiled here)."""
    score = lambda u, v: jnp.sum(u * v, axis=-1)
    step = afrl.make_train_step(data, score, config)
    state = afrl.init_state(jax.random.key(0), data, config)
    steps = batches["user"].shape[0]
    jitted = jax.jit(step)
    per_batch = [jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), batches) for i in range(steps)]
    keys = [jax.random.key(i) for i in range(steps)]
    epoch = make_epoch_fn(step)
    device_batches = jax.tree.map(jnp.asarray, batches)

    def loop(r):
        s = state
        for b, k in zip(per_batch, keys):
            s, metrics = jitted(s, b, k)
        jax.block_until_ready((s, metrics))

    def scanned(r):
        jax.block_until_ready(epoch(state, device_batches, jax.random.key(0)))

    loop(0), scanned(0)  # compile
    variants = {"jax_jit_step": (nothing, loop), "jax_scan_epoch": (nothing, scanned)}
    return variants, jitted, per_batch[0], keys[0], state


def torch_builder(torch, data, batches, config):
    """``build(threads) -> (model, call)`` for :func:`benchmarks.timing.torch_variants`: a fresh
    :class:`benchmarks.references.afrl.TorchAFRL` (PyTorch's own initialisation, seeded) and one pass over the
    batches."""
    steps = batches["user"].shape[0]
    per_batch = [{k: torch.tensor(v[i]) for k, v in batches.items()} for i in range(steps)]

    def build(threads):
        torch.manual_seed(0)
        model = torch_afrl.TorchAFRL(data.user_vecs, data.item_vecs, data.labels, data.class_mask, config)

        def run(r):
            for batch in per_batch:
                model.step(batch)

        return model, run

    return build


def requirement_variants(data, config, negatives=99, seed=0):
    """All 2^M requirements in one vmapped call vs a Python loop calling the same jitted function per requirement."""
    rng = np.random.default_rng(seed)
    users, items = data.user_vecs.shape[0], data.item_vecs.shape[0]
    params = afrl.init_state(jax.random.key(1), data, config).params
    score = jax.tree_util.Partial(lambda u, v: jnp.sum(u * v, axis=-1))
    targets = jnp.asarray(rng.integers(0, items, users), jnp.int32)
    negs = jnp.asarray(rng.integers(0, items, (users, negatives)), jnp.int32)
    reqs = jnp.asarray(all_requirements(len(CLASSES)))
    embed = afrl.fair_user_embeddings

    def evaluate(masks):
        return requirement_metrics(params, score, data.user_vecs, data.item_vecs, targets, negs, masks, config=config,
                                   ks=(10,), embed=embed)

    def vmapped(r):
        jax.block_until_ready(evaluate(reqs))

    def looped(r):
        for i in range(reqs.shape[0]):
            jax.block_until_ready(evaluate(reqs[i : i + 1]))

    vmapped(0), looped(0)  # compile
    return {"vmapped_all_requirements": (nothing, vmapped), "loop_over_requirements": (nothing, looped)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=897)
    parser.add_argument("--items", type=int, default=1447)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100, help="batches per timed call (times reported per step)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of every variant (median reported)")
    args = parse_with_quick(parser, argv, QUICK)

    config = afrl.AFRLConfig()
    dim = 64
    data, batches = make_inputs(args.users, args.items, dim, args.batch, args.steps)
    results = {**vars(args), "dim": dim, "device": device_info(), "jax_version": jax.__version__,
               "jaxlib_version": jaxlib_version()}
    variants, jitted, batch, key, state = jax_variants(data, batches, config)
    torch, skipped = torch_or_reason(args.no_torch)
    if torch is None:
        results["torch_skipped"] = skipped
    else:
        built, results["torch_warmup_s"], results["torch_failed"] = torch_variants(
            torch, torch_builder(torch, data, batches, config), modes=torch_modes(args.no_compile), warmup_calls=1)
        variants.update(built)
        results["torch_version"] = torch.__version__
    times = interleaved_ms(variants, args.repeats)
    times.update(interleaved_ms(requirement_variants(data, config), args.repeats))
    per_step = {name for name in times if name not in ("vmapped_all_requirements", "loop_over_requirements")}
    results["median_ms"] = {name: statistics.median(v) / (args.steps if name in per_step else 1)
                            for name, v in times.items()}
    results["quartiles_ms"] = {name: [q / (args.steps if name in per_step else 1) for q in quartiles(v)]
                               for name, v in times.items()}
    ms = results["median_ms"]
    results["jax_jit_step_s"] = ms["jax_jit_step"] / 1e3
    results["jax_scan_epoch_step_s"] = ms["jax_scan_epoch"] / 1e3
    results["vmapped_all_requirements_s"] = ms["vmapped_all_requirements"] / 1e3
    results["loop_over_requirements_s"] = ms["loop_over_requirements"] / 1e3
    results["loop_over_vmapped_requirements"] = ms["loop_over_requirements"] / ms["vmapped_all_requirements"]
    torch_ms = {name: value for name, value in ms.items() if name.startswith("torch_")}
    results.update(torch_ratios(torch_ms, ms["jax_jit_step"], "jax_jit_step"))
    results.update(torch_ratios(torch_ms, ms["jax_scan_epoch"], "jax_scan_step"))
    rates = matmul_rates({"large": (1024, 1024, 1024), "step": (args.batch, dim, dim)})
    results["roofline"] = roofline(ms["jax_scan_epoch"], xla_flops(jitted, state, batch, key), rates)
    return finish(results, args.out, report)


def report(results):
    """The readable table."""
    print(f"AFRL train step, U={results['users']} I={results['items']} B={results['batch']} d={results['dim']}, "
          f"median of {results['repeats']} passes of {results['steps']} steps "
          f"({results['device']['jax_backend']}, {results['device']['cpu_count']} cpus)")
    for name, value in results["median_ms"].items():
        q1, q3 = results["quartiles_ms"][name]
        unit = "ms per call" if "requirements" in name else "ms per step"
        warm = results.get("torch_warmup_s", {}).get(name)
        extra = f"   warm-up {warm:.1f} s" if warm is not None else ""
        print(f"  {name:28s} {value:10.3f} {unit}   (quartiles {q1:.3f} .. {q3:.3f}){extra}")
    for key, value in results.items():
        if "_over_" in key and not key.endswith("_s") and isinstance(value, float):
            print(f"  {key:44s} {value:8.3g}")
    for name, error in results.get("torch_failed", {}).items():
        print(f"  {name} failed: {error}")
    if "torch_skipped" in results:
        print(f"  torch skipped: {results['torch_skipped']}")
    print("  " + roofline_line(results["roofline"]))


if __name__ == "__main__":
    main()
