"""The ``jaxfair`` command end to end on a small synthetic dataset written in the GroupLens ML-100k layout."""

import json
import shlex

import numpy as np
import pandas as pd
import pytest

from jaxfair.cli import main
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

CONFIG = """
# tiny PMF run
[data]
source = "{source}"
seed = 1

[backbone]
name = "pmf"
dim = 16

[backbone.train]
epochs = {epochs}
batch_size = 128
learning_rate = 0.01
patience = 10

[evaluate]
protocols = ["sampled", "full"]
ks = [5, 10]

[probe]
audit_max_repeats = 5
steps = 50
eval_every = 25
bootstrap = 50
"""


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic-ml100k")
    write_ml100k_folder(make_synthetic(num_users=80, num_items=150, per_user=20, seed=4), folder)
    return folder


def write_config(path, source, epochs=3, extra=""):
    path.write_text(CONFIG.format(source=source, epochs=epochs) + extra)
    return path


@pytest.fixture(scope="module")
def finished_run(data_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = write_config(root / "pmf.toml", data_folder)
    assert main(["train", str(config), "--out", str(root / "out")]) == 0
    return root / "out"


def test_train_writes_results_with_dataset_protocols_and_seed(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    assert results["dataset"] == "ml-100k" and results["seed"] == 0 and results["split_seed"] == 1
    assert results["statistics"]["users"] == 80 and results["method"] == "noop"
    assert set(results["protocols"]) == {"sampled", "full"}
    for model in ("backbone", "popularity"):
        for protocol in ("sampled", "full"):
            block = results["noop"]["metrics"][model][protocol]
            assert block["protocol"] == protocol
            assert 0.0 <= block["test"]["ndcg@10"] <= 1.0 and 0.0 <= block["test"]["hr@5"] <= 1.0
    assert set(results["noop"]["probe"]) == set(results["noop"]["unseen"]) == {"gender", "age", "occupation"}
    assert all(0.0 <= p["auc"] <= 1.0 for p in results["noop"]["probe"].values())
    # the flat tables the harness summarises hold the same numbers
    assert results["tables"]["test"]["backbone"]["full/ndcg@10"] == \
        results["noop"]["metrics"]["backbone"]["full"]["test"]["ndcg@10"]
    assert results["tables"]["test"]["backbone"]["unseen_auc/gender"] == results["noop"]["unseen"]["gender"]["auc"]
    assert results["backbone"]["name"] == "pmf" and results["backbone"]["epochs_run"] == 3
    assert json.loads((finished_run / "config.json").read_text())["backbone"]["train"]["epochs"] == 3


def test_train_writes_embeddings_aligned_with_users_csv(finished_run):
    embeddings = np.load(finished_run / "user_embeddings.npy")
    users = pd.read_csv(finished_run / "users.csv")
    assert embeddings.shape == (80, 16) and np.isfinite(embeddings).all()
    assert list(users.columns) == ["user", "raw_id", "probe_split", "gender", "age", "occupation"]
    assert len(users) == 80 and set(users["probe_split"]) == {"train", "valid", "test"}
    assert set(users["gender"]) == {"F", "M"}
    assert len((finished_run / "train_log.jsonl").read_text().splitlines()) == 3
    assert not list(finished_run.glob(".*.tmp"))


def test_evaluate_reproduces_the_runs_test_metrics(finished_run, capsys):
    assert main(["evaluate", str(finished_run)]) == 0
    again = json.loads((finished_run / "evaluation.json").read_text())["tables"]
    original = json.loads((finished_run / "results.json").read_text())["tables"]
    assert set(original["test"]["run"]) >= {"total_seconds", "fit_seconds", "epochs"} and "run" not in again["test"]
    for stage in ("valid", "test"):
        for row, columns in original[stage].items():
            if row in ("run", "data"):  # the pipeline's rows (wall seconds and counts), not the method's
                continue
            for column, value in columns.items():
                assert again[stage][row][column] == pytest.approx(value, abs=1e-6), (stage, row, column)
    assert "ndcg@10" in capsys.readouterr().out
    assert main(["evaluate", str(finished_run), "--protocol", "full", "--k", "3"]) == 0
    assert set(json.loads((finished_run / "evaluation.json").read_text())["noop"]["metrics"]["backbone"]) == {"full"}


def test_probe_audits_any_embedding_file(finished_run, capsys):
    code = main(["probe", str(finished_run / "user_embeddings.npy"), str(finished_run / "users.csv"), "--bootstrap", "50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "gender" in out and "occupation" in out and "ci_low" in out


def test_probe_unseen_audit_uses_only_the_named_probe_split_users(finished_run, tmp_path, capsys):
    out_json = tmp_path / "probe.json"
    code = main(["probe", str(finished_run / "user_embeddings.npy"), str(finished_run / "users.csv"),
                 "--attributes", "gender", "--bootstrap", "50", "--unseen", "valid", "test", "--out", str(out_json)])
    assert code == 0
    assert "unseen_auc" in capsys.readouterr().out
    users = pd.read_csv(finished_run / "users.csv")
    audit = json.loads(out_json.read_text())["probe"]["gender"]["unseen"]
    assert audit["num_users"] == int(users["probe_split"].isin(["valid", "test"]).sum())
    assert 0.0 <= audit["auc"] <= 1.0


def test_probe_unseen_audit_needs_a_probe_split_column(finished_run, tmp_path, capsys):
    users = pd.read_csv(finished_run / "users.csv").drop(columns=["probe_split"])
    users.to_csv(tmp_path / "no_split.csv", index=False)
    assert main(["probe", str(finished_run / "user_embeddings.npy"), str(tmp_path / "no_split.csv"),
                 "--unseen", "test"]) == 2
    assert "--unseen needs a probe_split column" in capsys.readouterr().err


def test_probe_rejects_mismatched_rows_with_a_clear_message(finished_run, tmp_path, capsys):
    users = pd.read_csv(finished_run / "users.csv").iloc[:-1]
    users.to_csv(tmp_path / "short.csv", index=False)
    assert main(["probe", str(finished_run / "user_embeddings.npy"), str(tmp_path / "short.csv")]) == 2
    assert "79 rows, but" in capsys.readouterr().err


def test_a_rerun_reports_complete_and_another_config_stops_unless_restart(data_folder, tmp_path, capsys):
    config = write_config(tmp_path / "pmf.toml", data_folder, epochs=2)
    out = tmp_path / "out"
    assert main(["train", str(config), "--out", str(out)]) == 0
    first = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert "complete" in capsys.readouterr().out and (out / "results.json").read_bytes() == first
    config = write_config(tmp_path / "pmf.toml", data_folder, epochs=3)
    assert main(["train", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "backbone.train.epochs: 2 -> 3" in err and "--restart" in err and err.count("\n") == 1
    assert (out / "results.json").read_bytes() == first  # nothing was touched
    assert main(["train", str(config), "--out", str(out), "--restart"]) == 0
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]
    assert len(kept) == 1 and (kept[0] / "results.json").read_bytes() == first
    assert json.loads((out / "config.json").read_text())["backbone"]["train"]["epochs"] == 3
    assert "epoch 3/3" in capsys.readouterr().out


def test_set_overrides_config_keys_on_the_command_line(data_folder, tmp_path):
    config = write_config(tmp_path / "pmf.toml", data_folder)
    assert main(["train", str(config), "--set", "backbone.train.epochs=2", "backbone.dim=8", "--seed", "3",
                 "--out", str(tmp_path / "out")]) == 0
    resolved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert resolved["backbone"]["train"]["epochs"] == 2 and resolved["backbone"]["dim"] == 8 and resolved["seed"] == 3
    assert np.load(tmp_path / "out" / "user_embeddings.npy").shape == (80, 8)


def test_train_with_seeds_writes_a_run_per_seed_their_backbones_trained_in_one_program(data_folder, tmp_path,
                                                                                       capsys):
    config = write_config(tmp_path / "pmf.toml", data_folder, epochs=2)
    assert main(["train", str(config), "--seeds", "0", "1", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "the backbones of seeds [0, 1] in one program" in out and "runs/base" in out
    for seed in (0, 1):
        results = json.loads((tmp_path / "out" / "runs" / "base" / f"seed{seed}" / "results.json").read_text())
        assert results["seed"] == seed and results["backbone"]["epochs_run"] == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(SystemExit):  # argparse: --seed and --seeds are exclusive
        main(["train", str(config), "--seed", "1", "--seeds", "0", "1", "--out", str(tmp_path / "other")])
    assert "not allowed with argument" in capsys.readouterr().err


def test_sweep_then_report_renders_every_point_from_the_summary(data_folder, tmp_path, capsys):
    config = write_config(tmp_path / "pmf.toml", data_folder, epochs=2)
    (tmp_path / "grid.toml").write_text('[grid]\n"backbone.dim" = [4, 8]\n')
    argv = ["sweep", str(config), "--grid", str(tmp_path / "grid.toml"), "--seeds", "0", "1", "--out",
            str(tmp_path / "sweep")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert list(summary["points"]) == ["backbone.dim=4", "backbone.dim=8"]
    stats = summary["points"]["backbone.dim=8"]["tables"]["test"]["backbone"]["full/ndcg@10"]
    runs = [json.loads((tmp_path / "sweep" / "runs" / "backbone.dim=8" / f"seed{s}" / "results.json").read_text())
            for s in (0, 1)]
    values = [r["tables"]["test"]["backbone"]["full/ndcg@10"] for r in runs]
    assert stats["values"] == values and stats["n"] == 2 and stats["mean"] == pytest.approx(np.mean(values))
    # the command main() was given, whatever started this process
    assert json.loads((tmp_path / "sweep" / "provenance.json").read_text())["command"] == shlex.join(["jaxfair", *argv])
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sweep"), "--rows", "backbone", "--columns", "full/ndcg@10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mean ± std over 2 seeds") and "| backbone.dim=8 |" in out
    assert f"{np.mean(values):.3f} ± {np.std(values):.3f}" in out


def test_report_and_sweep_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a sweep folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train", "configs/pmf_ml100k.toml", "--out", str(tmp_path / "file")]) == 2
    assert "names a file, not a folder" in capsys.readouterr().err


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("noop", "afrl", "sm", "ffvae", "erasure", "cofair", "itfr", "diffairec", "fair_mf"):
        assert name in out


def test_unknown_section_fails_naming_it(data_folder, tmp_path, capsys):
    config = write_config(tmp_path / "bad.toml", data_folder, extra="\n[model]\nx = 1\n")
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxfair: error: model: unknown section")


def test_unknown_key_and_bad_type_are_named(data_folder, tmp_path, capsys):
    text = CONFIG.format(source=data_folder, epochs=3)
    (tmp_path / "a.toml").write_text(text.replace("patience = 10", "patience = 10\nepochz = 4"))
    assert main(["train", str(tmp_path / "a.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "train.epochz: unknown key" in capsys.readouterr().err
    (tmp_path / "b.toml").write_text(text.replace("dim = 16", 'dim = "big"'))
    assert main(["train", str(tmp_path / "b.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "backbone.dim: expected an integer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the config is valid


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", tmp_path / "nowhere")
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err
