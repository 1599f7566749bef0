"""Audit saved user embeddings of finished runs with probes that never see a user whose labels the method used.

    python benchmarks/unseen_audit.py benchmarks/results/cofair_pmf/seed* --attribute gender --stages test \
        --out benchmarks/results/cofair_pmf/unseen_audit.json

For every ``user_embeddings_*.npy`` in every run folder (rows aligned with the folder's ``users.csv``), and for
``--attribute``, two AUCs:

* ``standard``: :func:`jaxfair.metrics.probe.probe_attribute` on the run's probe split (fitted on the probe training
  users, selected on the validation users, scored on the test users), the number the run reports;
* ``unseen``: :func:`jaxfair.metrics.probe.cross_fitted_probe` on the users of ``--stages`` only (5-fold
  cross-fitting), i.e. on users whose labels the method never trained on when ``--stages`` names the withheld stages.

Files with the same name are grouped over the run folders (mean and std over seeds). Writes ``--out`` (JSON) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np
import pandas as pd

from jaxfair.experiments.outputs import mean_std
from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe, probe_attribute

STAGES = ("train", "valid", "test")


def audit_run(run_dir: pathlib.Path, attribute: str, stages: tuple[str, ...], config: ProbeConfig, seed: int) -> dict:
    """``{file stem: {"standard": auc, "unseen": auc}}`` for every embedding file of one run folder."""
    users = pd.read_csv(run_dir / "users.csv", dtype=str, keep_default_na=False)
    if attribute not in users.columns or "probe_split" not in users.columns:
        raise SystemExit(f"{run_dir / 'users.csv'}: needs the columns {attribute!r} and 'probe_split'")
    classes = sorted(users[attribute].unique())
    labels = users[attribute].map({c: i for i, c in enumerate(classes)}).to_numpy().astype(np.int32)
    parts = {s: np.flatnonzero(users["probe_split"].to_numpy() == s) for s in STAGES}
    unseen = np.sort(np.concatenate([parts[s] for s in stages]))
    key = jax.random.key(seed)
    out = {}
    for path in sorted(run_dir.glob("user_embeddings_*.npy")):
        emb = np.load(path).astype(np.float32)
        if len(emb) != len(users):
            raise SystemExit(f"{path}: {len(emb)} rows, but {run_dir / 'users.csv'} has {len(users)}")
        out[path.stem.removeprefix("user_embeddings_")] = {
            "standard": probe_attribute(emb, labels, parts, len(classes), key, config)["auc"],
            "unseen": cross_fitted_probe(emb, labels, unseen, len(classes), key, config)["auc"],
        }
    return {"num_unseen": int(len(unseen)), "files": out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="folders written by 'jaxfair train' (one per seed)")
    parser.add_argument("--attribute", default="gender")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=["test"],
                        help="probe_split stages whose labels the method never used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)

    config = ProbeConfig(bootstrap=0)
    per_run = {}
    for run in args.runs:
        per_run[run] = audit_run(pathlib.Path(run), args.attribute, tuple(args.stages), config, args.seed)
        print(f"{run}: audited {len(per_run[run]['files'])} embedding files", flush=True)
    names = list(next(iter(per_run.values()))["files"])
    summary = {
        name: {kind: [r["files"][name][kind] for r in per_run.values()] for kind in ("standard", "unseen")}
        for name in names
    }
    lines = [f"{args.attribute}: standard probe vs unseen-user audit ({', '.join(args.stages)} users), "
             f"{len(per_run)} runs, mean ± std", "", "| embeddings | standard AUC | unseen AUC |", "|---|---|---|"]
    lines += [f"| {n} | {mean_std(v['standard'])} | {mean_std(v['unseen'])} |" for n, v in summary.items()]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        payload = {"attribute": args.attribute, "stages": args.stages, "runs": per_run, "summary": summary,
                   "table": table}
        pathlib.Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
