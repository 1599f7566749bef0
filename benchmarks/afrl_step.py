"""Benchmark AFRL's training step against a PyTorch implementation of the same step, and the vmapped all-requirement
evaluation against a Python loop over requirements. Every number is a ratio measured in this one run.

    python benchmarks/afrl_step.py [--users 897 --items 1447 --steps 200 --out benchmarks/results/afrl_step.json]

Shapes follow the paper's setting on MovieLens-100k: batch 256, d = 64, attributes (gender 2, age 7, occupation 21
classes), 6-layer encoders E_i and F, 2-layer C_i and D_i, 2-layer G, Adam, a dot-product (PMF) scorer. The PyTorch
step performs the same five updates in the same order (C, E, D, F, G), each player with its own Adam; it exists only
for this benchmark (``pip install torch==2.13.0``, the ``bench`` extra).

Timings: the first (compiling / warm-up) calls are excluded, JAX results are blocked on, and each variant reports
the median of several repeats of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.experiments.afrl import requirement_metrics
from jaxfair.methods import afrl
from jaxfair.methods.mlp import mlp_sizes
from jaxfair.training.step import make_epoch_fn

CLASSES = (2, 7, 21)


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
    data = afrl.make_data(rng.normal(size=(users, dim)), rng.normal(size=(items, dim)), labels, CLASSES)
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


def bench_torch_step(data, batches, config, repeats):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    d, m, width = data.user_vecs.shape[1], len(CLASSES), max(CLASSES)

    def mlp(sizes):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1])

    enc = mlp_sizes(d, config.hidden, d, config.encoder_layers)
    head = mlp_sizes(d, config.hidden, width, config.head_layers)
    players = {
        "C": torch.nn.ModuleList([mlp(head) for _ in range(m)]),
        "E": torch.nn.ModuleList([mlp(enc) for _ in range(m)]),
        "D": torch.nn.ModuleList([mlp(head) for _ in range(m)]),
        "F": mlp(enc),
        "G": mlp(mlp_sizes((m + 1) * d, config.hidden, d, config.aggregator_layers)),
    }
    optims = {k: torch.optim.Adam(v.parameters(), lr=config.learning_rate) for k, v in players.items()}
    user_vecs = torch.tensor(np.asarray(data.user_vecs))
    item_vecs = torch.tensor(np.asarray(data.item_vecs))
    labels_all = torch.tensor(np.asarray(data.labels), dtype=torch.long)
    cmask = torch.tensor(np.asarray(data.class_mask))
    tb = {k: torch.tensor(v) for k, v in batches.items()}

    def nll(heads, zs, labels):
        total = 0.0
        for i, h in enumerate(heads):
            logits = h(zs[i]).masked_fill(~cmask[i], -1e9)
            total = total + torch.nn.functional.cross_entropy(logits, labels[:, i], reduction="none")
        return total

    def update(name, loss):
        optims[name].zero_grad()
        loss.backward()
        optims[name].step()

    def step(i):
        users = tb["user"][i].long()
        u, labels = user_vecs[users], labels_all[users]
        sensitive = torch.rand(u.shape[0], m) < 0.5
        with torch.no_grad():
            z = [e(u) for e in players["E"]]
        update("C", nll(players["C"], z, labels).mean())
        z = [e(u) for e in players["E"]]
        compression = sum(0.5 * (zi**2).sum(-1) for zi in z)
        update("E", (compression + config.beta * nll(players["C"], z, labels)).mean())
        with torch.no_grad():
            z0 = players["F"](u)
        update("D", nll(players["D"], [z0] * m, labels).mean())
        z0 = players["F"](u)
        update("F", ((z0 - u) ** 2).sum(-1).mean() - config.lam * nll(players["D"], [z0] * m, labels).mean())
        with torch.no_grad():
            z0 = players["F"](u)
            z = [e(u) for e in players["E"]]
            kept = [zi * (~sensitive[:, j : j + 1]).float() for j, zi in enumerate(z)]
            x = torch.cat([z0] + kept, dim=1)
        u_star = players["G"](x)
        pos, neg = item_vecs[tb["pos"][i].long()], item_vecs[tb["neg"][i].long()]
        diff = (u_star * pos).sum(-1) - (u_star * neg).sum(-1)
        update("G", -torch.nn.functional.logsigmoid(diff).mean())

    steps = batches["user"].shape[0]

    def run():
        for i in range(steps):
            step(i)

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
    reqs = jnp.asarray(afrl.all_requirements(len(CLASSES)))

    def vmapped():
        jax.block_until_ready(
            requirement_metrics(params, score, data.user_vecs, data.item_vecs, targets, negs, reqs, config=config, ks=(10,))
        )

    def looped():
        for r in range(reqs.shape[0]):
            jax.block_until_ready(
                requirement_metrics(
                    params, score, data.user_vecs, data.item_vecs, targets, negs, reqs[r : r + 1], config=config, ks=(10,)
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
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    config = afrl.AFRLConfig()
    data, batches = make_inputs(args.users, args.items, 64, args.batch, args.steps)
    results = {"machine": f"{platform.machine()} {platform.processor()} cpus={jax.local_device_count()}", **vars(args)}
    results.update(bench_jax_step(data, batches, config, args.repeats))
    if not args.no_torch:
        results.update(bench_torch_step(data, batches, config, args.repeats))
        results["torch_over_jax_jit_step"] = results["torch_step_s"] / results["jax_jit_step_s"]
        results["torch_over_jax_scan_step"] = results["torch_step_s"] / results["jax_scan_epoch_step_s"]
    results.update(bench_requirements(data, config, args.repeats))
    results["loop_over_vmapped_requirements"] = results["loop_over_requirements_s"] / results["vmapped_all_requirements_s"]
    for key, value in results.items():
        print(f"{key:34s} {value:.6g}" if isinstance(value, float) else f"{key:34s} {value}")
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
