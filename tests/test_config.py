"""Config parsing: every key and type is checked, errors name the dotted key, configs compose with ``extends`` and
``--set``, old layouts fail saying how to rewrite them, and every file in configs/ parses."""

import dataclasses
import pathlib

import pytest

from jaxfair.config import ConfigError, apply_overrides, fingerprint, from_dict, parse_value, read_toml
from jaxfair.pipeline import load_config, parse_config
from jaxfair.training.trainer import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


@dataclasses.dataclass(frozen=True)
class WithLoop:
    width: int = 4
    train: TrainConfig = TrainConfig(learning_rate=5e-5, epochs=7)


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


def test_a_partial_sub_table_keeps_the_fields_default_instance_for_the_keys_it_leaves_out():
    got = from_dict(WithLoop, {"train": {"batch_size": 32}}, "m")
    assert got.train == TrainConfig(learning_rate=5e-5, epochs=7, batch_size=32)
    with pytest.raises(ConfigError, match="m.train.epochz: unknown key"):
        from_dict(WithLoop, {"train": {"epochz": 3}}, "m")


def test_extends_merges_table_by_table_and_chains(tmp_path):
    (tmp_path / "base.toml").write_text('seed = 1\n[a]\nx = 1\ny = 2\n[a.sub]\nz = 3\n')
    (tmp_path / "mid.toml").write_text('extends = "base.toml"\n[a]\ny = 20\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\n[a.sub]\nw = 4\n')
    assert read_toml(tmp_path / "top.toml") == {"seed": 1, "a": {"x": 1, "y": 20, "sub": {"z": 3, "w": 4}}}
    (tmp_path / "loop.toml").write_text('extends = "loop.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        read_toml(tmp_path / "loop.toml")
    (tmp_path / "lost.toml").write_text('extends = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match="nowhere.toml: config file not found"):
        read_toml(tmp_path / "lost.toml")


def test_overrides_are_dotted_keys_with_toml_values():
    values = apply_overrides({"afrl": {"lam": 1.0}}, ["afrl.lam=10", "afrl.train.epochs=3", "afrl.adversary=confusion",
                                                       'data.attributes=["gender"]', "method=sm"])
    assert values == {"afrl": {"lam": 10, "adversary": "confusion", "train": {"epochs": 3}},
                      "data": {"attributes": ["gender"]}, "method": "sm"}
    assert parse_value("true") is True and parse_value("1e-3") == 1e-3 and parse_value("a b") == "a b"
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["afrl.lam"])
    with pytest.raises(ConfigError, match="afrl.lam is not a table"):
        apply_overrides({"afrl": {"lam": 1.0}}, ["afrl.lam.x=1"])


def test_fingerprint_ignores_key_order_and_sees_values():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_a_run_config_requires_a_backbone_name_and_validates_every_section():
    with pytest.raises(ConfigError, match="backbone.name: required key is missing"):
        parse_config({"backbone": {}})
    with pytest.raises(ConfigError, match="backbone.name: unknown backbone 'svd'"):
        parse_config({"backbone": {"name": "svd"}})
    with pytest.raises(ConfigError, match="evaluate: protocols must be"):
        parse_config({"backbone": {"name": "pmf"}, "evaluate": {"protocols": ["uni100"]}})
    with pytest.raises(ConfigError, match="model: unknown section"):
        parse_config({"backbone": {"name": "pmf"}, "model": {}})
    with pytest.raises(ConfigError, match="data.thresold: unknown key"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"thresold": 3}})
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        parse_config({"backbone": {"name": "pmf"}, "seed": "0"})
    config = parse_config({"backbone": {"name": "sasrec", "max_len": 50, "train": {"epochs": 2}}})
    assert config.backbone.config.max_len == 50 and config.backbone.train.epochs == 2
    assert config.data.source == "ml-100k" and config.method == "noop" and config.seed == 0


