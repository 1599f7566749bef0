"""AFRL end to end on synthetic data whose gender is planted in the interactions (hence in the backbone's user
embeddings): after AFRL, a probe predicts gender from the fair embeddings much worse than from the backbone's."""

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


def test_planted_gender_leaks_from_the_backbone_but_not_from_afrl(afrl_run):
    _, results = afrl_run
    backbone_auc = results["backbone"]["probe_auc"]["gender"]
    afrl_auc = results["afrl"]["requirements"]["G"]["probe_auc"]["gender"]
    assert backbone_auc > 0.8
    assert abs(afrl_auc - 0.5) < 0.5 * abs(backbone_auc - 0.5)


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
    assert json.loads((out / "results.json").read_text())["afrl"]["best_epoch"] >= 1
