"""How low can DP@K go? The exposure gap between two *random* groups of the same sizes as the attribute's groups.

    python benchmarks/exposure_floor.py configs/cofair_pmf_ml100k.toml --shuffles 20 \
        --out benchmarks/results/exposure_floor_pmf.json

DP@K (``jaxfair/metrics/exposure.py``) is a Jensen-Shannon distance between two groups' top-K exposure
distributions over ~1,700 items, estimated from a few hundred users per group, so it is far from 0 even when the
groups are unrelated to what users like. This script trains the config's backbone (its ``[train] seed``), ranks the
chosen stage's items for every user with the frozen embeddings, and reports DP@K and EOpp@K for the real groups of
``[cofair] attribute`` and for ``--shuffles`` random permutations of the group labels (same group sizes). A fairness
level whose DP@K is within the shuffled spread is as fair, by this measure, as a random split of the users can be.
Writes a JSON with the real values and the shuffled mean, standard deviation, minimum and maximum.

With ``--runs DIR [DIR ...]`` (finished ``jaxfair train`` runs of a Cofair config, e.g. the seed folders of
``benchmarks/cofair_seeds.py``) nothing is trained: each run's backbone is restored from its checkpoint, and every
fairness level's saved user embeddings (``user_embeddings_level<t>.npy``) are ranked and measured the same way, so
the floor is known per level (a level that spreads its recommendations over more items has a higher floor). The
JSON then holds, per run and level, the real values and the shuffled statistics, and per level the means over runs
of the real value, the shuffled mean and their difference (``excess``: the exposure gap beyond what random groups
of the same sizes show).

    python benchmarks/exposure_floor.py --runs benchmarks/results/cofair_pmf_more_seeds/seed* --shuffles 20 \
        --out benchmarks/results/cofair_pmf_more_seeds/exposure_floor_levels.json

With ``--users unseen`` (``--runs`` mode) only the users whose attribute Cofair never trained on (the withheld
probe-validation and probe-test users) are ranked, grouped and shuffled: a training term that equalises the labelled
users' exposure directly (``exposure_weight``) can push the labelled users' gap below what random groups show, and
the unseen users tell whether that carries over.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from jaxfair.config import ConfigError
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments import cofair as cofair_experiment
from jaxfair.experiments import runner
from jaxfair.metrics.exposure import full_ranking_report


def group_gaps(score, user_vecs, item_vecs, targets, exclude, groups, num_groups, ks) -> dict[str, float]:
    """DP@K and EOpp@K of one ranking (``user_vecs (U, d)`` against every item) for the int ``(U,)`` ``groups``."""
    report = full_ranking_report(score, user_vecs, item_vecs, targets, exclude, jnp.asarray(groups),
                                 num_groups=num_groups, ks=ks)
    return {name: float(value) for name, value in report.items() if name.startswith(("dp@", "eopp@"))}


def real_and_shuffled(gaps, labels: np.ndarray, shuffles: int, rng: np.random.Generator) -> dict:
    """``gaps(groups) -> {name: value}`` for the real labels and ``shuffles`` permutations of them."""
    shuffled = [gaps(rng.permutation(labels)) for _ in range(shuffles)]
    return {
        "real": gaps(labels),
        "shuffled": {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
                            "max": float(np.max(v))}
                     for name, v in ((n, [s[n] for s in shuffled]) for n in shuffled[0])},
    }


def level_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """The run's ``user_embeddings_level<t>.npy`` in level order; SystemExit when there are none."""
    prefix = "user_embeddings_level"
    files = sorted(run_dir.glob(f"{prefix}*.npy"), key=lambda f: int(f.stem.removeprefix(prefix)))
    if not files:
        raise SystemExit(f"{run_dir}: no user_embeddings_level<t>.npy (not a finished Cofair run)")
    return files


