"""The experiment config file: one TOML file per experiment, parsed into frozen dataclasses.

Sections: ``[data]`` (:class:`DataConfig`), ``[backbone]`` (``name`` plus that backbone's options), ``[train]``
(:class:`jaxfair.training.trainer.TrainConfig`), ``[evaluate]`` (:class:`EvalConfig`), ``[probe]``
(:class:`jaxfair.metrics.probe.ProbeConfig`). Every unknown or ill-typed key fails with :class:`ConfigError` naming
it, before any data is touched.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from typing import Any

from jaxfair.backbones import make_backbone
from jaxfair.config import ConfigError, from_dict, to_dict
from jaxfair.data.preprocess import RECIPES, PrepConfig
from jaxfair.metrics.probe import ProbeConfig
from jaxfair.metrics.ranking import PROTOCOLS
from jaxfair.training.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is preprocessed (see :mod:`jaxfair.data.preprocess`).

    ``source`` is a dataset name (``ml-100k``, ``ml-1m``: fetched into the cache) or a local folder in any supported
    format. ``split`` is ``leave_one_out`` (AFRL; sampled and full protocols) or ``temporal_ratio`` /
    ``random_ratio`` with ``ratios = [train, valid, test]`` (full protocol only; :mod:`jaxfair.data.holdout`).
    ``genre_groups`` keeps the items with exactly one of those genres and ``k_core`` applies an iterative k-core
    (ITFR). ``recipe`` names a preset of these keys (:data:`jaxfair.data.preprocess.RECIPES`: ``afrl``, ``cofair``,
    ``itfr``, ``diffairec``); keys written in the file override the recipe's.
    """

    source: str = "ml-100k"
    rating_threshold: float = 4.0
    min_positives: int = 10
    eval_negatives: int = 99
    attributes: tuple[str, ...] = ("gender", "age", "occupation")
    probe_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    split: str = "leave_one_out"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    genre_groups: tuple[str, ...] = ()
    k_core: int = 0
    recipe: str = "afrl"

    def prep(self) -> PrepConfig:
        fields = {f.name for f in dataclasses.fields(PrepConfig)}
        return PrepConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known recipes: {sorted(RECIPES)}")
        self.prep()  # PrepConfig's checks, reported under [data]


def with_recipe(values: dict | None) -> dict:
    """The ``[data]`` table with its recipe's keys filled in under the keys the file sets itself."""
    values = dict(values or {})
    name = values.get("recipe", "afrl")
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"data.recipe: unknown recipe {name!r} (known recipes: {', '.join(sorted(RECIPES))})")
    return {**RECIPES[name], **values}


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


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    backbone_name: str
    backbone: Any  # the backbone module's Config
    train: TrainConfig
    evaluate: EvalConfig
    probe: ProbeConfig
    sections: dict  # any further sections (e.g. a method's), validated by that method

    def to_dict(self) -> dict:
        return {
            "data": to_dict(self.data),
            "backbone": {"name": self.backbone_name, **to_dict(self.backbone)},
            "train": to_dict(self.train),
            "evaluate": to_dict(self.evaluate),
            "probe": to_dict(self.probe),
            **self.sections,
        }


KNOWN_SECTIONS = ("data", "backbone", "train", "evaluate", "probe")


def parse_config(values: dict, method_sections: tuple[str, ...] = ()) -> ExperimentConfig:
    """Validate a parsed config mapping. ``method_sections`` are extra section names a method accepts."""
    for section in values:
        if section not in KNOWN_SECTIONS + method_sections:
            known = ", ".join(KNOWN_SECTIONS + method_sections)
            raise ConfigError(f"{section}: unknown section (known sections: {known})")
    backbone_values = dict(values.get("backbone", {}))
    if "name" not in backbone_values:
        raise ConfigError("backbone.name: required key is missing")
    name = backbone_values.pop("name")
    _, backbone_config = make_backbone(name, backbone_values)
    data = from_dict(DataConfig, with_recipe(values.get("data")), "data")
    evaluate = from_dict(EvalConfig, values.get("evaluate"), "evaluate")
    if data.split != "leave_one_out" and "sampled" in evaluate.protocols:
        raise ConfigError(
            f"evaluate.protocols: 'sampled' needs data.split = 'leave_one_out' (a {data.split} split is ranked over"
            " all items); use protocols = [\"full\"]"
        )
    return ExperimentConfig(
        data=data,
        backbone_name=name,
        backbone=backbone_config,
        train=from_dict(TrainConfig, values.get("train"), "train"),
        evaluate=evaluate,
        probe=from_dict(ProbeConfig, values.get("probe"), "probe"),
        sections={k: v for k, v in values.items() if k in method_sections},
    )


def load_config(path: str | pathlib.Path, method_sections: tuple[str, ...] = ()) -> ExperimentConfig:
    """Read and validate a TOML experiment config. Raises ConfigError for a missing file or bad TOML too."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    return parse_config(values, method_sections)
