"""A new method needs one module, its registration, one config, one test file and one docs page: a tiny method
written only against the contract (``tests/example_method.py``) trains, evaluates, serves, sweeps and reports
through the same commands as the shipped ones; and every shipped method is a registered contract bundle."""

import ast
import json
import pathlib

import numpy as np
import pytest

import example_method
from jaxfair.cli import main
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.methods import METHODS, register
from jaxfair.methods.base import Method
from jaxfair.pipeline import restore_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = """
method = "gain"
[data]
source = "{source}"
[backbone]
name = "pmf"
dim = 8
[backbone.train]
epochs = 2
learning_rate = 0.01
[evaluate]
protocols = ["sampled", "full"]
ks = [10]
[gain]
floor = 0.1
[gain.train]
epochs = 3
"""


@pytest.fixture(scope="module")
def registered():
    register(example_method.METHOD)
    yield example_method.METHOD
    METHODS.pop("gain")


@pytest.fixture(scope="module")
def config(registered, tmp_path_factory):
    root = tmp_path_factory.mktemp("gain")
    write_ml100k_folder(make_synthetic(num_users=60, num_items=150, per_user=20, seed=2), root / "data")
    (root / "gain.toml").write_text(CONFIG.format(source=root / "data"))
    return root / "gain.toml"


def test_the_example_is_written_against_the_contract_only():
    tree = ast.parse((ROOT / "tests" / "example_method.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m.startswith(("jaxfair.methods.afrl", "jaxfair.methods.cofair", "jaxfair.pipeline",
                                 "jaxfair.harness", "jaxfair.cli")) for m in modules)
    assert "jaxfair.methods.base" in modules


def test_it_trains_evaluates_and_serves_through_the_pipeline(config, tmp_path, capsys):
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "gain" and results["models"]["gain"]["epochs_run"] == 3
    assert (tmp_path / "run" / "checkpoints" / "gain").is_dir() and (tmp_path / "run" / "gain_log.jsonl").exists()
    assert set(results["tables"]["test"]["all"]) == {"sampled/ndcg@10", "sampled/hr@10", "sampled/recall@10",
                                                    "sampled/precision@10", "full/ndcg@10", "full/hr@10",
                                                    "full/recall@10", "full/precision@10"}
    gains = np.asarray(results["gain"]["gains"])
    assert gains.shape == (8,) and (gains > 0.1).all() and not np.allclose(gains, gains[0])  # it learned
    restored = restore_run(tmp_path / "run")
    np.testing.assert_allclose(np.asarray(restored.serve()),
                               np.asarray(restored.context.frozen.user_vecs["test"]) * gains, rtol=1e-5)
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    again = json.loads((tmp_path / "run" / "evaluation.json").read_text())["tables"]
    assert again["test"]["all"] == pytest.approx(results["tables"]["test"]["all"])


def test_it_sweeps_and_reports_through_the_same_commands(config, tmp_path, capsys):
    (tmp_path / "grid.toml").write_text('[grid]\n"gain.floor" = [0.0, 1.0]\n')
    assert main(["sweep", str(config), "--grid", str(tmp_path / "grid.toml"), "--seeds", "0", "1",
                 "--out", str(tmp_path / "sweep"), "--select", "max: {all:sampled/ndcg@10}"]) == 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert list(summary["points"]) == ["gain.floor=0.0", "gain.floor=1.0"]
    assert summary["selection"]["chosen"] in summary["points"]
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sweep"), "--columns", "sampled/ndcg@10", "full/ndcg@10"]) == 0
    out = capsys.readouterr().out
    assert "| gain.floor=1.0 |" in out and out.startswith("mean ± std over 2 seeds")


def test_every_shipped_method_is_a_registered_contract_bundle():
    assert list(METHODS)[:9] == ["noop", "afrl", "sm", "ffvae", "erasure", "cofair", "itfr", "diffairec", "fair_mf"]
    for name, method in METHODS.items():
        assert isinstance(method, Method) and method.name == name and method.description
        assert "train" in method.Config.__dataclass_fields__
