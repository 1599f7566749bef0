"""The benchmark scripts still run (tiny sizes, no timing asserted: performance is measured by running them)."""

import dataclasses
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    """Execute ``benchmarks/<name>.py`` as a module, with ``benchmarks/`` on ``sys.path`` as when it runs as a script
    (the step benchmarks ``import timing``, their shared helpers)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_afrl_step_benchmark_reports_every_ratio(tmp_path):
    out = tmp_path / "step.json"
    load("afrl_step").main(["--users", "40", "--items", "30", "--batch", "8", "--steps", "3", "--repeats", "1",
                            "--no-torch", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["jax_jit_step_s"] > 0 and results["loop_over_vmapped_requirements"] > 0


def test_main_job_summary_aggregates_seeds():
    summarize = load("afrl_main_job").summarize
    runs = [
        {
            "seed": s,
            "backbone": {"name": "pmf", "metrics": {"ndcg@10": 0.4, "hr@10": 0.6}, "probe_auc": {"gender": 0.7},
                         "unseen_auc": {"gender": 0.66}},
            "afrl": {"requirements": {"G": {"sensitive": ["gender"], "metrics": {"ndcg@10": 0.3 + 0.1 * s,
                                                                                 "hr@10": 0.5}, "mean_auc": 0.55,
                                            "mean_unseen_auc": 0.6 + 0.02 * s}}},
            "timings": {"afrl_seconds": 1.0 + s, "afrl_epochs": 3},
        }
        for s in (0, 1)
    ]
    summary, table = summarize(runs)
    assert "| G | 0.700 ± 0.000 | 0.550 ± 0.000 | 0.660 ± 0.000 | 0.610 ± 0.010 | 0.350 ± 0.050 |" in table
    assert summary["requirements"]["G"]["afrl_mean_unseen_auc"] == [0.6, 0.62]
    assert summary["total_seconds"] == [1.0, 2.0]


TINY_AFRL = """
[data]
source = "{source}"
attributes = ["gender", "age"]
[backbone]
name = "pmf"
dim = 8
[train]
epochs = 2
learning_rate = 0.01
[evaluate]
protocols = ["sampled"]
ks = [10]
[probe]
steps = 50
eval_every = 25
bootstrap = 0
[afrl]
hidden = 8
epochs = 2
learning_rate = 1e-3
"""


def tiny_afrl_config(tmp_path):
    from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

    write_ml100k_folder(make_synthetic(num_users=120, num_items=160, per_user=20), tmp_path / "data")
    config = tmp_path / "afrl.toml"
    config.write_text(TINY_AFRL.format(source=tmp_path / "data"))
    return str(config)


def record_data_builds(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` (a method's data builder, ``(split, ...) -> data``) so each call appends ``(split, data)``
    to the returned list."""
    built, original = [], getattr(module, name)

    def recording(split, *args, **kwargs):
        data = original(split, *args, **kwargs)
        built.append((split, data))
        return data

    monkeypatch.setattr(module, name, recording)
    return built


def test_lambda_sweep_writes_front_and_picks_on_validation(tmp_path, monkeypatch):
    from jaxfair.experiments import afrl as afrl_experiment

    built = record_data_builds(monkeypatch, afrl_experiment, "afrl_data")
    load("afrl_lambda_sweep").main([tiny_afrl_config(tmp_path), "--lams", "0.1", "1", "--set", "aggregator_residual=true",
                                    "--out", str(tmp_path / "sweep")])
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    (split, data), = built  # trained without the probe-validation users' labels, on which it selects
    weight = np.asarray(data.attribute_weight)
    assert np.all(weight[split.probe_users["train"]] == 1) and not weight[split.probe_users["valid"]].any()
    assert not weight[split.probe_users["test"]].any() and sweep["withheld_labels"] == ["probe valid", "probe test"]
    assert [p["lam"] for p in sweep["points"]] == [0.1, 1.0] and sweep["chosen_lam"] in (0.1, 1.0)
    assert sweep["overrides"] == {"aggregator_residual": True}
    assert (tmp_path / "sweep" / "pareto.png").stat().st_size > 0
    assert all(0.0 <= p["valid_audit_auc"] <= 1.0 for p in sweep["points"])
    assert set(sweep["chosen_by_rule"]) == {"standard", "audit"} and sweep["select"] == "standard"
    assert sweep["chosen_lam"] == sweep["chosen_by_rule"]["standard"]


