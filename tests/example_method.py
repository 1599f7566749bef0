"""A tiny method written only against the method contract (the proof that a new method needs one module, its
registration, one config, one test file and one docs page): "gain", which learns one non-negative gain per
embedding dimension on the frozen backbone's user embeddings, trained with BPR through the backbone's own scorer.
It is no fairness method; it exists to exercise every stage of the contract with something that really trains."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxfair.backbones.base import bpr_loss, padded_batches
from jaxfair.data.sampling import bpr_pairs
from jaxfair.methods.base import Evaluation, Method, Model, no_check
from jaxfair.metrics.ranking import split_ranking
from jaxfair.tables import format_table
from jaxfair.training import optim
from jaxfair.training.step import init_state, make_train_step
from jaxfair.training.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    floor: float = 0.0
    train: TrainConfig = TrainConfig(epochs=2, batch_size=128, learning_rate=0.05, monitor="ndcg@10")


def gains(params, config: Config) -> jax.Array:
    return config.floor + jax.nn.softplus(params["g"])


def serve(data, params, config: Config, user_vecs, control=None):
    return user_vecs * gains(params["gain"], config)


def prepare(context, config: Config) -> dict:
    return {"frozen": context.frozen, "known": context.split.positive_matrix()}


def models(context, data, config: Config, fitted) -> list[Model]:
    frozen, split = data["frozen"], context.split
    tx = optim.make(config.train)

    def loss(params, batch, key):
        u = frozen.user_vecs["valid"][batch["user"]] * gains(params, config)
        pos, neg = frozen.item_vecs[batch["pos"]], frozen.item_vecs[batch["neg"]]
        return bpr_loss(frozen.score(u, pos), frozen.score(u, neg), batch["weight"]), {}

    def validate(params):
        users = {"valid": frozen.user_vecs["valid"] * gains(params, config)}
        return split_ranking(frozen.score, users, frozen.item_vecs, split, (split.validation_protocol,),
                             tuple(context.evaluate.ks), stages=("valid",))[split.validation_protocol]["valid"]

    return [Model(name="gain", train=config.train,
                  init=lambda key: init_state({"g": jnp.zeros(frozen.item_vecs.shape[1])}, tx),
                  step=make_train_step(loss, tx),
                  batches=lambda rng: padded_batches(bpr_pairs(split, rng, data["known"]), config.train.batch_size,
                                                     rng),
                  validate=validate)]


def evaluate(context, data, fitted, config: Config) -> Evaluation:
    frozen, split = data["frozen"], context.split
    params = {name: fit.best_params for name, fit in fitted.items()}
    users = {stage: serve(data, params, config, frozen.user_vecs[stage]) for stage in ("valid", "test")}
    metrics = split_ranking(frozen.score, users, frozen.item_vecs, split, context.evaluate.protocols,
                            tuple(context.evaluate.ks))
    tables = {stage: {"all": {f"{p}/{m}": v for p, block in metrics.items() for m, v in block[stage].items()}}
              for stage in ("valid", "test")}
    return Evaluation(results={"metrics": metrics, "gains": gains(params["gain"], config).tolist()}, tables=tables)


def report(results: dict) -> str:
    return format_table([results["tables"]["test"]["all"]], list(results["tables"]["test"]["all"]))


METHOD = Method(name="gain", Config=Config, frozen_backbone=True, check=no_check, prepare=prepare, models=models,
                evaluate=evaluate, serve=serve, report=report, description="example: a learned gain per dimension")
