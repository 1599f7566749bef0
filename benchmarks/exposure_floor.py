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
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments import cofair as cofair_experiment
from jaxfair.experiments import runner
from jaxfair.metrics.exposure import full_ranking_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--shuffles", type=int, default=20)
    parser.add_argument("--stage", choices=("valid", "test"), default="test")
    parser.add_argument("--seed", type=int, help="overrides [train] seed (the backbone's)")
    parser.add_argument("--out", default="benchmarks/results/exposure_floor.json")
    args = parser.parse_args(argv)
    if args.shuffles < 2:
        raise SystemExit("--shuffles must be at least 2")

    config = runner.load(args.config, seed=args.seed)
    attribute = cofair_experiment.section_config(config).attribute
    split = backbone_experiment.load_split(config.data, print)
    frozen = backbone_experiment.frozen_backbone(split, config, None, lambda message: None)
    data = cofair_experiment.cofair_data(split, frozen.user_vecs[args.stage], frozen.item_vecs, attribute)
    targets, exclude = cofair_experiment.stage_arrays(split, args.stage)
    ks = tuple(config.evaluate.ks)

    def gaps(groups) -> dict[str, float]:
        report = full_ranking_report(frozen.score, frozen.user_vecs[args.stage], frozen.item_vecs, targets, exclude,
                                     jnp.asarray(groups), num_groups=data.num_classes, ks=ks)
        return {name: float(value) for name, value in report.items() if name.startswith(("dp@", "eopp@"))}

    labels = np.asarray(data.labels)
    rng = np.random.default_rng(config.train.seed)
    shuffled = [gaps(rng.permutation(labels)) for _ in range(args.shuffles)]
    result = {
        "config": args.config, "backbone": config.backbone_name, "backbone_seed": config.train.seed,
        "attribute": attribute, "stage": args.stage, "group_sizes": np.bincount(labels).tolist(),
        "shuffles": args.shuffles, "real": gaps(labels),
        "shuffled": {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
                            "max": float(np.max(v))}
                     for name, v in ((n, [s[n] for s in shuffled]) for n in shuffled[0])},
    }
    for name, real in result["real"].items():
        s = result["shuffled"][name]
        print(f"{name}: real groups {real:.4f}; random groups of the same sizes {s['mean']:.4f} +- {s['std']:.4f} "
              f"(min {s['min']:.4f}, max {s['max']:.4f}, {args.shuffles} shuffles)")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
