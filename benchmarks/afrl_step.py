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

Timings: the first (compiling / warm-up) calls are excluded, JAX results are blocked on, and each variant reports
the median of several repeats of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.references import afrl as torch_afrl
from benchmarks.timing import parse_with_quick, torch_or_reason, write_json
from jaxfair.methods import adversaries, afrl
from jaxfair.methods.requirements import all_requirements, requirement_metrics
from jaxfair.training.step import make_epoch_fn

CLASSES = (2, 7, 21)
QUICK = {"users": 40, "items": 30, "batch": 8, "steps": 3, "repeats": 1}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


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


def bench_jax_step(data, batches, config, repeats):
    score = lambda u, v: jnp.sum(u * v, axis=-1)
    step = afrl.make_train_step(data, score, config)
    state = afrl.init_state(jax.random.key(0), data, config)
    steps = batches["user"].shape[0]

    jitted = jax.jit(step)
    per_batch = [jax.tree.map(lambda x: jnp.asarray(x[i]), batches) for i in range(steps)]
    keys = [jax.random.key(i) for i in range(steps)]

    def loop():
        s = state
        for b, k in zip(per_batch, keys):
            s, _ = jitted(s, b, k)
        jax.block_until_ready(s)

    epoch = make_epoch_fn(step)
    device_batches = jax.tree.map(jnp.asarray, batches)

    def scanned():
        jax.block_until_ready(epoch(state, device_batches, jax.random.key(0)))

    loop(), scanned()  # compile
    return {
        "jax_jit_step_s": median_seconds(loop, repeats) / steps,
        "jax_scan_epoch_step_s": median_seconds(scanned, repeats) / steps,
    }


def bench_torch_step(torch, data, batches, config, repeats):
    """The same steps in PyTorch (:class:`benchmarks.references.afrl.TorchAFRL`, its own initialisation)."""
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = torch_afrl.TorchAFRL(data.user_vecs, data.item_vecs, data.labels, data.class_mask, config)
    tb = {k: torch.tensor(v) for k, v in batches.items()}
    steps = batches["user"].shape[0]
    per_batch = [{k: v[i] for k, v in tb.items()} for i in range(steps)]

    def run():
        for batch in per_batch:
            model.step(batch)

    run()  # warm-up
    return {"torch_step_s": median_seconds(run, repeats) / steps, "torch_threads": torch.get_num_threads()}


def bench_requirements(data, config, repeats, negatives=99, seed=0):
    """All 2^M requirements in one vmapped call vs a Python loop calling the same jitted function per requirement."""
    rng = np.random.default_rng(seed)
    users, items = data.user_vecs.shape[0], data.item_vecs.shape[0]
    params = afrl.init_state(jax.random.key(1), data, config).params
    score = jax.tree_util.Partial(lambda u, v: jnp.sum(u * v, axis=-1))
    targets = jnp.asarray(rng.integers(0, items, users), jnp.int32)
    negs = jnp.asarray(rng.integers(0, items, (users, negatives)), jnp.int32)
    reqs = jnp.asarray(all_requirements(len(CLASSES)))
    embed = afrl.fair_user_embeddings

    def vmapped():
        jax.block_until_ready(
            requirement_metrics(params, score, data.user_vecs, data.item_vecs, targets, negs, reqs, config=config,
                                ks=(10,), embed=embed)
        )

    def looped():
        for r in range(reqs.shape[0]):
            jax.block_until_ready(
                requirement_metrics(
                    params, score, data.user_vecs, data.item_vecs, targets, negs, reqs[r : r + 1], config=config,
                    ks=(10,), embed=embed,
                )
            )

    vmapped(), looped()  # compile
    return {"vmapped_all_requirements_s": median_seconds(vmapped, repeats), "loop_over_requirements_s": median_seconds(looped, repeats)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=897)
    parser.add_argument("--items", type=int, default=1447)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_with_quick(parser, argv, QUICK)

    config = afrl.AFRLConfig()
    data, batches = make_inputs(args.users, args.items, 64, args.batch, args.steps)
    results = {"machine": f"{platform.machine()} {platform.processor()} cpus={jax.local_device_count()}", **vars(args)}
    results.update(bench_jax_step(data, batches, config, args.repeats))
    torch, skipped = torch_or_reason(args.no_torch)
    if torch is None:
        results["torch_skipped"] = skipped
    else:
        results.update(bench_torch_step(torch, data, batches, config, args.repeats))
        results["torch_over_jax_jit_step"] = results["torch_step_s"] / results["jax_jit_step_s"]
        results["torch_over_jax_scan_step"] = results["torch_step_s"] / results["jax_scan_epoch_step_s"]
    results.update(bench_requirements(data, config, args.repeats))
    results["loop_over_vmapped_requirements"] = results["loop_over_requirements_s"] / results["vmapped_all_requirements_s"]
    for key, value in results.items():
        print(f"{key:34s} {value:.6g}" if isinstance(value, float) else f"{key:34s} {value}")
    if args.out:
        write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
