"""Personalised fairness requirements: what AFRL, SM, the FFVAE baseline and the no-op method share.

A *requirement* is a bool ``(M,)`` mask over the user attributes, True where the attribute must not influence the
user's recommendations. A method of this family serves ``embed(params, user_vecs (U, d), sensitive, config) ->
(U, d)`` fair user embeddings, scored by the frozen backbone's own scorer.

* :func:`all_requirements` and :func:`requirement_name` enumerate and name the ``2^M`` requirements;
* :func:`requirement_metrics` / :func:`embedding_metrics`: sampled-protocol metrics of every requirement in one
  ``jax.vmap``;
* :func:`requirement_model`: the :class:`~jaxfair.methods.base.Model` of a method trained on BPR rows of the split,
  validated by the mean validation metric over its requirements;
* :func:`evaluate_requirements`: the family's evaluation (module docstring of :mod:`jaxfair.methods.afrl`): per
  requirement the test NDCG/HR, the standard probe and the unseen-user audit of each sensitive attribute, the
  backbone's as reference, and the validation numbers a sweep selects on; :func:`requirements_report` prints it;
* :func:`requirement_method`: the whole :class:`~jaxfair.methods.base.Method` of a family member that is one model
  serving every requirement (AFRL, the FFVAE baseline), from its state, step and serving functions.
"""

from __future__ import annotations

import dataclasses

import functools
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones.base import padded_batches
from jaxfair.data.sampling import bpr_pairs
from jaxfair.methods.adversaries import split_attribute_data
from jaxfair.methods.base import (Evaluation, Method, Model, audit_users, interval_columns, require,
                                  withheld_labels)
from jaxfair.metrics.probe import cross_fitted_probe, probe_attribute
from jaxfair.metrics.ranking import split_ranking, target_rank_metrics
from jaxfair.tables import format_table
from jaxfair.training.trainer import TrainConfig


# The loop AFRL's baselines (SM, FFVAE) default to: the AFRL config's own loop.
BASELINE_TRAIN = TrainConfig(learning_rate=1e-3, batch_size=256, epochs=15, patience=5, monitor="ndcg@10")


def all_requirements(num_attributes: int) -> np.ndarray:
    """Every fairness requirement, bool ``(2^M, M)``: the empty one first, then by size, e.g. for (G, A, O):
    none, G, A, O, G+A, G+O, A+O, G+A+O."""
    rows = [np.zeros(num_attributes, bool)]
    for size in range(1, num_attributes + 1):
        for combo in itertools.combinations(range(num_attributes), size):
            row = np.zeros(num_attributes, bool)
            row[list(combo)] = True
            rows.append(row)
    return np.stack(rows)


def requirement_name(sensitive: np.ndarray, attribute_names: tuple[str, ...]) -> str:
    """``"G+A"``-style name from the attributes' initials (``"none"`` for the empty requirement)."""
    picked = [attribute_names[i][0].upper() for i in np.flatnonzero(sensitive)]
    return "+".join(picked) if picked else "none"


def monitor_cutoff(monitor: str) -> int:
    """The cut-off of a monitored metric name: ``"ndcg@10"`` -> 10."""
    return int(monitor.rsplit("@", 1)[1])


def _candidates(item_vecs, targets, negatives):
    """``(U, 1 + N, d)``: each user's target item's vector, then its negatives'."""
    return item_vecs[jnp.concatenate([targets[:, None], negatives], axis=1)]


def _sampled_means(score, u_star, cand_vecs, ks):
    return {k: jnp.mean(v) for k, v in target_rank_metrics(score(u_star[:, None, :], cand_vecs), ks).items()}


