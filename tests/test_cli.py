"""The ``jaxfair`` command end to end on a small synthetic dataset written in the GroupLens ML-100k layout."""

import json

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

[train]
epochs = {epochs}
batch_size = 128
learning_rate = 0.01
patience = 10

[evaluate]
protocols = ["sampled", "full"]
ks = [5, 10]

[probe]
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
    assert results["statistics"]["users"] == 80
    for model in ("pmf", "popularity"):
        for protocol in ("sampled", "full"):
            block = results["metrics"][model][protocol]
            assert block["protocol"] == protocol
            assert 0.0 <= block["test"]["ndcg@10"] <= 1.0 and 0.0 <= block["test"]["hr@5"] <= 1.0
    assert set(results["probe"]) == {"gender", "age", "occupation"}
    assert all(0.0 <= p["auc"] <= 1.0 for p in results["probe"].values())


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
    again = json.loads((finished_run / "evaluation.json").read_text())["metrics"]
    original = json.loads((finished_run / "results.json").read_text())["metrics"]["pmf"]
    for protocol in ("sampled", "full"):
        for metric, value in original[protocol]["test"].items():
            assert again[protocol]["test"][metric] == pytest.approx(value, abs=1e-6)
    assert "ndcg@10" in capsys.readouterr().out


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


def test_rerunning_a_finished_run_resumes_instead_of_starting_over(data_folder, tmp_path, capsys):
    config = write_config(tmp_path / "pmf.toml", data_folder, epochs=2)
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    config = write_config(tmp_path / "pmf.toml", data_folder, epochs=3)
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 2" in out and "epoch 3/3" in out and "epoch 1/3" not in out


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
