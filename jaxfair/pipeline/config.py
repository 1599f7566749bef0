"""The run config: one TOML file per experiment (``configs/``), parsed into frozen dataclasses.

Layout (every key optional unless noted; ``jaxfair train`` records the fully resolved config in ``config.json``)::

    extends = "base.toml"      # optional: this file lists only its overrides of a base config
    method = "afrl"            # the method to run (default: the one method section present, else "noop")
    seed = 0                   # the run's seed (initialisation, batches, probes)

    [data]                     # source, recipe, and the preprocessing keys of jaxfair.data.preprocess.PrepConfig
    [backbone]                 # name (required) and that backbone's options
    [backbone.train]           # the backbone's loop and optimizer (methods on a frozen backbone)
    [evaluate]                 # protocols, cut-offs, batch size
    [probe]                    # the attribute probes
    [afrl]                     # a method's section: its Config ...
    [afrl.train]               # ... and its own loop and optimizer

A config may hold several method sections (each validated); ``method`` says which one runs, so one file can serve a
comparison (``jaxfair sweep ... --grid`` with ``method`` in the grid). Every unknown or ill-typed key fails with
:class:`~jaxfair.config.ConfigError` naming it, before any data is touched, and so does a setting the chosen method
cannot honour (its ``check``). Configs written for the layout before this one (a ``[train]`` section, loop keys in a
method section, ``variants``) fail with a message saying how to rewrite them.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from jaxfair.backbones import make_backbone
from jaxfair.config import ConfigError, apply_overrides, from_dict, read_toml, to_dict
from jaxfair.data.preprocess import RECIPES, PrepConfig
from jaxfair.methods import METHODS, get_method
from jaxfair.metrics.probe import ProbeConfig
from jaxfair.metrics.ranking import PROTOCOLS, metric_names
from jaxfair.training.trainer import TrainConfig

TOP_LEVEL_KEYS = ("extends", "method", "seed")
COMMON_SECTIONS = ("data", "backbone", "evaluate", "probe")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from (``source``: ``ml-100k``, ``ml-1m`` or a local folder in any supported format), a
    named preset of preprocessing keys (``recipe``: :data:`jaxfair.data.preprocess.RECIPES`) and the preprocessing
    itself (``prep``). In the TOML ``[data]`` table the ``prep`` keys are written flat, next to ``source`` and
    ``recipe``; keys written in the file override the recipe's."""

    source: str = "ml-100k"
    recipe: str = "afrl"
    prep: PrepConfig = PrepConfig()

    def to_dict(self) -> dict:
        return {"source": self.source, "recipe": self.recipe, **to_dict(self.prep)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Which ranking protocols and cut-offs to report. ``sampled``: target + the split's fixed negatives;
    ``full``: all items with the user's other known positives masked."""

    protocols: tuple[str, ...] = PROTOCOLS
    ks: tuple[int, ...] = (10, 20)
    batch_size: int = 256

    def __post_init__(self):
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be a non-empty subset of {list(PROTOCOLS)}, got {list(self.protocols)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {list(self.ks)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class BackboneSection:
    """``[backbone]``: the registered backbone ``name``, its module ``Config`` and its loop ``train``."""

    name: str
    config: Any
    train: TrainConfig

    def to_dict(self) -> dict:
        return {"name": self.name, **to_dict(self.config), "train": to_dict(self.train)}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A parsed, validated run config (module docstring).

    Attributes:
      seed: the run's seed. method: the registered method that runs; method_config: its ``Config``.
      sections: every method section of the file, parsed (the one that runs included), so ``config.json`` keeps them.
    """

    seed: int
    method: str
    data: DataConfig
    backbone: BackboneSection
    evaluate: EvalConfig
    probe: ProbeConfig
    sections: dict

    @property
    def method_config(self):
        return self.sections[self.method]

    def to_dict(self) -> dict:
        """The resolved config as plain data; :func:`parse_config` reads it back to an equal config. (The backbone's
        loop is left out for a method that trains its own model: it has none.)"""
        backbone = self.backbone.to_dict()
        if not get_method(self.method).frozen_backbone:
            del backbone["train"]
        return {
            "method": self.method,
            "seed": self.seed,
            "data": self.data.to_dict(),
            "backbone": backbone,
            "evaluate": to_dict(self.evaluate),
            "probe": to_dict(self.probe),
            **{name: to_dict(config) for name, config in self.sections.items()},
        }

    def with_seed(self, seed: int) -> "RunConfig":
        return dataclasses.replace(self, seed=seed)


def with_recipe(values: dict | None) -> dict:
    """The ``[data]`` table with its recipe's keys filled in under the keys the file sets itself."""
    values = dict(values or {})
    name = values.get("recipe", "afrl")
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"data.recipe: unknown recipe {name!r} (known recipes: {', '.join(sorted(RECIPES))})")
    return {**RECIPES[name], **values}


def _data_config(values: dict | None) -> DataConfig:
    values = with_recipe(values)
    outer = {k: values.pop(k) for k in ("source", "recipe") if k in values}
    prep_keys = {f.name for f in dataclasses.fields(PrepConfig)}
    for key in values:
        if key not in prep_keys:
            known = ", ".join(sorted(prep_keys | {"source", "recipe"}))
            raise ConfigError(f"data.{key}: unknown key (known keys: {known})")
    prep = from_dict(PrepConfig, values, "data")
    return from_dict(DataConfig, {**outer, "prep": prep}, "data")


def _check_old_layout(values: dict) -> None:
    """ConfigErrors that say how to rewrite a config written for the layout before sections had their own loops."""
    if "train" in values:
        raise ConfigError(
            "train: the [train] section is gone: the backbone's loop is [backbone.train] and a method's loop is "
            "[<method>.train] (e.g. [afrl.train]); the seed is the top-level key `seed = ...`. For AFRL and Cofair "
            "configs move [train] to [backbone.train]; for ITFR and DifFaiRec move it to [itfr.train] / "
            "[diffairec.train]")
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, section in values.items():
        if name not in METHODS or not isinstance(section, dict):
            continue
        own = {f.name for f in dataclasses.fields(METHODS[name].Config)}
        for key in section:
            if key in train_keys and key not in own:
                raise ConfigError(f"{name}.{key}: the method's loop settings live in [{name}.train] now; move "
                                  f"{key} there")
        if "variants" in section:
            raise ConfigError(
                f"{name}.variants: variants are points of a sweep now: run `jaxfair sweep CONFIG --grid "
                f"configs/grids/{name}_variants.toml`, whose points set the method and its options")
        if name == "diffairec":
            for key in ("gamma", "mf_batch_size", "mf_learning_rate"):
                if key in section:
                    raise ConfigError(f"diffairec.{key}: the regularised MF is its own method now: [fair_mf] gamma "
                                      "and [fair_mf.train] batch_size / learning_rate")


def parse_config(values: dict) -> RunConfig:
    """Validate a parsed config mapping (``extends`` already resolved) into a :class:`RunConfig`.

    Raises:
      ConfigError: unknown section or key, wrong type, a value a section rejects, an old layout (with how to rewrite
        it), or a setting the chosen method cannot honour.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a table, got {values!r}")
    _check_old_layout(values)
    known = COMMON_SECTIONS + tuple(METHODS)
    for key, value in values.items():
        if key in TOP_LEVEL_KEYS:
            continue
        if key not in known:
            raise ConfigError(f"{key}: unknown section (known sections: {', '.join(known)}; top-level keys: "
                              f"{', '.join(TOP_LEVEL_KEYS[1:])})")
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
    seed = values.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, got {seed!r}")
    present = [name for name in METHODS if name in values]
    if "method" in values:
        method = values["method"]
        get_method(method)
    elif len(present) > 1:
        raise ConfigError(f"method: the config has several method sections ({', '.join(present)}); say which runs "
                          "with the top-level key method = \"...\"")
    else:
        method = present[0] if present else "noop"
    sections = {name: from_dict(METHODS[name].Config, values.get(name), name) for name in dict.fromkeys(
        [*present, method])}

    backbone_values = dict(values.get("backbone", {}))
    if "name" not in backbone_values:
        raise ConfigError("backbone.name: required key is missing")
    name = backbone_values.pop("name")
    train_values = backbone_values.pop("train", None)
    _, backbone_config = make_backbone(name, backbone_values)
    if train_values is not None and not get_method(method).frozen_backbone:
        raise ConfigError(f"backbone.train: {method} trains its own model from scratch, with [{method}.train]; the "
                          "[backbone.train] loop is for methods on a frozen backbone, remove it")
    backbone = BackboneSection(name, backbone_config, from_dict(TrainConfig, train_values, "backbone.train"))

    data = _data_config(values.get("data"))
    evaluate = from_dict(EvalConfig, values.get("evaluate"), "evaluate")
    if data.prep.split != "leave_one_out" and "sampled" in evaluate.protocols:
        raise ConfigError(
            f"evaluate.protocols: 'sampled' needs data.split = 'leave_one_out' (a {data.prep.split} split is ranked "
            "over all items); use protocols = [\"full\"]"
        )
    config = RunConfig(seed=seed, method=method, data=data, backbone=backbone, evaluate=evaluate,
                       probe=from_dict(ProbeConfig, values.get("probe"), "probe"), sections=sections)
    _check_monitors(config)
    get_method(method).check(config.method_config, config)
    return config


RANKING_MONITORS = tuple(name.split("@")[0] for name in metric_names((1,)))


def _check_monitors(config: RunConfig) -> None:
    """Every loop's ``monitor`` names a validation metric its stage reports: ``<ranking metric>@<cut-off>`` (a
    method's Config may add names in its ``extra_monitors``); the backbone's cut-off must be one of ``evaluate.ks``
    (its validation ranks at those). Caught here, before any data is read, instead of at the first validation."""
    loops = [("backbone.train", config.backbone.train, ())]
    loops += [(f"{name}.train", section.train, getattr(type(section), "extra_monitors", ()))
              for name, section in config.sections.items() if isinstance(getattr(section, "train", None), TrainConfig)]
    for key, train, extra in loops:
        metric, _, cutoff = train.monitor.partition("@")
        names = RANKING_MONITORS + tuple(extra)
        if metric not in names or not cutoff.isdigit() or int(cutoff) < 1:
            raise ConfigError(f"{key}.monitor: {train.monitor!r} is not a validation metric; use <metric>@<k> with "
                              f"metric one of {', '.join(names)} (e.g. \"ndcg@10\")")
    ks = list(config.evaluate.ks)
    if int(config.backbone.train.monitor.partition("@")[2]) not in ks:
        raise ConfigError(f"backbone.train.monitor: {config.backbone.train.monitor!r} needs its cut-off in "
                          f"evaluate.ks ({ks})")


def load_config(path: str | pathlib.Path, overrides=(), seed: int | None = None) -> RunConfig:
    """Read a TOML config (resolving ``extends``), apply ``section.key=value`` overrides and an optional seed, and
    validate it. Raises ConfigError for a missing file, bad TOML or a bad config."""
    values = apply_overrides(read_toml(path), overrides)
    if seed is not None:
        values["seed"] = seed
    return parse_config(values)