@functools.partial(jax.jit, static_argnames=("config", "ks", "embed", "mean"))
def requirement_metrics(params, score, user_vecs, item_vecs, targets, negatives, requirements, *, config, ks, embed,
                        mean=False):
    """Sampled-protocol metrics of every requirement in one vmapped pass.

    Args:
      params: the method's parameters; score: the backbone scorer as a ``jax.tree_util.Partial`` (its parameters
        are traced, so one compilation serves every call).
      user_vecs: ``(U, d)`` backbone user embeddings; item_vecs: ``(I, d)``.
      targets: int ``(U,)``; negatives: int ``(U, N)``; requirements: bool ``(K, M)``.
      config: the method's (hashable) config; ks: cut-offs; embed: the method's serving function.
      mean: also average over the requirements (the validation monitor), in the same program.

    Returns:
      metric name -> ``(K,)`` mean over users (a scalar, their mean over requirements, with ``mean``).
    """
    cand_vecs = _candidates(item_vecs, targets, negatives)
    metrics = jax.vmap(
        lambda sensitive: _sampled_means(score, embed(params, user_vecs, sensitive, config), cand_vecs, ks)
    )(requirements)
    return {k: jnp.mean(v) for k, v in metrics.items()} if mean else metrics


@functools.partial(jax.jit, static_argnames=("ks",))
def embedding_metrics(score, fair, item_vecs, targets, negatives, *, ks):
    """Sampled-protocol metrics of precomputed embedding sets ``fair (K, U, d)`` in one vmapped pass -> ``(K,)``."""
    cand_vecs = _candidates(item_vecs, targets, negatives)
    return jax.vmap(lambda u_star: _sampled_means(score, u_star, cand_vecs, ks))(fair)


def embed_all_requirements(embed, params, user_vecs: jax.Array, requirements: jax.Array, config) -> jax.Array:
    """``embed``'s fair embeddings of every user under every requirement in one ``jax.vmap``:
    ``(K, M), (U, d) -> (K, U, d)``."""
    return jax.vmap(lambda s: embed(params, user_vecs, s, config))(requirements)


_embed_all = jax.jit(embed_all_requirements, static_argnames=("embed", "config"))


def _embed(embed, params, user_vecs, sensitive, *, config):
    return embed(params, user_vecs, sensitive, config)


def requirement_model(name: str, context, data, config, *, init, step, embed, requirements) -> Model:
    """A method of this family as the trainer fits it: BPR rows of the split (one fresh negative per training
    positive, never a known positive) batched by ``config.train.batch_size``; early stopping on the mean over
    ``requirements`` (bool ``(K, M)``) of the sampled-protocol validation metric ``config.train.monitor``.

    ``data`` needs ``user_vecs`` (validation-time) and ``item_vecs``; ``init(key)`` and ``step`` are the method's.
    """
    split, train = context.split, config.train
    score = context.frozen.score
    targets = jax.device_put(np.asarray(split.stage_items("valid"), np.int32))  # device_put: no program per shape
    negatives = jax.device_put(np.asarray(split.negatives("valid"), np.int32))
    requirements = jax.device_put(np.asarray(requirements, bool))
    ks = (monitor_cutoff(train.monitor),)
    known = split.known_positives()

    def validate(params):
        metrics = requirement_metrics(params, score, data.user_vecs, data.item_vecs, targets, negatives, requirements,
                                      config=config, ks=ks, embed=embed, mean=True)
        return {k: float(v) for k, v in metrics.items()}

    def batches(rng):
        return padded_batches(bpr_pairs(split, rng, known), train.batch_size, rng)

    return Model(name=name, train=train, init=init, step=step, batches=batches, validate=validate)


