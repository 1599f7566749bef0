"""The README's main job against a reference commit, cold and warm, interleaved (issue 20's headline ratios).

    python -m benchmarks.main_job [CONFIG] [--reference a45edb0] [--repeats 3] [--set section.key=value ...]
                                  [--out benchmarks/results/main_job.json]

Each repeat runs ``jaxfair train CONFIG`` three times in fresh processes and run folders, in turn:

* ``reference``: the reference commit (checked out into a temporary git worktree, with its own copy of CONFIG);
  before fee211e there was no compilation cache, so every reference run compiles everything;
* ``cold``: this checkout with an empty compilation cache folder; the programs it builds are counted in its process
  (:class:`jaxfair.compile_cache.CompileCount`);
* ``warm``: this checkout again, with the folder the cold run filled (a second run of the same config);
* ``one_device``: as ``cold`` with ``JAXFAIR_CPU_DEVICES=1`` (JAX's single CPU device: the probes on about one core,
  :mod:`jaxfair.cpu_devices`), to show what the split of the host into devices gains and costs.

It reports the median wall time of each (process start to exit), the ratios cold/reference, warm/reference and
cold/one_device, the cold run's program count, whether the warm run's outputs equal the cold run's (they must) and
the one-device run's (they may differ in float rounding: other program shapes),
and every cell of the printed result table that this checkout and the reference both print (same row and column
name), with those that differ.
``--set`` applies to this checkout's runs only: ``--set probe.audit_max_repeats=1`` makes the audit draw its folds
once, as the reference did before issue 23 (like for like). ``--quick`` runs a tiny synthetic config once, against
this checkout itself as the reference (a smoke test, not a measurement).
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

from benchmarks.compile_cache import QUICK_OVERRIDES, differences, outputs
from benchmarks.timing import parse_with_quick, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("reference", "cold", "warm", "one_device")
COUNTING = ("import json, os, sys; from jaxfair.compile_cache import CompileCount; from jaxfair.cli import main\n"
            "with CompileCount() as count: code = main(sys.argv[1:])\n"
            "json.dump(count.by_function, open(os.environ['JAXFAIR_COUNT_FILE'], 'w')); sys.exit(code)")


def train(checkout: pathlib.Path, config: str, overrides: list[str], out: pathlib.Path, cache: str,
          count_file: pathlib.Path | None = None, env_extra: dict | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of ``jaxfair train config`` run from ``checkout`` (its own package first on the
    path) in a fresh process."""
    env = {**os.environ, "JAXFAIR_COMPILE_CACHE": cache, **(env_extra or {}),
           "PYTHONPATH": f"{checkout}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ["train", config, "--out", str(out)] + (["--set", *overrides] if overrides else [])
    if count_file is not None:
        env["JAXFAIR_COUNT_FILE"] = str(count_file)
        command = [sys.executable, "-c", COUNTING, *args]
    else:
        command = [sys.executable, "-m", "jaxfair.cli", *args]
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=checkout)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:2])} ... {' '.join(args)} in {checkout} failed ({done.returncode}): "
                         f"{done.stderr[-2000:]}")
    return seconds, done.stdout


def printed_table(stdout: str) -> dict[tuple[str, str], str]:
    """The cells of the last plain-text table a run printed: ``(row, column) -> printed value``. Columns are the
    header's fields split on two or more spaces; the separator line of dashes gives their positions."""
    lines = stdout.splitlines()
    dashes = max(i for i, line in enumerate(lines) if line.startswith("---"))
    header, rule = lines[dashes - 1], lines[dashes]
    spans, start = [], 0
    for part in rule.split("  "):
        if part:
            begin = rule.index(part, start)
            spans.append((begin, begin + len(part)))
            start = begin + len(part)
    names = [header[a:b + 2].strip() for a, b in spans]
    cells = {}
    for line in lines[dashes + 1:]:
        if not line.strip() or line.startswith("results written"):
            break
        values = [line[a:b + 2].strip() for a, b in spans]
        for name, value in zip(names[1:], values[1:]):
            cells[(values[0], name)] = value
    return cells


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/afrl_pmf_ml100k.toml")
    parser.add_argument("--reference", default="a45edb0", help="commit to compare with (default: a45edb0)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parse_with_quick(parser, argv, {"repeats": 1}, default_out="benchmarks/results/main_job.json")
    with tempfile.TemporaryDirectory(prefix="jaxfair-main-job-") as scratch:
        scratch = pathlib.Path(scratch)
        config, overrides, reference_overrides = args.config, list(args.set), []
        if args.quick:
            from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

            write_ml100k_folder(make_synthetic(num_users=90, num_items=120, per_user=25, seed=9), scratch / "data")
            reference_overrides = [f'data.source="{scratch / "data"}"', *QUICK_OVERRIDES]
            overrides = [*reference_overrides, *overrides]
            checkout = ROOT
        else:
            checkout = scratch / "reference"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(checkout), args.reference],
                           check=True, capture_output=True)
        try:
            result = _measure(args, scratch, checkout, config, overrides, reference_overrides)
        finally:
            if not args.quick:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
                               capture_output=True)
    if args.out or not args.quick:
        write_json(pathlib.Path(args.out or "benchmarks/results/main_job.json"), result)
    return result


