"""The README's DifFaiRec table: run a DifFaiRec config for several seeds, then report each variant's test accuracy,
group gaps and probe AUC (mean ± std), and the issue's check that DifFaiRec's gaps are below DiffRec's.

    python benchmarks/diffairec_seeds.py configs/diffairec_ml100k.toml --seeds 0 1 2 --out benchmarks/results/diffairec

Each seed is ``jaxfair train CONFIG --seed S`` (initialisation, noise, timesteps and batch order change; the split
is the recipe's, drawn with ``[data] seed``). A seed whose ``results.json`` already exists under ``--out`` is read,
not rerun. Writes ``summary.json`` and ``table.md``.

Check (means over seeds, test split, at each reported K): for each DifFaiRec variant and each gap (absolute
equality of Recall and of NDCG, equal opportunity), ``gap(variant) < gap(diffrec)``. Model selection used
validation data only.

Paired differences: seed ``s`` trains DiffRec and DifFaiRec with the same seed on the same split, so each gap's
per-seed difference ``d_s = gap_s(variant) - gap_s(diffrec)`` is paired; reported are their mean and the paired t
statistic ``mean(d) / (std(d, ddof=1) / sqrt(n))`` (``paired`` in ``summary.json``, a line per variant in the table;
with one seed, or identical differences, the t statistic is null).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from jaxfair.experiments import outputs, runner

GAPS = ("recall_gap", "ndcg_gap", "eo_gap")
GAP_LABELS = {"recall_gap": "AE-Recall", "ndcg_gap": "AE-NDCG", "eo_gap": "EO"}


def mean_std(values) -> str:
    return outputs.mean_std(values, digits=4)


def paired_difference(ours, base) -> dict:
    """Mean of the per-seed differences ``ours - base`` and their paired t statistic (None when undefined)."""
    d = np.asarray(ours, np.float64) - np.asarray(base, np.float64)
    spread = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    t = float(np.mean(d) / (spread / np.sqrt(len(d)))) if spread > 0 else None
    return {"mean": float(np.mean(d)), "t": t}


def paired_differences(summary: dict) -> dict:
    """:func:`paired_difference` of every DifFaiRec variant's every gap against DiffRec's, from the per-seed lists
    of a summary."""
    variants, ks = summary["variants"], summary["ks"]
    return {name: {f"{gap}@{k}": paired_difference(variants[name][f"{gap}@{k}"], variants["diffrec"][f"{gap}@{k}"])
                   for k in ks for gap in GAPS}
            for name in variants if name.startswith("diffairec")}


def paired_lines(paired: dict) -> str:
    lines = ""
    for name, pairs in paired.items():
        cells = ", ".join(f"{key} {p['mean']:+.4f}" + ("" if p["t"] is None else f" (t {p['t']:+.2f})")
                          for key, p in pairs.items())
        lines += f"\nPaired over seeds, {name} minus diffrec: {cells}.\n"
    return lines


def add_paired(out_dir) -> dict:
    """Add the paired differences to a finished ``summary.json`` (and their lines to ``table.md``) from its
    per-seed lists, without the runs themselves."""
    out_dir = pathlib.Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    summary["paired"] = paired_differences(summary)
    outputs.write_json(out_dir / "summary.json", summary)
    table = (out_dir / "table.md").read_text().split("\nPaired over seeds")[0].rstrip("\n") + "\n"
    (out_dir / "table.md").write_text(table + paired_lines(summary["paired"]))
    print(paired_lines(summary["paired"]))
    return summary


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
        summary["paired"] = paired_differences(summary)

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
        table += paired_lines(summary["paired"])
    return summary, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/diffairec")
    parser.add_argument("--paired-only", action="store_true",
                        help="only add the paired differences to the summary.json already in --out")
    args = parser.parse_args(argv)
    if args.paired_only:
        return add_paired(args.out)
    summary, _ = runner.seeds_report(args.config, args.seeds, args.out, summarize)
    return summary


if __name__ == "__main__":
    main()