def probe_requirements(embeddings_by_req: dict[str, np.ndarray], requirements: np.ndarray, split, key, config,
                       unseen_users=None, standard: bool = True, audit_key_offset: int = 100):
    """Probe AUC of each sensitive attribute on each requirement's fair embeddings, and their mean (AFRL's Table 2).

    With ``unseen_users`` (int ``(n,)``), also the unseen-user audit of each attribute (``unseen_auc``, a
    :func:`~jaxfair.metrics.probe.cross_fitted_probe` result) and their mean (``mean_unseen_auc``), and with
    ``config.audit_hidden > 0`` the same audit with a one-hidden-layer probe (``mlp_unseen_auc``). Attribute ``i``'s
    standard probe draws its randomness from ``fold_in(key, i)``, its audit from ``fold_in(key, audit_key_offset +
    i)`` and its non-linear audit from ``fold_in(key, audit_key_offset + 50 + i)``. ``standard=False`` runs the audit alone (``auc`` is then empty, ``mean_auc`` None).
    """
    names = split.attribute_names
    mlp_config = dataclasses.replace(config, hidden=config.audit_hidden) if config.audit_hidden else None
    out = {}
    for r, (req_name, embeddings) in enumerate(embeddings_by_req.items()):
        per_attr, unseen, mlp_unseen = {}, {}, {}
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
                if mlp_config is not None:
                    mlp_unseen[name] = cross_fitted_probe(
                        embeddings, labels, unseen_users, num_classes,
                        jax.random.fold_in(key, audit_key_offset + 50 + i), mlp_config,
                    )
        out[req_name] = {
            "auc": per_attr,
            "mean_auc": float(np.mean([v["auc"] for v in per_attr.values()])) if per_attr else None,
            "unseen_auc": unseen,
            "mean_unseen_auc": float(np.mean([v["auc"] for v in unseen.values()])) if unseen else None,
            "mlp_unseen_auc": mlp_unseen,
        }
    return out