def floor_per_level(run_dirs: list[str], shuffles: int, stage: str, log=print, users: str = "all") -> dict:
    """The ``--runs`` mode: real and shuffled-group gaps of every level of every run, and their means over runs
    (``users = "unseen"``: over the users whose label Cofair never trained on only)."""
    runs = []
    for run_dir in map(pathlib.Path, run_dirs):
        files = level_files(run_dir)
        try:
            config, split, frozen = runner.restore_run(run_dir)
        except ConfigError as error:
            raise SystemExit(str(error)) from None
        attribute = cofair_experiment.section_config(config).attribute
        data = cofair_experiment.cofair_data(split, frozen.user_vecs[stage], frozen.item_vecs, attribute)
        targets, exclude = cofair_experiment.stage_arrays(split, stage)
        rows = (np.flatnonzero(np.asarray(data.label_weight) == 0) if users == "unseen"
                else np.arange(split.num_users))
        targets, exclude = targets[rows], exclude[rows]
        labels = np.asarray(data.labels)[rows]
        levels = []
        for t, path in enumerate(files):
            user_vecs = jnp.asarray(np.load(path))
            if user_vecs.shape != frozen.user_vecs[stage].shape:
                raise SystemExit(f"{path}: shape {user_vecs.shape}, the run's users need "
                                 f"{frozen.user_vecs[stage].shape}")
            user_vecs = user_vecs[rows]

            def gaps(groups, user_vecs=user_vecs):
                return group_gaps(frozen.score, user_vecs, frozen.item_vecs, targets, exclude, groups,
                                  data.num_classes, tuple(config.evaluate.ks))

            # One generator per level, seeded alike: every level is compared against the same random groupings.
            levels.append(real_and_shuffled(gaps, labels, shuffles, np.random.default_rng(config.train.seed)))
            log(f"{run_dir} level {t}: " + ", ".join(
                f"{n} {levels[-1]['real'][n]:.4f} (random groups {levels[-1]['shuffled'][n]['mean']:.4f})"
                for n in levels[-1]["real"]))
        runs.append({"run": str(run_dir), "backbone": config.backbone_name, "seed": config.train.seed,
                     "attribute": attribute, "group_sizes": np.bincount(labels).tolist(), "levels": levels})
    num_levels = {len(r["levels"]) for r in runs}
    if len(num_levels) != 1:
        raise SystemExit(f"the runs have different numbers of levels: {sorted(num_levels)}")
    names = list(runs[0]["levels"][0]["real"])
    mean = [{name: {
        "real": float(np.mean([r["levels"][t]["real"][name] for r in runs])),
        "shuffled": float(np.mean([r["levels"][t]["shuffled"][name]["mean"] for r in runs])),
        "excess": float(np.mean([r["levels"][t]["real"][name] - r["levels"][t]["shuffled"][name]["mean"]
                                 for r in runs])),
    } for name in names} for t in range(num_levels.pop())]
    return {"stage": stage, "users": users, "shuffles": shuffles, "runs": runs, "mean_over_runs": mean}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="a Cofair config (trains its backbone); or use --runs")
    parser.add_argument("--runs", nargs="+", metavar="DIR", help="finished Cofair runs: measure each saved level")
    parser.add_argument("--shuffles", type=int, default=20)
    parser.add_argument("--stage", choices=("valid", "test"), default="test")
    parser.add_argument("--seed", type=int, help="overrides [train] seed (the backbone's)")
    parser.add_argument("--users", choices=("all", "unseen"), default="all",
                        help="--runs mode: every user, or only those whose attribute Cofair never trained on")
    parser.add_argument("--out", default="benchmarks/results/exposure_floor.json")
    args = parser.parse_args(argv)
    if args.shuffles < 2:
        raise SystemExit("--shuffles must be at least 2")
    if (args.config is None) == (args.runs is None):
        raise SystemExit("give either a config or --runs DIR [DIR ...]")

    if args.runs:
        result = floor_per_level(args.runs, args.shuffles, args.stage, users=args.users)
        for t, level in enumerate(result["mean_over_runs"]):
            print(f"level {t} (mean over {len(result['runs'])} runs): " + ", ".join(
                f"{n} {v['real']:.4f}, random groups {v['shuffled']:.4f}, excess {v['excess']:+.4f}"
                for n, v in level.items()))
    else:
        result = floor_of_config(args)
        for name, real in result["real"].items():
            s = result["shuffled"][name]
            print(f"{name}: real groups {real:.4f}; random groups of the same sizes {s['mean']:.4f} +- {s['std']:.4f} "
                  f"(min {s['min']:.4f}, max {s['max']:.4f}, {args.shuffles} shuffles)")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def floor_of_config(args) -> dict:
    """The default mode: train the config's backbone and measure its rankings."""
    config = runner.load(args.config, seed=args.seed)
    attribute = cofair_experiment.section_config(config).attribute
    split = backbone_experiment.load_split(config.data, print)
    frozen = backbone_experiment.frozen_backbone(split, config, None, lambda message: None)
    data = cofair_experiment.cofair_data(split, frozen.user_vecs[args.stage], frozen.item_vecs, attribute)
    targets, exclude = cofair_experiment.stage_arrays(split, args.stage)
    labels = np.asarray(data.labels)

    def gaps(groups):
        return group_gaps(frozen.score, frozen.user_vecs[args.stage], frozen.item_vecs, targets, exclude, groups,
                          data.num_classes, tuple(config.evaluate.ks))

    return {
        "config": args.config, "backbone": config.backbone_name, "backbone_seed": config.train.seed,
        "attribute": attribute, "stage": args.stage, "group_sizes": np.bincount(labels).tolist(),
        "shuffles": args.shuffles,
        **real_and_shuffled(gaps, labels, args.shuffles, np.random.default_rng(config.train.seed)),
    }


if __name__ == "__main__":
    main()
