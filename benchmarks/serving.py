"""Serving every user of a finished run under their own requirement and strength: one call against a loop over the
distinct (mask, strength) groups (issue 22, item 4), interleaved.

    python -m benchmarks.serving RUN_DIR [RUN_DIR ...] [--repeats 20] [--strengths 0 0.5 1]
                                 [--out benchmarks/results/serving.json]
    python -m benchmarks.serving --quick            # trains tiny erasure and AFRL runs on synthetic data first

For each run folder (a finished ``jaxfair train`` run of ``erasure``, ``afrl`` or ``ffvae``) every user gets a
random requirement (one of the ``2^M``) and a random strength from ``--strengths`` (seeded). ``one_call``:
:func:`jaxfair.serving.fair_embeddings` on all users at once, blocked on. ``loop``: the same function once per
distinct (mask, strength) group of users, the way a server without per-user control would batch them. Both are
compiled before timing (the loop's calls share shapes only within a group size, so it compiles once per group size;
those compilations are excluded too). The rows are checked equal (``max_abs_diff``).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile

import jax
import numpy as np

from benchmarks.timing import device_info, interleaved_ms, jaxlib_version, nothing, parse_with_quick, quartiles, \
    write_json

DEFAULT_OUT = "benchmarks/results/serving.json"


def controls(restored, strengths, seed=0):
    """Every user, a random mask (uniform over the requirements) and a random strength of ``strengths``."""
    rng = np.random.default_rng(seed)
    users = np.arange(restored.split.num_users)
    masks = rng.integers(0, 2, (len(users), len(restored.split.attribute_names))).astype(bool)
    return users, masks, rng.choice(np.asarray(strengths, np.float32), len(users))


def variants(restored, users, masks, strength):
    from jaxfair.serving import fair_embeddings

    groups = {}
    for row, key in enumerate(zip(map(tuple, masks), strength)):
        groups.setdefault(key, []).append(row)
    groups = [np.asarray(rows) for rows in groups.values()]

    def one(r):
        return jax.block_until_ready(fair_embeddings(restored, users, masks, strength))

    def loop(r):
        out = np.empty((len(users), restored.context.frozen.user_vecs["test"].shape[1]), np.float32)
        for rows in groups:
            out[rows] = np.asarray(fair_embeddings(restored, users[rows], masks[rows], strength[rows]))
        return out

    diff = float(np.max(np.abs(np.asarray(one(0)) - loop(0))))  # also compiles both
    return {"one_call": (nothing, one), "loop": (nothing, loop)}, len(groups), diff


def quick_runs(scratch: pathlib.Path) -> list[pathlib.Path]:
    from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
    from jaxfair.pipeline import parse_config, run

    write_ml100k_folder(make_synthetic(num_users=120, num_items=100, per_user=20, seed=1), scratch / "data")
    folders = []
    for method, section in (("erasure", {}), ("afrl", {"hidden": 8, "train": {"epochs": 1}})):
        config = parse_config({"method": method, "data": {"source": str(scratch / "data"), "eval_negatives": 50,
                                                          "attributes": ["gender", "age"]},
                               "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 1}},
                               "evaluate": {"protocols": ["sampled"], "ks": [10]},
                               "probe": {"steps": 20, "eval_every": 10, "bootstrap": 0, "audit_max_repeats": 1},
                               method: section})
        run(config, scratch / method, log=lambda message: None)
        folders.append(scratch / method)
    return folders


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="finished run folders (erasure, afrl or ffvae)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    args = parse_with_quick(parser, argv, {"repeats": 2}, DEFAULT_OUT)
    from jaxfair.pipeline import restore_run

    results = {"repeats": args.repeats, "strengths": args.strengths, "device": device_info(),
               "jax_version": jax.__version__, "jaxlib_version": jaxlib_version(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="jaxfair-serving-") as scratch:
        folders = quick_runs(pathlib.Path(scratch)) if args.quick and not args.runs else args.runs
        if not folders:
            parser.error("give run folders, or --quick")
        for folder in folders:
            restored = restore_run(folder)
            users, masks, strength = controls(restored, args.strengths)
            timed, groups, diff = variants(restored, users, masks, strength)
            times = interleaved_ms(timed, args.repeats)
            median = {name: statistics.median(v) for name, v in times.items()}
            results["runs"][str(folder)] = {
                "method": restored.method.name, "users": len(users), "groups": groups, "median_ms": median,
                "quartiles_ms": {name: quartiles(v) for name, v in times.items()},
                "loop_over_one_call": median["loop"] / median["one_call"], "max_abs_diff": diff}
            results[f"{restored.method.name}_loop_over_one_call"] = median["loop"] / median["one_call"]
            print(f"{folder} ({restored.method.name}): {len(users)} users in {groups} (mask, strength) groups: one "
                  f"call {median['one_call']:.2f} ms, loop {median['loop']:.2f} ms, loop / one call "
                  f"{median['loop'] / median['one_call']:.1f}x; rows equal to {diff:.1g}")
    if args.out or not args.quick:
        write_json(pathlib.Path(args.out or DEFAULT_OUT), results)
    return results


if __name__ == "__main__":
    main()
