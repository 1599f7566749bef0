"""The README's DifFaiRec table: run a DifFaiRec config for several seeds, then report each variant's test accuracy,
group gaps and probe AUC (mean ± std), and the issue's check that DifFaiRec's gaps are below DiffRec's.

    python benchmarks/diffairec_seeds.py configs/diffairec_ml100k.toml --seeds 0 1 2 --out benchmarks/results/diffairec

Each seed is ``jaxfair train CONFIG --seed S`` (initialisation, noise, timesteps and batch order change; the split
is the recipe's, drawn with ``[data] seed``). A seed whose ``results.json`` already exists under ``--out`` is read,
not rerun. Writes ``summary.json`` and ``table.md``.

Check (means over seeds, test split, at each reported K): for each DifFaiRec variant and each gap (absolute
equality of Recall and of NDCG, equal opportunity), ``gap(variant) < gap(diffrec)``. Model selection used
validation data only.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxfair.experiments import outputs, runner

GAPS = ("recall_gap", "ndcg_gap", "eo_gap")
GAP_LABELS = {"recall_gap": "AE-Recall", "ndcg_gap": "AE-NDCG", "eo_gap": "EO"}


def mean_std(values) -> str:
    return outputs.mean_std(values, digits=4)


def summarize(results: list[dict], ks=(10, 20)) -> tuple[dict, str]:
    """Per-variant lists over seeds, the gap checks and the markdown table."""
    names = list(results[0]["variants"])
    summary = {"seeds": [r["seed"] for r in results], "ks": list(ks), "variants": {}}
    for name in names:
        blocks = [r["variants"][name] for r in results]
        entry = {}
        for k in ks:
            for metric in (f"recall@{k}", f"ndcg@{k}"):
                entry[metric] = [b["test"][metric] for b in blocks]
            for gap in GAPS:
                entry[f"{gap}@{k}"] = [b["gaps"][f"@{k}"][gap] for b in blocks]
        entry["probe_auc"] = [b["probe_auc"] for b in blocks]
        entry["epochs_run"] = [b["epochs_run"] for b in blocks]
        entry["best_epoch"] = [b["best_epoch"] for b in blocks]
        entry["train_seconds"] = [b["train_seconds"] for b in blocks]
        summary["variants"][name] = entry

    if "diffrec" in names:
        checks = {}
        for name in (n for n in names if n.startswith("diffairec")):
            ours, base = summary["variants"][name], summary["variants"]["diffrec"]
            checks[name] = {f"{gap}@{k}": bool(np.mean(ours[f"{gap}@{k}"]) < np.mean(base[f"{gap}@{k}"]))
                            for k in ks for gap in GAPS}
        summary["checks"] = {"gaps_below_diffrec": checks,
                             "met": bool(checks) and all(all(c.values()) for c in checks.values())}

    first = results[0]
    stats = first["statistics"]
    counts = ", ".join(f"{g} {n}" for g, n in zip(first["groups"], first["group_users"]))
    tables = []
    for k in ks:
        columns = [f"Recall@{k}", f"NDCG@{k}"] + [f"{GAP_LABELS[g]}@{k}" for g in GAPS] + ["probe AUC", "train s"]
        lines = ["| variant | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
        for name in names:
            e = summary["variants"][name]
            cells = [mean_std(e[f"recall@{k}"]), mean_std(e[f"ndcg@{k}"])]
            cells += [mean_std(e[f"{gap}@{k}"]) for gap in GAPS]
            cells += [mean_std(e["probe_auc"]), f"{np.mean(e['train_seconds']):.0f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    header = (f"{first['dataset']} ({stats['users']} users, {stats['items']} items, {stats['positives']} positives; "
              f"{first['attribute']}: {counts}), test split, full ranking; {len(results)} seeds, mean ± std. "
              "Gaps: lower is fairer; probe AUC: 0.5 is fairest.\n\n")
    table = header + "\n\n".join(tables) + "\n"
    if "checks" in summary:
        verdicts = [f"{name}: " + ", ".join(f"{key} {'yes' if ok else 'no'}" for key, ok in c.items())
                    for name, c in summary["checks"]["gaps_below_diffrec"].items()]
        table += ("\nGap below DiffRec's (means): " + "; ".join(verdicts) + ". All: "
                  + ("met" if summary["checks"]["met"] else "not met") + ".\n")
    return summary, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/diffairec")
    args = parser.parse_args(argv)
    summary, _ = runner.seeds_report(args.config, args.seeds, args.out, summarize)
    return summary


if __name__ == "__main__":
    main()