def evaluate_requirements(context, serve_all, requirements: np.ndarray | None = None) -> Evaluation:
    """The family's evaluation of a trained method.

    Args:
      context: the run's :class:`~jaxfair.methods.base.Context` (split, frozen backbone, evaluate and probe
        sections, seed).
      serve_all: ``(user_vecs (U, d), requirements (K, M)) -> (K, U, d)``, the method's fair embeddings of every
        user under every requirement.
      requirements: bool ``(K, M)``; default every requirement (:func:`all_requirements`).

    Test, under the sampled protocol (one vmapped pass over requirements): NDCG/HR@K of every requirement; the
    standard probe and the unseen-user audit (on :func:`~jaxfair.methods.base.audit_users`) of each sensitive
    attribute and their means; the backbone's metrics and probes as reference. Validation: NDCG/HR@K of every
    requirement on the validation-time embeddings, and each sensitive attribute's validation AUC of the standard probe
    (what it was selected on). Probes draw from ``context.key`` (standard ``fold_in(key, i)``, audit
    ``fold_in(key, 100 + i)`` for attribute ``i``).

    Returns:
      An :class:`~jaxfair.methods.base.Evaluation` whose tables have a row per requirement and a ``backbone`` row, and
      whose arrays are ``user_embeddings_<requirement>`` and ``user_embeddings_backbone`` (test-time, rows as
      ``users.csv``).
    """
    split, frozen, ks = context.split, context.frozen, tuple(context.evaluate.ks)
    names_attr = split.attribute_names
    requirements = all_requirements(len(names_attr)) if requirements is None else np.asarray(requirements, bool)
    names = [requirement_name(r, names_attr) for r in requirements]
    key = context.key
    test_vecs = frozen.user_vecs["test"]
    fair = np.asarray(serve_all(test_vecs, jax.device_put(requirements)))
    metrics = embedding_metrics(frozen.score, jax.device_put(fair), frozen.item_vecs,
                                jax.device_put(np.asarray(split.test_items, np.int32)),
                                jax.device_put(np.asarray(split.test_negatives, np.int32)), ks=ks)
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    valid_fair = serve_all(frozen.user_vecs["valid"], jax.device_put(requirements))
    valid_metrics = embedding_metrics(frozen.score, valid_fair, frozen.item_vecs,
                                      jax.device_put(np.asarray(split.valid_items, np.int32)),
                                      jax.device_put(np.asarray(split.valid_negatives, np.int32)), ks=ks)
    valid_metrics = {k: np.asarray(v) for k, v in valid_metrics.items()}
    # The validation-only audit: cross-fitted on the probe validation users alone, on validation-time embeddings, so
    # a sweep can select on leakage to unseen users without touching a test user. Only its mean is used, so it
    # skips the bootstrap interval.
    valid_audit = probe_requirements(dict(zip(names, np.asarray(valid_fair))), requirements, split, key,
                                     dataclasses.replace(context.probe, bootstrap=0, audit_hidden=0),
                                     unseen_users=np.asarray(split.probe_users["valid"]), standard=False,
                                     audit_key_offset=200)
    everything = np.ones((1, len(names_attr)), bool)
    unseen_users = audit_users(split)
    backbone_probe = probe_requirements({"backbone": np.asarray(test_vecs)}, everything, split, key, context.probe,
                                        unseen_users)["backbone"]
    probes = probe_requirements(dict(zip(names, fair)), requirements, split, key, context.probe, unseen_users)
    backbone_metrics = split_ranking(frozen.score, frozen.user_vecs, frozen.item_vecs, split, ("sampled",), ks,
                                     context.evaluate.batch_size)["sampled"]

    per_requirement, test_rows, valid_rows = {}, {}, {}
    for r, name in enumerate(names):
        sensitive = [names_attr[i] for i in np.flatnonzero(requirements[r])]
        probe, unseen = probes[name]["auc"], probes[name]["unseen_auc"]
        per_requirement[name] = {
            "sensitive": sensitive,
            "metrics": {k: float(v[r]) for k, v in metrics.items()},
            "valid_metrics": {k: float(v[r]) for k, v in valid_metrics.items()},
            "probe_auc": {a: p["auc"] for a, p in probe.items()},
            "probe_auc_ci": {a: p["auc_ci"] for a, p in probe.items()},
            "probe_valid_auc": {a: p["valid_auc"] for a, p in probe.items()},
            "mean_auc": probes[name]["mean_auc"],
            "unseen_auc": {a: p["auc"] for a, p in unseen.items()},
            "unseen_auc_ci": {a: p["auc_ci"] for a, p in unseen.items()},
            "unseen_auc_std": {a: p["auc_std"] for a, p in unseen.items()},
            "unseen_repeats": {a: p["repeats"] for a, p in unseen.items()},
            "mean_unseen_auc": probes[name]["mean_unseen_auc"],
            "mlp_unseen_auc": {a: p["auc"] for a, p in probes[name]["mlp_unseen_auc"].items()},
            "mlp_unseen_auc_ci": {a: p["auc_ci"] for a, p in probes[name]["mlp_unseen_auc"].items()},
        }
        test_rows[name] = _row(per_requirement[name], backbone_probe, backbone_metrics["test"], sensitive)
        valid_rows[name] = {**per_requirement[name]["valid_metrics"]}
        if sensitive:
            valid_rows[name]["unseen_auc"] = valid_audit[name]["mean_unseen_auc"]
            aucs = per_requirement[name]["probe_valid_auc"].values()
            valid_rows[name]["probe_valid_auc"] = float(np.mean(list(aucs)))
    test_rows["backbone"] = {**backbone_metrics["test"]}
    valid_rows["backbone"] = {**backbone_metrics["valid"]}
    sensitive_rows = [n for n, r in zip(names, requirements) if r.any()]
    valid_rows["mean"] = _mean_row([valid_rows[n] for n in sensitive_rows])
    test_rows["mean"] = _mean_row([test_rows[n] for n in sensitive_rows])

    results = {
        "withheld_labels": withheld_labels(),
        "requirements": per_requirement,
        "backbone": {
            "metrics": backbone_metrics["test"],
            "probe_auc": {a: p["auc"] for a, p in backbone_probe["auc"].items()},
            "unseen_auc": {a: p["auc"] for a, p in backbone_probe["unseen_auc"].items()},
            "mlp_unseen_auc": {a: p["auc"] for a, p in backbone_probe["mlp_unseen_auc"].items()},
        },
    }
    arrays = {"user_embeddings_backbone": np.asarray(test_vecs),
              **{f"user_embeddings_{name}": emb for name, emb in zip(names, fair)}}
    return Evaluation(results=results, tables={"valid": valid_rows, "test": test_rows}, arrays=arrays)


