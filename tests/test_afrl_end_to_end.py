"""AFRL end to end on synthetic data whose gender is planted in the interactions (hence in the backbone's user
embeddings): after AFRL, probes predict gender from the fair embeddings much worse than from the backbone's."""

import json

import numpy as np
import pytest

from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.pipeline import parse_config, restore_run, run


@pytest.fixture(scope="module")
def afrl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("afrl")
    write_ml100k_folder(make_synthetic(num_users=400, num_items=200, per_user=24, seed=7), root / "data")
    config = parse_config(
        {
            "data": {"source": str(root / "data"), "attributes": ["gender", "age"]},
            "backbone": {"name": "pmf", "dim": 16,
                         "train": {"epochs": 15, "batch_size": 256, "learning_rate": 0.01, "patience": 15}},
            "evaluate": {"protocols": ["sampled"], "ks": [10]},
            "probe": {"steps": 100, "eval_every": 25, "bootstrap": 0, "audit_max_repeats": 5},
            "afrl": {
                "lam": 10.0, "hidden": 16, "discriminator_steps": 5,
                "train": {"learning_rate": 1e-3, "batch_size": 64, "epochs": 12, "patience": 12},
            },
        }
    )
    results = run(config, root / "out", log=lambda message: None)
    return root / "out", results


def test_planted_gender_leaks_from_the_backbone_and_less_from_afrl(afrl_run):
    # AFRL trains on the labels of 240 of the 400 users (the probe validation and test users' are withheld); both
    # the standard probe and the unseen-user audit see the planted gender drop by a wide margin.
    _, results = afrl_run
    block = results["afrl"]["requirements"]["G"]
    backbone = results["afrl"]["backbone"]
    for backbone_auc, afrl_auc in (
        (backbone["probe_auc"]["gender"], block["probe_auc"]["gender"]),
        (backbone["unseen_auc"]["gender"], block["unseen_auc"]["gender"]),
    ):
        assert backbone_auc > 0.9
        assert afrl_auc < backbone_auc - 0.15


def test_every_requirement_is_reported_and_saved(afrl_run):
    out, results = afrl_run
    names = ["none", "G", "A", "G+A"]
    assert list(results["afrl"]["requirements"]) == names
    assert list(results["protocols"]) == ["sampled"]
    for name in names:
        block = results["afrl"]["requirements"][name]
        assert 0.0 < block["metrics"]["ndcg@10"] <= 1.0
        assert set(block["probe_auc"]) == set(block["sensitive"])
        embeddings = np.load(out / f"user_embeddings_{name}.npy")
        assert embeddings.shape == (400, 16) and np.isfinite(embeddings).all()
    assert results["afrl"]["requirements"]["none"]["mean_auc"] is None
    assert results["afrl"]["requirements"]["none"]["mean_unseen_auc"] is None
    assert json.loads((out / "results.json").read_text())["models"]["afrl"]["best_epoch"] >= 1
    assert np.load(out / "user_embeddings_backbone.npy").shape == (400, 16)


def test_the_unseen_user_audit_is_reported_for_every_sensitive_attribute(afrl_run):
    _, results = afrl_run
    assert results["afrl"]["withheld_labels"] == ["probe valid", "probe test"]
    assert results["afrl"]["backbone"]["unseen_auc"]["gender"] > 0.8  # the planted attribute, seen on unseen users
    for name, block in results["afrl"]["requirements"].items():
        assert set(block["unseen_auc"]) == set(block["sensitive"])
        if block["sensitive"]:
            assert block["mean_unseen_auc"] == pytest.approx(np.mean(list(block["unseen_auc"].values())))
            assert all(0.0 <= a <= 1.0 for a in block["unseen_auc"].values())


def test_the_tables_lead_with_the_unseen_user_audit_and_hold_validation_numbers_for_selection(afrl_run):
    _, results = afrl_run
    test, valid = results["tables"]["test"], results["tables"]["valid"]
    assert list(test) == ["none", "G", "A", "G+A", "backbone", "mean", "run", "data"]
    assert test["data"]["users"] == 400 and test["data"]["probe_test_users"] == 80
    assert test["run"]["epochs"] == results["models"]["afrl"]["epochs_run"]
    assert list(test["G"])[:2] == ["unseen_auc", "backbone_unseen_auc"]
    assert test["G"]["unseen_auc"] == results["afrl"]["requirements"]["G"]["mean_unseen_auc"]
    assert test["G"]["ndcg@10/backbone"] == pytest.approx(test["G"]["ndcg@10"] / test["backbone"]["ndcg@10"])
    assert valid["mean"]["ndcg@10"] == pytest.approx(np.mean([valid[n]["ndcg@10"] for n in ("G", "A", "G+A")]))
    assert 0.0 <= valid["G"]["probe_valid_auc"] <= 1.0
    # the validation-only audit: cross-fitted on the probe validation users alone (a different number from the test
    # audit, which also uses the probe test users)
    assert 0.0 <= valid["G"]["unseen_auc"] <= 1.0 and valid["G"]["unseen_auc"] != test["G"]["unseen_auc"]
    assert "unseen_auc" not in valid["none"]


def test_a_restored_run_serves_any_per_user_requirement_like_the_saved_embeddings(afrl_run):
    out, _ = afrl_run
    restored = restore_run(out)
    for name, mask in (("G", [True, False]), ("G+A", [True, True]), ("none", [False, False])):
        np.testing.assert_allclose(np.asarray(restored.serve(mask)), np.load(out / f"user_embeddings_{name}.npy"),
                                   rtol=1e-5, atol=1e-6)
    per_user = np.zeros((400, 2), bool)
    per_user[::2, 0] = True  # every other user asks that gender not matter
    mixed = np.asarray(restored.serve(per_user))
    np.testing.assert_allclose(mixed[::2], np.load(out / "user_embeddings_G.npy")[::2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1::2], np.load(out / "user_embeddings_none.npy")[1::2], rtol=1e-5, atol=1e-6)
