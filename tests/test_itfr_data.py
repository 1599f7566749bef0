"""ITFR's data side: the genre item filter, the iterative k-core (the maximal subset, found by brute force on a hand
example), item groups from genres, intersectional group ids, the ``itfr`` preprocessing recipe in the config, the
method's config checks, and its variants as settings."""

import dataclasses
import itertools
import pathlib

import numpy as np
import pandas as pd
import pytest

from jaxfair.config import ConfigError
from jaxfair.data.dataset import DataError
from jaxfair.data.groups import genre_item_groups, group_counts, intersectional_groups
from jaxfair.data.preprocess import ITFR_GENRES, RECIPES, PrepConfig, filter_genre_items, k_core, prepare
from jaxfair.data.synthetic import make_synthetic
from jaxfair.harness import read_grid
from jaxfair.methods import itfr
from jaxfair.methods.itfr import ItfrConfig
from jaxfair.pipeline.config import parse_config, with_recipe

GRIDS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "grids"

# ------------------------------------------------------------------------------------------- genre item filter

ITEMS = pd.DataFrame(
    {
        "raw_id": ["a", "b", "c", "d", "e"],
        "title": [""] * 5,
        "genres": [("Sci-Fi",), ("Romance", "Sci-Fi"), ("Comedy",), ("Comedy", "Crime"), ()],
    }
)


def test_filter_genre_items_keeps_items_with_exactly_one_listed_genre():
    positives = pd.DataFrame({"user": [0, 0, 1, 1, 2, 2], "item": [0, 1, 2, 3, 4, 3], "timestamp": range(6)})
    kept = filter_genre_items(positives, ITEMS, ("Sci-Fi", "Romance", "Crime"))
    # item 0: Sci-Fi only; item 1: two listed genres; item 2: none listed; item 3: Crime (+ unlisted Comedy); 4: none
    assert kept["item"].tolist() == [0, 3, 3]
    assert kept["user"].tolist() == [0, 1, 2]
    assert kept.index.tolist() == [0, 1, 2]


def test_filter_genre_items_without_genres_keeps_everything():
    positives = pd.DataFrame({"user": [0, 1], "item": [1, 4]})
    assert filter_genre_items(positives, ITEMS, ()) is positives


def test_filter_genre_items_rejects_an_unknown_genre_and_an_empty_result():
    positives = pd.DataFrame({"user": [0, 1], "item": [1, 2]})
    with pytest.raises(DataError, match="Sci-fi"):  # a spelling mistake
        filter_genre_items(positives, ITEMS, ("Sci-fi", "Romance"))
    with pytest.raises(DataError, match="no positive"):
        filter_genre_items(positives, ITEMS, ("Sci-Fi", "Romance"))  # item 1 has both, item 2 neither


# ---------------------------------------------------------------------------------------------------- k-core


def brute_force_core(rows: set, k: int) -> set:
    """The largest row set induced by a user subset and an item subset in which every kept user and item has at
    least ``k`` rows."""
    users = sorted({u for u, _ in rows})
    items = sorted({i for _, i in rows})
    best = set()
    for nu in range(len(users) + 1):
        for user_set in itertools.combinations(users, nu):
            for ni in range(len(items) + 1):
                for item_set in itertools.combinations(items, ni):
                    induced = {(u, i) for u, i in rows if u in user_set and i in item_set}
                    ok = all(sum(1 for r in induced if r[0] == u) >= k for u in user_set) and all(
                        sum(1 for r in induced if r[1] == i) >= k for i in item_set
                    )
                    if ok and len(induced) > len(best):
                        best = induced
    return best


