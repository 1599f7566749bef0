"""The DifFaiRec experiment end to end on a tiny synthetic dataset: every variant (DiffRec, DifFaiRec with mean and
PCA group vectors, the regularised and the plain MF) is trained, evaluated on validation and test, and reported with
its group gaps at @10 and @20 and its probe AUC; configs the experiment cannot honour fail before any data is read."""

import copy
import json

import numpy as np
import pytest

from jaxfair.config import ConfigError
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.experiments import runner
from jaxfair.experiments.config import parse_config
from test_benchmarks import load as load_benchmark

VARIANTS = ["diffrec", "diffairec_mean", "diffairec_pca", "fair_mf", "mf"]


def config_values(data_dir):
    return {
        "data": {"source": str(data_dir), "recipe": "diffairec", "attributes": ["gender"]},
        "backbone": {"name": "pmf", "dim": 8, "l2": 0.0},
        "train": {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "monitor": "ndcg@20", "checkpoint_every": 2},
        "evaluate": {"protocols": ["full"], "ks": [10, 20]},
        "probe": {"steps": 50, "eval_every": 25, "weight_decays": [1e-3], "bootstrap": 0},
        "diffairec": {"variants": list(VARIANTS), "attribute": "gender", "latent_dim": 8, "components": 2,
                      "gamma": 1000.0, "mf_batch_size": 256,
                      "diffusion": {"steps": 3, "hidden": [16], "time_dim": 4}},
    }


def parse(values):
    return parse_config(values, tuple(runner.METHODS))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffairec_data")
    write_ml100k_folder(make_synthetic(num_users=60, num_items=80, per_user=20), root)
    return root


@pytest.fixture(scope="module")
def diffairec_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffairec_out")
    return out, runner.run(parse(config_values(data_dir)), out, log=lambda _: None)


def test_results_report_every_variant_with_metrics_gaps_and_probe(diffairec_run):
    out, results = diffairec_run
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["variants"]) == VARIANTS
    assert saved["attribute"] == "gender" and saved["groups"] == ["F", "M"]
    assert sum(saved["group_users"]) == saved["statistics"]["users"] == 60
    assert saved["diffusion"]["steps"] == 3 and saved["method"]["components"] == 2
    for name, block in saved["variants"].items():
        for stage in ("valid", "test"):
            for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "precision@20", "hr@20"):
                assert 0.0 <= block[stage][metric] <= 1.0, (name, stage, metric)
        assert block["test"]["recall@20"] >= block["test"]["recall@10"]
        assert set(block["gaps"]) == {"@10", "@20"}
        for gaps in block["gaps"].values():
            for gap in ("recall_gap", "ndcg_gap", "eo_gap"):
                assert np.isfinite(gaps[gap]) and 0.0 <= gaps[gap] <= 1.0, (name, gap)
            assert len(gaps["recall_by_group"]) == len(gaps["tpr_by_group"]) == 2
            assert gaps["recall_gap"] == pytest.approx(abs(gaps["recall_by_group"][0] - gaps["recall_by_group"][1]))
        assert 0.0 <= block["probe_auc"] <= 1.0
        assert block["epochs_run"] == 2 and 1 <= block["best_epoch"] <= 2
        assert block["train_seconds"] > 0
    assert results["variants"].keys() == saved["variants"].keys()


def test_variants_are_different_models(diffairec_run):
    _, results = diffairec_run
    variants = results["variants"]
    assert variants["diffrec"]["test"] != variants["diffairec_mean"]["test"]
    assert variants["diffairec_mean"]["gaps"] != variants["diffairec_pca"]["gaps"]
    # the penalty reaches the regularised MF only (a large gamma: the preferences start near sigmoid(0) = 1/2, so
    # the squared gap of their group means is tiny)
    assert variants["fair_mf"]["test"] != variants["mf"]["test"]
    assert results["method"]["gamma"] == 1000.0


def test_run_writes_the_split_config_and_a_log_per_variant(diffairec_run):
    out, _ = diffairec_run
    assert (out / "split.npz").exists() and (out / "config.json").exists()
    logged = {p.name for p in out.rglob("*")}
    for name in VARIANTS:
        assert any(name in entry for entry in logged), name


