"""The table of ``benchmarks/README.md``: each benchmark's command, what it compares, the ratios its last results file
holds and the machine, read from ``benchmarks/results/`` (so the table is printed, never typed).

    python -m benchmarks.summary            # prints the Markdown table
    python -m benchmarks.summary --update   # rewrites the table between the markers in benchmarks/README.md

``tests/test_benchmarks.py`` checks that the README's table is what this prints.
"""

from __future__ import annotations

import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- summary -->", "<!-- /summary -->"

# results file -> (command, what it compares, ratio keys (a top-level key, or "a/b" of two median_ms entries))
ROWS = {
    "main_job.json": ("python -m benchmarks.main_job --repeats 2",
                      "README main job: a45edb0 vs this checkout cold, warm, cold on one device",
                      ["cold_over_reference", "warm_over_reference", "cold_over_one_device", "programs_built_cold"]),
    "main_job_one_draw.json": ("python -m benchmarks.main_job --repeats 2 --set probe.audit_max_repeats=1 "
                               "--out benchmarks/results/main_job_one_draw.json",
                               "the same with one audit draw (like a45edb0)",
                               ["cold_over_reference", "warm_over_reference", "cold_over_one_device"]),
    "compile_cache.json": ("python -m benchmarks.compile_cache --repeats 1 --set probe.audit_se=0.005",
                           "main job with the compilation cache off, cold, warm",
                           ["cold_over_off", "warm_over_off"]),
    "afrl_step_no_torch.json": ("python -m benchmarks.afrl_step --no-torch --steps 100 --repeats 7 "
                                "--out benchmarks/results/afrl_step_no_torch.json",
                                "AFRL: all 8 requirements vmapped vs a loop over them",
                                ["loop_over_vmapped_requirements"]),
    "afrl_step.json": ("python -m benchmarks.afrl_step --out benchmarks/results/afrl_step.json (a45edb0)",
                       "AFRL step: PyTorch (2 threads) vs JAX; requirements vmapped vs loop",
                       ["torch_over_jax_jit_step", "torch_over_jax_scan_step", "loop_over_vmapped_requirements"]),
    "cofair_step.json": ("python -m benchmarks.cofair_step",
                         "Cofair step: PyTorch 2 and 1 threads vs JAX; levels vmapped vs loop",
                         ["torch_over_jax_vmap", "torch_1_thread_over_jax_vmap", "loop_over_vmap"]),
    "cofair_step_levels1_no_torch.json": ("python -m benchmarks.cofair_step --no-torch --levels 1 --repeats 30 "
                                          "--out benchmarks/results/cofair_step_levels1_no_torch.json",
                                          "Cofair step at T = 1: levels vmapped vs loop", ["loop_over_vmap"]),
    "cofair_step_levels5_no_torch.json": ("python -m benchmarks.cofair_step --no-torch --levels 5 --repeats 30 "
                                          "--out benchmarks/results/cofair_step_levels5_no_torch.json",
                                          "Cofair step at T = 5: levels vmapped vs loop", ["loop_over_vmap"]),
    "itfr_step.json": ("python -m benchmarks.itfr_step", "ITFR step: PyTorch 2 and 1 threads vs JAX (epoch scan)",
                       ["torch_over_jax_epoch_per_step", "torch_1_thread_over_jax_epoch_per_step"]),
    "diffairec_step.json": ("python -m benchmarks.diffairec_step", "DifFaiRec step: PyTorch 2 and 1 threads vs JAX",
                            ["diffairec_torch_2t_step/diffairec_jax_step", "diffairec_torch_1t_step/diffairec_jax_step"]),
}


def _value(results: dict, key: str) -> float:
    if "/" in key:
        top, bottom = key.split("/")
        return results["median_ms"][top] / results["median_ms"][bottom]
    return results[key]


def _machine(results: dict) -> str:
    device = results.get("device") or {}
    if device:
        return f"{device.get('machine', '?')}, {device.get('cpu_count', '?')} cpus, {device.get('jax_backend', '?')}"
    return results.get("machine") or "2-core CPU"


def table() -> str:
    lines = ["| results file | command | compares | last measured | machine |", "|---|---|---|---|---|"]
    for name, (command, compares, keys) in ROWS.items():
        results = json.loads((RESULTS / name).read_text())
        measured = ", ".join(f"{k.replace('/', ' / ')} {_value(results, k):.3g}" for k in keys)
        lines.append(f"| `{name}` | `{command}` | {compares} | {measured} | {_machine(results)} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the table in benchmarks/README.md")
    args = parser.parse_args(argv)
    text = table()
    if args.update:
        page = README.read_text()
        start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
        README.write_text(page[:start] + "\n" + text + "\n" + page[end:])
    else:
        print(text)
    return text


if __name__ == "__main__":
    main()
