"""The AFRL experiment: train the backbone, then AFRL on its frozen embeddings; evaluate every fairness requirement.

Run by ``jaxfair train configs/afrl_pmf_ml100k.toml --out DIR`` (any config with an ``[afrl]`` section). Outputs in
``DIR``, on top of the backbone experiment's ``split.npz``, ``config.json`` and ``users.csv``:

* ``results.json`` - per requirement (``none``, ``G``, ``A``, ``O``, ``G+A``, ``G+O``, ``A+O``, ``G+A+O``): sampled
  protocol NDCG@K and HR@K, the probe AUC of each sensitive attribute on the fair embeddings and their mean (the
  paper's Table 2 column), the same AUC from the *unseen-user audit* (below); the same for the backbone; per-stage
  timings;
* ``user_embeddings_<requirement>.npy`` ``(U, d)`` - the fair test-time embeddings of every user under each
  requirement, rows aligned with ``users.csv``; ``user_embeddings_backbone.npy`` for the unfair starting point;
* ``checkpoints/afrl`` and ``afrl_log.jsonl``.

All requirements are evaluated in one ``jax.vmap`` over the requirement axis.

Two leakage measures, because AFRL trains against attribute labels. AFRL never uses the labels of the probe
validation and probe test users (``AUDIT_STAGES``).

* The *standard probe* (:func:`~jaxfair.metrics.probe.probe_attribute`) is fitted on the probe training users,
  whose labels AFRL did train against, selected on the validation users and scored on the test users.
* The *unseen-user audit* (:func:`~jaxfair.metrics.probe.cross_fitted_probe`) fits, selects and scores its probes
  only on the validation and test users, by 5-fold cross-fitting.

When AFRL changes the encoding of the users whose labels it saw in a way that does not carry over to the others,
the standard probe learns the wrong rule and reports little (or reversed) leakage while the audit still sees it; on
MovieLens-100k the two differ (README, AFRL section).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.config import from_dict, to_dict
from jaxfair.data.dataset import Split
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments.config import ExperimentConfig
from jaxfair.experiments.outputs import format_table, run_header, write_json, write_npy
from jaxfair.methods import afrl
from jaxfair.methods import requirements as requirements_lib
from jaxfair.metrics.probe import cross_fitted_probe, probe_attribute

SECTION = "afrl"
AUDIT_STAGES = backbone_experiment.WITHHELD_STAGES  # probe stages whose users' labels AFRL never trains on


def method_config(config: ExperimentConfig) -> afrl.AFRLConfig:
    return from_dict(afrl.AFRLConfig, config.sections.get(SECTION), SECTION)


def audit_users(split: Split, withheld: tuple[str, ...] = AUDIT_STAGES) -> np.ndarray:
    """int ``(n,)``: the probe users of the ``withheld`` stages, whose labels AFRL never saw (the audit's users)."""
    return np.sort(np.concatenate([np.asarray(split.probe_users[stage]) for stage in withheld]))


def afrl_data(split: Split, user_vecs: jax.Array, item_vecs: jax.Array,
              withheld: tuple[str, ...] = AUDIT_STAGES) -> afrl.AFRLData:
    """AFRL's constant inputs; the attribute labels of the probe users in ``withheld`` (the probe validation and
    test users) are not used."""
    names = split.attribute_names
    labels = np.stack([split.user_attributes[n] for n in names], axis=1)
    num_classes = tuple(len(split.attribute_classes[n]) for n in names)
    return afrl.make_data(user_vecs, item_vecs, labels, num_classes,
                          backbone_experiment.label_weight(split, withheld))


def requirement_metrics(params, score, user_vecs, item_vecs, targets, negatives, requirements, *, config, ks):
    """AFRL's sampled-protocol metrics of every requirement in one vmapped pass (metric name -> ``(K,)``)."""
    return requirements_lib.requirement_metrics(
        params, score, user_vecs, item_vecs, targets, negatives, requirements,
        config=config, ks=tuple(ks), embed=afrl.fair_user_embeddings,
    )


def train_afrl(split, data, score, method: afrl.AFRLConfig, seed: int, out_dir, log, valid_user_vecs, ks=(10,)):
    """Fit AFRL with the shared trainer; early stopping on the mean validation NDCG@10 over all requirements."""
    return requirements_lib.fit_method(
        split,
        init_state=lambda key: afrl.init_state(key, data, method),
        train_step=afrl.make_train_step(data, score, method),
        embed=afrl.fair_user_embeddings,
        config=method,
        requirements=afrl.all_requirements(data.labels.shape[1]),
        score=score, valid_user_vecs=valid_user_vecs, item_vecs=data.item_vecs, seed=seed, out_dir=out_dir, log=log,
        name="afrl", ks=ks,
    )


def probe_requirements(embeddings_by_req: dict[str, np.ndarray], requirements: np.ndarray, split: Split, key, config,
                       unseen_users=None, standard: bool = True, audit_key_offset: int = 100):
    """Probe AUC of each sensitive attribute on each requirement's fair embeddings, and their mean (Table 2).

    With ``unseen_users`` (int ``(n,)``), also the unseen-user audit of each attribute (``unseen_auc``, a
    :func:`~jaxfair.metrics.probe.cross_fitted_probe` result) and their mean (``mean_unseen_auc``). Attribute ``i``'s
    standard probe draws its randomness from ``fold_in(key, i)`` and its audit from ``fold_in(key,
    audit_key_offset + i)``. ``standard=False`` runs the audit alone (``auc`` is then empty, ``mean_auc`` None).
    """
    names = split.attribute_names
    out = {}
    for r, (req_name, embeddings) in enumerate(embeddings_by_req.items()):
        per_attr, unseen = {}, {}
        for i in np.flatnonzero(requirements[r]):
            name = names[i]
            labels, num_classes = split.user_attributes[name], len(split.attribute_classes[name])
            if standard:
                per_attr[name] = probe_attribute(
                    embeddings, labels, split.probe_users, num_classes, jax.random.fold_in(key, i), config,
                )
            if unseen_users is not None:
                unseen[name] = cross_fitted_probe(
                    embeddings, labels, unseen_users, num_classes, jax.random.fold_in(key, audit_key_offset + i),
                    config,
                )
        out[req_name] = {
            "auc": per_attr,
            "mean_auc": float(np.mean([v["auc"] for v in per_attr.values()])) if per_attr else None,
            "unseen_auc": unseen,
            "mean_unseen_auc": float(np.mean([v["auc"] for v in unseen.values()])) if unseen else None,
        }
    return out


def evaluate_requirements(params, method, split: Split, user_vecs, item_vecs, score, ks, probe_config, key) -> dict:
    """Test-time evaluation of every AFRL requirement; see :func:`evaluate_embeddings`."""
    requirements = afrl.all_requirements(len(split.attribute_names))
    fair = afrl.fair_embeddings_all_requirements(params, user_vecs, jnp.asarray(requirements), method)
    return evaluate_embeddings(np.asarray(fair), requirements, split, user_vecs, item_vecs, score, ks, probe_config, key)


def evaluate_embeddings(fair, requirements, split: Split, user_vecs, item_vecs, score, ks, probe_config, key) -> dict:
    """Sampled-protocol metrics (one vmapped pass) and probes of one embedding set per requirement.

    Args:
      fair: ``(K, U, d)`` test-time fair user embeddings, row ``k`` serving ``requirements[k]`` (bool ``(K, M)``).
      user_vecs: ``(U, d)`` test-time backbone user embeddings, probed too for reference.

    Returns:
      ``{"requirements": {name: {"sensitive", "metrics", "probe_auc", "probe_auc_ci", "probe_valid_auc",
      "mean_auc", "unseen_auc", "unseen_auc_ci", "mean_unseen_auc"}}, "embeddings": {name: (U, d)},
      "backbone_probe": {attribute: probe result}, "backbone_unseen": {attribute: audit result}}``; the audit
      (``unseen_*``) runs on :func:`audit_users`.
    """
    names = [afrl.requirement_name(r, split.attribute_names) for r in requirements]
    metrics = requirements_lib.embedding_metrics(
        score, jnp.asarray(fair), item_vecs, jnp.asarray(split.test_items), jnp.asarray(split.test_negatives),
        ks=tuple(ks),
    )
    everything = np.ones((1, len(split.attribute_names)), bool)
    unseen_users = audit_users(split)
    backbone_probe = probe_requirements({"backbone": np.asarray(user_vecs)}, everything, split, key, probe_config,
                                        unseen_users)
    probes = probe_requirements(dict(zip(names, fair)), requirements, split, key, probe_config, unseen_users)
    per_requirement = {}
    for r, name in enumerate(names):
        per_attr = probes[name]["auc"]
        per_requirement[name] = {
            "sensitive": [split.attribute_names[i] for i in np.flatnonzero(requirements[r])],
            "metrics": {k: float(v[r]) for k, v in metrics.items()},
            "probe_auc": {a: p["auc"] for a, p in per_attr.items()},
            "probe_auc_ci": {a: p["auc_ci"] for a, p in per_attr.items()},
            "probe_valid_auc": {a: p["valid_auc"] for a, p in per_attr.items()},
            "mean_auc": probes[name]["mean_auc"],
            "unseen_auc": {a: p["auc"] for a, p in probes[name]["unseen_auc"].items()},
            "unseen_auc_ci": {a: p["auc_ci"] for a, p in probes[name]["unseen_auc"].items()},
            "mean_unseen_auc": probes[name]["mean_unseen_auc"],
        }
    return {
        "requirements": per_requirement,
        "embeddings": dict(zip(names, fair)),
        "backbone_probe": backbone_probe["backbone"]["auc"],
        "backbone_unseen": backbone_probe["backbone"]["unseen_auc"],
    }


def run(config: ExperimentConfig, out_dir, log: Callable[[str], None] = print) -> dict:
    """Backbone, AFRL, evaluation of every requirement, probes, and every output file."""
    method = method_config(config)
    out_dir, split, timings = backbone_experiment.start_run(config, out_dir, log)

    tick = time.perf_counter()
    frozen = backbone_experiment.frozen_backbone(split, config, out_dir, log)
    backbone, bb_params, bb_fit = frozen.backbone, frozen.params, frozen.fit
    user_vecs, item_vecs, score = frozen.user_vecs, frozen.item_vecs, frozen.score
    data = afrl_data(split, user_vecs["valid"], item_vecs)
    timings["backbone_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    afrl_fit = train_afrl(split, data, score, method, config.train.seed, out_dir, log, user_vecs["valid"])
    timings["afrl_seconds"] = time.perf_counter() - tick
    timings["afrl_epochs"] = afrl_fit.epochs_run

    tick = time.perf_counter()
    evaluation = evaluate_requirements(
        afrl_fit.best_params, method, split, user_vecs["test"], item_vecs, score, config.evaluate.ks, config.probe,
        jax.random.fold_in(jax.random.key(config.train.seed), 1),
    )
    backbone_metrics = backbone_experiment.evaluate_ranking(
        lambda u, v: backbone.score(bb_params, u, v), user_vecs, item_vecs, split,
        dataclasses.replace(config.evaluate, protocols=("sampled",)),
    )["sampled"]["test"]
    timings["evaluate_and_probe_seconds"] = time.perf_counter() - tick

    write_npy(out_dir / "user_embeddings_backbone.npy", np.asarray(user_vecs["test"]))
    for name, embeddings in evaluation["embeddings"].items():
        write_npy(out_dir / f"user_embeddings_{name}.npy", embeddings)
    per_requirement = evaluation["requirements"]
    backbone_probe = evaluation["backbone_probe"]
    results = {
        **run_header(split, config, "sampled",
                     f"target ranked among {split.test_negatives.shape[1]} fixed sampled negatives"),
        "backbone": {
            "name": config.backbone_name,
            "metrics": backbone_metrics,
            "probe_auc": {a: p["auc"] for a, p in backbone_probe.items()},
            "unseen_auc": {a: p["auc"] for a, p in evaluation["backbone_unseen"].items()},
            "best_epoch": bb_fit.best_epoch,
        },
        "afrl": {
            "config": to_dict(method),
            "withheld_labels": backbone_experiment.withheld_labels(AUDIT_STAGES),
            "best_epoch": afrl_fit.best_epoch,
            "epochs_run": afrl_fit.epochs_run,
            "requirements": per_requirement,
        },
        "timings": timings,
        "config": config.to_dict(),
    }
    write_json(out_dir / "results.json", results)
    log(results_table(results, config.evaluate.ks[0]))
    return results


def results_table(results: dict, k: int = 10) -> str:
    """The paper's Table 2 layout: per requirement, mean probe AUC of the sensitive attributes (standard probe and
    unseen-user audit), NDCG@k, HR@k."""
    backbone = results["backbone"]
    rows = []
    for name, block in results["afrl"]["requirements"].items():
        bb_auc = [backbone["probe_auc"][a] for a in block["sensitive"]]
        bb_unseen = [backbone["unseen_auc"][a] for a in block["sensitive"]]
        rows.append(
            {
                "requirement": name,
                "backbone auc": float(np.mean(bb_auc)) if bb_auc else "-",
                "afrl auc": block["mean_auc"] if block["mean_auc"] is not None else "-",
                "backbone unseen auc": float(np.mean(bb_unseen)) if bb_unseen else "-",
                "afrl unseen auc": block["mean_unseen_auc"] if block["mean_unseen_auc"] is not None else "-",
                f"backbone ndcg@{k}": backbone["metrics"][f"ndcg@{k}"],
                f"afrl ndcg@{k}": block["metrics"][f"ndcg@{k}"],
                f"backbone hr@{k}": backbone["metrics"][f"hr@{k}"],
                f"afrl hr@{k}": block["metrics"][f"hr@{k}"],
            }
        )
    title = (f"{results['dataset']} / {results['backbone']['name']} / sampled protocol (test users); "
             "AUC 0.5 = no leak; unseen = audit probes fitted and scored only on users whose labels AFRL never saw\n")
    return title + format_table(rows, list(rows[0]))
