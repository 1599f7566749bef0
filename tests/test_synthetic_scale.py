"""make_preset: seeded synthetic MovieLens-shaped data at real scale, long-tailed, with planted user attributes.

ML-1M is generated once for the module. ML-20M is never generated here; its time and memory are measured by
``python -m benchmarks.scale`` (benchmarks/scale.py).
"""

import dataclasses
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from jaxfair.config import ConfigError
from jaxfair.data.fetch import load
from jaxfair.data.synthetic_scale import ML1M_AGES, PRESETS, Preset, make_preset
from jaxfair.pipeline.config import DataConfig
from jaxfair.pipeline.run import load_split


@pytest.fixture(scope="module")
def ml1m():
    return make_preset("ml-1m")


def gender_auc(raw, top=100):
    """Held-out AUC of a least-squares probe predicting gender from each user's share of the ``top`` most popular
    items (a third of the users held out)."""
    users, items = raw.interactions["user"].to_numpy(), raw.interactions["item"].to_numpy()
    column = np.full(raw.num_items, -1)
    column[np.argsort(-np.bincount(items, minlength=raw.num_items))[:top]] = np.arange(top)
    hit = column[items] >= 0
    shares = np.bincount(users[hit] * top + column[items[hit]], minlength=raw.num_users * top).reshape(-1, top)
    features = np.c_[shares / np.bincount(users, minlength=raw.num_users)[:, None], np.ones(raw.num_users)]
    male = (raw.users["gender"] == "M").to_numpy()
    train = np.arange(raw.num_users) % 3 != 0
    weights = np.linalg.lstsq(features[train], male[train].astype(float), rcond=None)[0]
    score, label = features[~train] @ weights, male[~train]
    ranks = np.argsort(np.argsort(score)) + 1
    positives = label.sum()
    return (ranks[label].sum() - positives * (positives + 1) / 2) / (positives * (len(label) - positives))


def test_presets_have_the_movielens_shapes():
    shape = {name: (p.users, p.items, p.interactions) for name, p in PRESETS.items()}
    assert shape["ml-1m"] == (6_040, 3_706, 1_000_209)
    assert shape["ml-20m"] == (138_493, 26_744, 20_000_263)
    assert "tiny" in shape


@pytest.mark.parametrize("name", ["tiny", "ml-1m"])
def test_exact_shapes_every_user_and_item_seen_no_duplicates(name, ml1m):
    preset = PRESETS[name]
    raw = ml1m if name == "ml-1m" else make_preset(name)
    inter = raw.interactions
    assert raw.name == f"synthetic-{name}"
    assert (raw.num_users, raw.num_items, len(inter)) == (preset.users, preset.items, preset.interactions)
    assert dict(inter.dtypes) == {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64}
    per_user = np.bincount(inter["user"], minlength=preset.users)
    assert per_user.min() >= 20 and per_user.max() <= preset.max_share * preset.items
    assert np.bincount(inter["item"], minlength=preset.items).min() >= 1
    pairs = inter["user"].to_numpy() * preset.items + inter["item"].to_numpy()
    assert len(np.unique(pairs)) == len(pairs)


def test_ratings_timestamps_and_attributes_look_like_ml1m():
    raw = make_preset("tiny")
    inter = raw.interactions
    assert set(inter["rating"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 0.55 < (inter["rating"] >= 4).mean() < 0.6
    user, stamp = inter["user"].to_numpy(), inter["timestamp"].to_numpy()
    same_user = np.diff(user) == 0
    assert (np.diff(user) >= 0).all() and (np.diff(stamp)[same_user] > 0).all()
    assert stamp.min() >= PRESETS["tiny"].time_range[0] and stamp.max() <= PRESETS["tiny"].time_range[1]
    users = raw.users
    assert list(users.columns) == ["raw_id", "gender", "age", "occupation"]
    assert list(users["raw_id"][:3]) == ["1", "2", "3"]
    assert set(users["gender"]) == {"F", "M"}
    assert set(users["age"]) <= set(ML1M_AGES) and set(users["occupation"]) <= {str(k) for k in range(21)}
    assert all(isinstance(g, tuple) and g for g in raw.items["genres"])


def test_memory_does_not_grow_with_users_times_items():
    wide = Preset("wide", users=20_000, items=20_000, interactions=600_000, clusters=100)
    tracemalloc.start()
    try:
        make_preset(wide)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 128 * 2**20  # a bool (users, items) array alone would take 381 MiB


def test_same_seed_same_data_other_seed_other_data():
    first, again, other = make_preset("tiny", seed=3), make_preset("tiny", seed=3), make_preset("tiny", seed=4)
    for frame in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(first, frame), getattr(again, frame))
    assert not first.interactions[["user", "item"]].equals(other.interactions[["user", "item"]])
    assert not first.users["gender"].equals(other.users["gender"])


def test_long_tailed_items_and_users(ml1m):
    inter = ml1m.interactions
    per_item = np.sort(np.bincount(inter["item"]))[::-1]
    # The top 1% (37 items) hold 10.4% here, roughly 9% in the real ML-1M; uniform popularity would give 1%.
    assert per_item[: len(per_item) // 100].sum() > 0.08 * len(inter)
    assert per_item.min() < 5
    per_user = np.bincount(inter["user"])
    assert per_user.mean() > 1.4 * np.median(per_user)
    assert np.sort(per_user)[::-1][: len(per_user) // 10].sum() > 0.3 * len(inter)


def test_gender_is_planted_and_predictable_from_interactions(ml1m):
    assert gender_auc(ml1m) > 0.65
    unplanted = make_preset(dataclasses.replace(PRESETS["ml-1m"], signal=0.0))
    assert abs(gender_auc(unplanted) - 0.5) < 0.06


def test_source_string_loads_through_the_pipeline_entry_point():
    pd.testing.assert_frame_equal(load("synthetic:tiny").interactions, make_preset("tiny").interactions)
    pd.testing.assert_frame_equal(load("synthetic:tiny:seed=2").interactions, make_preset("tiny", 2).interactions)
    split = load_split(DataConfig(source="synthetic:tiny"), log=lambda line: None)
    assert split.name == "synthetic-tiny"
    assert split.attribute_names == ("gender", "age", "occupation")


@pytest.mark.parametrize("source", ["synthetic:ml-2m", "synthetic:", "synthetic:tiny:seed=x"])
def test_unknown_preset_raises_config_error_listing_the_known_ones(source):
    with pytest.raises(ConfigError, match="tiny, ml-1m, ml-20m"):
        load(source)
    with pytest.raises(ConfigError, match="unknown synthetic preset 'nope'"):
        make_preset("nope")


def test_impossible_preset_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        Preset("small", users=10, items=30, interactions=100, clusters=4)
