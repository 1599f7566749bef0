"""AFRL against its baselines on one frozen backbone: SM (one adversarial filter per attribute combination), an
FFVAE-style disentangling model, and the ablations AFRL-w/o-z_i and AFRL-w/o-z_0.

    python benchmarks/afrl_baselines.py configs/afrl_pmf_ml100k.toml --out benchmarks/results/afrl_baselines
    python benchmarks/afrl_baselines.py configs/afrl_pmf_ml100k.toml --seed 1 \
        --out benchmarks/results/afrl_baselines_seed1
    python benchmarks/afrl_baselines.py --summarize benchmarks/results/afrl_baselines \
        benchmarks/results/afrl_baselines_seed1 ... --out benchmarks/results/afrl_baselines_summary.md

Every method sees the same split, the same frozen backbone embeddings, the same lambda / adversary / learning rate /
epochs as the config's ``[afrl]`` section, and the same evaluation (sampled protocol, probes of the sensitive
attributes on test users). Training time is wall time including compilation; SM's is the sum over its 2^M - 1
filters. Writes ``baselines.json`` and ``table.md``.

``--summarize DIR ...`` reads the ``baselines.json`` of several runs (one per seed, same config) and writes, per
requirement and method, the mean ± std (population std, as every seed table here) over seeds of NDCG@10, the
standard probe's mean AUC and the unseen-user audit's, and counts in how many (seed, non-empty requirement) pairs
AFRL's NDCG@10 is strictly above each other method's (a tie does not count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.experiments import afrl as afrl_experiment
from jaxfair.experiments import outputs
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments import runner
from jaxfair.methods import afrl, ffvae, sm


def summarize(runs: list[dict]) -> tuple[dict, str]:
    """Mean ± std over runs (seeds) per requirement and method, and AFRL's NDCG@10 against each other method's."""
    methods = list(runs[0]["methods"])
    names = list(runs[0]["methods"][methods[0]])
    same = all(list(r["methods"]) == methods and all(list(r["methods"][m]) == names for m in methods)
               and r["config"] == runs[0]["config"] for r in runs)
    if not same or "AFRL" not in methods or len({r["seed"] for r in runs}) != len(runs):
        raise SystemExit("--summarize needs runs of one config (with AFRL among the same methods and requirements), "
                         "one per seed")
    columns = {"NDCG@10": lambda b: b["metrics"]["ndcg@10"], "standard probe AUC": lambda b: b["mean_auc"],
               "unseen-user audit AUC": lambda b: b["mean_unseen_auc"]}
    summary = {"seeds": [r["seed"] for r in runs], "config": runs[0]["config"], "methods": {}}
    for m in methods:
        summary["methods"][m] = {n: {c: [get(r["methods"][m][n]) for r in runs] for c, get in columns.items()}
                                 for n in names}
    sensitive = [n for n in names if runs[0]["methods"][methods[0]][n]["sensitive"]]
    summary["afrl_ndcg_above"] = {
        m: int(sum(a > b for n in sensitive for a, b in zip(summary["methods"]["AFRL"][n]["NDCG@10"],
                                                             summary["methods"][m][n]["NDCG@10"])))
        for m in methods if m != "AFRL"}
    summary["pairs"] = len(sensitive) * len(runs)
    lines = [f"{runs[0]['config']}, seeds {summary['seeds']}; mean ± std over seeds (sampled protocol, test users). "
             f"Backbone NDCG@10 {outputs.mean_std([r['backbone_ndcg@10'] for r in runs])}."]
    for c in columns:
        lines += ["", f"{c}:", "", "| requirement | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
        for n in names:
            cells = []
            for m in methods:
                values = summary["methods"][m][n][c]
                cells.append("-" if None in values else outputs.mean_std(values))
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "AFRL's NDCG@10 above the other method's, of (seed, non-empty requirement) pairs: "
              + ", ".join(f"{m} {k}/{summary['pairs']}" for m, k in summary["afrl_ndcg_above"].items()) + "."]
    return summary, "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", default="benchmarks/results/afrl_baselines")
    parser.add_argument("--summarize", nargs="+", metavar="DIR", help="summarise finished runs instead of training")
    args = parser.parse_args(argv)
    if args.summarize:
        summary, table = summarize([json.loads((pathlib.Path(d) / "baselines.json").read_text())
                                    for d in args.summarize])
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
        print(table)
        return summary
    if args.config is None:
        parser.error("a config is needed unless --summarize is given")

    config = runner.load(args.config, seed=args.seed)
    method = afrl_experiment.method_config(config)
    seed = config.train.seed
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda message: None

    split = backbone_experiment.load_split(config.data, print)
    frozen = backbone_experiment.frozen_backbone(split, config, None, quiet)
    backbone, params, user_vecs, item_vecs = frozen.backbone, frozen.params, frozen.user_vecs, frozen.item_vecs
    score, data = frozen.score, afrl_experiment.afrl_data(split, user_vecs["valid"], item_vecs)
    requirements = afrl.all_requirements(len(split.attribute_names))
    names = [afrl.requirement_name(r, split.attribute_names) for r in requirements]
    key = jax.random.fold_in(jax.random.key(seed), 1)

    def evaluate(fair):
        return afrl_experiment.evaluate_embeddings(
            np.asarray(fair), requirements, split, user_vecs["test"], item_vecs, score, (10,), config.probe, key
        )["requirements"]

    methods, seconds = {}, {}
    variants = {
        "AFRL": method,
        "AFRL-w/o-z_i": dataclasses.replace(method, use_attribute_embeddings=False),
        "AFRL-w/o-z_0": dataclasses.replace(method, use_collaborative_embedding=False),
    }
    for name, variant in variants.items():
        tick = time.perf_counter()
        fit = afrl_experiment.train_afrl(split, data, score, variant, seed, None, quiet, user_vecs["valid"])
        seconds[name] = time.perf_counter() - tick
        methods[name] = evaluate(
            afrl.fair_embeddings_all_requirements(fit.best_params, user_vecs["test"], jnp.asarray(requirements), variant)
        )
        print(f"{name}: trained in {seconds[name]:.1f} s")

    sm_config = sm.SMConfig(
        lam=method.lam, hidden=method.hidden, learning_rate=method.learning_rate, batch_size=method.batch_size,
        epochs=method.epochs, patience=method.patience, adversary=method.adversary,
    )
    tick = time.perf_counter()
    filters = sm.train_all(split, data, score, sm_config, seed, user_vecs["valid"], log=quiet)
    seconds["SM"] = time.perf_counter() - tick
    fair_sm = [
        np.asarray(user_vecs["test"]) if n == "none" else np.asarray(sm.filter_embeddings(filters[n][0], user_vecs["test"]))
        for n in names
    ]
    methods["SM"] = evaluate(np.stack(fair_sm))
    print(f"SM: {len(filters)} filters trained in {seconds['SM']:.1f} s")

    ff_config = ffvae.FFVAEConfig(
        gamma=method.lam, hidden=method.hidden, learning_rate=method.learning_rate, batch_size=method.batch_size,
        epochs=method.epochs, patience=method.patience, adversary=method.adversary,
    )
    tick = time.perf_counter()
    ff_fit = ffvae.train(split, data, score, ff_config, seed, user_vecs["valid"], quiet)
    seconds["FFVAE"] = time.perf_counter() - tick
    methods["FFVAE"] = evaluate(
        jax.vmap(lambda s: ffvae.fair_user_embeddings(ff_fit.best_params, user_vecs["test"], s, ff_config))(
            jnp.asarray(requirements)
        )
    )
    print(f"FFVAE: trained in {seconds['FFVAE']:.1f} s")

    backbone_metrics = backbone_experiment.evaluate_ranking(
        lambda u, v: backbone.score(params, u, v), user_vecs, item_vecs, split,
        dataclasses.replace(config.evaluate, protocols=("sampled",)),
    )["sampled"]["test"]
    bb_probe = afrl_experiment.probe_requirements(
        {"backbone": np.asarray(user_vecs["test"])}, np.ones((1, len(split.attribute_names)), bool), split, key,
        config.probe, afrl_experiment.audit_users(split),
    )["backbone"]
    bb_auc, bb_unseen = bb_probe["auc"], bb_probe["unseen_auc"]

    header = "| requirement | backbone | " + " | ".join(methods) + " |"
    lines = [
        f"Mean AUC of the sensitive attributes, standard probe / unseen-user audit, then NDCG@10 (sampled protocol, "
        f"test users); seed {seed}. Backbone NDCG@10 {backbone_metrics['ndcg@10']:.3f}.",
        "",
        header,
        "|" + "---|" * (len(methods) + 2),
    ]
    for r, name in enumerate(names):
        sensitive = [split.attribute_names[i] for i in np.flatnonzero(requirements[r])]
        bb = (f"{np.mean([bb_auc[a]['auc'] for a in sensitive]):.3f} / "
              f"{np.mean([bb_unseen[a]['auc'] for a in sensitive]):.3f}" if sensitive else "- / -")
        cells = []
        for m in methods.values():
            block = m[name]
            auc = (f"{block['mean_auc']:.3f} / {block['mean_unseen_auc']:.3f}" if block["mean_auc"] is not None
                   else "- / -")
            cells.append(f"{auc} / {block['metrics']['ndcg@10']:.3f}")
        lines.append(f"| {name} | {bb} / {backbone_metrics['ndcg@10']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Training time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())]
    lines.append(f"SM / AFRL training time: {seconds['SM'] / seconds['AFRL']:.2f}")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    payload = {
        "config": args.config, "seed": seed, "seconds": seconds, "backbone_ndcg@10": backbone_metrics["ndcg@10"],
        "methods": {k: {n: {x: v[n][x] for x in ("sensitive", "metrics", "probe_auc", "mean_auc", "unseen_auc",
                                                  "mean_unseen_auc")} for n in names}
                    for k, v in methods.items()},
    }
    (out / "baselines.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
