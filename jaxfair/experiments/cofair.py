"""The Cofair experiment: train the backbone, then Cofair on its frozen embeddings; evaluate every fairness level next
to the retraining baseline (one adversarial model per fixed lambda).

Run by ``jaxfair train configs/cofair_pmf_ml100k.toml --out DIR`` (any config with a ``[cofair]`` section). Protocol
(the issue's, after the public code): every rating is a positive, each user's positives split 80/10/10 by time,
full ranking with the training (and for test, validation) positives masked; model selection on validation only.
Outputs in ``DIR``, next to ``split.npz``, ``config.json`` and ``users.csv``:

* ``results.json`` - per level ``0..T``: Recall/NDCG/Precision/HR@K, DP@K and EOpp@K
  (:mod:`jaxfair.metrics.exposure`), the probe AUC of the sensitive attribute with its bootstrap interval, and the
  fraction of probe-test users whose attacker loss decreases from each level to the next (by the level's probe and by
  Cofair's own discriminator); the same for each retraining-baseline model; training times of both methods;
* ``user_embeddings_level<t>.npy`` ``(U, d)`` - every user's test-time embedding at level ``t`` (level 0 is the
  backbone's), rows aligned with ``users.csv``;
* ``fairness_accuracy.png`` - Recall@K against DP@K and against probe AUC, Cofair's levels as a curve and the
  retraining baseline's models as points;
* ``checkpoints/cofair``, ``cofair_log.jsonl`` and, per baseline model, ``checkpoints/retrain<i>``.

Every level is evaluated in one ``jax.vmap`` over the adapter stack (:func:`level_report`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.common import pair_epoch
from jaxfair.config import ConfigError, from_dict, to_dict
from jaxfair.data.holdout import HoldoutSplit
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments.config import ExperimentConfig
from jaxfair.experiments.outputs import FULL_RANKING, format_table, run_header, write_figure, write_json, write_npy
from jaxfair.methods import cofair
from jaxfair.metrics.exposure import full_ranking_report
from jaxfair.metrics.probe import probe_attribute
from jaxfair.training.step import make_epoch_fn
from jaxfair.training.trainer import Task, TrainConfig, fit

SECTION = "cofair"


@dataclasses.dataclass(frozen=True)
class CofairSection(cofair.CofairConfig):
    """The ``[cofair]`` section: Cofair's hyper-parameters plus the retraining baseline.

    Attributes:
      retrain_baseline: also train one single-level adversarial model per lambda (the cost Cofair avoids).
      baseline_lambdas: the baseline's fixed lambdas; empty means the level weights ``lambda_1..lambda_T`` Cofair
        arrives at (Eq. 10 on the trained model's attacker losses over the training users).
    """

    retrain_baseline: bool = True
    baseline_lambdas: tuple[float, ...] = ()

    def method(self) -> cofair.CofairConfig:
        names = {f.name for f in dataclasses.fields(cofair.CofairConfig)}
        return cofair.CofairConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


# Probe stages whose users' labels Cofair never trains on, in every run (the same stages as AFRL's AUDIT_STAGES), so
# the final run is trained on the same labels as the settings sweep's runs (benchmarks/cofair_sweep.py).
WITHHELD = backbone_experiment.WITHHELD_STAGES

# Backbones whose scorer is the inner product <u, v>, which the exposure term (cofair.exposure_weight > 0) assumes.
INNER_PRODUCT_BACKBONES = ("pmf", "lightgcn", "sasrec", "bert4rec")


def section_config(config: ExperimentConfig) -> CofairSection:
    return from_dict(CofairSection, config.sections.get(SECTION), SECTION)


def check_attribute(split, attribute: str) -> None:
    """Raise ConfigError naming ``cofair.attribute`` unless the split has that user attribute."""
    if attribute not in split.user_attributes:
        raise ConfigError(
            f"{SECTION}.attribute: {attribute!r} is not a user attribute of this split (have {list(split.attribute_names)})"
        )


def cofair_data(split, user_vecs, item_vecs, attribute: str,
                withheld: tuple[str, ...] = WITHHELD) -> cofair.CofairData:
    """Cofair's constant inputs for ``attribute``; the labels of the probe users in ``withheld`` (by default
    :data:`WITHHELD`, the probe validation and test users) are not used. The exposure term (when on) masks each
    user's training positives, as validation ranking does."""
    check_attribute(split, attribute)
    return cofair.make_data(
        user_vecs, item_vecs, split.user_attributes[attribute], len(split.attribute_classes[attribute]),
        backbone_experiment.label_weight(split, withheld), exclude=split.exclude_matrix("valid"),
    )