def test_lambda_sweep_validation_audit_reads_only_the_probe_validation_users():
    import jax

    import jaxfair
    from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe

    valid_audit = load("afrl_lambda_sweep").valid_audit
    split = jaxfair.prepare(jaxfair.make_synthetic())
    users = np.asarray(split.probe_users["valid"])
    rng = np.random.default_rng(0)
    num_users = len(split.user_attributes["gender"])
    fair = rng.normal(size=(3, num_users, 4)).astype(np.float32)
    requirements = np.array([[False, False, False], [True, False, False], [True, True, False]])
    config, key = ProbeConfig(steps=50, eval_every=25, bootstrap=0), jax.random.key(0)

    def audit(embeddings, i):
        name = split.attribute_names[i]
        return cross_fitted_probe(embeddings, split.user_attributes[name], users, len(split.attribute_classes[name]),
                                  jax.random.fold_in(key, 200 + i), config)["auc"]

    got = valid_audit(fair, requirements, split, key, config)
    expected = np.mean([audit(fair[1], 0), np.mean([audit(fair[2], 0), audit(fair[2], 1)])])  # "none" is skipped
    assert got == pytest.approx(expected)
    others = np.setdiff1d(np.arange(num_users), users)
    moved = fair.copy()
    moved[:, others] = rng.normal(size=(3, len(others), 4))
    assert valid_audit(moved, requirements, split, key, config) == pytest.approx(got)


def test_lambda_sweep_overrides_parse_json_values_and_reject_a_missing_value():
    parse = load("afrl_lambda_sweep").parse_overrides
    assert parse(["aggregator_residual=true", "adversary=confusion", "beta=0.5"]) == {
        "aggregator_residual": True, "adversary": "confusion", "beta": 0.5}
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        parse(["aggregator_residual"])


def test_baselines_benchmark_reports_every_method(tmp_path):
    load("afrl_baselines").main([tiny_afrl_config(tmp_path), "--out", str(tmp_path / "base")])
    payload = json.loads((tmp_path / "base" / "baselines.json").read_text())
    assert set(payload["methods"]) == {"AFRL", "AFRL-w/o-z_i", "AFRL-w/o-z_0", "SM", "FFVAE"}
    assert all(seconds > 0 for seconds in payload["seconds"].values())

    # --summarize: two "seeds" (the run and a copy whose AFRL NDCG@10 is zero) give means, spreads and the count
    second = json.loads(json.dumps(payload))
    second["seed"] = 1
    for block in second["methods"]["AFRL"].values():
        block["metrics"]["ndcg@10"] = 0.0
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "baselines.json").write_text(json.dumps(second))
    summary = load("afrl_baselines").main(["--summarize", str(tmp_path / "base"), str(tmp_path / "seed1"),
                                           "--out", str(tmp_path / "summary.md")])
    ndcg = summary["methods"]["AFRL"]["G"]["NDCG@10"]
    assert ndcg == [payload["methods"]["AFRL"]["G"]["metrics"]["ndcg@10"], 0.0]
    assert summary["pairs"] == 2 * (len(payload["methods"]["AFRL"]) - 1)  # the non-empty requirements, both seeds
    sm_first = sum(payload["methods"]["AFRL"][n]["metrics"]["ndcg@10"] > payload["methods"]["SM"][n]["metrics"]["ndcg@10"]
                   for n, b in payload["methods"]["AFRL"].items() if b["sensitive"])
    assert summary["afrl_ndcg_above"]["SM"] == sm_first  # the zeroed seed never counts
    table = (tmp_path / "summary.md").read_text()
    assert "NDCG@10:" in table and "unseen-user audit AUC:" in table and f"SM {sm_first}/" in table
    x = ndcg[0]
    assert f"| G | {np.mean([x, 0.0]):.3f} ± {np.std([x, 0.0]):.3f} |" in table  # AFRL's column comes first
    with pytest.raises(SystemExit, match="one per seed"):  # the same seed twice
        load("afrl_baselines").main(["--summarize", str(tmp_path / "base"), str(tmp_path / "base"),
                                     "--out", str(tmp_path / "twice.md")])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["afrl_ndcg_above"] == summary["afrl_ndcg_above"] and saved["seeds"] == [payload["seed"], 1]