@pytest.mark.parametrize("change, message", [
    (lambda v: v["data"].update(split="leave_one_out"), "data.split"),
    (lambda v: v["diffairec"].update(variants=["diffrec", "vae"]), "diffairec: variants"),
    (lambda v: v["diffairec"].update(swap="output"), "diffairec: swap"),
    (lambda v: (v["diffairec"].update(swap="input"), v["diffairec"]["diffusion"].update(mean_type="eps")),
     "diffairec.swap"),
    (lambda v: v["diffairec"].update(attribute="age"), "diffairec.attribute"),
    (lambda v: v["train"].update(monitor="ndcg@50"), "train.monitor"),
    (lambda v: v["backbone"].update(name="sasrec"), "backbone.name"),
    (lambda v: v["diffairec"]["diffusion"].update(schedule="sqrt"), "diffairec.diffusion"),
], ids=["leave_one_out", "unknown_variant", "unknown_swap", "input_swap_predicting_noise", "attribute_not_loaded", "monitor_cutoff", "sequential_backbone",
        "diffusion_schedule"])
def test_bad_configs_fail_before_reading_data(tmp_path, change, message):
    values = copy.deepcopy(config_values(tmp_path / "no_data_here"))
    change(values)
    with pytest.raises(ConfigError, match=message):
        runner.run(parse(values), tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_seeds_harness_summarises_variants_and_checks_gaps_against_diffrec(diffairec_run, tmp_path):
    harness = load_benchmark("diffairec_seeds")
    _, results = diffairec_run
    second = copy.deepcopy(results)
    second["seed"] = 1
    for gap in harness.GAPS:  # DiffRec fairer on seed 1 than every DifFaiRec variant on seed 0 and 1 together
        second["variants"]["diffrec"]["gaps"]["@20"][gap] = -1.0
    summary, table = harness.summarize([results, second])
    assert summary["seeds"] == [0, 1]
    assert set(summary["variants"]) == set(VARIANTS)
    assert len(summary["variants"]["diffairec_pca"]["eo_gap@20"]) == 2
    assert set(summary["checks"]["gaps_below_diffrec"]) == {"diffairec_mean", "diffairec_pca"}
    assert summary["checks"]["gaps_below_diffrec"]["diffairec_mean"]["eo_gap@20"] is False
    assert summary["checks"]["met"] is False
    assert table.count("| diffrec |") == 2 and "not met" in table
    # paired over seeds: seed 1's DiffRec gap moved to -1, so the differences are d_0 and d_0 + (b_0 + 1)
    ours, base = results["variants"]["diffairec_mean"]["gaps"]["@20"]["eo_gap"], results["variants"]["diffrec"]["gaps"]
    d = np.array([ours - base["@20"]["eo_gap"], ours + 1.0])
    paired = summary["paired"]["diffairec_mean"]["eo_gap@20"]
    assert paired["mean"] == pytest.approx(d.mean())
    assert paired["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(2)))
    assert summary["paired"]["diffairec_pca"]["ndcg_gap@10"]["t"] is None  # two identical seeds: no spread
    assert table.count("Paired over seeds") == 2
    # --paired-only rebuilds the same paired block from a summary's per-seed lists alone
    bare = {k: v for k, v in summary.items() if k != "paired"}
    (tmp_path / "summary.json").write_text(json.dumps(bare))
    (tmp_path / "table.md").write_text(table.split("\nPaired over seeds")[0] + "\n")
    rebuilt = harness.main(["unused.toml", "--paired-only", "--out", str(tmp_path)])
    assert rebuilt["paired"] == json.loads(json.dumps(summary["paired"]))
    assert (tmp_path / "table.md").read_text() == table


def with_validation(results, gap: float, ndcg: float, names, test_gap=None):
    """A copy of ``results`` whose ``names`` have every validation gap ``gap`` and validation NDCG@20 ``ndcg``."""
    out = copy.deepcopy(results)
    for name in names:
        block = out["variants"][name]
        block["valid"]["ndcg@20"] = ndcg
        for k in ("@10", "@20"):
            block["valid_gaps"][k].update(recall_gap=gap, ndcg_gap=gap, eo_gap=gap)
            if test_gap is not None:
                block["gaps"][k].update(recall_gap=test_gap, ndcg_gap=test_gap, eo_gap=test_gap)
    return out


def test_results_carry_validation_gaps_for_choosing_settings(diffairec_run):
    """Every synthetic user has validation and test positives, so each stage's group means, weighted by the group
    sizes, give back that stage's overall mean: the validation gaps come from the validation targets."""
    _, results = diffairec_run
    sizes = np.asarray(results["group_users"], float)
    for block in results["variants"].values():
        assert set(block["valid_gaps"]) == {"@10", "@20"}
        for stage, gaps in (("valid", block["valid_gaps"]), ("test", block["gaps"])):
            for k in ("@10", "@20"):
                for metric in ("recall", "ndcg"):
                    by_group = np.asarray(gaps[k][f"{metric}_by_group"])
                    assert np.dot(sizes, by_group) / sizes.sum() == pytest.approx(block[stage][f"{metric}{k}"], rel=1e-5)
        assert block["valid_gaps"]["@20"]["recall_gap"] == pytest.approx(
            abs(np.subtract(*block["valid_gaps"]["@20"]["recall_by_group"])))


def test_sweep_chooses_the_fairest_admissible_setting_from_validation_only(diffairec_run):
    sweep = load_benchmark("diffairec_sweep")
    _, results = diffairec_run
    base = with_validation(results, 0.1, 0.4, ["diffrec"])["variants"]["diffrec"]
    fairer = with_validation(results, 0.05, 0.4, sweep.DIFFAIREC, test_gap=0.9)  # test gaps must be ignored
    less_fair = with_validation(results, 0.2, 0.4, sweep.DIFFAIREC, test_gap=0.0)
    inaccurate = with_validation(results, 0.01, 0.3, sweep.DIFFAIREC)
    scores = {w: sweep.score_setting([base], [r], sweep.DIFFAIREC)
              for w, r in ((1.0, fairer), (2.0, less_fair), (3.0, inaccurate))}
    assert scores[1.0]["gap_difference"] == pytest.approx(-0.05) and scores[2.0]["gap_difference"] == pytest.approx(0.1)
    assert scores[3.0]["accuracy_ratio"] == pytest.approx(0.75)
    assert scores[1.0]["gap_minus_reference"]["eo_gap@10"] == pytest.approx(-0.05)
    assert sweep.choose(scores, 0.98) == 1.0  # 3.0 is fairest but loses 25% NDCG
    assert sweep.choose(scores, 0.7) == 3.0
    assert sweep.choose({3.0: scores[3.0]}, 0.98) is None


def test_sweep_runs_both_grids_and_rereads_finished_runs(data_dir, tmp_path):
    sweep = load_benchmark("diffairec_sweep")
    values = config_values(data_dir)
    values["train"]["epochs"] = 1
    lines = []
    for section, block in values.items():
        nested = {k: v for k, v in block.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in block.items() if k not in nested]
        for name, sub in nested.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in sub.items()]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    args = [str(path), "--weights", "2", "--gammas", "10", "--seeds", "0", "--swap", "input", "--serve", "factual",
            "--out", str(tmp_path / "sweep")]
    report = sweep.main(args)
    assert report["counterfactual_weight"]["reference"] == "diffrec"
    assert set(report["counterfactual_weight"]["scores"]) == {"2"} and set(report["gamma"]["scores"]) == {"10"}
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["gamma"]["variants"] == ["fair_mf"]
    run = json.loads((tmp_path / "sweep" / "seed0" / "counterfactual_weight2" / "results.json").read_text())
    assert list(run["variants"]) == list(sweep.DIFFAIREC) and run["method"]["counterfactual_weight"] == 2.0
    assert (run["method"]["swap"], run["method"]["serve"]) == ("input", "factual")  # --swap / --serve reach DifFaiRec
    reference = json.loads((tmp_path / "sweep" / "seed0" / "diffrec" / "results.json").read_text())
    assert (reference["method"]["swap"], reference["method"]["serve"]) == ("condition", "average")  # not the reference
    assert (saved["swap"], saved["serve"]) == ("input", "factual")
    runs = saved["counterfactual_weight"]["scores"]["2"]["runs"]
    assert len(runs) == 1 and set(runs[0]) == set(sweep.DIFFAIREC)
    assert runs[0]["diffairec_mean"]["probe_auc"] == run["variants"]["diffairec_mean"]["probe_auc"]
    assert runs[0]["diffairec_pca"]["valid_recall@10_by_group"] == run["variants"]["diffairec_pca"]["valid_gaps"][
        "@10"]["recall_by_group"]
    assert set(saved["counterfactual_weight"]["reference_runs"][0]) == {"diffrec"}
    marker = tmp_path / "sweep" / "seed0" / "gamma10" / "results.json"
    stamp = marker.stat().st_mtime_ns
    assert sweep.main(args) == report  # every run is read back, none retrained
    assert marker.stat().st_mtime_ns == stamp
    assert report["gamma"]["chosen"] in (None, "10")
    assert "learning_rate = 0.01" in path.read_text()
    path.write_text(path.read_text().replace("learning_rate = 0.01", "learning_rate = 0.02"))
    with pytest.raises(SystemExit, match="another config"):  # a finished run of other settings is not reused
        sweep.main(args)
