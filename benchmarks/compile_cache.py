"""What the persistent compilation cache saves a whole run (issue 20, item 2), cold against warm, interleaved.

    python -m benchmarks.compile_cache [CONFIG] [--repeats 3] [--set section.key=value ...]
                                       [--out benchmarks/results/compile_cache.json]

Each repeat runs ``jaxfair train CONFIG`` three times in fresh processes and fresh run folders, in turn: ``off``
(``JAXFAIR_COMPILE_CACHE=off``), ``cold`` (an empty cache folder) and ``warm`` (the folder the cold run just
filled). It reports each variant's median wall time (process start to exit, Python and JAX import included), the
ratios cold/off and warm/off, and whether every run's ``results.json`` (wall times aside) and ``.npy`` outputs are
identical to the first ``off`` run's. Default config: the README's main job. ``--quick`` trains a tiny AFRL config on
synthetic data, once per variant (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.timing import parse_with_quick, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("off", "cold", "warm")
QUICK_OVERRIDES = ["backbone.dim=8", "backbone.train.epochs=2", "afrl.hidden=8", "afrl.train.epochs=2",
                   "probe.steps=40", "probe.eval_every=20", "probe.bootstrap=0", "probe.audit_max_repeats=2"]


def comparable(value):
    """``results.json`` without wall times and the checkout's commit (everything else must match)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()
                if "seconds" not in k and k not in ("timings", "run", "commit")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def differences(got, want, path="") -> list[str]:
    """The paths at which two ``outputs`` differ (first 20)."""
    if isinstance(got, dict) and isinstance(want, dict):
        found = [f"{path}/{k}" for k in sorted(set(got) ^ set(want))]
        for k in sorted(set(got) & set(want)):
            found += differences(got[k], want[k], f"{path}/{k}")
        return found[:20]
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [d for i, (a, b) in enumerate(zip(got, want)) for d in differences(a, b, f"{path}[{i}]")][:20]
    return [] if got == want else [path]


def outputs(folder: pathlib.Path) -> dict:
    arrays = {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}
    return {"results": comparable(json.loads((folder / "results.json").read_text())), "arrays": arrays}


def train(config: str, overrides: list[str], out: pathlib.Path, cache: str) -> float:
    env = {**os.environ, "JAXFAIR_COMPILE_CACHE": cache, "PYTHONPATH": f"{ROOT}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "jaxfair.cli", "train", config, "--out", str(out)]
    if overrides:
        command += ["--set", *overrides]
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/afrl_pmf_ml100k.toml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parse_with_quick(parser, argv, {"repeats": 1}, default_out="benchmarks/results/compile_cache.json")
    with tempfile.TemporaryDirectory(prefix="jaxfair-compile-cache-") as scratch:
        scratch = pathlib.Path(scratch)
        config, overrides = args.config, list(args.set)
        if args.quick:
            from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

            write_ml100k_folder(make_synthetic(num_users=90, num_items=120, per_user=25, seed=9), scratch / "data")
            overrides = [f'data.source="{scratch / "data"}"', *QUICK_OVERRIDES, *overrides]
        seconds = {v: [] for v in VARIANTS}
        reference, differing = None, []
        for repeat in range(args.repeats):
            cache = scratch / f"cache{repeat}"
            for variant in VARIANTS:
                out = scratch / f"{variant}{repeat}"
                seconds[variant].append(train(config, overrides, out, "off" if variant == "off" else str(cache)))
                got = outputs(out)
                reference = reference or got
                differing += [f"{variant}{repeat}: {d}" for d in differences(got, reference)]
                print(f"[compile_cache] repeat {repeat + 1}/{args.repeats} {variant}: {seconds[variant][-1]:.1f} s",
                      flush=True)
    median = {v: statistics.median(s) for v, s in seconds.items()}
    result = {"config": config, "overrides": list(args.set), "quick": args.quick, "repeats": args.repeats,
              "seconds": seconds, "median_seconds": median, "cold_over_off": median["cold"] / median["off"],
              "warm_over_off": median["warm"] / median["off"], "identical_outputs": not differing,
              "differing": differing[:20]}
    print(f"median wall s: off {median['off']:.1f}, cold {median['cold']:.1f}, warm {median['warm']:.1f}; "
          f"warm/off {result['warm_over_off']:.2f}, cold/off {result['cold_over_off']:.2f}; "
          f"outputs identical: {not differing}" + (f" (differ at {differing[:5]})" if differing else ""))
    if args.out or not args.quick:
        write_json(pathlib.Path(args.out or "benchmarks/results/compile_cache.json"), result)
    return result


if __name__ == "__main__":
    main()
