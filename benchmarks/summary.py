"""The table of ``benchmarks/README.md``: each benchmark's command, what it compares, the ratios its last results file
holds and the machine, read from ``benchmarks/results/`` (so the table is printed, never typed).

    python -m benchmarks.summary            # prints the Markdown table
    python -m benchmarks.summary --steps    # prints docs/benchmarks.md's step table (PyTorch over JAX per variant)
    python -m benchmarks.summary --update   # rewrites both between their markers

``tests/test_benchmarks.py`` checks that both pages hold what this prints.
"""

from __future__ import annotations

import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- summary -->", "<!-- /summary -->"

# results file -> (command, what it compares, ratio keys (see _value))
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
    "afrl_step.json": ("python -m benchmarks.afrl_step --out benchmarks/results/afrl_step.json",
                       "AFRL step: PyTorch eager / compile, 1 / all threads vs JAX (epoch scan); requirements vmapped "
                       "vs loop",
                       ["torch_eager_1t_over_jax_scan_step", "best_torch_over_jax_scan_step",
                        "loop_over_vmapped_requirements"]),
    "cofair_step.json": ("python -m benchmarks.cofair_step",
                         "Cofair step: PyTorch eager / compile, 1 / all threads vs JAX on the same per-row work (default "
                         "and user-major layouts); levels vmapped or user-major vs loop",
                         ["torch_eager_1t_over_jax_vmap_per_row", "best_torch_over_jax_vmap_per_row",
                          "torch_eager_1t_over_jax_user_major_per_row", "best_torch_over_jax_user_major_per_row",
                          "best_torch_over_jax_vmap", "loop_over_vmap", "loop_over_user_major_per_row"]),
    "cofair_evaluation.json": ("python -m benchmarks.cofair_step --evaluation --repeats 15 --out "
                               "benchmarks/results/cofair_evaluation.json",
                               "Cofair all-level full-ranking evaluation: one vmap over the levels vs a loop",
                               ["evaluation_loop_over_vmap"]),
    "cofair_step_levels1_no_torch.json": ("python -m benchmarks.cofair_step --no-torch --levels 1 --repeats 30 "
                                          "--out benchmarks/results/cofair_step_levels1_no_torch.json",
                                          "Cofair step at T = 1: levels vmapped vs loop", ["loop_over_vmap"]),
    "cofair_step_levels5_no_torch.json": ("python -m benchmarks.cofair_step --no-torch --levels 5 --repeats 30 "
                                          "--out benchmarks/results/cofair_step_levels5_no_torch.json",
                                          "Cofair step at T = 5: levels vmapped vs loop", ["loop_over_vmap"]),
    "itfr_step.json": ("python -m benchmarks.itfr_step",
                       "ITFR step: PyTorch eager / compile, 1 / all threads vs JAX (epoch scan)",
                       ["torch_eager_1t_over_jax_epoch_per_step", "best_torch_over_jax_epoch_per_step"]),
    "diffairec_step.json": ("python -m benchmarks.diffairec_step",
                            "DifFaiRec step: PyTorch eager / compile, 1 / all threads vs JAX (epoch scan)",
                            ["diffairec.torch_eager_1t_over_jax_epoch_per_step",
                             "diffairec.best_torch_over_jax_epoch_per_step", "diffairec.best_torch_over_jax_infer"]),
    "seeds.json": ("python -m benchmarks.seeds --job-repeats 0",
                   "backbone stage: 4 seeds in one program (in sequence; batched) vs one seed and vs in turn",
                   ["backbone.together_over_one_seed", "backbone.together_batched_over_one_seed",
                    "backbone.in_turn_over_together", "backbone.in_turn_over_together_batched"]),
    "serving.json": ("python -m benchmarks.serving RUN_DIR ... (an erasure run of docs/results/erasure_levels_pmf, "
                     "the README's AFRL run)",
                     "every user under their own mask and strength: one call vs a loop over (mask, strength) groups",
                     ["erasure_loop_over_one_call", "afrl_loop_over_one_call"]),
    "sparse_scale_ml20m.json": ("python -m benchmarks.sparse_scale",
                                "Cofair with its exposure term at ML-20M's size (138,493 x 26,744), no (U, I) array: "
                                "step, blocked validation and all-level test report (seconds), host peak RSS (bytes)",
                                ["step_s", "validate_top_level_s", "evaluate_all_levels_s", "host_peak_rss_bytes"]),
    "seeds_job_batched.json": ("python -m benchmarks.seeds --job-batched --out benchmarks/results/seeds_job_batched.json"
                               " (0b84d71, where --seeds was batched)",
                               "whole main job, --seeds 0 1 2 3 batched vs one seed; backbone stage batched",
                               ["job.job_seeds_over_one_seed", "backbone.together_over_one_seed"]),
}


