"""Seeds in one program: ``fit_seeds`` trains S seeds as one program and gives every seed what a separate ``fit``
gives it: bit-identical parameters and validation metrics in sequence (``lax.map``, the default), the same to 1e-5
batched (``vmap``), the same epochs, early stop and best epoch, with per-seed early stopping by masking, the same
checkpoints and logs, and resumes from folders at different epochs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.backbones import make_backbone
from jaxfair.backbones.fit import backbone_model
from jaxfair.data.preprocess import prepare
from jaxfair.data.synthetic import make_synthetic
from jaxfair.training.seeds import fit_seeds
from jaxfair.training.step import init_state, make_train_step
from jaxfair.training.trainer import Model, TrainConfig, fit

QUIET = dict(log=lambda message: None)


def wobbly_model(config: TrainConfig) -> Model:
    """A noisy regression whose validation score oscillates with the parameters, so seeds stop at different
    epochs."""
    x = np.random.default_rng(0).normal(size=(48, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    tx = optax.adam(0.1)

    def loss(params, batch, key):
        err = batch["x"] @ params["w"] - batch["y"] + 0.05 * jax.random.normal(key, batch["y"].shape)
        return jnp.mean(err**2), {}

    def batches(rng):
        order = rng.permutation(48)
        return {"x": x[order].reshape(3, 16, 3), "y": y[order].reshape(3, 16)}

    return Model(name="wobbly", train=config, init=lambda key: init_state({"w": jax.random.normal(key, (3,))}, tx),
                 step=make_train_step(loss, tx), batches=batches,
                 validate=lambda params: {"score": float(jnp.sin(7.0 * jnp.sum(params["w"])))})


def assert_same_fit(together, alone, atol=1e-5):
    assert together.epochs_run == alone.epochs_run and together.best_epoch == alone.best_epoch
    assert together.best_valid.keys() == alone.best_valid.keys()
    for key in alone.best_valid:
        assert abs(together.best_valid[key] - alone.best_valid[key]) <= atol, key
    for a, b in zip(jax.tree.leaves(together.best_params), jax.tree.leaves(alone.best_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)
    for a, b in zip(jax.tree.leaves(together.state.params), jax.tree.leaves(alone.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


@pytest.mark.parametrize("batched, atol", [(False, 0.0), (True, 1e-5)])
def test_every_seed_equals_its_separate_run_and_stops_on_its_own(batched, atol):
    model = wobbly_model(TrainConfig(epochs=12, patience=2, monitor="score"))
    seeds = [0, 1, 2, 3]
    together = fit_seeds(model, seeds, batched=batched, **QUIET)
    alone = [fit(model, seed, **QUIET) for seed in seeds]
    assert len({r.epochs_run for r in alone}) > 1  # the seeds stop at different epochs: masking is exercised
    for a, b in zip(together, alone):
        assert_same_fit(a, b, atol)


@pytest.mark.parametrize("batched, atol", [(False, 0.0), (True, 1e-5)])
def test_backbone_seeds_in_one_program_equal_separate_runs(batched, atol):
    split = prepare(make_synthetic(num_users=40, num_items=120, per_user=15, seed=4))
    backbone = make_backbone("pmf", {"dim": 8})[0]
    model = backbone_model("train", split, backbone, backbone.context(split),
                           TrainConfig(epochs=3, batch_size=64, learning_rate=0.01), (10,), 32)
    together = fit_seeds(model, [3, 5], batched=batched, **QUIET)
    for seed, result in zip([3, 5], together):
        assert_same_fit(result, fit(model, seed, **QUIET), atol)


def test_folders_hold_what_fit_writes_and_resume_at_different_epochs(tmp_path):
    model = wobbly_model(TrainConfig(epochs=6, patience=6, monitor="score"))
    fit(wobbly_model(TrainConfig(epochs=3, patience=6, monitor="score")), 1, tmp_path / "s1", **QUIET)  # 3 done
    together = fit_seeds(model, [0, 1], [tmp_path / "s0", tmp_path / "s1"], **QUIET)
    assert together[0].resumed_from is None and together[1].resumed_from == 3
    fit(model, 0, tmp_path / "alone0", **QUIET)
    for seed in (0, 1):
        assert_same_fit(together[seed], fit(model, seed, **QUIET))
        lines = [json.loads(line) for line in (tmp_path / f"s{seed}" / "wobbly_log.jsonl").read_text().splitlines()]
        assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    alone = [json.loads(line) for line in (tmp_path / "alone0" / "wobbly_log.jsonl").read_text().splitlines()]
    ours = [json.loads(line) for line in (tmp_path / "s0" / "wobbly_log.jsonl").read_text().splitlines()]
    assert [line["valid"]["score"] for line in ours] == pytest.approx([line["valid"]["score"] for line in alone],
                                                                       abs=1e-5)
    # a folder fit_seeds wrote is finished for plain fit: it resumes at the last epoch and trains nothing more
    again = fit(model, 0, tmp_path / "s0", **QUIET)
    assert again.resumed_from == 6 and again.epochs_run == 6
    assert_same_fit(again, together[0])


def test_bad_seed_lists_fail_clearly(tmp_path):
    model = wobbly_model(TrainConfig(epochs=1, monitor="score"))
    with pytest.raises(ValueError, match="distinct seeds"):
        fit_seeds(model, [1, 1], **QUIET)
    with pytest.raises(ValueError, match="distinct seeds"):
        fit_seeds(model, [], **QUIET)
    with pytest.raises(ValueError, match="2 output folders for 3 seeds"):
        fit_seeds(model, [0, 1, 2], [tmp_path / "a", tmp_path / "b"], **QUIET)


def test_a_diverging_seed_is_named():
    model = wobbly_model(TrainConfig(epochs=2, monitor="score"))
    bad = model._replace(step=lambda s, b, k: (s, {"loss": jnp.where(s.step >= 0, jnp.nan, 0.0)}))
    with pytest.raises(FloatingPointError, match=r"seed 7\] training loss became nan"):
        fit_seeds(bad, [7, 8], **QUIET)
