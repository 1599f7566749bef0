"""ITFR end to end on a tiny synthetic dataset (BPR, GroupDRO, ITFR and an ablation as points of one sweep), and
LightGCN's dense propagation."""

import json

import jax.numpy as jnp
import numpy as np

from jaxfair.backbones import lightgcn
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.harness import sweep
from jaxfair.pipeline import load_config, run

GRID = """
[points.bpr]
"itfr.balance" = "none"
"itfr.sam" = false
[points.groupdro]
"itfr.balance" = "groupdro"
"itfr.sam" = false
[points.itfr]
[points.itfr_no_norm]
"itfr.score_normalization" = false
"""

TINY_ITFR = """
[data]
source = "{source}"
recipe = "itfr"
genre_groups = ["Action", "Comedy", "Drama"]
k_core = 3
attributes = ["gender"]
[backbone]
name = "{backbone}"
dim = 8
l2 = 0.0
[evaluate]
protocols = ["full"]
ks = [10, 20]
[itfr]
item_genres = ["Action", "Comedy", "Drama"]
tau = 0.1
[itfr.train]
epochs = 3
batch_size = 256
learning_rate = 0.01
monitor = "ndcg@20"
checkpoint_every = 2
"""


def tiny_itfr_config(tmp_path, backbone="cosine_mf"):
    write_ml100k_folder(make_synthetic(num_users=80, num_items=120, per_user=25), tmp_path / "data")
    config = tmp_path / "itfr.toml"
    text = TINY_ITFR.format(source=tmp_path / "data", backbone=backbone)
    if backbone == "cosine_mf":
        text = text.replace("l2 = 0.0", "l2 = 0.0\ntau = 0.1")
    config.write_text(text)
    return config


def test_a_sweep_over_the_variants_writes_each_with_its_recall_matrix_and_heat_map(tmp_path):
    config = tiny_itfr_config(tmp_path)
    (tmp_path / "grid.toml").write_text(GRID)
    summary = sweep(config, tmp_path / "sweep", grid=tmp_path / "grid.toml", log=lambda _: None)
    assert list(summary["points"]) == ["bpr", "groupdro", "itfr", "itfr_no_norm"]
    saved = {label: json.loads((tmp_path / "sweep" / "runs" / label / "seed0" / "results.json").read_text())
             for label in summary["points"]}
    for label, results in saved.items():
        block = results["itfr"]
        assert block["groups"]["names"][:2] == ["F|Action", "F|Comedy"] and len(block["groups"]["names"]) == 6
        assert sum(block["groups"]["train_rows"]) == results["statistics"]["train_positives"]
        matrix = np.asarray(block["intersectional"]["@20"]["matrix"])
        assert matrix.shape == (2, 3) and np.all((matrix >= 0) & (matrix <= 1))
        assert set(block["intersectional"]) == set(block["valid_intersectional"]) == {"@10", "@20", "@50"}
        assert {"recall@20", "ndcg@20", "precision@50"} <= set(block["test"])
        assert abs(sum(block["final_weights"]) - 1) < 1e-3
        assert (tmp_path / "sweep" / "runs" / label / "seed0" / "recall_matrix.png").stat().st_size > 1000
        stats = summary["points"][label]["tables"]["test"]["all"]
        assert stats["cv@20"]["mean"] == block["intersectional"]["@20"]["cv"] and stats["cv@20"]["n"] == 1
    assert np.allclose(saved["bpr"]["itfr"]["final_weights"], 1 / 6)  # plain BPR keeps no weights
    assert not np.allclose(saved["groupdro"]["itfr"]["final_weights"], 1 / 6)
    assert saved["itfr_no_norm"]["config"]["itfr"]["score_normalization"] is False


def test_itfr_trains_lightgcn_through_its_propagation(tmp_path):
    config = tiny_itfr_config(tmp_path, backbone="lightgcn")
    results = run(load_config(config), tmp_path / "run", log=lambda _: None)
    assert results["backbone"]["name"] == "lightgcn" and list(results["models"]) == ["itfr"]
    assert np.isfinite(results["itfr"]["test"]["ndcg@20"])


def test_dense_propagation_is_the_edge_propagation():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 7, 30), rng.integers(0, 5, 30)

    class Graph:
        num_users, num_items = 7, 5
        train_users, train_items = users, items

    context = lightgcn.graph_context(Graph)
    user0 = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
    item0 = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    sparse = lightgcn.propagate(user0, item0, context, 3)
    dense = lightgcn.propagate_dense(user0, item0, lightgcn.dense_adjacency(context, 7, 5), 3)
    for a, b in zip(sparse, dense):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