def _row(block: dict, backbone_probe: dict, backbone_test: dict, sensitive: list[str]) -> dict:
    """A requirement's test row: the unseen-user audit first (the measure that matters most), then the standard
    probe, the backbone's own AUCs on the same attributes, then accuracy and its ratio to the backbone's.
    ``unseen_auc`` is a mean over redrawn folds (:func:`~jaxfair.metrics.probe.cross_fitted_probe`), averaged over the
    sensitive attributes, and ``unseen_auc/<attribute>`` each attribute's own; ``unseen_auc_std`` is the spread of one
    draw, averaged over the sensitive attributes. Each attribute's audit and standard probe also carry their 95%
    bootstrap intervals over the scored users (``unseen_auc_lo/<attribute>``, ``unseen_auc_hi/<attribute>``, and
    ``auc_``, ``mlp_unseen_auc_`` likewise; absent with ``probe.bootstrap = 0``)."""
    row = {}
    if sensitive:
        row["unseen_auc"] = block["mean_unseen_auc"]
        row["backbone_unseen_auc"] = float(np.mean([backbone_probe["unseen_auc"][a]["auc"] for a in sensitive]))
        row["auc"] = block["mean_auc"]
        row["backbone_auc"] = float(np.mean([backbone_probe["auc"][a]["auc"] for a in sensitive]))
        row["unseen_auc_std"] = float(np.mean([block["unseen_auc_std"][a] for a in sensitive]))
        row.update({f"unseen_auc/{a}": block["unseen_auc"][a] for a in sensitive})  # each attribute's own audit
        row.update({f"auc/{a}": block["probe_auc"][a] for a in sensitive})
        row.update(interval_columns("unseen_auc", block["unseen_auc_ci"]))  # 95% bootstrap intervals
        row.update(interval_columns("auc", block["probe_auc_ci"]))
        if block["mlp_unseen_auc"]:  # probe.audit_hidden > 0: the non-linear audit beside the linear one
            row["mlp_unseen_auc"] = float(np.mean([block["mlp_unseen_auc"][a] for a in sensitive]))
            row["backbone_mlp_unseen_auc"] = float(np.mean([backbone_probe["mlp_unseen_auc"][a]["auc"]
                                                            for a in sensitive]))
            row.update({f"mlp_unseen_auc/{a}": block["mlp_unseen_auc"][a] for a in sensitive})
            row.update(interval_columns("mlp_unseen_auc", block["mlp_unseen_auc_ci"]))
    row.update(block["metrics"])
    for name, value in block["metrics"].items():
        if backbone_test.get(name):
            row[f"{name}/backbone"] = value / backbone_test[name]
    return row


def _mean_row(rows: list[dict]) -> dict:
    """Column means over ``rows`` (the non-empty requirements): the single numbers a sweep compares."""
    columns = [c for c in rows[0]] if rows else []
    return {c: float(np.mean([r[c] for r in rows if c in r])) for c in columns}


def check_sampled_split(name: str, run_config) -> None:
    """ConfigError unless the run's split is leave-one-out: the family is evaluated under the sampled protocol."""
    require(run_config.data.prep.split == "leave_one_out",
            f"data.split: {name} is evaluated by the sampled protocol of a leave-one-out split; set split = "
            f"\"leave_one_out\" (the AFRL recipe: recipe = \"afrl\")")


