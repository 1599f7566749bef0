"""AFRL's lambda sweep: the fairness-accuracy Pareto front over the paper's lambda grid, one backbone for all lambdas.

    python benchmarks/afrl_lambda_sweep.py configs/afrl_pmf_ml100k.toml --out benchmarks/results/afrl_lambda_sweep
    python benchmarks/afrl_lambda_sweep.py configs/afrl_pmf_ml100k.toml --set aggregator_residual=true \
        --out benchmarks/results/afrl_lambda_sweep_residual

For every lambda in ``--lams`` (default: the paper's {0.001, 0.01, 0.1, 1, 10, 100}) AFRL is trained on the same
frozen backbone with everything else from the config, and every non-empty requirement is evaluated. Writes
``sweep.json`` (per lambda: mean validation and test NDCG@10 over the non-empty requirements, mean probe AUC of the
sensitive attributes on the probe validation and test users, the unseen-user audit's mean AUC
(:mod:`jaxfair.experiments.afrl`), per-requirement details) and ``pareto.png`` (mean test probe AUC and mean audit
AUC against mean test NDCG@10, one point per lambda, the backbone as reference).

Selection uses validation data only: among the lambdas whose mean validation NDCG@10 is at least
``--min-accuracy`` (0.9) times the backbone's, the one whose mean *validation* probe AUC is closest to 0.5. AFRL is
trained here without the labels of the probe-validation users (as well as the probe-test users'), so that
validation AUC scores users whose attributes AFRL never saw.

That validation AUC still comes from a probe *fitted* on the probe-training users, whose labels AFRL trained
against, so it can be fooled the way the standard test probe is (see the README). Each point therefore also carries
``valid_audit_auc``: the mean over the non-empty requirements of a cross-fitted probe
(:func:`jaxfair.metrics.probe.cross_fitted_probe`) fitted, selected and scored on the probe-validation users alone,
on their validation-time fair embeddings, so no label AFRL saw and no test user is involved. ``--select audit``
chooses by it (closest to 0.5 among the same admissible lambdas); the default, ``--select standard``, is the rule
above. Both choices are written to ``sweep.json``.
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
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments import runner
from jaxfair.methods import afrl

PAPER_LAMBDAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def mean_over_requirements(block: dict, key) -> float:
    values = [key(req) for name, req in block.items() if name != "none"]
    return float(np.mean(values))


def parse_overrides(items: list[str]) -> dict:
    """``["aggregator_residual=true", "adversary=confusion"]`` -> ``{"aggregator_residual": True, ...}`` (values
    read as JSON where they parse, else kept as strings)."""
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE")
        try:
            out[field] = json.loads(value)
        except json.JSONDecodeError:
            out[field] = value
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--lams", type=float, nargs="+", default=PAPER_LAMBDAS)
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override [afrl] fields, e.g. --set aggregator_residual=true adversary=confusion")
    parser.add_argument("--select", choices=["standard", "audit"], default="standard",
                        help="validation AUC the rule reads: the standard probe's or the validation-only audit's")
    parser.add_argument("--out", default="benchmarks/results/afrl_lambda_sweep")
    args = parser.parse_args(argv)

    config = runner.load(args.config, seed=args.seed)
    method = dataclasses.replace(afrl_experiment.method_config(config), **parse_overrides(args.set))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda message: None

    split = backbone_experiment.load_split(config.data, print)
    frozen = backbone_experiment.frozen_backbone(split, config, None, quiet)
    backbone, params, user_vecs, item_vecs = frozen.backbone, frozen.params, frozen.user_vecs, frozen.item_vecs
    # Without the probe-validation users' labels too: the selection AUC then scores users whose attributes AFRL
    # never saw, as the test AUC does.
    score = frozen.score
    data = afrl_experiment.afrl_data(split, user_vecs["valid"], item_vecs, withheld=afrl_experiment.AUDIT_STAGES)
    backbone_valid = backbone_experiment.evaluate_ranking(
        lambda u, v: backbone.score(params, u, v), user_vecs, item_vecs, split,
        dataclasses.replace(config.evaluate, protocols=("sampled",)), ("valid", "test"),
    )["sampled"]
    key = jax.random.fold_in(jax.random.key(config.train.seed), 1)

    points = []
    for lam in args.lams:
        tick = time.perf_counter()
        swept = dataclasses.replace(method, lam=lam)
        fit = afrl_experiment.train_afrl(split, data, score, swept, config.train.seed, None, quiet, user_vecs["valid"])
        requirements = jnp.asarray(afrl.all_requirements(len(split.attribute_names)))
        valid = afrl_experiment.requirement_metrics(
            fit.best_params, score, user_vecs["valid"], item_vecs, jnp.asarray(split.valid_items),
            jnp.asarray(split.valid_negatives), requirements, config=swept, ks=(10,),
        )
        evaluation = afrl_experiment.evaluate_requirements(
            fit.best_params, swept, split, user_vecs["test"], item_vecs, score, (10,), config.probe, key
        )
        reqs = evaluation["requirements"]
        valid_fair = afrl.fair_embeddings_all_requirements(fit.best_params, user_vecs["valid"], requirements, swept)
        point = {
            "lam": lam,
            "valid_ndcg@10": float(np.mean(np.asarray(valid["ndcg@10"])[1:])),
            "test_ndcg@10": mean_over_requirements(reqs, lambda r: r["metrics"]["ndcg@10"]),
            "valid_probe_auc": mean_over_requirements(reqs, lambda r: np.mean(list(r["probe_valid_auc"].values()))),
            "test_probe_auc": mean_over_requirements(reqs, lambda r: r["mean_auc"]),
            "unseen_audit_auc": mean_over_requirements(reqs, lambda r: r["mean_unseen_auc"]),
            "valid_audit_auc": valid_audit(np.asarray(valid_fair), np.asarray(requirements), split, key, config.probe),
            "seconds": time.perf_counter() - tick,
            "requirements": reqs,
        }
        points.append(point)
        print(
            f"lambda {lam:g}: valid ndcg@10 {point['valid_ndcg@10']:.4f} test ndcg@10 {point['test_ndcg@10']:.4f} "
            f"valid auc {point['valid_probe_auc']:.4f} test auc {point['test_probe_auc']:.4f} "
            f"unseen audit auc {point['unseen_audit_auc']:.4f} valid audit auc {point['valid_audit_auc']:.4f} "
            f"({point['seconds']:.0f}s)"
        )

    floor = args.min_accuracy * backbone_valid["valid"]["ndcg@10"]
    eligible = [p for p in points if p["valid_ndcg@10"] >= floor] or points
    choices = {rule: min(eligible, key=lambda p, k=k: abs(p[k] - 0.5))["lam"]
               for rule, k in (("standard", "valid_probe_auc"), ("audit", "valid_audit_auc"))}
    chosen = next(p for p in points if p["lam"] == choices[args.select])
    bb_probe = evaluation["backbone_probe"]  # the same statistic as the AFRL points, on the backbone's embeddings
    backbone_auc = mean_over_requirements(
        evaluation["requirements"], lambda r: np.mean([bb_probe[a]["auc"] for a in r["sensitive"]])
    )
    bb_unseen = evaluation["backbone_unseen"]
    backbone_unseen = mean_over_requirements(
        evaluation["requirements"], lambda r: np.mean([bb_unseen[a]["auc"] for a in r["sensitive"]])
    )
    summary = {
        "config": args.config,
        "overrides": parse_overrides(args.set),
        "seed": config.train.seed,
        "backbone": {"valid_ndcg@10": backbone_valid["valid"]["ndcg@10"], "test_ndcg@10": backbone_valid["test"]["ndcg@10"],
                     "test_probe_auc": backbone_auc, "unseen_audit_auc": backbone_unseen},
        "selection_rule": f"valid ndcg@10 >= {args.min_accuracy} x backbone, then valid probe AUC closest to 0.5",
        "select": args.select,
        "withheld_labels": backbone_experiment.withheld_labels(afrl_experiment.AUDIT_STAGES),
        "chosen_lam": chosen["lam"],
        "chosen_by_rule": choices,
        "points": points,
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(points, summary, out / "pareto.png")
    print(f"chosen lambda (validation only, {args.select} rule): {chosen['lam']:g} (standard rule "
          f"{choices['standard']:g}, audit rule {choices['audit']:g}); wrote {out / 'sweep.json'} and "
          f"{out / 'pareto.png'}")


def valid_audit(fair: np.ndarray, requirements: np.ndarray, split, key, probe_config) -> float:
    """Mean over the non-empty requirements of the mean, over their sensitive attributes, of a cross-fitted probe's
    AUC on the probe-validation users only (``fair``: ``(K, U, d)`` validation-time fair embeddings)."""
    audits = afrl_experiment.probe_requirements(
        dict(enumerate(fair)), requirements, split, key, probe_config,
        unseen_users=np.asarray(split.probe_users["valid"]), standard=False, audit_key_offset=200,
    )
    return float(np.mean([a["mean_unseen_auc"] for a in audits.values() if a["mean_unseen_auc"] is not None]))


def plot(points, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [p["test_probe_auc"] for p in points]
    ys = [p["test_ndcg@10"] for p in points]
    ax.plot(xs, ys, "o-", label="AFRL, standard probe")
    ax.plot([p["unseen_audit_auc"] for p in points], ys, "s--", color="tab:orange", label="AFRL, unseen-user audit")
    for p in points:
        ax.annotate(f"{p['lam']:g}", (p["test_probe_auc"], p["test_ndcg@10"]), textcoords="offset points", xytext=(4, 4))
    bb = summary["backbone"]
    ax.scatter([bb["test_probe_auc"]], [bb["test_ndcg@10"]], marker="*", s=150, color="k", label="backbone, standard")
    ax.scatter([bb["unseen_audit_auc"]], [bb["test_ndcg@10"]], marker="*", s=150, color="tab:orange",
               label="backbone, audit")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("mean AUC of the sensitive attributes")
    ax.set_ylabel("mean NDCG@10, sampled protocol (test)")
    ax.set_title("AFRL fairness-accuracy front over lambda")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