def test_k_core_removes_iteratively_and_keeps_the_maximal_subset():
    # k = 2. User 3 has one row: dropping it leaves item 2 with one row (user 2's); dropping item 2 leaves user 2
    # with one row - so user 2 goes only on a second pass. User 4's two rows are the same (user, item): one row.
    frame = pd.DataFrame(
        {
            "user": [0, 0, 1, 1, 2, 2, 3, 4, 4, 1],
            "item": [0, 1, 0, 1, 0, 2, 2, 0, 0, 3],
            "timestamp": [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
        }
    )
    core = k_core(frame, 2)
    got = set(zip(core["user"], core["item"]))
    assert got == {(0, 0), (0, 1), (1, 0), (1, 1)}
    unique_rows = set(zip(frame["user"], frame["item"]))
    assert got == brute_force_core(unique_rows, 2)
    assert core.index.tolist() == list(range(len(core)))


def test_k_core_keeps_the_earliest_duplicate_and_zero_is_off():
    frame = pd.DataFrame({"user": [0, 0, 0, 1, 1], "item": [0, 1, 0, 0, 1], "timestamp": [9, 2, 1, 3, 4]})
    core = k_core(frame, 2)
    assert sorted(zip(core["user"], core["item"], core["timestamp"])) == [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 1, 4)]
    assert k_core(frame, 0) is frame


def test_k_core_of_synthetic_data_has_every_user_and_item_at_least_k_times():
    interactions = make_synthetic(num_users=30, num_items=50, per_user=12, seed=1).interactions
    core = k_core(interactions, 6)
    assert not core.duplicated(["user", "item"]).any()
    assert core.groupby("user").size().min() >= 6 and core.groupby("item").size().min() >= 6
    assert len(core) < len(interactions)  # something was removed, so the check is not vacuous
    # maximal: any dropped row whose user and item both survive would have been kept (the core is induced)
    kept_users, kept_items = set(core["user"]), set(core["item"])
    dropped = interactions[~interactions.set_index(["user", "item"]).index.isin(core.set_index(["user", "item"]).index)]
    assert not any(u in kept_users and i in kept_items for u, i in zip(dropped["user"], dropped["item"]))


def test_k_core_that_is_empty_is_an_error():
    frame = pd.DataFrame({"user": [0, 1], "item": [0, 1], "timestamp": [0, 1]})
    with pytest.raises(DataError, match="2-core is empty"):
        k_core(frame, 2)


def test_prepare_with_genre_groups_and_k_core_gives_items_with_one_group_genre_and_k_positives():
    raw = make_synthetic(num_users=40, num_items=120, per_user=20, seed=3)
    genres = ("Romance", "Sci-Fi", "Drama")
    split = prepare(raw, PrepConfig(rating_threshold=0.0, genre_groups=genres, k_core=5, min_positives=3,
                                    split="random_ratio", ratios=(0.7, 0.1, 0.2), seed=2022))
    item_group = genre_item_groups(split.item_genres, split.genre_names, genres)  # would raise otherwise
    assert set(item_group.tolist()) == {0, 1, 2}
    known = split.positive_matrix()
    assert known.sum(axis=0).min() >= 5 and known.sum(axis=1).min() >= 5


# ------------------------------------------------------------------------------------------------------ groups


def test_genre_item_groups_is_the_position_of_the_items_one_group_genre():
    names = ("Action", "Comedy", "Crime", "Romance")
    item_genres = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0]], bool)
    got = genre_item_groups(item_genres, names, ("Romance", "Crime", "Comedy"))  # Action is not a group genre
    np.testing.assert_array_equal(got, [0, 1, 2, 1])
    assert got.dtype == np.int32


def test_genre_item_groups_rejects_items_with_none_or_two_group_genres_and_unknown_genres():
    names = ("Action", "Comedy", "Romance")
    with pytest.raises(DataError, match="item 1 has 0"):
        genre_item_groups(np.array([[0, 1, 0], [1, 0, 0]], bool), names, ("Comedy", "Romance"))
    with pytest.raises(DataError, match="item 0 has 2"):
        genre_item_groups(np.array([[0, 1, 1], [0, 1, 0]], bool), names, ("Comedy", "Romance"))
    with pytest.raises(DataError, match="Horror"):
        genre_item_groups(np.array([[0, 1, 0]], bool), names, ("Comedy", "Horror"))


