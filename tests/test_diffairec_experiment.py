"""DifFaiRec end to end on a tiny synthetic dataset: DiffRec (``group_vectors = "none"``), DifFaiRec with mean and
PCA group vectors, and the regularised and plain MF (method ``fair_mf``) as points of one sweep, each trained,
evaluated on validation and test, and reported with its group gaps at @10 and @20 and its probe AUC; configs the
methods cannot honour fail before any data is read; selection reads validation numbers only."""

import copy
import json

import numpy as np
import pytest

from jaxfair.config import ConfigError
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.harness import parse_rule, select_points, sweep
from jaxfair.pipeline import parse_config

VARIANTS = ["diffrec", "diffairec_mean", "diffairec_pca", "fair_mf", "mf"]
GRID = """
[points.diffrec]
"diffairec.group_vectors" = "none"
[points.diffairec_mean]
"diffairec.group_vectors" = "mean"
[points.diffairec_pca]
"diffairec.group_vectors" = "pca"
[points.fair_mf]
method = "fair_mf"
[points.mf]
method = "fair_mf"
"fair_mf.gamma" = 0.0
"""


def config_values(data_dir):
    loop = {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "monitor": "ndcg@20", "checkpoint_every": 2}
    return {
        "method": "diffairec",
        "data": {"source": str(data_dir), "recipe": "diffairec", "attributes": ["gender"]},
        "backbone": {"name": "pmf", "dim": 8, "l2": 0.0},
        "evaluate": {"protocols": ["full"], "ks": [10, 20]},
        "probe": {"steps": 50, "eval_every": 25, "weight_decays": [1e-3], "bootstrap": 0},
        "diffairec": {"attribute": "gender", "latent_dim": 8, "components": 2,
                      "diffusion": {"steps": 3, "hidden": [16], "time_dim": 4}, "train": loop},
        "fair_mf": {"attribute": "gender", "gamma": 1000.0, "train": {**loop, "batch_size": 256}},
    }


def write_toml(values, path):
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]

    def table(name, block):
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in block.items() if not isinstance(v, dict))
        for key, sub in block.items():
            if isinstance(sub, dict):
                table(f"{name}.{key}", sub)

    for name, block in values.items():
        if isinstance(block, dict):
            table(name, block)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffairec_data")
    write_ml100k_folder(make_synthetic(num_users=60, num_items=80, per_user=20), root)
    return root


@pytest.fixture(scope="module")
def variants(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffairec_out")
    config = write_toml(config_values(data_dir), root / "tiny.toml")
    (root / "grid.toml").write_text(GRID)
    summary = sweep(config, root / "sweep", grid=root / "grid.toml", log=lambda _: None)
    runs = {label: json.loads((root / "sweep" / "runs" / label / "seed0" / "results.json").read_text())
            for label in summary["points"]}
    return root / "sweep", summary, runs


def block(results):
    return results[results["method"]]


def test_results_report_every_variant_with_metrics_gaps_and_probe(variants):
    _, summary, runs = variants
    assert list(runs) == VARIANTS
    for name, results in runs.items():
        b = block(results)
        assert b["attribute"] == "gender" and b["groups"] == ["F", "M"]
        assert sum(b["group_users"]) == results["statistics"]["users"] == 60
        for stage in ("valid", "test"):
            for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "precision@20", "hr@20"):
                assert 0.0 <= b[stage][metric] <= 1.0, (name, stage, metric)
        assert b["test"]["recall@20"] >= b["test"]["recall@10"]
        assert set(b["gaps"]) == {"@10", "@20"}
        for gaps in b["gaps"].values():
            for gap in ("recall_gap", "ndcg_gap", "eo_gap"):
                assert np.isfinite(gaps[gap]) and 0.0 <= gaps[gap] <= 1.0, (name, gap)
            assert len(gaps["recall_by_group"]) == len(gaps["tpr_by_group"]) == 2
            assert gaps["recall_gap"] == pytest.approx(abs(gaps["recall_by_group"][0] - gaps["recall_by_group"][1]))
        assert 0.0 <= b["probe_auc"] <= 1.0
        (fit,) = results["models"].values()
        assert fit["epochs_run"] == 2 and 1 <= fit["best_epoch"] <= 2 and fit["train_seconds"] > 0
        row = summary["points"][name]["tables"]["test"]["all"]
        assert row["eo_gap@20"]["mean"] == b["gaps"]["@20"]["eo_gap"] and row["probe_auc"]["mean"] == b["probe_auc"]
    assert runs["diffrec"]["config"]["diffairec"]["diffusion"]["steps"] == 3
    assert runs["diffairec_pca"]["config"]["diffairec"]["components"] == 2