@pytest.mark.parametrize("flags", [["--adversary", "paper"], ["--adversary", "mean_gap"],
                                   ["--adversary", "capped", "--discriminator-layers", "1", "--discriminator-steps", "3",
                                    "--residual"],
                                   ["--adversary", "capped", "--exposure-weight", "1"]])
def test_cofair_step_benchmark_reports_every_ratio(tmp_path, flags):
    out = tmp_path / "cofair_step.json"
    results = load("cofair_step").main(["--quick", *flags, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["adversary"] == flags[1] and saved["residual"] == ("--residual" in flags)
    times = ["jax_vmap_ms", "jax_loop_ms", "jax_vmap_per_row_ms", "jax_loop_per_row_ms"]
    ratios = ["loop_over_vmap", "loop_over_vmap_per_row", "per_row_over_per_user"]
    if "--exposure-weight" in flags:
        assert saved["exposure_weight"] == 1.0
        times.append("jax_vmap_without_exposure_ms")
        ratios.append("exposure_over_plain")
    if "torch_skipped" not in saved:
        times.append("torch_ms")
        ratios += ["torch_over_jax_vmap", "torch_over_jax_vmap_per_row", "torch_over_jax_loop"]
    assert all(saved[key] > 0 for key in times + ratios)
    checks = [key for key in saved if key.startswith("check_max_abs_diff_")]
    assert len(checks) >= 2 and all(saved[key] < 1e-4 for key in checks)


def test_itfr_step_benchmark_reports_every_ratio_and_matches_torch(tmp_path):
    out = tmp_path / "itfr_step.json"
    results = load("itfr_step").main(["--users", "20", "--items", "15", "--batch", "32", "--repeats", "2",
                                      "--groups", "4", "12", "--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["shapes"]["groups"] == [4, 12] and saved["scaling_base_groups"] == 4
    times = ["jax_step_ms", "jax_epoch_ms", "jax_epoch_per_step_ms", "mf_epoch_ms", "mf_epoch_per_step_ms"]
    ratios = ["itfr_over_mf_epoch"]
    scaling = ["jax_step_ms", "jax_epoch_per_step_ms", "jax_step_over_base", "jax_epoch_per_step_over_base"]
    if "torch_skipped" not in saved:
        times += ["torch_ms", "torch_1_thread_ms"]
        ratios += ["torch_over_jax_step", "torch_over_jax_epoch_per_step", "torch_1_thread_over_jax_step"]
        scaling += ["torch_ms", "torch_over_jax_step", "torch_over_base"]
        assert set(saved["checks"]) == {"G4", "G12"}
        for per_state in saved["checks"].values():
            assert set(per_state) == {"first_epoch", "later_epoch"}
            for quantities in per_state.values():
                assert all(q["max_abs_diff"] < 1e-4 * max(1.0, q["max_abs"]) for q in quantities.values())
        assert saved["check_max_abs_diff_params"] < 1e-4
    assert all(saved[key] > 0 for key in times + ratios)
    assert [row["groups"] for row in saved["scaling"]] == [4, 12]
    assert all(row[key] > 0 for row in saved["scaling"] for key in scaling)
    assert saved["scaling"][0]["jax_step_over_base"] == 1.0


@pytest.mark.parametrize("swap, serve", [("condition", "average"), ("input", "average"), ("input", "factual")])
def test_diffairec_step_benchmark_reports_every_ratio_and_matches_torch(tmp_path, swap, serve):
    out = tmp_path / "diffairec_step.json"
    results = load("diffairec_step").main(["--quick", "--no-diffrec", "--swap", swap, "--serve", serve,
                                           "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["models"] == ["diffairec"] and saved["shapes"]["batches_per_epoch"] == 3
    assert saved["diffairec_config"]["swap"] == swap and saved["diffairec_config"]["serve"] == serve
    block = saved["diffairec"]
    times = ["jax_step_ms", "jax_epoch_ms", "jax_epoch_per_step_ms", "jax_infer_ms"]
    ratios = []
    if "torch_skipped" not in saved:
        times += ["torch_ms", "torch_infer_ms", "torch_1_thread_ms", "torch_1_thread_infer_ms"]
        ratios += [f"{prefix}_over_jax_{what}" for prefix in ("torch", "torch_1_thread")
                   for what in ("step", "epoch_per_step", "infer")]
        checks = saved["checks"]["diffairec"]
        assert checks["warm"]["importance_sampling_active"] and not checks["initial"]["importance_sampling_active"]
        assert set(checks["initial"]) >= {"params", "adam_first_moment", "loss_history", "metrics"}
        assert saved["check_passed"] is True
        assert saved["check_max_abs_diff_params"] < 1e-4 and saved["check_max_abs_diff_scores"] < 1e-4
    assert all(block[key] > 0 for key in times + ratios)


TINY_COFAIR = """
[data]
source = "{source}"
rating_threshold = 0.0
split = "temporal_ratio"
attributes = ["gender"]
[backbone]
name = "pmf"
dim = 8
[train]
epochs = 2
learning_rate = 0.01
monitor = "recall@10"
[evaluate]
protocols = ["full"]
ks = [10, 20]
[probe]
steps = 50
eval_every = 25
bootstrap = 0
[cofair]
levels = 2
batch_size = 256
epochs = 2
baseline_lambdas = [0.01]
"""


def tiny_cofair_config(tmp_path):
    from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

    write_ml100k_folder(make_synthetic(num_users=120, num_items=160, per_user=20), tmp_path / "data")
    config = tmp_path / "cofair.toml"
    config.write_text(TINY_COFAIR.format(source=tmp_path / "data"))
    return str(config)


def test_exposure_floor_reports_real_and_shuffled_group_gaps(tmp_path):
    out = tmp_path / "floor.json"
    result = load("exposure_floor").main([tiny_cofair_config(tmp_path), "--shuffles", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["real"]) == {"dp@10", "dp@20", "eopp@10", "eopp@20"} == set(result["shuffled"])
    for name, stats in result["shuffled"].items():
        assert 0 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1 and stats["std"] >= 0, name
        assert 0 <= result["real"][name] <= 1
    assert sum(result["group_sizes"]) > 0 and result["shuffles"] == 3
    with pytest.raises(SystemExit):
        load("exposure_floor").main([tiny_cofair_config(tmp_path), "--shuffles", "1", "--out", str(out)])


def test_exposure_floor_per_level_of_finished_runs(tmp_path):
    from jaxfair.experiments import runner

    config_path = tiny_cofair_config(tmp_path)
    config = runner.load(config_path)
    config = dataclasses.replace(config, sections={**config.sections,
                                                   "cofair": {**config.sections["cofair"], "retrain_baseline": False}})
    runner.run(config, tmp_path / "run", log=lambda message: None)
    floor = load("exposure_floor")
    result = floor.main(["--runs", str(tmp_path / "run"), "--shuffles", "3", "--out", str(tmp_path / "levels.json")])
    assert json.loads((tmp_path / "levels.json").read_text()) == json.loads(json.dumps(result))
    (run,) = result["runs"]
    assert len(run["levels"]) == 3 == len(result["mean_over_runs"])  # levels 0..T, T = 2
    # Level 0 is the backbone's own embedding: the restored run measures exactly what the config mode measures after
    # retraining the same backbone with the same seed, against the same random groupings.
    from_config = floor.main([config_path, "--shuffles", "3", "--out", str(tmp_path / "floor.json")])
    assert run["levels"][0]["real"] == from_config["real"]
    assert run["levels"][0]["shuffled"] == from_config["shuffled"]
    for t, level in enumerate(result["mean_over_runs"]):
        for name, v in level.items():
            assert v["excess"] == pytest.approx(v["real"] - v["shuffled"])
            assert v["real"] == run["levels"][t]["real"][name]
    # Only the users whose label Cofair never trained on: the withheld probe-validation and probe-test users.
    unseen = floor.main(["--runs", str(tmp_path / "run"), "--shuffles", "3", "--users", "unseen",
                         "--out", str(tmp_path / "unseen.json")])
    split = np.load(tmp_path / "run" / "split.npz")
    expected = len(split["probe/valid"]) + len(split["probe/test"])
    assert unseen["users"] == "unseen" and sum(unseen["runs"][0]["group_sizes"]) == expected
    assert 0 < expected < sum(run["group_sizes"])
    assert unseen["runs"][0]["levels"][0]["real"] != run["levels"][0]["real"]
    with pytest.raises(SystemExit, match="no user_embeddings_level"):
        floor.main(["--runs", str(tmp_path), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="either a config or --runs"):
        floor.main([config_path, "--runs", str(tmp_path / "run"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_cofair_seeds_summarises_levels_baseline_and_monotonicity(tmp_path):
    summary = load("cofair_seeds").main([tiny_cofair_config(tmp_path), "--seeds", "0", "1", "--out", str(tmp_path / "s")])
    assert summary["seeds"] == [0, 1]
    assert len(summary["levels"]) == 3 and len(summary["levels"][0]["probe_auc"]) == 2
    assert len(summary["retrain_baseline"]) == 1
    assert set(summary["monotone_level1_to_T"]) == {"dp@10", "probe_auc"}
    assert (tmp_path / "s" / "table.md").read_text().count("\n| ") >= 4


def test_cofair_monotonicity_check():
    is_monotone = load("cofair_seeds").is_monotone
    assert is_monotone([0.3, 0.3, 0.2]) and not is_monotone([0.3, 0.31, 0.2])


def test_cofair_sweep_reports_validation_curves(tmp_path):
    report = load("cofair_sweep").main([tiny_cofair_config(tmp_path), "--grid", '[{}, {"adversary": "capped"}]',
                                        "--seeds", "0", "1", "--out", str(tmp_path / "w")])
    runs = report["runs"]
    assert [r["setting"] for r in runs] == [{}, {"adversary": "capped"}] * 2 and [r["seed"] for r in runs] == [0, 0, 1, 1]
    assert all(len(r["valid_dp@10"]) == 3 and len(r["probe_selection_auc"]) == 3 for r in runs)
    first = report["settings"][0]
    assert first["seeds"] == [0, 1]
    np.testing.assert_allclose(first["mean_valid_dp@10"], np.mean([runs[0]["valid_dp@10"], runs[2]["valid_dp@10"]], 0))
    assert json.loads((tmp_path / "w" / "sweep.json").read_text()) == json.loads(json.dumps(report))


def test_cofair_sweep_trains_without_the_probe_validation_users_labels(tmp_path, monkeypatch):
    """The selection AUC is scored on the probe-validation users, so the sweep must not train on their labels."""
    from jaxfair.experiments import cofair as cofair_experiment

    built = record_data_builds(monkeypatch, cofair_experiment, "cofair_data")
    report = load("cofair_sweep").main([tiny_cofair_config(tmp_path), "--grid", "[{}]", "--out", str(tmp_path / "w")])
    assert report["withheld_labels"] == ["probe valid", "probe test"]
    (split, data), = built
    weight = np.asarray(data.label_weight)
    for stage, expected in (("train", 1.0), ("valid", 0.0), ("test", 0.0)):
        assert np.all(weight[split.probe_users[stage]] == expected), stage


def test_cofair_sweep_counts_falling_steps_from_level_1_and_chooses_on_them():
    sweep = load("cofair_sweep")
    assert sweep.falling_steps([0.9, 0.5, 0.4, 0.45, 0.3]) == 2  # level 0 -> 1 is not counted
    curves = lambda ratio, dp, auc: {"setting": {}, "recall_ratio": ratio, "falling_dp": dp, "falling_auc": auc,
                                     "mean_probe_selection_auc": [0.8, auc]}
    settings = [curves(0.95, 1, 1), curves(0.9, 3, 2), curves(0.5, 4, 4)]
    assert sweep.choose(settings, 0.85) is settings[1]  # the most falling steps among the accurate enough
    assert sweep.choose(settings, 0.4) is settings[2]
    assert sweep.choose(settings, 0.99) is None
    tied = [curves(0.95, 2, 2), curves(0.95, 3, 1)]
    assert sweep.choose(tied, 0.85) is tied[0]  # equals: the earlier grid entry (the public settings come first)


def test_cofair_sweep_dp_margin_tie_break_prefers_the_widest_tightest_fall():
    sweep = load("cofair_sweep")
    assert sweep.smallest_fall([0.9, 0.5, 0.4, 0.35, 0.3]) == pytest.approx(0.05)  # level 0 -> 1 not counted
    assert sweep.smallest_fall([0.9, 0.5, 0.4, 0.45]) == pytest.approx(-0.05)
    entry = lambda dp, auc, fall: {"setting": {}, "recall_ratio": 0.9, "falling_dp": dp, "falling_auc": auc,
                                   "smallest_dp_fall": fall}
    settings = [entry(4, 4, 0.001), entry(4, 4, 0.01), entry(3, 4, 0.05), entry(4, 4, 0.01)]
    assert sweep.choose(settings, 0.85) is settings[0]  # grid order (the default)
    assert sweep.choose(settings, 0.85, "dp-margin") is settings[1]  # most steps first, then the margin, then order
    with pytest.raises(ValueError):
        sweep.choose(settings, 0.85, "coin")


def test_itfr_seeds_summarises_variants_and_checks_against_bpr(tmp_path):
    from test_itfr_experiment import tiny_itfr_config

    config = tiny_itfr_config(tmp_path)
    summary = load("itfr_seeds").main([str(config), "--seeds", "0", "1", "--out", str(tmp_path / "s")])
    assert summary["seeds"] == [0, 1]
    assert list(summary["variants"]) == ["bpr", "groupdro", "itfr", "itfr_no_norm"]
    assert len(summary["variants"]["itfr"]["cv@20"]) == 2
    checks = summary["checks"]
    assert checks["cv_ratio"] > 0 and isinstance(checks["met"], bool)
    cv = {name: summary["variants"][name]["cv@20"] for name in ("bpr", "itfr")}
    assert abs(checks["cv_ratio"] - sum(cv["itfr"]) / sum(cv["bpr"])) < 1e-9
    assert (tmp_path / "s" / "table.md").read_text().count("\n| ") >= 4


def test_unseen_audit_groups_embedding_files_over_runs(tmp_path):
    import pandas as pd

    runs = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        n = 300
        gender = rng.integers(0, 2, n)
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        pd.DataFrame({"user": np.arange(n), "probe_split": rng.choice(["train", "valid", "test"], n, p=[0.6, 0.2, 0.2]),
                      "gender": np.where(gender == 1, "M", "F")}).to_csv(run / "users.csv", index=False)
        planted = rng.normal(size=(n, 4)).astype(np.float32)
        planted[:, 0] += 3.0 * gender
        np.save(run / "user_embeddings_level0.npy", planted)
        np.save(run / "user_embeddings_level1.npy", rng.normal(size=(n, 4)).astype(np.float32))
        runs.append(str(run))
    out = tmp_path / "audit.json"
    load("unseen_audit").main(runs + ["--stages", "valid", "test", "--out", str(out)])
    audit = json.loads(out.read_text())
    assert list(audit["summary"]) == ["level0", "level1"]
    assert all(a > 0.9 for kind in ("standard", "unseen") for a in audit["summary"]["level0"][kind])
    assert all(abs(a - 0.5) < 0.2 for a in audit["summary"]["level1"]["unseen"])
    users = pd.read_csv(tmp_path / "seed0" / "users.csv")
    assert audit["runs"][runs[0]]["num_unseen"] == int(users["probe_split"].isin(["valid", "test"]).sum())
    assert "| level0 |" in audit["table"]
