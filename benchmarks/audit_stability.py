"""How much the unseen-user audit moves with its master seed (issue 23), on real embedding files.

    python -m benchmarks.audit_stability [--run DIR] [--seeds 0 1 2 3] [--out benchmarks/results/audit_stability.json]

Takes the fair embeddings of a finished AFRL run (default: trains the README's main job, ``configs/afrl_pmf_ml100k
.toml``, into ``runs/audit_stability``, or finds it finished there) and audits the requirements ``G`` and ``G+A+O``
and the backbone for gender, age and occupation on the unseen users (probe validation and test users), as
:func:`jaxfair.metrics.probe.cross_fitted_probe` does in a run, under three settings and several master seeds:

* ``one draw``: a single cross-fitting (``audit_max_repeats = 1``), what the audit was before issue 23;
* ``se 0.005``: folds redrawn until the mean's standard error is 0.005 (what the docs' sweeps use);
* ``default``: the default, 0.0025.

Per setting it reports the largest difference between two master seeds' AUCs on the same file and attribute, the
draws taken and the seconds spent; every AUC is in the JSON. ``--quick`` audits gender only, with two seeds and
50-step probes (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import pathlib
import time

import jax
import numpy as np
import pandas as pd

from benchmarks.timing import write_json
from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe

SETTINGS = {"one draw": {"audit_repeats": 1, "audit_max_repeats": 1}, "se 0.005": {"audit_se": 0.005},
            "default": {}}
FILES = ("G", "G+A+O", "backbone")


def finished_run(run: pathlib.Path | None) -> pathlib.Path:
    if run is not None:
        return run
    from jaxfair.pipeline import load_config, run as train

    out = pathlib.Path("runs/audit_stability")
    train(load_config("configs/afrl_pmf_ml100k.toml"), out)
    return out


def measure(run: pathlib.Path, seeds, attributes, base: ProbeConfig) -> list[dict]:
    users = pd.read_csv(run / "users.csv", dtype=str, keep_default_na=False)
    unseen = np.flatnonzero(users["probe_split"].isin(["valid", "test"]).to_numpy())
    embeddings = {stem: np.load(run / f"user_embeddings_{stem}.npy").astype(np.float32) for stem in FILES}
    classes = {a: sorted(users[a].unique()) for a in attributes}
    codes = {a: users[a].map({v: i for i, v in enumerate(classes[a])}).to_numpy().astype(np.int32)
             for a in attributes}
    rows = []
    for stem, attribute, (setting, changes), seed in itertools.product(FILES, attributes, SETTINGS.items(), seeds):
        config = dataclasses.replace(base, **changes)
        tick = time.perf_counter()
        audit = cross_fitted_probe(embeddings[stem], codes[attribute], unseen, len(classes[attribute]),
                                   jax.random.key(seed), config)
        rows.append({"file": stem, "attribute": attribute, "setting": setting, "seed": seed, "auc": audit["auc"],
                     "auc_std": audit["auc_std"], "repeats": audit["repeats"],
                     "seconds": time.perf_counter() - tick})
        print(f"{stem:9s} {attribute:10s} {setting:9s} seed {seed}: auc {audit['auc']:.4f} "
              f"(draw spread {audit['auc_std']:.4f}, {audit['repeats']} draws, {rows[-1]['seconds']:.1f}s)", flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per setting: the largest master-seed range of the AUC over (file, attribute), mean draws and seconds."""
    out = {}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        groups = {}
        for r in mine:
            groups.setdefault((r["file"], r["attribute"]), []).append(r["auc"])
        ranges = {f"{f}/{a}": max(v) - min(v) for (f, a), v in groups.items()}
        out[setting] = {"max_seed_range": max(ranges.values()), "seed_range": ranges,
                        "mean_draws": float(np.mean([r["repeats"] for r in mine])),
                        "mean_seconds": float(np.mean([r["seconds"] for r in mine]))}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=pathlib.Path, help="a finished AFRL run folder (default: train the main job)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="gender only, seeds 0 and 1, 50-step probes")
    parser.add_argument("--out", default="benchmarks/results/audit_stability.json")
    args = parser.parse_args(argv)
    run = finished_run(args.run)
    seeds = [0, 1] if args.quick else args.seeds
    attributes = ["gender"] if args.quick else ["gender", "age", "occupation"]
    base = ProbeConfig(bootstrap=0)  # the interval is not what moves; leaving it out saves time
    if args.quick:
        base = dataclasses.replace(base, steps=50, eval_every=25)
    rows = measure(run, seeds, attributes, base)
    summary = summarise(rows)
    for setting, block in summary.items():
        print(f"{setting:9s}: largest difference between master seeds {block['max_seed_range']:.4f}, "
              f"{block['mean_draws']:.1f} draws and {block['mean_seconds']:.1f}s per audit on average")
    result = {"run": str(run), "seeds": seeds, "attributes": attributes, "summary": summary, "rows": rows}
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