def _measure(args, scratch, checkout, config, overrides, reference_overrides) -> dict:
    seconds = {v: [] for v in VARIANTS}
    tables, differing, programs = {}, {"warm": [], "one_device": []}, None
    for repeat in range(args.repeats):
        cache = scratch / f"cache{repeat}"
        for variant in VARIANTS:
            out = scratch / f"{variant}{repeat}"
            if variant == "reference":
                took, stdout = train(checkout, config, reference_overrides, out, "off")
            elif variant == "one_device":
                took, stdout = train(ROOT, config, overrides, out, str(scratch / f"cache_one{repeat}"),
                                     env_extra={"JAXFAIR_CPU_DEVICES": "1"})
            else:
                count_file = scratch / "programs.json" if variant == "cold" else None
                took, stdout = train(ROOT, config, overrides, out, str(cache), count_file)
                if count_file is not None:
                    programs = json.loads(count_file.read_text())
            seconds[variant].append(took)
            tables.setdefault(variant, printed_table(stdout))
            if variant in ("warm", "one_device"):
                differing[variant] += [f"{variant}{repeat}: {d}"
                                       for d in differences(outputs(out), outputs(scratch / f"cold{repeat}"))]
            print(f"[main_job] repeat {repeat + 1}/{args.repeats} {variant}: {took:.1f} s", flush=True)
    median = {v: statistics.median(s) for v, s in seconds.items()}
    shared = sorted(set(tables["reference"]) & set(tables["cold"]))
    changed = {f"{row} / {column}": [tables["reference"][(row, column)], tables["cold"][(row, column)]]
               for row, column in shared if tables["reference"][(row, column)] != tables["cold"][(row, column)]}
    result = {
        "config": config, "reference": args.reference, "overrides": list(args.set), "quick": args.quick,
        "repeats": args.repeats, "seconds": seconds, "median_seconds": median,
        "cold_over_reference": median["cold"] / median["reference"],
        "warm_over_reference": median["warm"] / median["reference"],
        "cold_over_one_device": median["cold"] / median["one_device"],
        "programs_built_cold": sum(programs.values()), "programs_by_function": programs,
        "warm_outputs_equal_cold": not differing["warm"], "one_device_outputs_equal_cold": not differing["one_device"],
        "differing_from_cold": differing["warm"][:10] + differing["one_device"][:10],
        "printed_cells_compared": len(shared), "printed_cells_differing": changed,
        "columns_only_in_reference": sorted({c for _, c in tables["reference"]} - {c for _, c in tables["cold"]}),
        "columns_only_here": sorted({c for _, c in tables["cold"]} - {c for _, c in tables["reference"]}),
    }
    print(f"median wall s: reference {median['reference']:.1f}, cold {median['cold']:.1f}, warm {median['warm']:.1f}, "
          f"one device {median['one_device']:.1f}; cold/reference {result['cold_over_reference']:.2f}, "
          f"warm/reference {result['warm_over_reference']:.2f}, cold/one device {result['cold_over_one_device']:.2f}; "
          f"programs built (cold) {result['programs_built_cold']}; outputs equal cold: warm "
          f"{result['warm_outputs_equal_cold']}, one device {result['one_device_outputs_equal_cold']}; "
          f"printed cells shared with the reference {len(shared)}, differing {len(changed)}"
          + (f": {dict(list(changed.items())[:8])}" if changed else ""))
    return result


if __name__ == "__main__":
    main()
