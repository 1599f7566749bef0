"""AFRL end to end on synthetic data whose gender is planted in the interactions (hence in the backbone's user
embeddings): after AFRL, probes predict gender from the fair embeddings much worse than from the backbone's."""

import json

import numpy as np
import pytest

from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.experiments import runner
from jaxfair.experiments.config import parse_config


@pytest.fixture(scope="module")
def afrl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("afrl")
    write_ml100k_folder(make_synthetic(num_users=400, num_items=200, per_user=24, seed=7), root / "data")
    config = parse_config(
        {
            "data": {"source": str(root / "data"), "attributes": ["gender", "age"]},
            "backbone": {"name": "pmf", "dim": 16},
            "train": {"epochs": 15, "batch_size": 256, "learning_rate": 0.01, "patience": 15},
            "evaluate": {"protocols": ["sampled"], "ks": [10]},
            "probe": {"steps": 100, "eval_every": 25, "bootstrap": 0},
            "afrl": {
                "lam": 10.0, "hidden": 16, "learning_rate": 1e-3, "batch_size": 64, "epochs": 12, "patience": 12,
                "discriminator_steps": 5,
            },
        },
        tuple(runner.METHODS),
    )
    results = runner.run(config, root / "out", log=lambda message: None)
    return root / "out", results


def test_planted_gender_leaks_from_the_backbone_and_less_from_afrl(afrl_run):
    # AFRL trains on the labels of 240 of the 400 users (the probe validation and test users' are withheld); both
    # the standard probe and the unseen-user audit see the planted gender drop by a wide margin.
    _, results = afrl_run
    block = results["afrl"]["requirements"]["G"]
    for backbone_auc, afrl_auc in (
        (results["backbone"]["probe_auc"]["gender"], block["probe_auc"]["gender"]),
        (results["backbone"]["unseen_auc"]["gender"], block["unseen_auc"]["gender"]),
    ):
        assert backbone_auc > 0.9
        assert afrl_auc < backbone_auc - 0.15


def test_every_requirement_is_reported_and_saved(afrl_run):
    out, results = afrl_run
    names = ["none", "G", "A", "G+A"]
    assert list(results["afrl"]["requirements"]) == names
    assert results["protocol"] == "sampled"
    for name in names:
        block = results["afrl"]["requirements"][name]
        assert 0.0 < block["metrics"]["ndcg@10"] <= 1.0
        assert set(block["probe_auc"]) == set(block["sensitive"])
        embeddings = np.load(out / f"user_embeddings_{name}.npy")
        assert embeddings.shape == (400, 16) and np.isfinite(embeddings).all()
    assert results["afrl"]["requirements"]["none"]["mean_auc"] is None
    assert results["afrl"]["requirements"]["none"]["mean_unseen_auc"] is None
    assert json.loads((out / "results.json").read_text())["afrl"]["best_epoch"] >= 1


def test_the_unseen_user_audit_is_reported_for_every_sensitive_attribute(afrl_run):
    _, results = afrl_run
    assert results["afrl"]["withheld_labels"] == ["probe valid", "probe test"]
    assert results["backbone"]["unseen_auc"]["gender"] > 0.8  # the planted attribute, seen by probes on unseen users
    for name, block in results["afrl"]["requirements"].items():
        assert set(block["unseen_auc"]) == set(block["sensitive"])
        if block["sensitive"]:
            assert block["mean_unseen_auc"] == pytest.approx(np.mean(list(block["unseen_auc"].values())))
            assert all(0.0 <= a <= 1.0 for a in block["unseen_auc"].values())
