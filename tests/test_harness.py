"""The sweep harness and ``jaxfair report``: grids, summaries over seeds, resumable sweeps, a shared backbone that
changes nothing, validation-only selection, and every table layout the docs use."""

import json

import numpy as np
import pytest

from jaxfair.config import ConfigError
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.harness import choose, parse_rule, read_grid, select_points, summarize, sweep
from jaxfair.pipeline import load_config, run
from jaxfair.pipeline.run import restore_run
from jaxfair.pipeline.outputs import RunError
from jaxfair.report import ReportError, paired, render

CONFIG = """
method = "afrl"
[data]
source = "{source}"
attributes = ["gender", "age"]
[backbone]
name = "pmf"
dim = 8
[backbone.train]
epochs = 2
learning_rate = 0.01
[evaluate]
protocols = ["sampled"]
ks = [10]
[probe]
audit_max_repeats = 5
steps = 50
eval_every = 25
bootstrap = 0
[afrl]
hidden = 8
[afrl.train]
epochs = 2
learning_rate = 1e-3
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    write_ml100k_folder(make_synthetic(num_users=90, num_items=120, per_user=20, seed=5), root / "data")
    (root / "afrl.toml").write_text(CONFIG.format(source=root / "data"))
    return root / "afrl.toml"


@pytest.fixture(scope="module")
def swept(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "lam"
    (out.parent / "grid.toml").write_text('[grid]\n"afrl.lam" = [0.1, 10.0]\n')
    messages = []
    summary = sweep(config, out, grid=out.parent / "grid.toml", seeds=[0, 1], log=messages.append,
                    select=["admit: {mean:ndcg@10} >= 0.5 * {backbone:ndcg@10}",
                            "min: abs({mean:probe_valid_auc} - 0.5)"])
    return out, summary, messages


def test_grid_files_give_labelled_points_products_and_both(tmp_path):
    assert read_grid(None) == {"base": {}}
    (tmp_path / "a.toml").write_text('[points.bpr]\n"itfr.sam" = false\n[points.itfr]\n')
    assert read_grid(tmp_path / "a.toml") == {"bpr": {"itfr.sam": False}, "itfr": {}}
    (tmp_path / "b.toml").write_text('[grid]\n"afrl.lam" = [1, 10]\nseed = [0]\n')
    assert read_grid(tmp_path / "b.toml") == {"afrl.lam=1,seed=0": {"afrl.lam": 1, "seed": 0},
                                              "afrl.lam=10,seed=0": {"afrl.lam": 10, "seed": 0}}
    (tmp_path / "c.toml").write_text('[points.x]\nmethod = "sm"\n[grid.afrl]\nlam = [1]\n')
    assert read_grid(tmp_path / "c.toml") == {"x,afrl.lam=1": {"method": "sm", "afrl.lam": 1}}
    (tmp_path / "d.toml").write_text('[grid]\n"afrl.lam" = 1\n')
    with pytest.raises(ConfigError, match="grid.afrl.lam: expected a non-empty list"):
        read_grid(tmp_path / "d.toml")
    (tmp_path / "e.toml").write_text('[pionts.x]\n')
    with pytest.raises(ConfigError, match="a grid file holds"):
        read_grid(tmp_path / "e.toml")


def test_every_point_and_seed_is_checked_before_anything_runs(config, tmp_path):
    (tmp_path / "grid.toml").write_text('[points.ok]\n[points.bad]\n"afrl.adversary" = "fierce"\n')
    with pytest.raises(ConfigError, match="point 'bad', seed 0: afrl: adversary must be one of"):
        sweep(config, tmp_path / "out", grid=tmp_path / "grid.toml", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_sweep_writes_a_run_per_point_and_seed_and_their_summary(swept):
    out, summary, _ = swept
    assert list(summary["points"]) == ["afrl.lam=0.1", "afrl.lam=10.0"] and summary["seeds"] == [0, 1]
    for label, point in summary["points"].items():
        runs = [json.loads((out / "runs" / label / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        assert [r["config"]["afrl"]["lam"] for r in runs] == [point["overrides"]["afrl.lam"]] * 2
        for stage in ("valid", "test"):
            for row, columns in runs[0]["tables"][stage].items():
                for column in columns:
                    values = [r["tables"][stage][row][column] for r in runs]
                    stats = point["tables"][stage][row][column]
                    assert stats["values"] == values and stats["n"] == 2
                    assert stats["mean"] == pytest.approx(np.mean(values))
                    assert stats["std"] == pytest.approx(np.std(values))
    assert json.loads((out / "config.json").read_text())["afrl"]["lam"] == 0.1  # the base config, resolved
    assert (out / "grid.toml").exists() and set(json.loads((out / "provenance.json").read_text())) >= {
        "command", "commit", "date", "jaxfair", "jax", "python", "machine"}


def test_a_points_seeds_train_their_backbones_in_one_program_once_and_it_changes_nothing(swept, config, tmp_path):
    """The 2 seeds' backbones are trained together (one program, the seeds in sequence inside it) into the sweep's
    cache, once for both points; every run restores its backbone from there and its tables equal, to the last digit,
    those of a run of its own."""
    out, _, messages = swept
    assert sum("the backbones of seeds [0, 1] in one program (in sequence)" in m for m in messages) == 1
    assert sum("restored from the sweep's cache" in m for m in messages) == 4  # 4 runs, 2 seeds
    alone = run(load_config(config, ["afrl.lam=10.0"], seed=1), tmp_path / "alone", log=lambda m: None)
    shared = json.loads((out / "runs" / "afrl.lam=10.0" / "seed1" / "results.json").read_text())
    for tables in (shared["tables"], alone["tables"]):
        del tables["test"]["run"]  # wall seconds
    assert shared["tables"] == json.loads(json.dumps(alone["tables"]))
    assert shared["backbone"]["best_epoch"] == alone["backbone"]["best_epoch"]
    log = (out / "runs" / "afrl.lam=10.0" / "seed1" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]  # the backbone's log, as a run of its own writes


def test_batched_seeds_differ_from_separate_runs_by_float_rounding_only_in_the_backbone(config, tmp_path):
    """``batch_seeds``: the backbones are one vmapped program; their embeddings equal separate runs' to 1e-6 (3e-8
    measured), not bit for bit, so numbers computed downstream may move (the audit by up to 6e-4 here)."""
    messages = []
    sweep(config, tmp_path / "batched", seeds=[0, 1], log=messages.append, batch_seeds=True,
          overrides=["afrl.train.epochs=1"])
    assert any("in one program (batched)" in m for m in messages)
    alone = run(load_config(config, ["afrl.train.epochs=1"], seed=1), tmp_path / "alone", log=lambda m: None)
    together = restore_run(tmp_path / "batched" / "runs" / "base" / "seed1").context.frozen.user_vecs["test"]
    np.testing.assert_allclose(together, restore_run(tmp_path / "alone").context.frozen.user_vecs["test"], atol=1e-6)
    shared = json.loads((tmp_path / "batched" / "runs" / "base" / "seed1" / "results.json").read_text())
    assert shared["tables"]["test"]["backbone"] == pytest.approx(alone["tables"]["test"]["backbone"], abs=1e-5)


def test_an_interrupted_sweep_resumes_reading_the_finished_runs(swept, config):
    out, summary, _ = swept
    stamp = (out / "runs" / "afrl.lam=0.1" / "seed0" / "results.json").stat().st_mtime_ns
    messages = []
    again = sweep(config, out, grid=out / "grid.toml", seeds=[0, 1], log=messages.append)
    assert again["points"] == summary["points"]
    assert sum(": complete" in m for m in messages) == 4
    assert (out / "runs" / "afrl.lam=0.1" / "seed0" / "results.json").stat().st_mtime_ns == stamp


def test_selection_reads_the_validation_tables_only(swept):
    _, summary, _ = swept
    selection = summary["selection"]
    means = {label: {row: {c: s["mean"] for c, s in cols.items()} for row, cols in point["tables"]["valid"].items()}
             for label, point in summary["points"].items()}
    expected = [abs(means[label]["mean"]["probe_valid_auc"] - 0.5) for label in summary["points"]]
    assert selection["scores"] == {label: [pytest.approx(e)] for label, e in zip(summary["points"], expected)}
    # the same choice with every test number replaced by garbage
    poisoned = json.loads(json.dumps(summary))
    for point in poisoned["points"].values():
        point["tables"]["test"] = {"mean": {"probe_valid_auc": {"mean": float("nan")}}}
    rules = [parse_rule(r) for r in selection["rules"]]
    assert choose(poisoned, rules)["chosen"] == selection["chosen"]


def test_selection_rules_admit_then_rank_with_ties_to_the_earlier_point():
    means = {"a": {"r": {"acc": 0.9, "gap": 0.2}}, "b": {"r": {"acc": 0.5, "gap": 0.0}},
             "c": {"r": {"acc": 0.8, "gap": 0.1}}, "d": {"r": {"acc": 0.95, "gap": 0.1}}}
    rules = [parse_rule("admit: {r:acc} >= 0.8 * {a/r:acc}"), parse_rule("min: {r:gap}")]
    result = select_points(means, rules)
    assert result["admissible"] == ["a", "c", "d"] and result["chosen"] == "c"  # c and d tie; c comes first
    tie_break = select_points(means, rules + [parse_rule("max: {r:acc}")])
    assert tie_break["chosen"] == "d"
    assert select_points(means, [parse_rule("admit: {r:acc} > 2")])["chosen"] is None
    with pytest.raises(ConfigError, match="no validation number r:recall"):
        select_points(means, [parse_rule("min: {r:recall}")])
    for bad in ("choose: {r:acc}", "min: __import__('os')", "min: {r:acc} +"):
        with pytest.raises(ConfigError):
            parse_rule(bad)


def fake_summary(tmp_path, name, points):
    """A sweep folder with ``points``: label -> seeds -> stage -> row -> column -> value."""
    results = {label: [{"seed": s, "tables": tables} for s, tables in runs.items()] for label, runs in points.items()}
    seeds = sorted({s for runs in points.values() for s in runs})
    summary = summarize(results, {label: {} for label in points}, seeds)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_report_layouts(tmp_path):
    one_row = fake_summary(tmp_path, "variants", {
        "bpr": {0: {"test": {"all": {"cv": 0.30, "ndcg": 0.40}}}, 1: {"test": {"all": {"cv": 0.34, "ndcg": 0.42}}}},
        "itfr": {0: {"test": {"all": {"cv": 0.20, "ndcg": 0.41}}}, 1: {"test": {"all": {"cv": 0.22, "ndcg": 0.39}}}}})
    assert render([one_row], columns=["cv", "ndcg"]) == (
        "mean ± std over 2 seeds\n\n| point | cv | ndcg |\n|---|---|---|\n"
        "| bpr | 0.320 ± 0.020 | 0.410 ± 0.010 |\n| itfr | 0.210 ± 0.010 | 0.400 ± 0.010 |\n")
    assert render([one_row], columns=["cv"], transpose=True, points=["itfr", "bpr"]) == (
        "mean ± std over 2 seeds\n\n| point | itfr | bpr |\n|---|---|---|\n| cv | 0.210 ± 0.010 | 0.320 ± 0.020 |\n")
    rows = fake_summary(tmp_path, "levels", {"base": {0: {"test": {"level 0": {"dp": 0.3}, "level 1": {"dp": 0.2,
                                                                                                     "auc": 0.6}}}}})
    assert render([rows]) == ("| row | dp | auc |\n|---|---|---|\n| level 0 | 0.300 | - |\n"
                              "| level 1 | 0.200 | 0.600 |\n")
    both = fake_summary(tmp_path, "both", {
        "AFRL": {0: {"test": {"G": {"auc": 0.5, "ndcg": 0.3}, "A": {"auc": 0.6, "ndcg": 0.31}}}},
        "SM": {0: {"test": {"G": {"auc": 0.7, "ndcg": 0.2}, "A": {"auc": 0.65, "ndcg": 0.21}}}}})
    assert render([both], columns=["auc"], digits=2) == (
        "auc:\n\n| row | AFRL | SM |\n|---|---|---|\n| G | 0.50 | 0.70 |\n| A | 0.60 | 0.65 |\n")
    with pytest.raises(ReportError, match="--columns recal"):
        render([both], columns=["recal"])
    with pytest.raises(ReportError, match="no such point"):
        render([both], points=["FFVAE"])


def test_paired_differences_and_t_statistics(tmp_path):
    folder = fake_summary(tmp_path, "paired", {
        "diffrec": {0: {"test": {"all": {"gap": 0.10}}}, 1: {"test": {"all": {"gap": 0.20}}},
                    2: {"test": {"all": {"gap": 0.30}}}},
        "ours": {0: {"test": {"all": {"gap": 0.08}}}, 1: {"test": {"all": {"gap": 0.19}}},
                 2: {"test": {"all": {"gap": 0.27}}}}})
    d = np.array([-0.02, -0.01, -0.03])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    assert paired([folder], "diffrec") == (
        f"ours - diffrec, paired over 3 seeds:\n\n| row | gap |\n|---|---|\n| all | {d.mean():+.4f} (t {t:+.2f}) |\n")


def test_a_run_folder_reports_as_one_point(swept):
    out, _, _ = swept
    folder = out / "runs" / "afrl.lam=0.1" / "seed0"
    table = render([folder], rows=["G", "mean"], columns=["unseen_auc", "ndcg@10"])
    results = json.loads((folder / "results.json").read_text())
    assert f"| G | {results['tables']['test']['G']['unseen_auc']:.3f} |" in table
    assert not table.startswith("mean ±")


def test_a_sweep_folder_refuses_another_base_config_before_touching_anything(swept, config):
    out, _, _ = swept
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RunError, match=r"holds a sweep of another config \(backbone.dim: 8 -> 4\).*--restart"):
        sweep(config, out, grid=out / "grid.toml", seeds=[0, 1], overrides=["backbone.dim=4"], log=lambda m: None)
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