def test_intersectional_groups_are_user_group_times_c_plus_item_group():
    user_group = np.array([0, 1, 1])
    item_group = np.array([2, 0, 1, 2])
    users, items = np.array([0, 1, 2, 1, 0]), np.array([3, 0, 1, 2, 1])
    got = intersectional_groups(user_group, item_group, users, items, 3)
    # (a, c) per row: (0, 2), (1, 2), (1, 0), (1, 1), (0, 0)
    np.testing.assert_array_equal(got, [0 * 3 + 2, 1 * 3 + 2, 1 * 3 + 0, 1 * 3 + 1, 0 * 3 + 0])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got // 3, user_group[users])
    np.testing.assert_array_equal(got % 3, item_group[items])
    np.testing.assert_array_equal(group_counts(got, 6), [1, 0, 1, 1, 1, 1])


# ----------------------------------------------------------------------------------------------------- recipes

FULL = {"protocols": ["full"], "ks": [10, 20]}


def test_itfr_recipe_fills_the_itfr_preprocessing():
    config = parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "itfr"}, "evaluate": FULL})
    data = config.data
    assert data.recipe == "itfr" and data.prep.genre_groups == ITFR_GENRES
    prep = data.prep
    assert prep.k_core == 5 and prep.split == "random_ratio" and prep.ratios == (0.7, 0.1, 0.2)
    assert prep.seed == 2022 and prep.rating_threshold == 0.0 and prep.min_positives == 3
    assert isinstance(prep, PrepConfig) and prep.genre_groups == ITFR_GENRES


def test_explicit_data_keys_override_the_recipe():
    data = parse_config(
        {"backbone": {"name": "pmf"}, "data": {"recipe": "itfr", "k_core": 10, "seed": 1, "genre_groups": ["Crime"]},
         "evaluate": FULL}
    ).data.prep
    assert data.k_core == 10 and data.seed == 1 and data.genre_groups == ("Crime",)
    assert data.split == "random_ratio" and data.ratios == (0.7, 0.1, 0.2)  # the rest from the recipe


def test_default_recipe_is_afrl_and_cofair_recipe_sets_its_split():
    assert with_recipe(None) == {} and with_recipe({"seed": 3}) == {"seed": 3}
    default = parse_config({"backbone": {"name": "pmf"}}).data
    assert default.recipe == "afrl"
    default = default.prep
    assert default.split == "leave_one_out" and default.k_core == 0
    assert default.genre_groups == ()
    cofair = parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "cofair"}, "evaluate": FULL}).data.prep
    assert (cofair.split, cofair.ratios, cofair.rating_threshold) == ("temporal_ratio", (0.8, 0.1, 0.1), 0.0)
    assert set(RECIPES) == {"afrl", "cofair", "itfr", "diffairec"}
    diffairec = parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "diffairec"},
                              "evaluate": FULL}).data.prep
    assert (diffairec.split, diffairec.ratios, diffairec.seed) == ("random_ratio", (0.7, 0.1, 0.2), 2024)
    assert (diffairec.rating_threshold, diffairec.min_positives) == (4.0, 10)


def test_unknown_recipe_is_a_config_error_naming_data_recipe():
    with pytest.raises(ConfigError, match="data.recipe"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": "itrf"}})
    with pytest.raises(ConfigError, match="data.recipe"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"recipe": 3}})


def test_bad_k_core_and_repeated_genre_are_config_errors():
    with pytest.raises(ConfigError, match="data: k_core"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"k_core": -1}})
    with pytest.raises(ConfigError, match="data: genre_groups lists a genre twice"):
        parse_config({"backbone": {"name": "pmf"}, "data": {"genre_groups": ["Crime", "Crime"]}})


