"""The no-op method: the backbone's own embeddings served unchanged, evaluated as the backbone's report (every
protocol next to popularity, the standard probe and the unseen-user audit of every attribute)."""

import ast
import pathlib

import jax.numpy as jnp
import numpy as np

from jaxfair.methods import METHODS, noop
from jaxfair.pipeline import parse_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_noop_serves_the_input_unchanged_whatever_the_control():
    vecs = jnp.arange(12.0).reshape(4, 3)
    for control in (None, [True, False], np.array([0, 1, 2, 3])):
        assert noop.serve(None, {}, noop.Config(), vecs, control) is vecs


def test_a_config_without_a_method_section_runs_noop_and_it_trains_nothing():
    config = parse_config({"backbone": {"name": "pmf"}})
    assert config.method == "noop" and METHODS["noop"].frozen_backbone
    assert noop.METHOD.models(None, None, config.method_config, {}) == []


def test_popularity_scores_every_user_alike_by_training_counts():
    class Split:
        num_users, num_items = 3, 4
        train_items = np.array([0, 2, 2, 3, 2])

    score, users, items = noop.popularity_scorer(Split)
    scores = np.asarray(score(users[:, None, :], items[None, :, :]))
    np.testing.assert_array_equal(scores, np.tile([1.0, 0.0, 3.0, 1.0], (3, 1)))


def test_noop_is_written_against_the_contract_alone():
    tree = ast.parse((ROOT / "jaxfair" / "methods" / "noop.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in modules if m.startswith("jaxfair.methods")} == {"jaxfair.methods.base"}
