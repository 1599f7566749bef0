"""The method contract: what every fairness method (and every baseline) gives the pipeline.

A method is a module with a frozen ``Config`` dataclass and a :class:`Method` bundle of pure functions, registered
by name in :data:`jaxfair.methods.METHODS` (the way a backbone is a ``Config`` plus a
:class:`~jaxfair.backbones.base.Backbone`). The pipeline (:mod:`jaxfair.pipeline`) runs every method the same way:

1. ``check(config, run)`` - ConfigErrors for settings the method cannot honour, before any data is read;
2. ``prepare(context, config) -> data`` - the method's constant inputs, built once from the split and (for
   ``frozen_backbone`` methods) the trained, frozen backbone;
3. ``models(context, data, config, fitted) -> [Model, ...]`` - what the one trainer
   (:func:`jaxfair.training.trainer.fit`) fits: one model for most methods, one per fairness requirement for SM,
   Cofair's retraining baseline after Cofair itself. The pipeline calls it again with every fit so far until it
   names nothing new;
4. ``evaluate(context, data, fitted, config) -> Evaluation`` - test (and validation) metrics, the arrays and
   figures to save, and the flat tables the harness summarises;
5. ``report(results) -> str`` - the printed summary of a run.

``serve(data, params, config, inputs, control)`` is what a deployment calls: the fair user embeddings of ``inputs``
(the frozen backbone's user embeddings; for a diffusion model, the users' interaction rows, and it returns item
scores) under the method's own control input, e.g. a bool ``(users, attributes)`` mask for AFRL, an int
``(users,)`` level for Cofair.

A :class:`~jaxfair.training.trainer.Model` is one thing the trainer fits: an initial state from a key, the train
step ``(state, batch, key) -> (state, metrics)``, an epoch of batches from a numpy generator, a validation function,
and its loop section (``[<method>.train]``). The trainer owns the loop (one jitted scan per epoch), early stopping,
checkpoints, logging and keys.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxfair.backbones.base import FrozenBackbone
from jaxfair.config import ConfigError
from jaxfair.training.trainer import Model, seed_key

__all__ = ["Context", "Evaluation", "Method", "Model", "WITHHELD_STAGES", "audit_users", "best_params",
           "label_weight", "no_check", "require", "require_attribute", "require_monitor_cutoff",
           "require_ratio_split", "withheld_labels"]


class Context(NamedTuple):
    """What a method sees of its run.

    Attributes:
      split: the :class:`jaxfair.data.dataset.Split`.
      frozen: the trained backbone, frozen, for ``frozen_backbone`` methods; None otherwise.
      backbone: the backbone's functions (:class:`~jaxfair.backbones.base.Backbone`) and ``backbone_config``
        its ``Config``: the architecture a method that trains its own model (ITFR, the regularised MF) trains.
      evaluate: the ``[evaluate]`` section; probe: the ``[probe]`` section; seed: the run's seed.
    """

    split: Any
    frozen: FrozenBackbone | None
    backbone: Any
    backbone_config: Any
    evaluate: Any
    probe: Any
    seed: int

    @property
    def key(self) -> jax.Array:
        """The evaluation key, ``fold_in(key(seed), 1)`` (probes draw from it)."""
        return jax.random.fold_in(seed_key(self.seed), 1)


class Evaluation(NamedTuple):
    """What ``evaluate`` returns.

    Attributes:
      results: the method's own block of ``results.json`` (any JSON-able nesting).
      tables: ``{"valid": {row: {column: float}}, "test": {...}}``: the flat numbers the harness summarises over
        seeds and ``jaxfair report`` renders. Model selection reads ``valid`` only.
      arrays: file stem -> array, each saved as ``<stem>.npy`` (e.g. fair user embeddings, rows as ``users.csv``).
      figures: file name -> ``results -> matplotlib figure`` (it reads the whole ``results.json``), saved
        atomically.
    """

    results: dict
    tables: dict
    arrays: dict = {}
    figures: dict = {}


class Method(NamedTuple):
    """A registered method (module docstring).

    Attributes:
      name: registry name, also the config section (``[afrl]``) and its loop section (``[afrl.train]``).
      Config: the frozen dataclass of that section; it has a ``train`` field.
      frozen_backbone: True when the pipeline trains (or restores) the backbone first and hands it over frozen;
        False for methods that train their own model from scratch.
      check: ``(config, run_config) -> None``; raises ConfigError.
      prepare: ``(context, config) -> data``.
      models: ``(context, data, config, fitted) -> list[Model]``; ``fitted`` maps model names to
        :class:`~jaxfair.training.trainer.FitResult`.
      evaluate: ``(context, data, fitted, config) -> Evaluation``.
      serve: ``(data, params, config, inputs, control) -> array``; ``params`` maps model names to parameters.
      report: ``(results) -> str``.
      description: one line for listings.
    """

    name: str
    Config: type
    frozen_backbone: bool
    check: Callable
    prepare: Callable
    models: Callable
    evaluate: Callable
    serve: Callable
    report: Callable
    description: str = ""


def no_check(config, run_config) -> None:
    """The ``check`` of a method that accepts every run."""
    del config, run_config


def require(condition: bool, message: str) -> None:
    """A method's ``check``: ConfigError ``message`` (which starts with the dotted key at fault) unless
    ``condition``."""
    if not condition:
        raise ConfigError(message)


def require_ratio_split(name: str, run_config, recipe: str) -> None:
    """ConfigError unless the run's split is a ratio split (the method is evaluated by full ranking)."""
    require(run_config.data.prep.split != "leave_one_out",
            f"data.split: {name} is evaluated by full ranking of a ratio split; use recipe = \"{recipe}\" or split = "
            "\"temporal_ratio\" / \"random_ratio\"")