def test_the_method_is_named_or_the_one_section_present():
    assert parse_config({"backbone": {"name": "pmf"}, "afrl": {}}).method == "afrl"
    both = {"backbone": {"name": "pmf"}, "afrl": {}, "sm": {"lam": 1.0}}
    with pytest.raises(ConfigError, match="several method sections"):
        parse_config(both)
    config = parse_config({**both, "method": "sm"})
    assert config.method == "sm" and config.method_config.lam == 1.0 and set(config.sections) == {"afrl", "sm"}
    with pytest.raises(ConfigError, match="method: unknown method 'smm'"):
        parse_config({**both, "method": "smm"})


def test_data_composes_the_recipe_and_the_preprocessing_keys():
    config = parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "cofair", "min_positives": 5},
                           "evaluate": {"protocols": ["full"]}, "method": "noop"})
    assert config.data.prep.split == "temporal_ratio" and config.data.prep.rating_threshold == 0.0
    assert config.data.prep.min_positives == 5
    assert config.data.to_dict()["recipe"] == "cofair" and config.data.to_dict()["split"] == "temporal_ratio"
    with pytest.raises(ConfigError, match="'sampled' needs data.split = 'leave_one_out'"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "cofair"}})


def test_methods_refuse_what_they_cannot_honour_before_any_data_is_read():
    with pytest.raises(ConfigError, match="data.split: Cofair is evaluated by full ranking"):
        parse_config({"backbone": {"name": "pmf"}, "cofair": {}})
    with pytest.raises(ConfigError, match="data.split: afrl is evaluated by the sampled protocol"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "cofair"}, "evaluate": {"protocols": ["full"]},
                      "afrl": {}})
    with pytest.raises(ConfigError, match="backbone.train: itfr trains its own model"):
        parse_config({"backbone": {"name": "cosine_mf", "tau": 0.2, "l2": 0.0, "train": {}},
                      "data": {"recipe": "itfr"}, "evaluate": {"protocols": ["full"], "ks": [10, 20]}, "itfr": {}})


@pytest.mark.parametrize("values,message", [
    ({"train": {"epochs": 3}}, r"train: the \[train\] section is gone: the backbone's loop is \[backbone.train\]"),
    ({"afrl": {"learning_rate": 1e-3}}, r"afrl.learning_rate: the method's loop settings live in \[afrl.train\]"),
    ({"cofair": {"monitor": "recall@10"}}, r"cofair.monitor: the method's loop settings live in \[cofair.train\]"),
    ({"itfr": {"variants": ["bpr"]}}, "itfr.variants: variants are points of a sweep now"),
    ({"diffairec": {"gamma": 1.0}}, r"diffairec.gamma: the regularised MF is its own method now: \[fair_mf\] gamma"),
])
def test_configs_in_the_old_layout_fail_saying_how_to_rewrite_them(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"backbone": {"name": "pmf"}, **values})


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_and_its_resolved_form_parses_back_to_the_same_config(path):
    config = load_config(path)
    assert parse_config(config.to_dict()) == config


def test_load_config_applies_overrides_and_the_seed():
    config = load_config(ROOT / "configs" / "afrl_sasrec_ml100k.toml", ["afrl.lam=1.0"], seed=3)
    assert config.backbone.name == "sasrec" and config.backbone.train.batch_size == 64
    assert config.backbone.train.learning_rate == 1e-3  # from the base, afrl_pmf_ml100k.toml
    assert config.method_config.beta == 1.0 and config.method_config.lam == 1.0 and config.seed == 3


def test_a_table_naming_another_thing_drops_the_base_options_but_keeps_its_sub_tables(tmp_path):
    (tmp_path / "base.toml").write_text('[backbone]\nname = "cosine_mf"\ntau = 0.2\n[backbone.train]\nepochs = 60\n'
                                        'monitor = "recall@10"\n')
    (tmp_path / "top.toml").write_text('extends = "base.toml"\n[backbone]\nname = "lightgcn"\n'
                                       '[backbone.train]\nepochs = 10\n')
    assert read_toml(tmp_path / "top.toml") == {"backbone": {"name": "lightgcn",
                                                             "train": {"epochs": 10, "monitor": "recall@10"}}}
