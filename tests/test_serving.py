"""Serving a finished run: a batch of users with mixed requirements and strengths (or Cofair levels) in one call
equals, row by row, the per-requirement / per-level results; ``jaxfair serve`` writes top-K recommendations that
skip known items, and bad requests fail with one line naming the row or column."""

import re
from types import SimpleNamespace

import jax
import numpy as np
import pandas as pd
import pytest

from jaxfair.cli import main
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.methods import METHODS, cofair
from jaxfair.methods.afrl import fair_user_embeddings
from jaxfair.pipeline import parse_config, restore_run, run
from jaxfair.serving import ServeError, fair_embeddings, recommend

QUIET = dict(log=lambda message: None)


def values(source, method, **section):
    return {"method": method,
            "data": {"source": str(source), "attributes": ["gender", "age"], "eval_negatives": 50},
            "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 3, "learning_rate": 0.01}},
            "evaluate": {"protocols": ["sampled"], "ks": [10]},
            "probe": {"steps": 40, "eval_every": 20, "bootstrap": 0, "audit_max_repeats": 2},
            method: section}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    write_ml100k_folder(make_synthetic(num_users=160, num_items=150, per_user=20, seed=6), root / "data")
    run(parse_config(values(root / "data", "erasure")), root / "erasure", **QUIET)
    run(parse_config(values(root / "data", "afrl", hidden=8, train={"epochs": 2, "learning_rate": 1e-3})),
        root / "afrl", **QUIET)
    return root


def mixed(n, m, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, (n, m)).astype(bool), rng.uniform(0, 1, n).astype(np.float32)


def test_erasure_mixed_batch_equals_each_users_own_requirement_and_strength(runs):
    restored = restore_run(runs / "erasure")
    users = np.arange(0, 160, 3)
    masks, strength = mixed(len(users), 2)
    got = np.asarray(fair_embeddings(restored, users, masks, strength))
    for row, (user, mask, t) in enumerate(zip(users, masks, strength)):
        alone = np.asarray(fair_embeddings(restored, [user], mask[None], np.array([t])))[0]
        np.testing.assert_allclose(got[row], alone, atol=1e-5)
    backbone = np.asarray(restored.context.frozen.user_vecs["test"])[users]
    np.testing.assert_allclose(np.asarray(fair_embeddings(restored, users, masks, np.zeros(len(users)))), backbone,
                               atol=1e-6)


def test_afrl_strength_scales_the_correction_from_the_empty_requirement(runs):
    restored = restore_run(runs / "afrl")
    users = np.arange(40)
    masks, strength = mixed(40, 2, seed=1)
    got = np.asarray(fair_embeddings(restored, users, masks, strength))
    vecs = restored.context.frozen.user_vecs["test"][users]
    params, config = restored.params["afrl"], restored.config.method_config
    fair = np.asarray(fair_user_embeddings(params, vecs, masks, config))
    base = np.asarray(fair_user_embeddings(params, vecs, np.zeros_like(masks), config))
    np.testing.assert_allclose(got, base + strength[:, None] * (fair - base), atol=1e-5)
    full = np.asarray(fair_embeddings(restored, users, masks))  # strength 1: the model as trained
    np.testing.assert_allclose(full, fair, atol=1e-6)


def test_cofair_mixed_levels_equal_each_level_row_by_row():
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(30, 8)).astype(np.float32)
    config = cofair.CofairConfig(levels=3, shared_dim=8, adapter_dim=8)
    data = cofair.make_data(vecs, rng.normal(size=(20, 8)).astype(np.float32), rng.integers(0, 2, 30), 2)
    params = {"cofair": cofair.init_state(jax.random.key(0), data, config).params}
    restored = SimpleNamespace(method=METHODS["cofair"], data=data, params=params,
                               config=SimpleNamespace(method_config=config),
                               context=SimpleNamespace(frozen=SimpleNamespace(user_vecs={"test": vecs})),
                               split=SimpleNamespace(attribute_names=("gender",)))
    levels = rng.integers(0, 4, 30)
    got = np.asarray(fair_embeddings(restored, np.arange(30), levels=levels))
    for level in range(4):
        every = np.asarray(cofair.serve(data, params, config, vecs, np.full(30, level)))
        np.testing.assert_allclose(got[levels == level], every[levels == level], atol=1e-6)
    with pytest.raises(ServeError, match="levels must be in 0..3"):
        fair_embeddings(restored, np.arange(2), levels=[0, 4])
    with pytest.raises(ServeError, match="give levels"):
        fair_embeddings(restored, np.arange(2))


def test_recommendations_skip_known_items_and_are_the_best_by_score(runs):
    restored = restore_run(runs / "erasure")
    users = np.arange(0, 160, 7)
    fair = fair_embeddings(restored, users, np.ones((len(users), 2), bool))
    items, scores = recommend(restored, users, fair, k=5, batch=8)  # several batches, the last padded
    known = restored.split.positive_matrix()
    frozen = restored.context.frozen
    for row, user in enumerate(users):
        assert not known[user, items[row]].any()
        every = np.array(frozen.score(fair[row][None, None, :], frozen.item_vecs[None]))[0]
        every[known[user]] = -np.inf
        np.testing.assert_allclose(scores[row], np.sort(every)[::-1][:5], rtol=1e-5, atol=1e-6)


def test_the_serve_command_writes_recommendations_and_refuses_bad_requests(runs, tmp_path, capsys):
    pd.DataFrame({"user": [0, 5, 9], "gender": [1, 0, 1], "age": [0, 0, 1], "strength": [1.0, 0.0, 0.5]}).to_csv(
        tmp_path / "requests.csv", index=False)
    assert main(["serve", str(runs / "erasure"), "--requests", str(tmp_path / "requests.csv"), "--out",
                 str(tmp_path / "recs.csv"), "--k", "4"]) == 0
    recs = pd.read_csv(tmp_path / "recs.csv")
    assert list(recs.columns) == ["user", "raw_id", "rank", "item", "item_raw_id", "score"]
    assert recs["user"].tolist() == [0] * 4 + [5] * 4 + [9] * 4 and recs["rank"].tolist() == [1, 2, 3, 4] * 3
    for bad, message in (({"user": [0, 999]}, "row 3: user 999 is not a row of users.csv"),
                         ({"user": [0], "gender": [2]}, "row 2: gender must be 0 or 1"),
                         ({"user": [0], "strength": [1.5]}, "row 2: strength must be in \\[0, 1\\]"),
                         ({"user": [0], "level": [1]}, "'level' is for cofair"),
                         ({"user": [0], "shoe_size": [1]}, "unknown column\\(s\\) \\['shoe_size'\\]")):
        pd.DataFrame(bad).to_csv(tmp_path / "bad.csv", index=False)
        capsys.readouterr()
        assert main(["serve", str(runs / "erasure"), "--requests", str(tmp_path / "bad.csv"), "--out",
                     str(tmp_path / "never.csv")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxfair: error: ") and len(err.strip().splitlines()) == 1
        assert re.search(message, err), err
    assert not (tmp_path / "never.csv").exists()
