"""The trainer: early stopping, JSON-lines log, checkpoint round trip, and exact resume after an interruption."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.training.checkpoint import Checkpointer
from jaxfair.training.step import init_state, make_train_step
from jaxfair.training.trainer import Model, TrainConfig, fit, tree_equal

TRUE_W = np.array([1.0, -2.0, 0.5], np.float32)


def regression_model(config: TrainConfig, valid_scores=None) -> Model:
    """Noisy linear regression with dropout-like key use, so resumes must thread keys exactly."""
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x @ TRUE_W

    def loss(params, batch, key):
        noise = 0.01 * jax.random.normal(key, batch["y"].shape)
        err = batch["x"] @ params["w"] - batch["y"] + noise
        return jnp.sum(batch["weight"] * err**2) / jnp.sum(batch["weight"]), {}

    tx = optax.sgd(0.05)
    calls = {"n": 0}

    def validate(params):
        calls["n"] += 1
        if valid_scores is not None:
            return {"score": valid_scores[calls["n"] - 1]}
        return {"score": -float(jnp.sum((params["w"] - TRUE_W) ** 2))}

    def batches(rng):
        order = rng.permutation(64)
        return {"x": x[order].reshape(4, 16, 3), "y": y[order].reshape(4, 16), "weight": np.ones((4, 16), np.float32)}

    return Model(
        name="train",
        train=config,
        init=lambda key: init_state({"w": jax.random.normal(key, (3,))}, tx),
        step=make_train_step(loss, tx),
        batches=batches,
        validate=validate,
    )


def test_fit_learns_and_keeps_best_params():
    result = fit(regression_model(TrainConfig(epochs=30, monitor="score", patience=30)), 0, log=lambda m: None)
    assert result.epochs_run == 30
    np.testing.assert_allclose(result.best_params["w"], TRUE_W, atol=0.05)


def test_early_stopping_after_patience_validations_without_improvement():
    scores = [0.1, 0.3, 0.2, 0.25, 0.29, 0.1, 0.9]
    result = fit(regression_model(TrainConfig(epochs=7, monitor="score", patience=3), scores), 0, log=lambda m: None)
    assert result.epochs_run == 5 and result.best_epoch == 2
    assert result.best_valid == {"score": 0.3}


def test_log_has_one_json_line_per_epoch_and_progress_shows_eta(tmp_path):
    messages = []
    fit(regression_model(TrainConfig(epochs=3, monitor="score")), 0, tmp_path, log=messages.append)
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert {"loss", "grad_norm"} <= set(lines[0]["train"]) and "score" in lines[0]["valid"]
    assert "ETA" in messages[0] and "epoch 1/3" in messages[0]


def test_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path):
    straight = fit(regression_model(TrainConfig(epochs=6, monitor="score")), 0, tmp_path / "a", log=lambda m: None)
    fit(regression_model(TrainConfig(epochs=3, monitor="score")), 0, tmp_path / "b", log=lambda m: None)  # "interrupted"
    messages = []
    resumed = fit(regression_model(TrainConfig(epochs=6, monitor="score")), 0, tmp_path / "b", log=messages.append)
    assert resumed.resumed_from == 3 and "resuming after epoch 3" in messages[0]
    assert tree_equal(straight.state.params, resumed.state.params)
    assert tree_equal(straight.best_params, resumed.best_params)
    assert len((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) == 6


def test_checkpoint_round_trip_restores_identical_pytree(tmp_path):
    tree = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "key": jax.random.key_data(jax.random.key(3)), "n": np.array(4, np.int64)}
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(7, tree)
        assert checkpointer.latest_step() == 7
        back = checkpointer.restore(jax.tree.map(jnp.zeros_like, tree))
    assert tree_equal(tree, back)


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointer.restore({"w": jnp.zeros(2)})


def test_invalid_train_config_names_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_checkpoint_every_resumes_from_the_newest_checkpoint_and_rewrites_the_replayed_log_lines(tmp_path):
    straight = fit(regression_model(TrainConfig(epochs=6, monitor="score")), 0, tmp_path / "a", log=lambda m: None)
    config = TrainConfig(epochs=6, monitor="score", checkpoint_every=3)
    model = regression_model(config)
    calls = {"n": 0}

    def crash_in_epoch_5(params):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return model.validate(params)

    with pytest.raises(RuntimeError, match="killed"):  # "interrupted" after epoch 4, saved only after epoch 3
        fit(model._replace(validate=crash_in_epoch_5), 0, tmp_path / "b", log=lambda m: None)
    log_path = tmp_path / "b" / "train_log.jsonl"
    assert [json.loads(x)["epoch"] for x in log_path.read_text().splitlines()] == [1, 2, 3, 4]
    with Checkpointer(tmp_path / "b" / "checkpoints" / "train") as checkpointer:
        assert checkpointer.latest_step() == 3

    messages = []
    resumed = fit(regression_model(config), 0, tmp_path / "b", log=messages.append)
    assert resumed.resumed_from == 3 and "resuming after epoch 3" in messages[0]
    assert resumed.epochs_run == 6
    assert tree_equal(straight.state.params, resumed.state.params)
    assert tree_equal(straight.best_params, resumed.best_params)
    assert [json.loads(x)["epoch"] for x in log_path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    with Checkpointer(tmp_path / "b" / "checkpoints" / "train") as checkpointer:
        assert checkpointer.latest_step() == 6  # the last epoch is always saved


def test_checkpoint_every_must_be_positive():
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=0)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=-1.0)


def test_the_model_name_names_its_checkpoints_and_log(tmp_path):
    fit(regression_model(TrainConfig(epochs=2, monitor="score"))._replace(name="afrl"), 0, tmp_path,
        log=lambda m: None)
    assert (tmp_path / "afrl_log.jsonl").exists() and (tmp_path / "checkpoints" / "afrl").is_dir()
    assert not (tmp_path / "train_log.jsonl").exists()


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 + 5, -3])
def test_the_host_built_seed_key_is_jax_random_key_of_the_seed(seed):
    from jaxfair.training.trainer import _run_keys, seed_key

    np.testing.assert_array_equal(jax.random.key_data(seed_key(seed)), jax.random.key_data(jax.random.key(seed)))
    for expected, got in zip(jax.random.split(jax.random.key(seed)), _run_keys(seed)):
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(expected))
