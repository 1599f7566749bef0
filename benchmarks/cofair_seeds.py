"""The README's Cofair table: run a Cofair config for several seeds, then report mean and spread per level, the
retraining baseline's points, the monotonicity checks and both methods' training time.

    python benchmarks/cofair_seeds.py configs/cofair_pmf_ml100k.toml --seeds 0 1 2 --out benchmarks/results/cofair_pmf

Each seed is ``jaxfair train CONFIG --seed S`` (backbone, Cofair's initialisation and every batch change with the
seed; the split stays that of ``[data] seed``). A seed whose ``results.json`` already exists under ``--out`` is read,
not rerun. Writes ``summary.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxfair.experiments import runner
from jaxfair.experiments.outputs import mean_std


def is_monotone(values, decreasing: bool = True) -> bool:
    """True when ``values`` never rise (``decreasing``) or never fall from one entry to the next."""
    steps = np.diff(np.asarray(values, dtype=float))
    return bool(np.all(steps <= 0) if decreasing else np.all(steps >= 0))


def summarize(results: list[dict], k: int = 10) -> tuple[dict, str]:
    num_levels = len(results[0]["cofair"]["levels"])
    metric_names = (f"recall@{k}", f"ndcg@{k}", f"recall@{2 * k}", f"ndcg@{2 * k}", f"dp@{k}", f"eopp@{k}")
    summary = {"seeds": [r["seed"] for r in results], "levels": [], "monotone_level1_to_T": {}}
    rows = []
    for t in range(num_levels):
        blocks = [r["cofair"]["levels"][t] for r in results]
        entry = {name: [b["metrics"][name] for b in blocks] for name in metric_names if name in blocks[0]["metrics"]}
        entry["probe_auc"] = [b["probe_auc"] for b in blocks]
        summary["levels"].append(entry)
        rows.append(f"| {t} | " + " | ".join(mean_std(entry[n]) for n in (*[m for m in metric_names if m in entry],
                                                                            "probe_auc")) + " |")
    for name in (f"dp@{k}", "probe_auc"):
        per_seed = [is_monotone([r["cofair"]["levels"][t][name] if name == "probe_auc" else
                                 r["cofair"]["levels"][t]["metrics"][name] for t in range(1, num_levels)])
                    for r in results]
        mean_curve = [np.mean(summary["levels"][t][name]) for t in range(1, num_levels)]
        summary["monotone_level1_to_T"][name] = {"per_seed": per_seed, "mean_curve": is_monotone(mean_curve)}
    drops = np.array([r["cofair"]["attacker_loss_drop_fraction"]["probe"] for r in results])
    disc_drops = np.array([r["cofair"]["attacker_loss_drop_fraction"]["discriminator"] for r in results])
    summary["attacker_loss_drop_fraction"] = {"probe": drops.mean(axis=0).tolist(),
                                              "discriminator": disc_drops.mean(axis=0).tolist()}
    baseline_rows = []
    if results[0].get("retrain_baseline"):
        models = len(results[0]["retrain_baseline"]["models"])
        summary["retrain_baseline"] = []
        for i in range(models):
            blocks = [r["retrain_baseline"]["models"][i] for r in results]
            entry = {name: [b["metrics"][name] for b in blocks] for name in metric_names if name in blocks[0]["metrics"]}
            entry["probe_auc"] = [b["probe_auc"] for b in blocks]
            entry["lambda"] = [b["lambda"] for b in blocks]
            summary["retrain_baseline"].append(entry)
            baseline_rows.append(f"| retrain λ≈{np.mean(entry['lambda']):.2f} | " + " | ".join(
                mean_std(entry[n]) for n in (*[m for m in metric_names if m in entry], "probe_auc")) + " |")
        summary["retrain_seconds"] = [r["retrain_baseline"]["seconds"] for r in results]
    summary["cofair_seconds"] = [r["cofair"]["train_seconds"] for r in results]
    columns = [m for m in metric_names if m in summary["levels"][0]] + ["probe AUC"]
    header = (f"{results[0]['dataset']} / {results[0]['backbone']['name']} / {results[0]['attribute']}, full ranking, "
              f"test users; {len(results)} seeds, mean ± std.\n\n"
              "| level | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1) + "\n")
    table = header + "\n".join(rows + baseline_rows)
    table += ("\n\nUsers whose attacker (probe) loss drops from level t to t+1: "
              + ", ".join(f"{t}->{t + 1} {f:.2f}" for t, f in enumerate(summary["attacker_loss_drop_fraction"]["probe"]))
              + "; by Cofair's own discriminator: "
              + ", ".join(f"{t}->{t + 1} {f:.2f}" for t, f in
                          enumerate(summary["attacker_loss_drop_fraction"]["discriminator"])) + ".\n")
    table += ("Monotone from level 1 to T (per seed; mean curve): "
              + "; ".join(f"{n}: {v['per_seed']}; {v['mean_curve']}" for n, v in summary["monotone_level1_to_T"].items())
              + ".\n")
    table += f"Training time: Cofair {mean_std(summary['cofair_seconds'])} s"
    if "retrain_seconds" in summary:
        table += f", retraining baseline ({len(baseline_rows)} models) {mean_std(summary['retrain_seconds'])} s"
    return summary, table + ".\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/cofair")
    args = parser.parse_args(argv)
    summary, _ = runner.seeds_report(args.config, args.seeds, args.out, summarize)
    return summary


if __name__ == "__main__":
    main()
