"""Choose DifFaiRec's counterfactual weight and the regularised MF's gamma on validation data only.

    python benchmarks/diffairec_sweep.py configs/diffairec_ml100k.toml --weights 0.3 1 3 10 --gammas 1 10 100 1000 \
        --seeds 0 1 --out benchmarks/results/diffairec_sweep

For each seed, DiffRec is trained once and both DifFaiRec variants (mean-pooled and PCA group vectors) once per
``counterfactual_weight``; plain MF is trained once and ``fair_mf`` once per ``gamma``. Everything else comes from
the config. A run whose ``results.json`` exists under ``--out`` is read, not rerun. Only validation numbers are read:
validation NDCG@K and the validation gaps (absolute equality of Recall and NDCG, equal opportunity, at every K).

Selection rule: a setting is admissible when, averaged over seeds (and both DifFaiRec variants), its validation
NDCG@20 is at least ``--min-accuracy`` (0.98) times its reference's (DiffRec for the weights, plain MF for gamma).
Among the admissible settings the chosen one has the smallest *gap difference*: the mean over seeds, variants, the
three gaps and the two Ks of ``gap(setting) - gap(reference)`` (below 0 means fairer than the reference). A
difference, not a ratio: the reference's validation gaps can be as small as 0.001, and a ratio to them is noise.
Writes ``sweep.json`` (with, per setting and seed, each variant's validation NDCG@20, validation Recall@10 per
group and probe AUC, for reading; the rule uses only the scores above) and prints one line per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import numpy as np

from jaxfair.experiments import runner
from jaxfair.methods import diffairec

GAPS = ("recall_gap", "ndcg_gap", "eo_gap")
KS = (10, 20)
DIFFAIREC = ("diffairec_mean", "diffairec_pca")


def with_section(config, **overrides):
    """``config`` with its ``[diffairec]`` section updated by ``overrides``."""
    section = {**config.sections["diffairec"], **overrides}
    return dataclasses.replace(config, sections={**config.sections, "diffairec": section})


def run_once(config, run_dir: pathlib.Path, log) -> dict:
    """Run ``config`` into ``run_dir``, or read the finished run there (which must have been run with ``config``)."""
    if (run_dir / "results.json").exists():
        results = json.loads((run_dir / "results.json").read_text())
        if results["config"] != json.loads(json.dumps(config.to_dict())):
            raise SystemExit(f"{run_dir} holds a run of another config; remove it or choose another --out")
        return results
    return runner.run(config, run_dir, log)


def score_setting(baselines: list[dict], runs: list[dict], variants, monitor: str = "ndcg@20") -> dict:
    """Validation summary of one setting, averaged over seeds and ``variants``: ``accuracy_ratio`` (validation
    ``monitor`` over the reference's), ``gap_difference`` (mean of ``gap - reference gap`` over the gaps and Ks) and
    ``gap_minus_reference`` per gap. ``baselines[s]`` and ``runs[s]`` are seed ``s``'s reference block and the
    setting's results."""
    accuracy, per_gap = [], {f"{g}@{k}": [] for k in KS for g in GAPS}
    for base, result in zip(baselines, runs):
        for name in variants:
            block = result["variants"][name]
            accuracy.append(block["valid"][monitor] / base["valid"][monitor])
            for k in KS:
                for g in GAPS:
                    per_gap[f"{g}@{k}"].append(block["valid_gaps"][f"@{k}"][g] - base["valid_gaps"][f"@{k}"][g])
    differences = {key: float(np.mean(v)) for key, v in per_gap.items()}
    return {"accuracy_ratio": float(np.mean(accuracy)), "gap_difference": float(np.mean(list(differences.values()))),
            "gap_minus_reference": differences}


def choose(scores: dict[float, dict], min_accuracy: float) -> float | None:
    """The admissible setting with the smallest gap difference (None when no setting is admissible)."""
    admissible = {w: s for w, s in scores.items() if s["accuracy_ratio"] >= min_accuracy}
    return min(admissible, key=lambda w: admissible[w]["gap_difference"]) if admissible else None


def sweep(config_path, seeds, out: pathlib.Path, reference: str, variants, field: str, values, log=print,
          fixed: dict | None = None) -> tuple[dict, list[dict]]:
    """Train ``reference`` once per seed and ``variants`` once per value of ``[diffairec] field`` (with the
    ``[diffairec]`` settings ``fixed`` on top of the config); score each value. Returns the scores by value (each
    with its :func:`run_summary` per seed) and the reference's run summaries."""
    baselines, runs = [], {v: [] for v in values}
    for seed in seeds:
        config = runner.load(config_path, seed=seed)
        quiet = lambda message: None
        base = run_once(with_section(config, variants=[reference]), out / f"seed{seed}" / reference, quiet)
        baselines.append(base["variants"][reference])
        for value in values:
            result = run_once(with_section(config, variants=list(variants), **(fixed or {}), **{field: value}),
                              out / f"seed{seed}" / f"{field}{value:g}", quiet)
            runs[value].append(result)
            log(f"seed {seed} {field} {value:g}: done")
    scores = {v: score_setting(baselines, runs[v], variants) for v in values}
    for v in values:
        scores[v]["runs"] = [run_summary(result, variants) for result in runs[v]]
    return scores, [run_summary({"variants": {reference: b}}, [reference]) for b in baselines]


def run_summary(result: dict, variants) -> dict:
    """What a reader checks a setting by, per variant of one run: validation NDCG@20, each group's validation
    Recall@10, and the probe AUC on the variant's latents (probe-test users; not used by the rule)."""
    return {name: {"valid_ndcg@20": result["variants"][name]["valid"]["ndcg@20"],
                   "valid_recall@10_by_group": result["variants"][name]["valid_gaps"]["@10"]["recall_by_group"],
                   "probe_auc": result["variants"][name]["probe_auc"]} for name in variants}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--weights", type=float, nargs="*", default=[0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--gammas", type=float, nargs="*", default=[1.0, 10.0, 100.0, 1000.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--min-accuracy", type=float, default=0.98)
    parser.add_argument("--swap", choices=diffairec.SWAPS, default=None,
                        help="DifFaiRec's swap for the weight sweep (default: the config's)")
    parser.add_argument("--serve", choices=diffairec.SERVE, default=None,
                        help="DifFaiRec's serving for the weight sweep (default: the config's)")
    parser.add_argument("--out", default="benchmarks/results/diffairec_sweep")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    log = lambda message: print(message, flush=True)
    report = {"config": args.config, "seeds": args.seeds, "min_accuracy": args.min_accuracy, "swap": args.swap,
              "serve": args.serve,
              "selection_rule": __doc__.split("Selection rule: ")[1].split("Writes")[0].strip()}
    for field, values, reference, variants in (("counterfactual_weight", args.weights, "diffrec", DIFFAIREC),
                                               ("gamma", args.gammas, "mf", ("fair_mf",))):
        if not values:
            continue
        fixed = {k: v for k, v in (("swap", args.swap), ("serve", args.serve)) if v and reference == "diffrec"}
        scores, reference_runs = sweep(args.config, args.seeds, out, reference, variants, field, values, log, fixed)
        chosen = choose(scores, args.min_accuracy)
        for v, sc in scores.items():
            log(f"{field} {v:g}: valid ndcg@20 / {reference} {sc['accuracy_ratio']:.3f}, "
                f"gap difference {sc['gap_difference']:+.4f}")
        log(f"chosen {field} (validation only): {chosen}")
        report[field] = {"reference": reference, "variants": list(variants), "reference_runs": reference_runs,
                         "scores": {f"{v:g}": sc for v, sc in scores.items()},
                         "chosen": None if chosen is None else f"{chosen:g}"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
