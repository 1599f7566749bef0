"""Cofair with its exposure term at MovieLens-20M's size, without any ``(users, items)`` array (issue 21, item 3).

    python -m benchmarks.sparse_scale [--preset ml-20m] [--steps 5] [--batch 4096] [--levels 5] [--out FILE]
    python -m benchmarks.sparse_scale --preset ml-1m --force-sparse --steps 2     # the same paths on a CPU

The synthetic preset (:mod:`jaxfair.data.synthetic_scale`; ``ml-20m``: 138,493 users x 26,744 items, whose bool
``(U, I)`` matrix alone is 3.7 GB) is prepared as Cofair's recipe does (every rating a positive, 80/10/10 by time),
with every whole-matrix builder made to raise (``Split.dense``, ``UserItems.dense``). Then, from random frozen
embeddings (``d = 64``; the backbone is not the point): Cofair's inputs (the training positives kept as sparse rows),
one epoch of BPR rows (negatives drawn against the sets), ``--steps`` jitted training steps with the exposure term
(one filter row per BPR row, each batch's ``(B, I)`` mask built from its users' sets), the validation report of the
top level and the test report of every level, streamed in blocks of users (``EVAL_MEMORY_BYTES``). Prints, and
writes with ``--out``, the sizes, each stage's seconds and the device's peak memory after it (where the backend
reports one), and the host's peak RSS. ``--force-sparse`` sets the memory rule's limit to 0, so smaller presets take
the same paths.

``benchmarks/results/sparse_scale_ml20m.json`` (an H200 with jax 0.11.2, the defaults): 4.5 minutes in all, most of
it generating and preparing the data on the host (5.0 GB peak RSS), and no ``(U, I)`` array. The device's peak,
13.4 GB, is set by the training step, whose exposure term scores every item for every level and row of the batch
(``T B I`` = 5 x 4096 x 26,744 float32 scores and their masked copy); the blocked evaluation stays under it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ml-20m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--force-sparse", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from jaxfair.backbones.common import pair_epoch
    from jaxfair.data import dataset
    from jaxfair.data.preprocess import PrepConfig, prepare
    from jaxfair.data.synthetic_scale import make_preset
    from jaxfair.methods import cofair
    from jaxfair.methods.cofair_evaluation import level_report
    from jaxfair.metrics.masks import SparseRows
    from jaxfair.metrics.exposure import full_ranking_report
    from jaxfair.training.trainer import TrainConfig

    def refuse(*_, **__):
        raise AssertionError("a (users, items) array was built")

    if args.force_sparse:
        dataset.DENSE_LIMIT = 0
    dataset.Split.dense = refuse
    dataset.UserItems.dense = refuse
    out = {"preset": args.preset, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "jax": jax.__version__}
    tick = time.perf_counter()

    def lap(name):
        nonlocal tick
        now = time.perf_counter()
        out[f"{name}_s"] = round(now - tick, 2)
        # The device's peak so far (where the backend keeps one): the stage that raised it is the one to blame.
        out[f"{name}_device_peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        print(f"{name}: {now - tick:.1f}s, device peak {out[f'{name}_device_peak_bytes']}", flush=True)
        tick = now

    raw = make_preset(args.preset)
    lap("generate")
    split = prepare(raw, PrepConfig(rating_threshold=0.0, attributes=("gender",), split="temporal_ratio",
                                    ratios=(0.8, 0.1, 0.1)))
    del raw
    users, items = split.num_users, split.num_items
    out.update(users=users, items=items, train_positives=split.num_train, dense_bool_bytes=users * items,
               dense_limit=dataset.DENSE_LIMIT)
    assert not dataset.use_dense(users, items)
    lap("prepare")

    rng = np.random.default_rng(0)
    frozen_users = jnp.asarray(rng.normal(scale=0.3, size=(users, 64)), jnp.float32)
    frozen_items = jnp.asarray(rng.normal(scale=0.3, size=(items, 64)), jnp.float32)
    score = jax.tree_util.Partial(lambda u, v: jnp.sum(u * v, axis=-1))
    config = cofair.CofairConfig(attribute="gender", levels=args.levels, adversary="capped", residual=True,
                                 discriminator_layers=1, discriminator_steps=5, exposure_weight=1.0,
                                 train=TrainConfig(learning_rate=1e-3, batch_size=args.batch))
    data = cofair.make_data(frozen_users, frozen_items, split.user_attributes["gender"], 2,
                            np.ones(users, np.float32), exclude=split.exclude_sets("valid"))
    assert isinstance(data.exclude, SparseRows)
    lap("cofair_data")

    epoch = pair_epoch(split, np.random.default_rng(0), args.batch)
    out["batches_per_epoch"] = int(epoch["user"].shape[0])
    lap("epoch_of_bpr_rows")

    step = jax.jit(cofair.make_train_step(data, score, config))
    state = cofair.init_state(jax.random.PRNGKey(0), data, config)
    batch = lambda b: {k: jnp.asarray(v[b]) for k, v in epoch.items()}
    state, metrics = step(state, batch(0), jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    lap("first_step_compile")
    for b in range(1, args.steps + 1):
        state, metrics = step(state, batch(b), jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    out["step_s"] = round((time.perf_counter() - tick) / max(args.steps, 1), 3)
    out["exposure_gap"] = [float(x) for x in metrics["exposure_gap"]]
    assert np.isfinite(float(metrics["loss"]))
    lap("steps")

    targets, exclude = split.ranking_masks("valid")
    top = cofair.user_embeddings_at_level(state.params, frozen_users, args.levels, config)
    report = full_ranking_report(score, top, frozen_items, targets, exclude, data.labels, num_groups=2,
                                        ks=(10, 20))
    out["valid_top_level"] = {k: float(v) for k, v in report.items()}
    lap("validate_top_level")
    levels = cofair.level_embeddings(state.params["filter"], frozen_users, config)
    report = level_report(levels, frozen_items, score, *split.ranking_masks("test"), data.labels, 2, (10, 20))
    out["test_levels"] = {k: [float(x) for x in v] for k, v in report.items()}
    lap("evaluate_all_levels")

    out["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
