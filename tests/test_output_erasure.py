"""AFRL with erasure (``afrl.erase_output``): LEACE fitted per requirement on the trained model's own outputs and
applied after it; training unchanged; per-user masks served in one call equal to per-requirement erasure."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.methods.adversaries import make_data
from jaxfair.methods.erasure import erase, fit_eraser, masks_by_code, requirement_codes
from jaxfair.methods.output_erasure import erase_outputs, fit_output_erasers, with_output_erasure
from jaxfair.pipeline import parse_config, restore_run, run


def toy_model(seed=0, n=600, d=10):
    """A "trained model": each requirement maps the input through its own random linear map, so each requirement's
    outputs are a different distribution that still carries both (planted) attributes."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n)], 1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 1.5 * labels[:, 0]
    x[:, 1] += 1.0 * (labels[:, 1] == 2)
    maps = jnp.asarray(rng.normal(size=(4, d, d)) / np.sqrt(d) + np.eye(d), jnp.float32)

    def embed(user_vecs, sensitive):
        sensitive = jnp.broadcast_to(jnp.asarray(sensitive), (user_vecs.shape[0], 2))
        return jnp.einsum("ud,ude->ue", user_vecs, maps[requirement_codes(sensitive)])

    weight = np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(np.float32)  # half the users labelled
    data = make_data(x, np.zeros((5, d), np.float32), labels, (2, 3), attribute_weight=weight)
    return embed, data, labels


def test_requirement_codes_index_the_masks_by_code():
    masks = masks_by_code(3)
    assert masks.shape == (8, 3) and not masks[0].any() and masks[7].all()
    np.testing.assert_array_equal(np.asarray(requirement_codes(jnp.asarray(masks))), np.arange(8))


def test_each_requirement_is_erased_by_the_eraser_fitted_on_its_own_outputs():
    embed, data, labels = toy_model()
    erasers = fit_output_erasers(embed, data)
    for code, mask in enumerate(masks_by_code(2)):
        outputs = np.asarray(embed(data.user_vecs, jnp.asarray(mask)))
        direct = fit_eraser(outputs, labels, data.attribute_weight, data.class_mask)
        expected = np.asarray(erase(direct, jnp.asarray(outputs), jnp.asarray(mask, jnp.float32)))
        got = np.asarray(erase_outputs(erasers, jnp.asarray(outputs), jnp.asarray(mask)))
        np.testing.assert_allclose(got, expected, atol=1e-4)
        if not mask.any():
            np.testing.assert_allclose(got, outputs, atol=1e-5)  # the empty requirement erases nothing


def test_no_linear_signal_of_a_masked_attribute_is_left_on_the_labelled_users():
    embed, data, labels = toy_model(1)
    serve = with_output_erasure(embed, data)
    labelled = np.asarray(data.attribute_weight) > 0
    for mask in masks_by_code(2)[1:]:
        fair = np.asarray(serve(data.user_vecs, jnp.asarray(mask)), np.float64)[labelled]
        for attribute in np.flatnonzero(mask):
            onehot = np.eye(3)[labels[labelled, attribute]]
            cross = (fair - fair.mean(0)).T @ (onehot - onehot.mean(0)) / labelled.sum()
            assert np.abs(cross).max() < 1e-4, (mask, attribute)
        before = np.asarray(embed(data.user_vecs, jnp.asarray(mask)), np.float64)[labelled]
        onehot = np.eye(3)[labels[labelled, np.flatnonzero(mask)[0]]]
        assert np.abs((before - before.mean(0)).T @ (onehot - onehot.mean(0))).max() / labelled.sum() > 0.05


def test_a_mixed_batch_of_masks_equals_per_requirement_erasure_row_by_row():
    embed, data, _ = toy_model(2)
    serve = with_output_erasure(embed, data)
    masks = masks_by_code(2)[np.arange(len(data.user_vecs)) % 4]
    mixed = np.asarray(serve(data.user_vecs, jnp.asarray(masks)))
    for code, mask in enumerate(masks_by_code(2)):
        rows = np.flatnonzero((np.arange(len(masks)) % 4) == code)
        one = np.asarray(serve(data.user_vecs, jnp.asarray(mask)))
        np.testing.assert_allclose(mixed[rows], one[rows], atol=1e-4)


def afrl_values(folder, erase_output):
    return {"method": "afrl",
            "data": {"source": str(folder), "attributes": ["gender", "age"], "eval_negatives": 50},
            "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 2, "learning_rate": 0.01}},
            "evaluate": {"protocols": ["sampled"], "ks": [10]},
            "probe": {"steps": 40, "eval_every": 20, "bootstrap": 0, "audit_max_repeats": 2},
            "afrl": {"hidden": 8, "encoder_layers": 2, "erase_output": erase_output, "erase_max_rank": 1,
                     "train": {"epochs": 2, "batch_size": 256, "learning_rate": 1e-3}}}


def test_afrl_with_output_erasure_trains_the_same_model_and_serves_erased_outputs(tmp_path):
    write_ml100k_folder(make_synthetic(num_users=200, num_items=150, per_user=20, seed=3), tmp_path / "data")
    plain = run(parse_config(afrl_values(tmp_path / "data", False)), tmp_path / "plain", log=lambda m: None)
    erased = run(parse_config(afrl_values(tmp_path / "data", True)), tmp_path / "erased", log=lambda m: None)
    # Training is untouched: the same checkpoint, the same validation curve.
    assert erased["models"]["afrl"]["best_epoch"] == plain["models"]["afrl"]["best_epoch"]
    none_plain = np.load(tmp_path / "plain" / "user_embeddings_none.npy")
    np.testing.assert_allclose(np.load(tmp_path / "erased" / "user_embeddings_none.npy"), none_plain, atol=1e-5)
    g_plain, g_erased = (np.load(tmp_path / name / "user_embeddings_G.npy") for name in ("plain", "erased"))
    assert np.abs(g_plain - g_erased).max() > 1e-3  # the erasure changed the masked requirement's output
    assert set(erased["tables"]["test"]["G+A"]) >= {"unseen_auc", "auc", "ndcg@10", "unseen_auc/gender"}
    restored = restore_run(tmp_path / "erased")
    masks = np.zeros((200, 2), bool)
    masks[::2, 0] = True
    served = np.asarray(restored.serve(control=masks))
    np.testing.assert_allclose(served[::2], g_erased[::2], atol=1e-4)
    np.testing.assert_allclose(served[1::2], none_plain[1::2], atol=1e-4)


def test_erase_max_rank_must_not_be_negative():
    with pytest.raises(Exception, match="erase_max_rank"):
        parse_config(afrl_values("unused", True) | {"afrl": {"erase_max_rank": -1}})