def require_attribute(key: str, attribute: str, run_config) -> None:
    """ConfigError naming ``key`` unless ``attribute`` is among the attributes the data section loads."""
    require(attribute in run_config.data.prep.attributes,
            f"{key}: {attribute!r} is not among data.attributes {list(run_config.data.prep.attributes)}")


def require_monitor_cutoff(key: str, train, run_config) -> None:
    """ConfigError naming ``key`` unless the monitored metric's cut-off is among ``[evaluate] ks``."""
    ks = list(run_config.evaluate.ks)
    require(train.monitor.split("@")[-1] in {str(k) for k in ks},
            f"{key}: {train.monitor!r} needs its cut-off in evaluate.ks ({ks})")


# Probe stages whose users' attribute labels the fairness methods never train on: the standard probe is selected on
# the validation users and scored on the test users, so neither may have been seen labelled; the unseen-user audit
# fits, selects and scores on exactly these users.
WITHHELD_STAGES = ("valid", "test")


def withheld_labels(stages: tuple[str, ...] = WITHHELD_STAGES) -> list[str]:
    """How results files name the withheld probe stages: ``["probe valid", "probe test"]`` by default."""
    return [f"probe {stage}" for stage in stages]


def label_weight(split, withheld: tuple[str, ...] = WITHHELD_STAGES) -> np.ndarray:
    """float32 ``(U,)``: 1 for users whose attribute labels a fairness method may train on, 0 for the probe users of
    the ``withheld`` probe stages (:data:`WITHHELD_STAGES` by default)."""
    weight = np.ones(split.num_users, np.float32)
    for stage in withheld:
        weight[split.probe_users[stage]] = 0.0
    return weight


def audit_users(split, withheld: tuple[str, ...] = WITHHELD_STAGES) -> np.ndarray:
    """int ``(n,)``: the probe users of the ``withheld`` stages, whose labels no method saw (the audit's users)."""
    return np.sort(np.concatenate([np.asarray(split.probe_users[stage]) for stage in withheld]))


def interval_columns(name: str, intervals: dict) -> dict[str, float]:
    """Table columns of 95% intervals: attribute -> ``[low, high]`` (or None, no interval drawn) becomes
    ``{<name>_lo/<attribute>: low, <name>_hi/<attribute>: high}``, beside the point estimate ``<name>/<attribute>``."""
    columns = {}
    for attribute, interval in intervals.items():
        if interval is not None:
            columns[f"{name}_lo/{attribute}"], columns[f"{name}_hi/{attribute}"] = map(float, interval)
    return columns


def best_params(fitted: dict) -> dict:
    """Model name -> the selected parameters of each fit."""
    return {name: fit.best_params for name, fit in fitted.items()}
