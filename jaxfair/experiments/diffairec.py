"""The DifFaiRec experiment: DiffRec, DifFaiRec with mean-pooled and with PCA group vectors, and the
fairness-regularised MF, trained on the same split and evaluated by full ranking and by group gaps.

Run by ``jaxfair train configs/diffairec_ml100k.toml --out DIR`` (any config with a ``[diffairec]`` section).
Protocol (the ``diffairec`` data recipe): ratings >= 4 are positives, per-user random 70/10/20; each user's
validation (test) positives ranked over all items with the training (and validation) positives masked; early
stopping and model selection on validation ``[train] monitor`` only. Sections:

* ``[diffairec]`` - :class:`DifFaiRecSection`: the method's settings, ``variants``, the MF baseline's ``gamma``
  and ``mf_batch_size``;
* ``[diffairec.diffusion]`` - :class:`jaxfair.backbones.diffusion.Config`, shared by every diffusion variant;
* ``[backbone]`` - the table backbone of the MF variants (``pmf`` by default in the config);
* ``[train]`` - epochs, batch size (users per diffusion step), learning rate, patience, monitor, seed.

Variants:

* ``diffrec`` - the diffusion backbone alone;
* ``diffairec_mean``, ``diffairec_pca`` - DifFaiRec with either group-vector construction;
* ``fair_mf`` - the backbone with BPR + ``gamma`` times the squared gap of the groups' mean predicted scores
  (:mod:`jaxfair.methods.fair_mf`); ``mf`` - the same with ``gamma = 0``.

Outputs in ``DIR`` (next to ``split.npz``, ``config.json``, ``users.csv``): ``results.json`` with, per variant,
validation and test Recall/Precision/NDCG/HR@K, the group gaps of :mod:`jaxfair.metrics.equality` at every K
(``valid_gaps`` and ``gaps`` for test), the probe AUC of the attribute on the variant's user latents (the
denoiser's first hidden layer for the diffusion variants, the user table for MF), epochs and training time; the
printed table; checkpoints and logs per variant.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.backbones import diffusion
from jaxfair.config import ConfigError, from_dict, to_dict
from jaxfair.data.holdout import HoldoutSplit
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments.config import EvalConfig, ExperimentConfig
from jaxfair.experiments.outputs import FULL_RANKING, fit_summary, format_table, run_header, write_json
from jaxfair.methods import diffairec, fair_mf
from jaxfair.metrics.equality import ranking_gaps
from jaxfair.metrics.probe import probe_attribute
from jaxfair.metrics.ranking import full_protocol, summarize
from jaxfair.training.step import make_epoch_fn
from jaxfair.training.trainer import Task, fit

SECTION = "diffairec"
MF_BACKBONES = ("pmf", "cosine_mf", "lightgcn")
VARIANTS = ("diffrec", "diffairec_mean", "diffairec_pca", "fair_mf", "mf")
REPORT_KS = (10, 20)


@dataclasses.dataclass(frozen=True)
class DifFaiRecSection(diffairec.DifFaiRecConfig):
    """The ``[diffairec]`` section: DifFaiRec's settings (``group_vectors`` is set per variant), the variants to run
    in order, the MF baseline's penalty ``gamma``, BPR batch size and learning rate, and the diffusion models' Adam
    ``weight_decay``. ``gamma = 1`` is the value ``benchmarks/diffairec_sweep.py`` chose on ML-100k validation data
    over {1, 10, 100, 1000} (larger values cost 3.5-59% validation NDCG@20 and widened the gaps)."""

    variants: tuple[str, ...] = ("diffrec", "diffairec_mean", "diffairec_pca", "fair_mf", "mf")
    gamma: float = 1.0
    mf_batch_size: int = 1024
    mf_learning_rate: float = 5e-3
    weight_decay: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be distinct names from {list(VARIANTS)}, got {list(self.variants)}")
        if self.gamma < 0 or self.mf_batch_size < 1 or self.weight_decay < 0 or not self.mf_learning_rate > 0:
            raise ValueError("need gamma >= 0, mf_batch_size >= 1, mf_learning_rate > 0 and weight_decay >= 0")

    def method(self, group_vectors: str) -> diffairec.DifFaiRecConfig:
        names = {f.name for f in dataclasses.fields(diffairec.DifFaiRecConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        return diffairec.DifFaiRecConfig(**{**values, "group_vectors": group_vectors})


def section_configs(config: ExperimentConfig) -> tuple[DifFaiRecSection, diffusion.Config]:
    values = dict(config.sections.get(SECTION) or {})
    diffusion_values = values.pop("diffusion", None)
    return (from_dict(DifFaiRecSection, values, SECTION),
            from_dict(diffusion.Config, diffusion_values, f"{SECTION}.diffusion"))


def check_config(config: ExperimentConfig, section: DifFaiRecSection, dc: diffusion.Config | None = None) -> None:
    """ConfigErrors, before any data is read, for settings this experiment cannot honour."""
    if dc is not None and any(v.startswith("diffairec") for v in section.variants):
        try:
            diffairec.check_swap(dc, section)
        except ValueError as error:
            raise ConfigError(f"{SECTION}.swap: {error}") from None
    if config.data.split == "leave_one_out":
        raise ConfigError('data.split: DifFaiRec is evaluated by full ranking of a ratio split; use recipe = '
                          '"diffairec" (random_ratio 70/10/20) or split = "random_ratio"')
    if any(v in ("fair_mf", "mf") for v in section.variants) and config.backbone_name not in MF_BACKBONES:
        raise ConfigError(f"backbone.name: the MF variants train {list(MF_BACKBONES)}, not {config.backbone_name!r}")
    if section.attribute not in config.data.attributes:
        raise ConfigError(f"{SECTION}.attribute: {section.attribute!r} is not among data.attributes "
                          f"{list(config.data.attributes)}")
    ks = {str(k) for k in config.evaluate.ks}
    if config.train.monitor.split("@")[-1] not in ks:
        raise ConfigError(f"train.monitor: {config.train.monitor!r} needs its cut-off in evaluate.ks "
                          f"({list(config.evaluate.ks)})")


def precomputed_score(score_rows: jax.Array, item_ids: jax.Array) -> jax.Array:
    """A ``full_protocol`` scorer for precomputed scores: ``score_rows (B, 1, I)`` are the users' item scores
    (passed as the "user vectors"), ``item_ids (1, I, 1)`` is ignored. Returns ``(B, I)``."""
    del item_ids
    return score_rows[:, 0, :]


def _items_placeholder(num_items: int) -> jax.Array:
    return jnp.zeros((num_items, 1), jnp.float32)


class Model(NamedTuple):
    """A trained variant: ``scores() -> (U, I)`` ranking scores and ``latents() -> (U, h)`` probed user latents."""

    scores: Callable[[], np.ndarray]
    latents: Callable[[], np.ndarray]


def _diffusion_parts(name, split, section, dc, groups, num_groups):
    """Init, step, scorer and latent function of a diffusion variant."""
    interactions = split.train_matrix().astype(np.float32)
    if name == "diffrec":
        return (interactions, lambda key: diffusion.init_denoiser(key, split.num_items, dc),
                lambda tx: diffusion.make_train_step(dc, interactions, tx),
                diffusion.make_scorer(dc), diffusion.make_latent_fn(dc))
    method = section.method(name.split("_")[1])
    tokens = diffairec.group_tokens(interactions, groups, num_groups, method)
    return (interactions, lambda key: diffairec.init_params(key, split.num_items, dc, method),
            lambda tx: diffairec.make_train_step(dc, method, interactions, groups, tokens, tx),
            diffairec.make_scorer(dc, method, groups, tokens), diffairec.make_latent_fn(dc, method, groups, tokens))


def train_diffusion(name: str, split: HoldoutSplit, section, dc, groups, num_groups, config: ExperimentConfig,
                    out_dir, log):
    """Fit a diffusion variant with the shared trainer; returns ``(FitResult, Model)``."""
    interactions, init, make_step, scorer, latent_fn = _diffusion_parts(name, split, section, dc, groups, num_groups)
    tx = diffairec.make_optimizer(config.train.learning_rate, section.weight_decay)
    eval_valid = EvalConfig(protocols=("full",), ks=tuple(config.evaluate.ks), batch_size=config.evaluate.batch_size)
    items = _items_placeholder(split.num_items)
    batch = config.evaluate.batch_size

    def all_scores(params):
        return diffusion.all_scores(lambda x, users: scorer(params, x, users), interactions, batch)

    def validate(params):
        block = backbone_experiment.evaluate_holdout(precomputed_score, {"valid": all_scores(params)}, items, split,
                                                     eval_valid, ("valid",))
        return block["full"]["valid"]

    task = Task(
        init_state=lambda key: diffusion.init_state(init(key), tx, dc),
        epoch_batches=lambda rng: diffusion.user_batches(split.num_users, rng, config.train.batch_size),
        run_epoch=make_epoch_fn(make_step(tx)),
        validate=validate,
    )
    result = fit(task, config.train, out_dir, log=log, name=name)
    params = result.best_params
    model = Model(lambda: all_scores(params),
                  lambda: diffusion.all_scores(lambda x, users: latent_fn(params, x, users), interactions, batch))
    return result, model


def train_mf(name: str, split: HoldoutSplit, section, groups, num_groups, config: ExperimentConfig, out_dir, log):
    """Fit the (regularised) MF baseline with the backbone trainer; returns ``(FitResult, Model)``."""
    gamma = section.gamma if name == "fair_mf" else 0.0
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, learning_rate=section.mf_learning_rate))
    backbone, context, params, result = backbone_experiment.train_backbone(
        split, config, out_dir, log, make_loss=lambda b, c: fair_mf.make_loss(b, c, groups, num_groups, gamma),
        batch_size=section.mf_batch_size, name=name)
    users, items = backbone_experiment.embeddings_of(backbone, context, params)
    score = jax.jit(lambda u, v: backbone.score(params, u[:, None, :], v[None]))
    return result, Model(lambda: np.asarray(score(users["test"], items)), lambda: np.asarray(users["valid"]))


def evaluate_model(model: Model, split: HoldoutSplit, groups, num_groups, ks, config: ExperimentConfig, key) -> dict:
    """Validation and test ranking metrics, group gaps on both (``valid_gaps``, ``gaps``; settings are chosen on the
    former) and the attribute probe on the user latents."""
    scores = model.scores()
    items = _items_placeholder(split.num_items)
    out = {}
    for stage in ("valid", "test"):
        targets = split.target_matrix(stage)
        per_user = full_protocol(precomputed_score, scores, items, targets, split.exclude_matrix(stage), ks,
                                 config.evaluate.batch_size)
        has = targets.any(axis=1)
        out[stage] = summarize({k: v[has] for k, v in per_user.items()})
        gaps = ranking_gaps(per_user, targets.sum(axis=1), groups, num_groups, ks)
        out["gaps" if stage == "test" else "valid_gaps"] = gaps
    probe = probe_attribute(np.asarray(model.latents()), groups, split.probe_users, num_groups, key, config.probe)
    out["probe_auc"] = probe["auc"]
    out["probe_auc_ci"] = probe.get("auc_ci")
    return out


def run(config: ExperimentConfig, out_dir, log: Callable[[str], None] = print) -> dict:
    """Train and evaluate every configured variant; write ``results.json``; return its dict."""
    section, dc = section_configs(config)
    check_config(config, section, dc)
    out_dir, split, timings = backbone_experiment.start_run(config, out_dir, log)
    groups = np.asarray(split.user_attributes[section.attribute], np.int32)
    classes = list(split.attribute_classes[section.attribute])
    num_groups = len(classes)
    ks = tuple(sorted(set(REPORT_KS) | set(config.evaluate.ks)))
    probe_key = jax.random.fold_in(jax.random.key(config.train.seed), 7)

    variants = {}
    for name in section.variants:
        log(f"[diffairec] training {name}")
        tick = time.perf_counter()
        if name in ("fair_mf", "mf"):
            result, model = train_mf(name, split, section, groups, num_groups, config, out_dir, log)
        else:
            result, model = train_diffusion(name, split, section, dc, groups, num_groups, config, out_dir, log)
        seconds = time.perf_counter() - tick
        variants[name] = {**fit_summary(result, seconds),
                          **evaluate_model(model, split, groups, num_groups, ks, config, probe_key)}
        timings[f"{name}_seconds"] = seconds

    results = {
        **run_header(split, config, "full", FULL_RANKING),
        "attribute": section.attribute,
        "groups": classes,
        "group_users": np.bincount(groups, minlength=num_groups).tolist(),
        "method": to_dict(section),
        "diffusion": to_dict(dc),
        "mf_backbone": config.backbone_name,
        "variants": variants,
        "timings": timings,
        "config": config.to_dict(),
    }
    write_json(out_dir / "results.json", results)
    log(results_table(results))
    return results


def results_table(results: dict, k: int = 20) -> str:
    """One row per variant: test Recall/NDCG@10 and @k, the gaps at k, the probe AUC."""
    rows = []
    for name, block in results["variants"].items():
        gaps = block["gaps"][f"@{k}"]
        rows.append({
            "variant": name,
            "recall@10": block["test"]["recall@10"],
            "ndcg@10": block["test"]["ndcg@10"],
            f"recall@{k}": block["test"][f"recall@{k}"],
            f"ndcg@{k}": block["test"][f"ndcg@{k}"],
            f"AE-recall@{k}": gaps["recall_gap"],
            f"AE-ndcg@{k}": gaps["ndcg_gap"],
            f"EO@{k}": gaps["eo_gap"],
            "probe AUC": block["probe_auc"],
            "epochs": block["epochs_run"],
            "s/epoch": block["seconds_per_epoch"],
        })
    header = (f"test, {results['dataset']}, groups by {results['attribute']} (gaps: lower is fairer; "
              "probe AUC: 0.5 is fairest)\n")
    return header + format_table(rows, list(rows[0]))