def test_variants_are_different_models(variants):
    _, _, runs = variants
    assert block(runs["diffrec"])["test"] != block(runs["diffairec_mean"])["test"]
    assert block(runs["diffairec_mean"])["gaps"] != block(runs["diffairec_pca"])["gaps"]
    # the penalty reaches the regularised MF only (a large gamma: the preferences start near sigmoid(0) = 1/2, so
    # the squared gap of their group means is tiny)
    assert block(runs["fair_mf"])["test"] != block(runs["mf"])["test"]
    assert runs["fair_mf"]["config"]["fair_mf"]["gamma"] == 1000.0 and runs["mf"]["config"]["fair_mf"]["gamma"] == 0


def test_each_run_writes_the_split_the_config_and_its_models_log(variants):
    out, _, runs = variants
    for name, results in runs.items():
        folder = out / "runs" / name / "seed0"
        assert (folder / "split.npz").exists() and (folder / "config.json").exists()
        (model,) = results["models"]
        assert (folder / f"{model}_log.jsonl").exists() and (folder / "checkpoints" / model).is_dir()


@pytest.mark.parametrize("change, message", [
    (lambda v: v["data"].update(split="leave_one_out"), "data.split"),
    (lambda v: v["diffairec"].update(group_vectors="vae"), "diffairec: group_vectors"),
    (lambda v: v["diffairec"].update(swap="output"), "diffairec: swap"),
    (lambda v: (v["diffairec"].update(swap="input"), v["diffairec"]["diffusion"].update(mean_type="eps")),
     "swap = \"input\" needs the diffusion mean_type"),
    (lambda v: v["diffairec"].update(attribute="age"), "diffairec.attribute"),
    (lambda v: v["diffairec"]["train"].update(monitor="ndcg@50"), "diffairec.train.monitor"),
    (lambda v: v.update(method="fair_mf") or v["backbone"].update(name="sasrec"), "backbone.name"),
    (lambda v: v["diffairec"]["diffusion"].update(schedule="sqrt"), "diffairec.diffusion"),
], ids=["leave_one_out", "unknown_group_vectors", "unknown_swap", "input_swap_predicting_noise",
        "attribute_not_loaded", "monitor_cutoff", "sequential_backbone", "diffusion_schedule"])
def test_bad_configs_fail_before_reading_data(tmp_path, change, message):
    values = copy.deepcopy(config_values(tmp_path / "no_data_here"))
    change(values)
    with pytest.raises(ConfigError, match=message):
        parse_config(values)


def test_results_carry_validation_gaps_for_choosing_settings(variants):
    """Every synthetic user has validation and test positives, so each stage's group means, weighted by the group
    sizes, give back that stage's overall mean: the validation gaps come from the validation targets."""
    _, _, runs = variants
    for results in runs.values():
        b = block(results)
        sizes = np.asarray(b["group_users"], float)
        assert set(b["valid_gaps"]) == {"@10", "@20"}
        for stage, gaps in (("valid", b["valid_gaps"]), ("test", b["gaps"])):
            for k in ("@10", "@20"):
                for metric in ("recall", "ndcg"):
                    by_group = np.asarray(gaps[k][f"{metric}_by_group"])
                    assert np.dot(sizes, by_group) / sizes.sum() == pytest.approx(b[stage][f"{metric}{k}"], rel=1e-5)
        assert results["tables"]["valid"]["all"]["recall_gap@20"] == b["valid_gaps"]["@20"]["recall_gap"]


def test_selection_against_a_reference_point_reads_validation_gaps_only():
    """The DifFaiRec rule: admissible when validation NDCG@20 keeps 98% of DiffRec's, then the smallest validation
    gap difference to DiffRec. Test numbers are not even passed to the rule."""
    rules = [parse_rule("admit: {all:ndcg@20} >= 0.98 * {diffrec/all:ndcg@20}"),
             parse_rule("min: {all:eo_gap@20} - {diffrec/all:eo_gap@20}")]
    means = {"diffrec": {"all": {"ndcg@20": 0.40, "eo_gap@20": 0.10}},
             "fairer": {"all": {"ndcg@20": 0.40, "eo_gap@20": 0.05}},
             "less_fair": {"all": {"ndcg@20": 0.40, "eo_gap@20": 0.20}},
             "inaccurate": {"all": {"ndcg@20": 0.30, "eo_gap@20": 0.01}}}
    chosen = select_points(means, rules)
    assert chosen["admissible"] == ["diffrec", "fairer", "less_fair"] and chosen["chosen"] == "fairer"
    assert chosen["scores"]["fairer"] == [pytest.approx(-0.05)]