def requirements_report(results: dict, label: str) -> str:
    """The AFRL paper's Table 2 layout: per requirement, the unseen-user audit and the standard probe's mean AUC of
    the sensitive attributes (method and backbone), and NDCG/HR@k against the backbone's."""
    block = results[label]
    backbone = block["backbone"]
    k = min(int(m.split("@")[1]) for m in backbone["metrics"])
    rows = []
    for name, req in block["requirements"].items():
        bb_auc = [backbone["probe_auc"][a] for a in req["sensitive"]]
        bb_unseen = [backbone["unseen_auc"][a] for a in req["sensitive"]]
        rows.append({
            "requirement": name,
            f"{label} unseen auc": req["mean_unseen_auc"] if req["mean_unseen_auc"] is not None else "-",
            "backbone unseen auc": float(np.mean(bb_unseen)) if bb_unseen else "-",
            f"{label} auc": req["mean_auc"] if req["mean_auc"] is not None else "-",
            "backbone auc": float(np.mean(bb_auc)) if bb_auc else "-",
            f"{label} ndcg@{k}": req["metrics"][f"ndcg@{k}"],
            f"backbone ndcg@{k}": backbone["metrics"][f"ndcg@{k}"],
            f"{label} hr@{k}": req["metrics"][f"hr@{k}"],
            f"backbone hr@{k}": backbone["metrics"][f"hr@{k}"],
        })
    title = (f"{results['dataset']} / {results['backbone']['name']} / sampled protocol (test users); AUC 0.5 = no "
             f"leak; unseen = audit probes fitted and scored only on users whose labels {label} never saw\n")
    return title + format_table(rows, list(rows[0]))


def requirement_method(name: str, Config: type, *, init_state, make_train_step, embed, description: str,
                       post_training: Callable | None = None) -> Method:
    """The :class:`~jaxfair.methods.base.Method` of a family member that is one model serving every requirement.

    Args:
      name: registry, section and model name.
      init_state: ``(key, data, config) -> state``; make_train_step: ``(data, score, config) -> step``; embed:
        ``(params, user_vecs (U, d), sensitive (M,) or (U, M), config) -> (U, d)``, the serving function.
      post_training: ``(serve (user_vecs, sensitive) -> (U, d), data, config) -> serve`` or None: a step fitted after
        training on the trained model's outputs (AFRL's output erasure,
        :func:`~jaxfair.methods.output_erasure.with_output_erasure`), applied in evaluation and serving; it
        returns ``serve`` itself when the config does not ask for it.

    Its data are :func:`~jaxfair.methods.adversaries.split_attribute_data` (every attribute, the probe validation
    and test users' labels withheld); it trains one model on BPR rows, validated on every requirement; it is
    evaluated by :func:`evaluate_requirements` and served by ``embed`` under a per-user mask.
    """

    def served(data, params, config):
        plain = functools.partial(_embed, embed, params, config=config)
        return plain, (post_training(plain, data, config) if post_training else plain)

    def prepare(context, config):
        return split_attribute_data(context.split, context.frozen)

    def models(context, data, config, fitted):
        return [requirement_model(name, context, data, config, init=lambda key: init_state(key, data, config),
                                  step=make_train_step(data, context.frozen.score, config), embed=embed,
                                  requirements=all_requirements(data.labels.shape[1]))]

    def evaluate(context, data, fitted, config):
        params = fitted[name].best_params
        plain, serve_one = served(data, params, config)
        if serve_one is plain:  # nothing after training: the one cached program
            return evaluate_requirements(context, lambda u, reqs: _embed_all(embed, params, u, reqs, config))
        serve_all = jax.jit(lambda u, reqs: jax.vmap(lambda s: serve_one(u, s))(reqs))
        return evaluate_requirements(context, serve_all)

    def serve(data, params, config, user_vecs, sensitive):
        return served(data, params[name], config)[1](user_vecs, sensitive)

    return Method(name, Config, frozen_backbone=True, check=lambda config, run: check_sampled_split(name, run),
                  prepare=prepare, models=models, evaluate=evaluate, serve=serve,
                  report=lambda results: requirements_report(results, name), description=description)
