"""The README's AFRL table: run the main job for several seeds, then report mean and spread per requirement and the
wall time per stage.

    python benchmarks/afrl_main_job.py configs/afrl_pmf_ml100k.toml --seeds 0 1 2 --out benchmarks/results/afrl_pmf

Each seed is ``jaxfair train CONFIG --seed S`` (the backbone, AFRL's initialisation and every training batch change
with the seed; the data split and its evaluation negatives stay those of ``[data] seed``). A seed whose
``results.json`` already exists under ``--out`` is read, not rerun. Writes ``summary.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxfair.experiments import outputs, runner


def mean_std(values) -> str:
    return outputs.mean_std([v for v in values if v is not None])


def summarize(results: list[dict]) -> tuple[dict, str]:
    names = list(results[0]["afrl"]["requirements"])
    rows, summary = [], {"seeds": [r["seed"] for r in results], "requirements": {}}
    bb_ndcg = [r["backbone"]["metrics"]["ndcg@10"] for r in results]
    bb_hr = [r["backbone"]["metrics"]["hr@10"] for r in results]
    for name in names:
        blocks = [r["afrl"]["requirements"][name] for r in results]
        sensitive = blocks[0]["sensitive"]
        bb_auc = [float(np.mean([r["backbone"]["probe_auc"][a] for a in sensitive])) for r in results] if sensitive else None
        bb_unseen = ([float(np.mean([r["backbone"]["unseen_auc"][a] for a in sensitive])) for r in results]
                     if sensitive else None)
        entry = {
            "sensitive": sensitive,
            "afrl_mean_auc": [b["mean_auc"] for b in blocks],
            "backbone_mean_auc": bb_auc,
            "afrl_mean_unseen_auc": [b["mean_unseen_auc"] for b in blocks],
            "backbone_mean_unseen_auc": bb_unseen,
            "afrl_ndcg@10": [b["metrics"]["ndcg@10"] for b in blocks],
            "afrl_hr@10": [b["metrics"]["hr@10"] for b in blocks],
            "ndcg_ratio_to_backbone": [b["metrics"]["ndcg@10"] / n for b, n in zip(blocks, bb_ndcg)],
        }
        summary["requirements"][name] = entry
        rows.append(
            f"| {name} | {mean_std(bb_auc) if bb_auc else '-'} | "
            f"{mean_std(entry['afrl_mean_auc']) if sensitive else '-'} | {mean_std(bb_unseen) if bb_unseen else '-'} | "
            f"{mean_std(entry['afrl_mean_unseen_auc']) if sensitive else '-'} | {mean_std(entry['afrl_ndcg@10'])} | "
            f"{mean_std(entry['afrl_hr@10'])} | {np.mean(entry['ndcg_ratio_to_backbone']):.3f} |"
        )
    summary["backbone"] = {"ndcg@10": bb_ndcg, "hr@10": bb_hr}
    stages = [k for k in results[0]["timings"] if k.endswith("_seconds")]
    summary["timings"] = {k: [r["timings"][k] for r in results] for k in stages}
    summary["total_seconds"] = [sum(r["timings"][k] for k in stages) for r in results]
    header = (
        f"Backbone ({results[0]['backbone']['name']}): NDCG@10 {mean_std(bb_ndcg)}, HR@10 {mean_std(bb_hr)}; "
        f"{len(results)} seeds, mean ± std.\n\n"
        "| requirement | backbone AUC | AFRL AUC | backbone unseen AUC | AFRL unseen AUC | AFRL NDCG@10 | AFRL HR@10 "
        "| NDCG vs backbone |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    timing = " · ".join(f"{k.removesuffix('_seconds')} {np.mean(v):.1f} s" for k, v in summary["timings"].items())
    table = header + "\n".join(rows) + f"\n\nWall time per run: {np.mean(summary['total_seconds']):.1f} s ({timing}).\n"
    return summary, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/afrl_main_job")
    args = parser.parse_args(argv)
    runner.seeds_report(args.config, args.seeds, args.out, summarize)


if __name__ == "__main__":
    main()