def level_report(levels, item_vecs, score, targets, exclude, groups, num_groups: int,
                 ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """Full-ranking accuracy and exposure fairness of every level in one vmapped pass.

    Args:
      levels: ``(L, U, d)`` user embeddings per level, from :func:`jaxfair.methods.cofair.level_embeddings`.

    Returns:
      Metric name -> ``(L,)``.

    A single embedding set (``L = 1``) is reported without ``jax.vmap``: jax/jaxlib 0.10.2 on CPU miscompiles the
    scorer's ``sum(u[:, :, None, :] * v[None, None], -1)`` when the leading axis has size 1 (wrong scores, so
    recall 0 on MovieLens-100k; ``tests/test_exposure.py`` checks both paths against the direct report).
    """
    if levels.shape[0] == 1:
        one = full_ranking_report(score, levels[0], item_vecs, targets, exclude, groups, num_groups=num_groups, ks=ks)
        return {name: value[None] for name, value in one.items()}
    return jax.vmap(
        lambda u: full_ranking_report(score, u, item_vecs, targets, exclude, groups, num_groups=num_groups, ks=ks)
    )(levels)


def stage_arrays(split: HoldoutSplit, stage: str):
    """``(targets, exclude)`` bool ``(U, I)`` device arrays for ranking ``stage``."""
    return jnp.asarray(split.target_matrix(stage)), jnp.asarray(split.exclude_matrix(stage))


def train_cofair(split: HoldoutSplit, data: cofair.CofairData, score, method: cofair.CofairConfig, seed: int,
                 out_dir, log, valid_user_vecs, ks=(10, 20), name: str = "cofair"):
    """Fit Cofair with the shared trainer; early stopping on validation ``method.monitor`` at level ``T``: any
    full-ranking metric (``recall@10``, the public code's choice), ``dp@k``/``eopp@k``, or ``parity@k = 1 - DP@k``
    to keep the fairest epoch of the top level."""
    if not isinstance(score, jax.tree_util.Partial):
        score = jax.tree_util.Partial(score)
    targets, exclude = stage_arrays(split, "valid")
    groups = data.labels
    valid_user_vecs = jnp.asarray(valid_user_vecs)
    top = method.levels

    def validate(params):
        emb = cofair.user_embeddings_at_level(params, valid_user_vecs, top, method)
        report = full_ranking_report(score, emb, data.item_vecs, targets, exclude, groups,
                                     num_groups=data.num_classes, ks=tuple(ks))
        report = {k: float(v) for k, v in report.items()}
        # Higher-is-better names for the fairness gaps, so they can be monitored too.
        report.update({f"parity@{k}": 1.0 - report[f"dp@{k}"] for k in ks})
        return report

    task = Task(
        init_state=lambda key: cofair.init_state(key, data, method),
        epoch_batches=lambda rng: pair_epoch(split, rng, method.batch_size),
        run_epoch=make_epoch_fn(cofair.make_train_step(data, score, method)),
        validate=validate,
    )
    train_config = TrainConfig(epochs=method.epochs, batch_size=method.batch_size, learning_rate=method.learning_rate,
                               patience=method.patience, monitor=method.monitor, seed=seed)
    return fit(task, train_config, out_dir, log=log, name=name)


def final_lambdas(params, data: cofair.CofairData, method: cofair.CofairConfig) -> np.ndarray:
    """``lambda_1..lambda_T`` of Eq. (10) from the trained model's mean attacker losses over the labelled users."""
    adapted = cofair.adapted_embeddings(params["filter"], data.user_vecs, method)
    losses = cofair.weighted_mean(cofair.attacker_losses(params["D"], adapted, data.labels), data.label_weight)
    return np.asarray(cofair.adaptive_lambdas(losses, method.lambda0, method.alpha))


def attacker_loss_drops(per_user_losses: np.ndarray) -> list[float]:
    """Fraction of users whose attacker loss decreases from level ``t`` to ``t + 1``, for ``t = 0..L-2``.

    Args:
      per_user_losses: ``(L, n)`` attacker loss of each user at each level.
    """
    return [float(np.mean(per_user_losses[t + 1] < per_user_losses[t])) for t in range(per_user_losses.shape[0] - 1)]


def probe_levels(embeddings: np.ndarray, split, attribute: str, key, probe_config) -> tuple[list[dict], np.ndarray]:
    """A fresh probe per embedding set ``(L, U, d)``; returns the probe results and the per-user probe losses
    ``(L, n_test)`` on the probe test users."""
    labels = split.user_attributes[attribute]
    num_classes = len(split.attribute_classes[attribute])
    test_labels = labels[split.probe_users["test"]]
    results, losses = [], []
    for level, emb in enumerate(embeddings):
        result = probe_attribute(emb, labels, split.probe_users, num_classes, jax.random.fold_in(key, level),
                                 probe_config, return_test_proba=True)
        proba = result.pop("test_proba")
        losses.append(-np.log(np.clip(proba[np.arange(len(test_labels)), test_labels], 1e-12, None)))
        results.append(result)
    return results, np.stack(losses)


def discriminator_losses(params, data: cofair.CofairData, user_vecs, users, method) -> np.ndarray:
    """Cofair's own discriminator's per-user loss ``(T + 1, n)`` at every level for ``users``."""
    levels = cofair.level_embeddings(params["filter"], jnp.asarray(user_vecs)[users], method)
    return np.asarray(cofair.attacker_losses(params["D"], levels, data.labels[users]))


def run(config: ExperimentConfig, out_dir, log: Callable[[str], None] = print) -> dict:
    """Backbone, Cofair, the retraining baseline, evaluation of every level, probes, and every output file."""
    section = section_config(config)
    method = section.method()
    if config.data.split == "leave_one_out":
        raise ConfigError("data.split: Cofair is evaluated by full ranking of a ratio split; set split = "
                          "\"temporal_ratio\" (the Cofair protocol) or \"random_ratio\"")
    if section.exposure_weight > 0 and config.backbone_name not in INNER_PRODUCT_BACKBONES:
        raise ConfigError(f"{SECTION}.exposure_weight: the exposure term scores items by inner product, which "
                          f"backbone {config.backbone_name!r} does not; use one of {list(INNER_PRODUCT_BACKBONES)} "
                          "or set it to 0")
    out_dir, split, timings = backbone_experiment.start_run(config, out_dir, log)
    check_attribute(split, section.attribute)

    tick = time.perf_counter()
    frozen = backbone_experiment.frozen_backbone(split, config, out_dir, log)
    user_vecs, item_vecs, score = frozen.user_vecs, frozen.item_vecs, frozen.score
    data = cofair_data(split, user_vecs["valid"], item_vecs, section.attribute)
    timings["backbone_seconds"] = time.perf_counter() - tick

    ks = tuple(config.evaluate.ks)
    tick = time.perf_counter()
    fit_result = train_cofair(split, data, score, method, config.train.seed, out_dir, log, user_vecs["valid"], ks)
    timings["cofair_seconds"] = time.perf_counter() - tick
    params = fit_result.best_params

    key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
    test_targets, test_exclude = stage_arrays(split, "test")
    tick = time.perf_counter()
    level_vecs = cofair.level_embeddings(params["filter"], user_vecs["test"], method)
    report = level_report(level_vecs, item_vecs, score, test_targets, test_exclude, data.labels, data.num_classes, ks)
    level_vecs = np.asarray(level_vecs)
    probes, probe_losses = probe_levels(level_vecs, split, section.attribute, key, config.probe)
    disc_losses = discriminator_losses(params, data, user_vecs["test"], split.probe_users["test"], method)
    timings["evaluate_seconds"] = time.perf_counter() - tick
    for level, emb in enumerate(level_vecs):
        write_npy(out_dir / f"user_embeddings_level{level}.npy", emb)

    levels = [
        {
            "level": t,
            "metrics": {k: float(v[t]) for k, v in report.items()},
            "probe_auc": probes[t]["auc"],
            "probe_auc_ci": probes[t]["auc_ci"],
            "probe_valid_auc": probes[t]["valid_auc"],
        }
        for t in range(method.levels + 1)
    ]
    lambdas = final_lambdas(params, data, method)
    baseline = None
    if section.retrain_baseline:
        baseline = retraining_baseline(
            split, data, score, method, section.baseline_lambdas or tuple(float(x) for x in lambdas),
            config, out_dir, log, user_vecs, item_vecs, key,
        )
        timings["retrain_seconds"] = baseline["seconds"]

    results = {
        **run_header(split, config, "full", FULL_RANKING),
        "attribute": section.attribute,
        "withheld_labels": backbone_experiment.withheld_labels(WITHHELD),
        "backbone": {"name": config.backbone_name, "best_epoch": frozen.fit.best_epoch},
        "cofair": {
            "config": to_dict(section),
            "best_epoch": fit_result.best_epoch,
            "epochs_run": fit_result.epochs_run,
            "train_seconds": timings["cofair_seconds"],
            "final_lambdas": [float(x) for x in lambdas],
            "levels": levels,
            "attacker_loss_drop_fraction": {
                "probe": attacker_loss_drops(probe_losses),
                "discriminator": attacker_loss_drops(disc_losses),
                "description": "fraction of probe-test users whose attacker loss decreases from level t to t+1, "
                               "t = 0..T-1 (lower is better)",
            },
        },
        "retrain_baseline": baseline,
        "timings": timings,
        "config": config.to_dict(),
    }
    write_json(out_dir / "results.json", results)
    write_figure(out_dir / "fairness_accuracy.png", curve_figure(results, ks[0]))
    log(results_table(results, ks[0]))
    return results


def retraining_baseline(split, data, score, method, lambdas, config, out_dir, log, user_vecs, item_vecs, key) -> dict:
    """One single-level adversarial model per fixed lambda (``levels = 1``, ``alpha = beta = 0``), each trained from
    scratch with Cofair's own loop and evaluated like a level."""
    test_targets, test_exclude = stage_arrays(split, "test")
    models, total = [], 0.0
    for i, lam in enumerate(lambdas):
        single = dataclasses.replace(method, levels=1, lambda0=float(lam), alpha=0.0, beta=0.0)
        tick = time.perf_counter()
        fit_result = train_cofair(split, data, score, single, config.train.seed, out_dir, log, user_vecs["valid"],
                                  tuple(config.evaluate.ks), name=f"retrain{i}")
        seconds = time.perf_counter() - tick
        total += seconds
        levels = cofair.level_embeddings(fit_result.best_params["filter"], user_vecs["test"], single)
        report = level_report(levels, item_vecs, score, test_targets, test_exclude, data.labels, data.num_classes,
                              tuple(config.evaluate.ks))
        emb = np.asarray(levels[1])
        probe = probe_attribute(emb, split.user_attributes[method.attribute], split.probe_users,
                                data.num_classes, jax.random.fold_in(key, 100 + i), config.probe)
        models.append({
            "lambda": float(lam),
            "metrics": {k: float(v[1]) for k, v in report.items()},
            "probe_auc": probe["auc"],
            "probe_auc_ci": probe["auc_ci"],
            "best_epoch": fit_result.best_epoch,
            "train_seconds": seconds,
        })
    return {"models": models, "seconds": total}


def curve_figure(results: dict, k: int = 10):
    """Recall@k against DP@k and against probe AUC: Cofair's levels as a line, baseline models as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["cofair"]["levels"]
    baseline = (results.get("retrain_baseline") or {}).get("models", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (label, get) in zip(axes, ((f"DP@{k} (JS distance)", lambda m: m["metrics"][f"dp@{k}"]),
                                       ("probe AUC", lambda m: m["probe_auc"]))):
        xs = [get(m) for m in levels]
        ys = [m["metrics"][f"recall@{k}"] for m in levels]
        ax.plot(xs, ys, "o-", label="Cofair levels 0..T")
        for m, x, y in zip(levels, xs, ys):
            ax.annotate(str(m["level"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if baseline:
            ax.scatter([get(m) for m in baseline], [m["metrics"][f"recall@{k}"] for m in baseline], marker="s",
                       color="tab:red", label="retraining, one model per lambda")
        ax.set_xlabel(label + " (lower is fairer)")
        ax.set_ylabel(f"Recall@{k}")
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['dataset']} / {results['backbone']['name']} / {results['attribute']}: test users")
    fig.tight_layout()
    return fig


def results_table(results: dict, k: int = 10) -> str:
    """Per level (and per baseline model): Recall@k, NDCG@k, DP@k, EOpp@k, probe AUC."""
    rows = []
    for m in results["cofair"]["levels"]:
        rows.append({"model": f"cofair level {m['level']}", **_row(m, k)})
    for m in (results.get("retrain_baseline") or {}).get("models", []):
        rows.append({"model": f"retrain lambda={m['lambda']:.4g}", **_row(m, k)})
    drops = results["cofair"]["attacker_loss_drop_fraction"]
    title = (f"{results['dataset']} / {results['backbone']['name']} / {results['attribute']} / full ranking, test users;"
             " AUC 0.5 and DP 0 = fair\n")
    footer = ("\nusers whose attacker loss drops from level t to t+1 (probe): "
              + ", ".join(f"{t}->{t + 1}: {f:.2f}" for t, f in enumerate(drops["probe"])))
    return title + format_table(rows, list(rows[0])) + footer


def _row(m: dict, k: int) -> dict:
    return {
        f"recall@{k}": m["metrics"][f"recall@{k}"],
        f"ndcg@{k}": m["metrics"][f"ndcg@{k}"],
        f"dp@{k}": m["metrics"][f"dp@{k}"],
        f"eopp@{k}": m["metrics"][f"eopp@{k}"],
        "probe auc": m["probe_auc"],
    }
