"""The README's ITFR table: run an ITFR config for several seeds, then report each variant's test accuracy and
intersectional fairness (mean ± std), and the issue's acceptance checks against plain BPR.

    python benchmarks/itfr_seeds.py configs/itfr_mf_ml100k.toml --seeds 0 1 2 --out benchmarks/results/itfr_mf

Each seed is ``jaxfair train CONFIG --seed S`` (initialisation, negatives and batch order change; the split is the
recipe's, drawn with ``[data] seed``). A seed whose ``results.json`` already exists under ``--out`` is read, not
rerun. Writes ``summary.json`` and ``table.md``.

Checks (on the means over seeds, test split): ``cv_ratio = CV@k(itfr) / CV@k(bpr)`` (target <= 0.75) and
``ndcg_change = NDCG@k(itfr) / NDCG@k(bpr) - 1`` (target >= -0.05). Model selection used validation data only.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxfair.experiments import runner
from jaxfair.experiments.outputs import mean_std


def summarize(results: list[dict], k: int = 20) -> tuple[dict, str]:
    """Per-variant lists over seeds, the acceptance checks and the markdown table."""
    names = list(results[0]["variants"])
    accuracy = (f"recall@{k}", f"ndcg@{k}")
    fairness = ("cv", "min", "ucv", "icv")
    summary = {"seeds": [r["seed"] for r in results], "k": k, "variants": {}}
    rows = []
    for name in names:
        blocks = [r["variants"][name] for r in results]
        entry = {m: [b["test"][m] for b in blocks] for m in accuracy}
        entry.update({f"{m}@{k}": [b["intersectional"][f"@{k}"][m] for b in blocks] for m in fairness})
        entry[f"valid_ndcg@{k}"] = [b["valid"][f"ndcg@{k}"] for b in blocks]
        entry["epochs_run"] = [b["epochs_run"] for b in blocks]
        entry["best_epoch"] = [b["best_epoch"] for b in blocks]
        entry["train_seconds"] = [b["train_seconds"] for b in blocks]
        summary["variants"][name] = entry
        cells = [mean_std(entry[m]) for m in (*accuracy, *(f"{m}@{k}" for m in fairness))]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(entry['train_seconds']):.0f} |")
    if "bpr" in names and "itfr" in names:
        base, ours = summary["variants"]["bpr"], summary["variants"]["itfr"]
        summary["checks"] = {
            "cv_ratio": float(np.mean(ours[f"cv@{k}"]) / np.mean(base[f"cv@{k}"])),
            "ndcg_change": float(np.mean(ours[f"ndcg@{k}"]) / np.mean(base[f"ndcg@{k}"]) - 1.0),
            "cv_ratio_per_seed": [o / b for o, b in zip(ours[f"cv@{k}"], base[f"cv@{k}"])],
        }
        summary["checks"]["met"] = bool(summary["checks"]["cv_ratio"] <= 0.75 and summary["checks"]["ndcg_change"] >= -0.05)
    columns = ["Recall", "NDCG", "CV", "MIN", "UCV", "ICV"]
    first = results[0]
    header = (f"{first['dataset']} ({first['statistics']['users']} users, {first['statistics']['items']} items), "
              f"{first['backbone']}, {len(first['groups']['names'])} intersectional groups, test split, @{k}; "
              f"{len(results)} seeds, mean ± std. CV/UCV/ICV lower is fairer, MIN higher is fairer.\n\n"
              "| variant | " + " | ".join(f"{c}@{k}" for c in columns) + " | train s |\n|" + "---|" * (len(columns) + 2)
              + "\n")
    table = header + "\n".join(rows) + "\n"
    if "checks" in summary:
        c = summary["checks"]
        table += (f"\nITFR vs BPR: CV@{k} ratio {c['cv_ratio']:.2f} (target <= 0.75; per seed "
                  + ", ".join(f"{x:.2f}" for x in c["cv_ratio_per_seed"])
                  + f"), NDCG@{k} change {100 * c['ndcg_change']:+.1f}% (target >= -5%): "
                  + ("met" if c["met"] else "not met") + ".\n")
    return summary, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/itfr")
    args = parser.parse_args(argv)
    summary, _ = runner.seeds_report(args.config, args.seeds, args.out, lambda results: summarize(results, args.k))
    return summary


if __name__ == "__main__":
    main()
