"""The ITFR experiment: plain BPR, GroupDRO and ITFR (and its ablations) trained from scratch on the same split and
backbone, evaluated by full ranking and by the intersectional recall matrix.

Run by ``jaxfair train configs/itfr_mf_ml100k.toml --out DIR`` (any config with an ``[itfr]`` section). Protocol
(the ``itfr`` data recipe): every rating a positive, items with exactly one of six genres, 5-core, per-user random
70/10/20; user groups = a user attribute's classes, item groups = the genres; full ranking with training (and for
test, validation) positives masked; early stopping and model selection on validation ``[train] monitor`` only.

Variants (``[itfr] variants``; each is :class:`jaxfair.methods.itfr.ItfrConfig` with some switches changed):

* ``bpr`` - the backbone with plain BPR (``balance = "none"``, no SAM), same score as ITFR;
* ``groupdro`` - online GroupDRO over the intersectional groups (no SAM);
* ``itfr`` - the ``[itfr]`` settings as written;
* ``itfr_no_sam``, ``itfr_no_balance`` (SAM losses, GroupDRO update: no gradient similarity), ``itfr_no_norm``
  (inner-product score) - the paper's ablations.

Outputs in ``DIR``, next to ``split.npz``, ``config.json`` and ``users.csv``:

* ``results.json`` - per variant: validation and test Recall/Precision/NDCG/HR@K, the test recall matrix
  ``R[user group, item group]`` at every K with CV/MIN/UCV/ICV (:mod:`jaxfair.metrics.intersectional`), the final
  group weights, epochs and training time; group names and training rows per intersectional group;
* ``recall_matrix.png`` - heat maps of ``R@20`` (or the largest K below it) for every variant, side by side;
* ``checkpoints/<variant>`` and ``<variant>_log.jsonl`` from the trainer.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from jaxfair.backbones import lightgcn, make_backbone
from jaxfair.config import ConfigError, from_dict, to_dict
from jaxfair.data.groups import genre_item_groups, group_counts, intersectional_groups
from jaxfair.data.holdout import HoldoutSplit
from jaxfair.experiments import backbone as backbone_experiment
from jaxfair.experiments.config import EvalConfig, ExperimentConfig
from jaxfair.experiments.outputs import FULL_RANKING, fit_summary, format_table, run_header, write_figure, write_json
from jaxfair.methods import itfr
from jaxfair.metrics.intersectional import intersectional_report
from jaxfair.training.trainer import Task, fit

SECTION = "itfr"
SUPPORTED_BACKBONES = ("cosine_mf", "pmf", "lightgcn")
VARIANTS: dict[str, dict] = {
    "bpr": {"balance": "none", "sam": False},
    "groupdro": {"balance": "groupdro", "sam": False},
    "itfr": {},
    "itfr_no_sam": {"sam": False},
    "itfr_no_balance": {"balance": "groupdro"},
    "itfr_no_norm": {"score_normalization": False},
}
REPORT_KS = (10, 20, 50)
DENSE_LIMIT = 1 << 24  # U * I entries (64 MiB of float32) up to which LightGCN propagates on a dense adjacency


@dataclasses.dataclass(frozen=True)
class ItfrSection(itfr.ItfrConfig):
    """The ``[itfr]`` section: ITFR's hyper-parameters plus which variants to train (in order)."""

    variants: tuple[str, ...] = ("bpr", "groupdro", "itfr")

    def __post_init__(self):
        super().__post_init__()
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be distinct names from {list(VARIANTS)}, got {list(self.variants)}")

    def variant(self, name: str) -> itfr.ItfrConfig:
        names = {f.name for f in dataclasses.fields(itfr.ItfrConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        return itfr.ItfrConfig(**{**values, **VARIANTS[name]})


def section_config(config: ExperimentConfig) -> ItfrSection:
    return from_dict(ItfrSection, config.sections.get(SECTION), SECTION)


def check_config(config: ExperimentConfig, section: ItfrSection) -> None:
    """ConfigErrors, before any data is read, for settings this experiment cannot honour."""
    if config.data.split == "leave_one_out":
        raise ConfigError('data.split: ITFR is evaluated by full ranking of a ratio split; use recipe = "itfr" '
                          '(random_ratio 70/10/20) or split = "random_ratio"')
    if config.backbone_name not in SUPPORTED_BACKBONES:
        raise ConfigError(f"backbone.name: ITFR trains {list(SUPPORTED_BACKBONES)} (embedding tables, optionally "
                          f"propagated), not {config.backbone_name!r}")
    if getattr(config.backbone, "l2", 0.0) != 0.0:
        raise ConfigError("backbone.l2: ITFR's losses carry no L2 term; set backbone.l2 = 0 and use itfr.weight_decay")
    if config.backbone_name == "cosine_mf" and config.backbone.tau != section.tau:
        raise ConfigError(f"backbone.tau ({config.backbone.tau}) differs from itfr.tau ({section.tau}): ITFR scores "
                          "with itfr.tau; set both to the same value")
    ks = tuple(config.evaluate.ks)
    if config.train.monitor.split("@")[-1] not in {str(k) for k in ks}:
        raise ConfigError(f"train.monitor: {config.train.monitor!r} needs its cut-off in evaluate.ks ({list(ks)})")


def user_item_groups(split: HoldoutSplit, method: itfr.ItfrConfig):
    """``(user_group (U,), item_group (I,), A, C, group names)`` for the split; ConfigError for an unknown
    attribute, DataError when an item does not have exactly one of the group genres."""
    if method.user_attribute not in split.user_attributes:
        raise ConfigError(f"{SECTION}.user_attribute: {method.user_attribute!r} is not a user attribute of this split "
                          f"(have {list(split.attribute_names)})")
    user_group = split.user_attributes[method.user_attribute]
    user_names = split.attribute_classes[method.user_attribute]
    item_group = genre_item_groups(split.item_genres, split.genre_names, method.item_genres)
    names = [f"{a}|{c}" for a in user_names for c in method.item_genres]
    return user_group, item_group, len(user_names), len(method.item_genres), names


def embedding_map(config: ExperimentConfig, split, backbone, context) -> Callable:
    """``params -> (users (U, d), items (I, d))``: the backbone's own embedding functions, except LightGCN, whose
    propagation runs on a dense adjacency when ``U I <= DENSE_LIMIT`` (the same map; ITFR pushes ``3 G`` vmapped
    propagations through it per step: batched matmuls, where vmapped edge scatters are slow on CPU)."""
    if config.backbone_name == "lightgcn" and split.num_users * split.num_items <= DENSE_LIMIT:
        adjacency = lightgcn.dense_adjacency(context, split.num_users, split.num_items)
        layers = config.backbone.num_layers
        return lambda params: lightgcn.propagate_dense(params["user"], params["item"], adjacency, layers)
    return lambda params: (backbone.user_embeddings(params, context, "valid"), backbone.item_embeddings(params, context))


def train_variant(split, backbone, context, groups, method: itfr.ItfrConfig, config: ExperimentConfig, out_dir,
                  log, name: str):
    """Fit one variant with the shared trainer; returns ``(FitResult, embed)``."""
    user_group, item_group, num_user_groups, num_item_groups = groups[:4]
    num_groups = num_user_groups * num_item_groups
    embed = embedding_map(config, split, backbone, context)
    score = itfr.make_score(method)
    tx = itfr.make_optimizer(config.train.learning_rate, method.weight_decay)
    epoch_fn = itfr.make_epoch_fn(itfr.make_train_step(embed, num_groups, method, tx))
    row_groups = intersectional_groups(user_group, item_group, split.train_users, split.train_items, num_item_groups)
    positives = split.positive_matrix()
    eval_valid = EvalConfig(protocols=("full",), ks=tuple(config.evaluate.ks), batch_size=config.evaluate.batch_size)
    embed_jit = jax.jit(embed)

    def validate(params):
        users, items = embed_jit(params)
        block = backbone_experiment.evaluate_holdout(score, {"valid": users}, items, split, eval_valid, ("valid",))
        return block["full"]["valid"]

    task = Task(
        init_state=lambda key: itfr.init_state(backbone.init(key, split), tx, num_groups),
        epoch_batches=lambda rng: itfr.epoch_batches(
            split.train_users, split.train_items, row_groups, positives, rng, config.train.batch_size
        ),
        run_epoch=epoch_fn,
        validate=validate,
    )
    return fit(task, config.train, out_dir, log=log, name=name), embed


def evaluate_variant(split: HoldoutSplit, embed, params, method, groups, config: ExperimentConfig) -> dict:
    """Validation and test full-ranking metrics and the test intersectional report at ``REPORT_KS`` and the
    configured cut-offs."""
    user_group, item_group, num_user_groups, num_item_groups = groups[:4]
    ks = tuple(sorted(set(REPORT_KS) | set(config.evaluate.ks)))
    score = itfr.make_score(method)
    users, items = jax.jit(embed)(params)
    evaluate = EvalConfig(protocols=("full",), ks=ks, batch_size=config.evaluate.batch_size)
    ranking = backbone_experiment.evaluate_holdout(score, {"valid": users, "test": users}, items, split, evaluate)
    report = intersectional_report(
        score, users, items, split.test_matrix(), split.exclude_matrix("test"), user_group, item_group,
        num_user_groups, num_item_groups, ks, config.evaluate.batch_size,
    )
    return {"valid": ranking["full"]["valid"], "test": ranking["full"]["test"], "intersectional": report}


def run(config: ExperimentConfig, out_dir, log: Callable[[str], None] = print) -> dict:
    """Train and evaluate every configured variant; write every output file; return ``results.json``'s dict."""
    section = section_config(config)
    check_config(config, section)
    out_dir, split, timings = backbone_experiment.start_run(config, out_dir, log)
    groups = user_item_groups(split, section)
    _, _, num_user_groups, num_item_groups, group_names = groups
    row_groups = intersectional_groups(groups[0], groups[1], split.train_users, split.train_items, num_item_groups)
    backbone, _ = make_backbone(config.backbone_name, dataclasses.asdict(config.backbone))
    context = backbone.context(split)

    variants = {}
    for name in section.variants:
        method = section.variant(name)
        log(f"[itfr] training {name}: balance={method.balance} sam={method.sam} "
            f"score_normalization={method.score_normalization}")
        tick = time.perf_counter()
        fit_result, embed = train_variant(split, backbone, context, groups, method, config, out_dir, log, name)
        seconds = time.perf_counter() - tick
        variants[name] = {
            "config": to_dict(method),
            **fit_summary(fit_result, seconds),
            "final_weights": np.asarray(fit_result.state.weights).tolist(),
            **evaluate_variant(split, embed, fit_result.best_params, method, groups, config),
        }
        timings[f"{name}_seconds"] = seconds

    results = {
        **run_header(split, config, "full", FULL_RANKING),
        "backbone": config.backbone_name,
        "groups": {
            "user_attribute": section.user_attribute,
            "user_groups": list(split.attribute_classes[section.user_attribute]),
            "item_groups": list(section.item_genres),
            "names": group_names,
            "train_rows": group_counts(row_groups, num_user_groups * num_item_groups).tolist(),
        },
        "variants": variants,
        "timings": timings,
        "config": config.to_dict(),
    }
    write_json(out_dir / "results.json", results)
    heat_k = max([k for k in REPORT_KS if k <= 20] or [REPORT_KS[0]])
    write_figure(out_dir / "recall_matrix.png", heatmap_figure(results, heat_k))
    log(results_table(results))
    return results


def results_table(results: dict, k: int = 20) -> str:
    """One row per variant: test Recall/NDCG@k and the matrix statistics at k."""
    rows = []
    for name, block in results["variants"].items():
        fairness = block["intersectional"][f"@{k}"]
        rows.append({
            "variant": name,
            f"recall@{k}": block["test"][f"recall@{k}"],
            f"ndcg@{k}": block["test"][f"ndcg@{k}"],
            f"cv@{k}": fairness["cv"],
            f"min@{k}": fairness["min"],
            f"ucv@{k}": fairness["ucv"],
            f"icv@{k}": fairness["icv"],
            "epochs": block["epochs_run"],
            "s/epoch": block["seconds_per_epoch"],
        })
    header = f"test, {results['backbone']} backbone (CV/UCV/ICV: lower is fairer; MIN: higher is fairer)\n"
    return header + format_table(rows, list(rows[0]))


def heatmap_figure(results: dict, k: int = 20):
    """Heat maps of ``R@k`` (user groups x item groups) for every variant, side by side, one shared colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    matrices = [np.asarray(results["variants"][n]["intersectional"][f"@{k}"]["matrix"], float) for n in names]
    low, high = float(np.nanmin(matrices)), float(np.nanmax(matrices))
    user_names, item_names = results["groups"]["user_groups"], results["groups"]["item_groups"]
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1.2, 0.6 * len(user_names) + 3.2),
                                squeeze=False)
    figure.subplots_adjust(left=0.06, right=0.86, bottom=0.32, top=0.8, wspace=0.35)
    for ax, name, matrix in zip(axes[0], names, matrices):
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis", aspect="auto")
        cv = results["variants"][name]["intersectional"][f"@{k}"]["cv"]
        ax.set_title(f"{name}\nCV@{k} = {cv:.3f}", fontsize=9)
        ax.set_xticks(range(len(item_names)), item_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(user_names)), user_names, fontsize=8)
        for (a, c), value in np.ndenumerate(matrix):
            ax.text(c, a, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    figure.colorbar(image, cax=figure.add_axes([0.89, 0.32, 0.02, 0.48]), label=f"Recall@{k}")
    figure.suptitle(f"Intersectional recall matrix (test), {results['backbone']}", fontsize=10)
    return figure