# ---------------------------------------------------------------------------------------------- method checks


def itfr_values(**changes):
    """A valid ITFR run; ``changes`` maps a section to keys to replace in it (``backbone``: the whole table)."""
    values = {
        "method": "itfr",
        "backbone": {"name": "cosine_mf", "dim": 8, "tau": 0.2, "l2": 0.0},
        "data": {"recipe": "itfr"},
        "evaluate": {"protocols": ["full"], "ks": [10, 20]},
        "itfr": {"tau": 0.2, "train": {"monitor": "ndcg@20"}},
    }
    for section, keys in changes.items():
        if section == "backbone":
            values[section] = keys
        elif section == "train":  # ITFR's own loop, [itfr.train]
            values["itfr"] = {**values["itfr"], "train": {**values["itfr"]["train"], **keys}}
        else:
            values[section] = {**values[section], **keys}
    return values


def check(values):
    """Parsing a run config runs the chosen method's checks (ITFR's ``check``) before any data is read."""
    config = parse_config(values)
    assert config.method == "itfr" and isinstance(config.method_config, ItfrConfig)
    itfr.METHOD.check(config.method_config, config)


def test_valid_itfr_config_passes_the_checks():
    check(itfr_values())
    check(itfr_values(backbone={"name": "lightgcn", "dim": 8, "l2": 0.0, "num_layers": 2}))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"data": {"split": "leave_one_out"}}, "data.split"),
        ({"backbone": {"name": "sasrec"}}, "backbone.name"),
        ({"backbone": {"name": "pmf", "dim": 8, "l2": 1e-4}}, "backbone.l2"),
        ({"backbone": {"name": "pmf", "dim": 8}}, "backbone.l2"),  # PMF's default L2 is not 0
        ({"backbone": {"name": "cosine_mf", "dim": 8, "tau": 0.1, "l2": 0.0}}, "backbone.tau"),
        ({"train": {"monitor": "ndcg@50"}}, "itfr.train.monitor"),
    ],
)
def test_check_config_rejects_settings_itfr_cannot_honour(changes, message):
    with pytest.raises(ConfigError, match=message):
        check(itfr_values(**changes))


def test_itfr_variants_switch_the_documented_knobs():
    """The baselines and ablations are settings of the one method (``itfr.VARIANTS``), run side by side as points
    of a sweep; a variant keeps every other setting as written."""
    base = ItfrConfig(rho=0.1)
    variant = {name: dataclasses.replace(base, **changes) for name, changes in itfr.VARIANTS.items()}
    assert set(variant) == {"bpr", "groupdro", "itfr", "itfr_no_sam", "itfr_no_balance", "itfr_no_norm"}
    bpr = variant["bpr"]
    assert (bpr.balance, bpr.sam) == ("none", False) and bpr.rho == 0.1
    assert (variant["groupdro"].balance, variant["groupdro"].sam) == ("groupdro", False)
    assert variant["itfr_no_norm"].score_normalization is False
    assert variant["itfr_no_balance"].balance == "groupdro" and variant["itfr_no_balance"].sam
    assert variant["itfr_no_sam"].sam is False and variant["itfr_no_sam"].balance == "collaborative"
    assert variant["itfr"] == base and type(variant["itfr"]) is ItfrConfig
    # the sweep grids set exactly these knobs, point by point
    points = {**read_grid(GRIDS / "itfr_variants.toml"), **read_grid(GRIDS / "itfr_ablations.toml")}
    assert set(points) == set(itfr.VARIANTS)
    for name, overrides in points.items():
        assert overrides == {f"itfr.{key}": value for key, value in itfr.VARIANTS[name].items()}, name
    # the old in-section list of variants is rejected, saying what replaces it
    with pytest.raises(ConfigError, match="itfr.variants: variants are points of a sweep"):
        parse_config(itfr_values(itfr={"variants": ["bpr", "bpr"]}))