def _value(results: dict, key: str) -> float:
    """A top-level key, ``block.key`` inside a block, or ``a/b``: the ratio of two ``median_ms`` entries."""
    if "/" in key:
        top, bottom = key.split("/")
        return results["median_ms"][top] / results["median_ms"][bottom]
    if "." in key:
        block, name = key.split(".", 1)
        return results[block][name]
    return results[key]


def _machine(results: dict) -> str:
    device = results.get("device") or {}
    if isinstance(device, str):  # a device kind ("NVIDIA H200")
        return results.get("machine") or device
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


# The step table of docs/benchmarks.md: label -> (results file, block inside it or None, the JAX time's key (ms), the
# ratio keys' JAX suffix, roofline block path)
STEPS = {
    "AFRL (B 256, d 64, 5 players)": ("afrl_step.json", None, "median_ms.jax_scan_epoch", "jax_scan_step",
                                      "roofline"),
    "Cofair per-row (B 4,096, T 5)": ("cofair_step.json", None, "jax_vmap_per_row_ms", "jax_vmap_per_row", "roofline"),
    "Cofair per-row, cofair.user_major = true": ("cofair_step.json", None, "jax_user_major_per_row_ms",
                                                  "jax_user_major_per_row", "roofline_user_major"),
    "Cofair per-user (jaxfair's default; less work)": ("cofair_step.json", None, "jax_vmap_ms", "jax_vmap", None),
    "ITFR (MF, G 12, B 1,024)": ("itfr_step.json", None, "jax_epoch_per_step_ms", "jax_epoch_per_step", "roofline"),
    "DifFaiRec (B 128 users, I 1,447)": ("diffairec_step.json", "diffairec", "jax_epoch_per_step_ms",
                                         "jax_epoch_per_step", "roofline.diffairec"),
    "DiffRec (the same without groups)": ("diffairec_step.json", "diffrec", "jax_epoch_per_step_ms",
                                          "jax_epoch_per_step", "roofline.diffrec"),
}
VARIANTS = ("torch_eager_1t", "torch_compile_1t", "torch_eager_2t", "torch_compile_2t")
STEPS_BEGIN, STEPS_END = "<!-- steps -->", "<!-- /steps -->"
DOCS = ROOT / "docs" / "benchmarks.md"


def _path(results: dict, dotted: str):
    for part in dotted.split("."):
        results = results[part]
    return results


def steps_table() -> str:
    """PyTorch over JAX per step and PyTorch variant, with the JAX step's share of the measured matmul rates."""
    lines = [f"{'step':48s} {'JAX ms':>7s} " + " ".join(f"{v[6:]:>10s}" for v in VARIANTS) + "  JAX at % of matmul "
             "rate (large / step shape)"]
    for label, (name, block, jax_key, suffix, bound) in STEPS.items():
        results = json.loads((RESULTS / name).read_text())
        ratios = results[block] if block else results
        jax_ms = _path(ratios, jax_key)
        cells = " ".join(f"{ratios.get(f'{v}_over_{suffix}', float('nan')):9.2f}x" for v in VARIANTS)
        roof = ""
        if bound:
            r = _path(results, bound)
            roof = (f"  {100 * r['share_of_large_matmul_rate']:.0f}% / {100 * r['share_of_step_matmul_rate']:.0f}% "
                    f"({r['step_gflop'] * 1e3:,.0f} MFLOP)")
        lines.append(f"{label:48s} {jax_ms:7.2f} {cells}{roof}")
    return "\n".join(lines)


def _replace(page: str, begin: str, end: str, text: str) -> str:
    start, stop = page.index(begin) + len(begin), page.index(end)
    return page[:start] + "\n" + text + "\n" + page[stop:]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true",
                        help="rewrite the table in benchmarks/README.md and the step table in docs/benchmarks.md")
    parser.add_argument("--steps", action="store_true", help="print the step table of docs/benchmarks.md instead")
    args = parser.parse_args(argv)
    text = steps_table() if args.steps else table()
    if args.update:
        README.write_text(_replace(README.read_text(), BEGIN, END, table()))
        DOCS.write_text(_replace(DOCS.read_text(), STEPS_BEGIN, STEPS_END, f"```text\n{steps_table()}\n```"))
    else:
        print(text)
    return text


if __name__ == "__main__":
    main()
