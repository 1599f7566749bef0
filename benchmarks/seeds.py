"""Seeds in one program (issue 20, item 4): S seeds trained as one vmapped program against one seed and against the
S seeds one after another, interleaved, at two levels.

    python -m benchmarks.seeds [CONFIG] [--seeds 0 1 2 3] [--repeats 3] [--job-repeats 2] [--set key=value ...]
                               [--out benchmarks/results/seeds.json]
    python -m benchmarks.seeds --quick                   # a tiny synthetic config, one repeat (a smoke test)

* **Backbone stage** (in this process): the config's backbone :class:`~jaxfair.training.trainer.Model`, trained by
  ``fit(model, seeds[0])`` (``one_seed``), by ``fit_seeds(model, seeds)`` (``together``: one program, the seeds in
  sequence inside it, bit-identical to separate runs), by ``fit_seeds(..., batched=True)`` (``together_batched``:
  one vmapped program) and by ``fit`` once per seed (``in_turn``). Every variant runs once untimed first, with JAX's persistent compilation
  cache on, so the timed calls trace but do not compile. ``together_over_one_seed`` is the issue's ratio (target at
  most 2.5 for 4 seeds on the 2-core CPU), ``together_batched_over_one_seed`` the same batched;
  ``in_turn_over_together`` and ``in_turn_over_together_batched`` what one program saves over the loop. Each seed's
  validation metrics and epochs from both forms are checked against ``in_turn`` (``max_abs_diff_valid``,
  ``max_abs_diff_valid_batched``).
* **Whole job** (``--job-repeats`` > 0; fresh processes, a warm compilation cache): ``jaxfair train CONFIG`` (one
  seed) against ``jaxfair train CONFIG --seeds ...`` (the backbones in one program, then each seed's method stage
  and evaluation in turn; ``--batch-seeds`` with ``--job-batched``), interleaved; ``job_seeds_over_one_seed``.

On an accelerator the together variant should approach one seed's time until the device is full (the seeds' steps
are one batched program); the command for that, on a GPU machine: ``JAX_PLATFORMS=cuda python -m benchmarks.seeds
--out /tmp/seeds_gpu.json``. On the 2-core CPU the arithmetic of S seeds is S times one seed's and only the per-step
and per-epoch overheads are shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.compile_cache import QUICK_OVERRIDES
from benchmarks.timing import device_info, jaxlib_version, parse_with_quick, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = "benchmarks/results/seeds.json"


def backbone_variants(config, seeds):
    """``name -> call()`` of the backbone stage: one seed, the seeds together, the seeds in turn; each returns
    the :class:`FitResult` list."""
    from jaxfair.backbones import make_backbone
    from jaxfair.backbones.fit import backbone_model
    from jaxfair.pipeline.run import load_split
    from jaxfair.training.seeds import fit_seeds
    from jaxfair.training.trainer import fit

    quiet = lambda message: None  # noqa: E731
    split = load_split(config.data, quiet)
    backbone, _ = make_backbone(config.backbone.name, dataclasses.asdict(config.backbone.config))
    model = backbone_model("train", split, backbone, backbone.context(split), config.backbone.train,
                           tuple(config.evaluate.ks), config.evaluate.batch_size)
    return {"one_seed": lambda: [fit(model, seeds[0], log=quiet)],
            "together": lambda: fit_seeds(model, seeds, log=quiet),
            "together_batched": lambda: fit_seeds(model, seeds, log=quiet, batched=True),
            "in_turn": lambda: [fit(model, seed, log=quiet) for seed in seeds]}


def time_backbone(config, seeds, repeats) -> dict:
    variants = backbone_variants(config, seeds)
    results = {name: call() for name, call in variants.items()}  # untimed: fills the compilation cache
    seconds = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, call in variants.items():
            tick = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - tick)
            print(f"[seeds] backbone repeat {repeat + 1}/{repeats} {name}: {seconds[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    def diff(name):
        return max(abs(a.best_valid[k] - b.best_valid[k]) for a, b in zip(results[name], results["in_turn"])
                   for k in b.best_valid)

    epochs = {name: [r.epochs_run for r in results[name]] for name in ("together", "together_batched", "in_turn")}
    return {"seconds": seconds, "median_seconds": median, "epochs_run": epochs["together"],
            "same_epochs_as_in_turn": epochs["together"] == epochs["in_turn"] == epochs["together_batched"],
            "max_abs_diff_valid": diff("together"), "max_abs_diff_valid_batched": diff("together_batched"),
            "together_over_one_seed": median["together"] / median["one_seed"],
            "together_batched_over_one_seed": median["together_batched"] / median["one_seed"],
            "in_turn_over_together": median["in_turn"] / median["together"],
            "in_turn_over_together_batched": median["in_turn"] / median["together_batched"]}


def train(config_path, overrides, out, cache, seeds=None, batched=False) -> float:
    env = {**os.environ, "JAXFAIR_COMPILE_CACHE": str(cache),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "jaxfair.cli", "train", str(config_path), "--out", str(out)]
    command += ["--seeds", *map(str, seeds)] if seeds else []
    command += ["--batch-seeds"] if seeds and batched else []
    command += ["--set", *overrides] if overrides else []
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - tick


def time_job(config_path, overrides, seeds, repeats, scratch, batched=False) -> dict:
    cache = scratch / "cache"
    train(config_path, overrides, scratch / "warmup_one", cache)  # untimed: fills the compilation cache
    train(config_path, overrides, scratch / "warmup_seeds", cache, seeds, batched)
    seconds = {"one_seed": [], "seeds": []}
    for repeat in range(repeats):
        for name in seconds:
            took = train(config_path, overrides, scratch / f"{name}{repeat}", cache,
                         seeds if name == "seeds" else None, batched)
            seconds[name].append(took)
            print(f"[seeds] job repeat {repeat + 1}/{repeats} {name}: {took:.1f} s", flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {"seconds": seconds, "median_seconds": median, "batched": batched,
            "job_seeds_over_one_seed": median["seeds"] / median["one_seed"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/afrl_pmf_ml100k.toml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the backbone stage")
    parser.add_argument("--job-repeats", type=int, default=2, help="interleaved repeats of the whole job (0: skip)")
    parser.add_argument("--job-batched", action="store_true", help="the whole job with --batch-seeds")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parse_with_quick(parser, argv, {"repeats": 1, "job_repeats": 1, "seeds": [0, 1]}, DEFAULT_OUT)
    from jaxfair.compile_cache import enable_compile_cache, restore_compile_cache
    from jaxfair.pipeline import load_config

    import jax

    previous_cache = jax.config.jax_compilation_cache_dir  # restored below: the scratch folder goes away
    with tempfile.TemporaryDirectory(prefix="jaxfair-seeds-") as scratch:
        scratch = pathlib.Path(scratch)
        overrides = list(args.set)
        if args.quick:
            from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

            write_ml100k_folder(make_synthetic(num_users=90, num_items=120, per_user=25, seed=9), scratch / "data")
            overrides = [f'data.source="{scratch / "data"}"', *QUICK_OVERRIDES, *overrides]
        enable_compile_cache(scratch / "cache")
        config = load_config(args.config, overrides)
        result = {"config": args.config, "overrides": list(args.set), "seeds": args.seeds, "quick": args.quick,
                  "device": device_info(), "jax_version": jax.__version__, "jaxlib_version": jaxlib_version()}
        try:
            result["backbone"] = time_backbone(config, args.seeds, args.repeats)
            if args.job_repeats:
                result["job"] = time_job(args.config, overrides, args.seeds, args.job_repeats, scratch,
                                         args.job_batched)
        finally:
            restore_compile_cache(previous_cache)
    result["device"]["load_average_at_end"] = list(os.getloadavg())
    backbone = result["backbone"]
    print(f"backbone stage, {len(args.seeds)} seeds: together / one seed {backbone['together_over_one_seed']:.2f} "
          f"(batched {backbone['together_batched_over_one_seed']:.2f}), in turn / together "
          f"{backbone['in_turn_over_together']:.2f} (batched {backbone['in_turn_over_together_batched']:.2f}) "
          f"(medians s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in backbone["median_seconds"].items())
          + f"); epochs {backbone['epochs_run']}, same as in turn: {backbone['same_epochs_as_in_turn']}, "
            f"max |valid diff| {backbone['max_abs_diff_valid']:.2g} (batched "
            f"{backbone['max_abs_diff_valid_batched']:.2g})")
    if "job" in result:
        job = result["job"]
        print(f"whole job: --seeds {' '.join(map(str, args.seeds))} / one seed {job['job_seeds_over_one_seed']:.2f} "
              f"(medians s: " + ", ".join(f"{k} {v:.1f}" for k, v in job["median_seconds"].items()) + ")")
    if args.out or not args.quick:
        write_json(pathlib.Path(args.out or DEFAULT_OUT), result)
    return result


if __name__ == "__main__":
    main()
