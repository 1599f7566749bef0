"""Closed-form erasure (LEACE): its guarantee on the fitting users, a planted linear attribute driven to chance on
held-out rows, the identities (strength 0, empty requirement), per-user serving equal to per-mask erasure row by row,
the rank limit, clear errors, agreement with the reference ``concept-erasure`` package, and the method end to end."""

import numpy as np
import pytest

import jax.numpy as jnp

from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.methods import erasure
from jaxfair.methods.erasure import ErasureError, erase, erase_all, erase_per_user, fit_eraser
from jaxfair.methods.requirements import all_requirements
from jaxfair.pipeline import parse_config, restore_run, run


def planted(n=2000, d=12, seed=0):
    """Embeddings with a binary attribute planted along one direction and a 4-class one along two others."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 2, n), rng.integers(0, 4, n)], 1)
    x = rng.normal(size=(n, d))
    x[:, 0] += 1.5 * labels[:, 0]
    x[:, 1] += 0.8 * (labels[:, 1] == 1) - 0.8 * (labels[:, 1] == 3)
    x[:, 2] += 1.2 * (labels[:, 1] >= 2)
    x = x @ rng.normal(size=(d, d))  # mixed, so the attribute is not axis-aligned
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    return x.astype(np.float32), labels, mask


def ridge_probe_auc(x_fit, y_fit, x_score, y_score):
    """AUC of a least-squares (ridge) linear probe of a binary label, fitted on one part and scored on another."""
    a = np.c_[x_fit, np.ones(len(x_fit))]
    w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ (y_fit - y_fit.mean()))
    scores = np.c_[x_score, np.ones(len(x_score))] @ w
    ranks = scores.argsort().argsort() + 1.0
    pos = y_score == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_a_planted_linear_attribute_falls_to_chance_for_a_fresh_probe_on_held_out_rows():
    x, labels, mask = planted()
    weight = np.r_[np.ones(1000), np.zeros(1000)]  # fitted on the first half only
    eraser = fit_eraser(x, labels, weight, mask)
    held_out = slice(1000, None)
    gender = labels[held_out, 0]
    before = ridge_probe_auc(x[1000:1500], gender[:500], x[1500:], gender[500:])
    fair = np.asarray(erase(eraser, jnp.asarray(x), jnp.array([1.0, 0.0])))
    after = ridge_probe_auc(fair[1000:1500], gender[:500], fair[1500:], gender[500:])
    assert before > 0.8 and abs(after - 0.5) < 0.06, (before, after)


def test_no_linear_signal_is_left_on_the_fitting_users():
    x, labels, mask = planted()
    eraser = fit_eraser(x, labels, np.ones(len(x)), mask)
    for sensitive, attribute in (([1.0, 0.0], 0), ([0.0, 1.0], 1), ([1.0, 1.0], 0), ([1.0, 1.0], 1)):
        fair = np.asarray(erase(eraser, jnp.asarray(x), jnp.array(sensitive)), np.float64)
        onehot = np.eye(4)[labels[:, attribute]]
        cross = (fair - fair.mean(0)).T @ (onehot - onehot.mean(0)) / len(x)
        assert np.abs(cross).max() < 1e-4, (sensitive, attribute, np.abs(cross).max())
    kept = np.asarray(erase(eraser, jnp.asarray(x), jnp.array([1.0, 0.0])), np.float64)
    onehot = np.eye(4)[labels[:, 1]]
    assert np.abs((kept - kept.mean(0)).T @ (onehot - onehot.mean(0)) / len(x)).max() > 0.1  # age left alone


def test_strength_zero_and_the_empty_requirement_are_the_identity_and_strength_scales_linearly():
    x, labels, mask = planted(n=300)
    eraser = fit_eraser(x, labels, np.ones(len(x)), mask)
    u = jnp.asarray(x)
    np.testing.assert_array_equal(np.asarray(erase(eraser, u, jnp.array([1.0, 1.0]), 0.0)), x)
    np.testing.assert_allclose(np.asarray(erase(eraser, u, jnp.array([0.0, 0.0]))), x, atol=1e-6)
    full, half = erase(eraser, u, jnp.array([1.0, 1.0])), erase(eraser, u, jnp.array([1.0, 1.0]), 0.5)
    np.testing.assert_allclose(np.asarray(half), (x + np.asarray(full)) / 2, atol=1e-4)


def test_mixed_masks_and_strengths_in_one_call_equal_per_mask_erasure_row_by_row():
    x, labels, mask = planted(n=300)
    eraser = fit_eraser(x, labels, np.ones(len(x)), mask)
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 2, (300, 2)).astype(bool)
    strength = rng.uniform(0, 1, 300).astype(np.float32)
    mixed = np.asarray(erase_per_user(eraser, jnp.asarray(x), jnp.asarray(masks), jnp.asarray(strength)))
    reqs = all_requirements(2)
    every = np.asarray(erase_all(eraser, jnp.asarray(x), jnp.asarray(reqs, jnp.float32)))  # (4, U, d) at t = 1
    for n in range(300):
        r = [i for i, req in enumerate(reqs) if (req == masks[n]).all()][0]
        want = x[n] + strength[n] * (every[r, n] - x[n])
        np.testing.assert_allclose(mixed[n], want, atol=1e-4)


def test_max_rank_erases_only_the_strongest_directions():
    x, labels, mask = planted()
    every = fit_eraser(x, labels, np.ones(len(x)), mask)
    one = fit_eraser(x, labels, np.ones(len(x)), mask, max_rank=1)
    assert [int((np.asarray(s) > 0).sum()) for s in every.singular_values] == [1, 3]
    assert [int((np.asarray(s) > 0).sum()) for s in one.singular_values] == [1, 1]
    assert np.asarray(one.singular_values)[1, 0] == pytest.approx(np.asarray(every.singular_values)[1, 0], rel=1e-4)
    p_all = np.asarray(erasure.projection(every, jnp.array([1.0, 1.0])))
    p_one = np.asarray(erasure.projection(one, jnp.array([1.0, 1.0])))
    assert np.trace(p_all) == pytest.approx(4, abs=1e-3) and np.trace(p_one) == pytest.approx(2, abs=1e-3)


def test_unusable_labelled_sets_fail_with_a_clear_message():
    x, labels, mask = planted(n=300)
    with pytest.raises(ErasureError, match="10 labelled users cannot whiten 12-dimensional"):
        fit_eraser(x, labels, np.r_[np.ones(10), np.zeros(290)], mask)
    flat = x.copy()
    flat[:, 5] = 1.0
    flat[:, 6] = flat[:, 7]
    with pytest.raises(ErasureError, match="span only 10 of 12 dimensions"):
        fit_eraser(flat @ np.eye(12, dtype=np.float32), labels, np.ones(300), mask)
    one_class = labels.copy()
    one_class[:, 1] = 2
    with pytest.raises(ErasureError, match="attribute 'age' has a single class among the 300 labelled users"):
        fit_eraser(x, one_class, np.ones(300), mask, attribute_names=("gender", "age"))


def test_config_is_checked():
    with pytest.raises(ValueError, match="strength must be in"):
        erasure.Config(strength=1.5)
    with pytest.raises(ValueError, match="max_rank"):
        erasure.Config(max_rank=-1)


@pytest.mark.torch
def test_it_equals_the_reference_concept_erasure_leace_fitter():
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[bench]')")
    leace = pytest.importorskip("concept_erasure", reason="concept-erasure is not installed (pip install -e "
                                                            "'.[bench]')")
    x, labels, mask = planted(n=800, d=10, seed=3)
    for attribute, sensitive in ((0, [1.0, 0.0]), (1, [0.0, 1.0])):
        classes = int(mask[attribute].sum())
        onehot = np.eye(classes)[labels[:, attribute]]
        fitter = leace.LeaceFitter(10, classes, shrinkage=False, constrain_cov_trace=False, svd_tol=1e-5,
                                   dtype=torch.float64)
        fitter.update(torch.tensor(x, dtype=torch.float64), torch.tensor(onehot, dtype=torch.float64))
        want = fitter.eraser(torch.tensor(x, dtype=torch.float64)).numpy()
        got = np.asarray(erase(fit_eraser(x, labels, np.ones(800), mask), jnp.asarray(x), jnp.array(sensitive)))
        np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())


def test_the_method_runs_in_the_pipeline_and_serves_per_user_masks_and_strengths(tmp_path):
    write_ml100k_folder(make_synthetic(num_users=200, num_items=150, per_user=20, seed=3), tmp_path / "data")
    config = parse_config({
        "method": "erasure",
        "data": {"source": str(tmp_path / "data"), "attributes": ["gender", "age"], "eval_negatives": 50},
        "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 3, "learning_rate": 0.01}},
        "evaluate": {"protocols": ["sampled"], "ks": [10]},
        "probe": {"steps": 40, "eval_every": 20, "bootstrap": 0, "audit_max_repeats": 2},
        "erasure": {"strength": 1.0, "max_rank": 1}})
    results = run(config, tmp_path / "out", log=lambda message: None)
    block = results["erasure"]
    assert list(block["requirements"]) == ["none", "G", "A", "G+A"]
    assert block["erased_directions"] == {"gender": 1, "age": 1} and block["labelled_users"] < 200
    assert set(results["tables"]["test"]["G"]) >= {"unseen_auc", "auc", "ndcg@10", "backbone_unseen_auc",
                                                   "unseen_auc/gender"}
    g_a = results["tables"]["test"]["G+A"]
    assert g_a["unseen_auc"] == pytest.approx((g_a["unseen_auc/gender"] + g_a["unseen_auc/age"]) / 2)
    assert results["models"] == {}  # nothing is trained
    none = np.load(tmp_path / "out" / "user_embeddings_none.npy")
    np.testing.assert_allclose(none, np.load(tmp_path / "out" / "user_embeddings_backbone.npy"), atol=1e-5)
    restored = restore_run(tmp_path / "out")
    g = np.load(tmp_path / "out" / "user_embeddings_G.npy")
    masks = np.zeros((200, 2), bool)
    masks[::2, 0] = True  # every other user asks for gender; the rest for nothing
    served = np.asarray(restored.serve(control=(masks, 1.0)))
    np.testing.assert_allclose(served[::2], g[::2], atol=1e-4)
    np.testing.assert_allclose(served[1::2], none[1::2], atol=1e-4)


def test_the_non_linear_audit_runs_beside_the_linear_one_when_asked(tmp_path):
    """``probe.audit_hidden > 0`` adds the unseen-user audit with a one-hidden-layer probe (``mlp_unseen_auc``) to
    every requirement row and the backbone's; off by default (no such column)."""
    write_ml100k_folder(make_synthetic(num_users=160, num_items=150, per_user=20, seed=5), tmp_path / "data")
    values = {"method": "erasure",
              "data": {"source": str(tmp_path / "data"), "attributes": ["gender", "age"], "eval_negatives": 50},
              "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 2, "learning_rate": 0.01}},
              "evaluate": {"protocols": ["sampled"], "ks": [10]},
              "probe": {"steps": 40, "eval_every": 20, "bootstrap": 0, "audit_max_repeats": 2, "audit_hidden": 8}}
    results = run(parse_config(values), tmp_path / "mlp", log=lambda message: None)
    g_a = results["tables"]["test"]["G+A"]
    assert 0.0 <= g_a["mlp_unseen_auc"] <= 1.0 and 0.0 <= g_a["backbone_mlp_unseen_auc"] <= 1.0
    assert g_a["mlp_unseen_auc"] == pytest.approx((g_a["mlp_unseen_auc/gender"] + g_a["mlp_unseen_auc/age"]) / 2)
    assert set(results["erasure"]["backbone"]["mlp_unseen_auc"]) == {"gender", "age"}
    assert g_a["mlp_unseen_auc"] != g_a["unseen_auc"]  # another probe, not a copy
    values["probe"]["audit_hidden"] = 0
    plain = run(parse_config(values), tmp_path / "plain", log=lambda message: None)
    assert "mlp_unseen_auc" not in plain["tables"]["test"]["G+A"]
    assert plain["tables"]["test"]["G+A"]["unseen_auc"] == g_a["unseen_auc"]  # the linear audit is unchanged
