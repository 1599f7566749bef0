"""Config parsing: every key and type is checked, and errors name the dotted key."""

import dataclasses

import pytest

from jaxfair.config import ConfigError, from_dict
from jaxfair.experiments.config import parse_config


@dataclasses.dataclass(frozen=True)
class Example:
    rate: float = 0.5
    steps: int = 3
    names: tuple[str, ...] = ("a",)
    triple: tuple[float, float, float] = (0.6, 0.2, 0.2)
    flag: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be at least 1")


def test_defaults_and_values_round_trip():
    got = from_dict(Example, {"rate": 1, "names": ["x", "y"], "triple": [0.5, 0.25, 0.25], "flag": True})
    assert got == Example(rate=1.0, names=("x", "y"), triple=(0.5, 0.25, 0.25), flag=True)
    assert from_dict(Example, dataclasses.asdict(got)) == got


@pytest.mark.parametrize(
    "values,message",
    [
        ({"ratez": 1.0}, "sec.ratez: unknown key"),
        ({"steps": 1.5}, "sec.steps: expected an integer"),
        ({"steps": True}, "sec.steps: expected an integer"),
        ({"rate": "fast"}, "sec.rate: expected a number"),
        ({"names": "x"}, "sec.names: expected a list"),
        ({"names": ["x", 2]}, r"sec.names\[1\]: expected a string"),
        ({"triple": [1.0, 2.0]}, "sec.triple: expected 3 values"),
        ({"flag": 1}, "sec.flag: expected true or false"),
        ({"steps": 0}, "sec: steps must be at least 1"),
    ],
)
def test_errors_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Example, values, "sec")


def test_experiment_config_requires_a_backbone_name_and_validates_sections():
    with pytest.raises(ConfigError, match="backbone.name: required key is missing"):
        parse_config({"backbone": {}})
    with pytest.raises(ConfigError, match="backbone.name: unknown backbone 'svd'"):
        parse_config({"backbone": {"name": "svd"}})
    with pytest.raises(ConfigError, match="evaluate: protocols must be"):
        parse_config({"backbone": {"name": "pmf"}, "evaluate": {"protocols": ["uni100"]}})
    config = parse_config({"backbone": {"name": "sasrec", "max_len": 50}, "train": {"epochs": 2}})
    assert config.backbone.max_len == 50 and config.train.epochs == 2 and config.data.source == "ml-100k"
