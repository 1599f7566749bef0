"""Ratio hold-out splits: per-user counts, time order, seeded random draws, the prepared Split's parts and
masks, and a save/load round trip."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from jaxfair.data.dataset import DataError, load_split, save_split
from jaxfair.data.dataset import Split
from jaxfair.data.holdout import check_ratios, holdout_counts, ratio_split
from jaxfair.data.preprocess import PrepConfig, binarize, filter_users, prepare
from jaxfair.data.synthetic import make_synthetic

# n -> (n_train, n_valid, n_test), from n_test = max(1, round(r_test n)), n_valid = max(1, round(r_valid n)).
EXPECTED = {
    (0.8, 0.1, 0.1): {3: (1, 1, 1), 10: (8, 1, 1), 20: (16, 2, 2)},
    (0.7, 0.1, 0.2): {3: (1, 1, 1), 10: (7, 1, 2), 20: (14, 2, 4)},
}


@pytest.mark.parametrize("ratios", list(EXPECTED))
def test_holdout_counts_match_the_rule(ratios):
    n = np.array([3, 10, 20])
    n_train, n_valid, n_test = holdout_counts(n, ratios)
    got = {int(k): (int(a), int(b), int(c)) for k, a, b, c in zip(n, n_train, n_valid, n_test)}
    assert got == EXPECTED[ratios]
    np.testing.assert_array_equal(n_train + n_valid + n_test, n)


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.1, 0.2), (0.34, 0.33, 0.33), (0.1, 0.45, 0.45)])
def test_holdout_counts_leave_every_part_at_least_one(ratios):
    n = np.arange(3, 60)
    parts = holdout_counts(n, ratios)
    for part in parts:
        assert part.min() >= 1
    np.testing.assert_array_equal(sum(parts), n)


@pytest.mark.parametrize("n", [[2], [10, 1], [0, 5]])
def test_holdout_counts_reject_users_with_fewer_than_three_positives(n):
    with pytest.raises(DataError):
        holdout_counts(np.array(n), (0.8, 0.1, 0.1))


@pytest.mark.parametrize("ratios", [(0.8, 0.2), (0.9, 0.1, 0.1), (1.0, 0.0, 0.0), (0.9, -0.1, 0.2)])
def test_check_ratios_rejects_bad_fractions(ratios):
    with pytest.raises(ValueError):
        check_ratios(ratios)


def positives_frame(seed=0, num_users=6):
    """Users with 3..25 positives, timestamps in shuffled file order (ties included)."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(num_users):
        n = int(rng.integers(3, 26))
        frames.append(pd.DataFrame({"user": u, "item": rng.permutation(100)[:n],
                                    "timestamp": rng.integers(0, 10, n)}))  # few distinct times: many ties
    frame = pd.concat(frames, ignore_index=True)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def test_temporal_ratio_split_keeps_time_order_and_counts():
    positives = positives_frame()
    train, valid, test = ratio_split(positives, (0.8, 0.1, 0.1), "temporal_ratio")
    counts = positives.groupby("user").size()
    n_train, n_valid, n_test = holdout_counts(counts.to_numpy(), (0.8, 0.1, 0.1))
    for k, u in enumerate(counts.index):
        t_train = train.loc[train["user"] == u, "timestamp"].to_numpy()
        t_valid = valid.loc[valid["user"] == u, "timestamp"].to_numpy()
        t_test = test.loc[test["user"] == u, "timestamp"].to_numpy()
        assert (len(t_train), len(t_valid), len(t_test)) == (n_train[k], n_valid[k], n_test[k])
        assert t_train.max() <= t_valid.min() and t_valid.max() <= t_test.min()
        assert np.all(np.diff(t_train) >= 0)  # chronological within the user
    # every row lands in exactly one part
    rows = lambda f: set(zip(f["user"], f["item"]))
    assert rows(train) | rows(valid) | rows(test) == rows(positives)
    assert len(train) + len(valid) + len(test) == len(positives)


def test_temporal_ties_keep_file_order():
    positives = pd.DataFrame({"user": [0] * 5, "item": [10, 11, 12, 13, 14], "timestamp": [5, 5, 5, 5, 1]})
    train, valid, test = ratio_split(positives, (0.6, 0.2, 0.2), "temporal_ratio")
    assert train["item"].tolist() == [14, 10, 11] and valid["item"].tolist() == [12] and test["item"].tolist() == [13]


def test_random_ratio_split_is_seeded():
    positives = positives_frame(1)
    split = lambda seed: ratio_split(positives, (0.7, 0.1, 0.2), "random_ratio", np.random.default_rng(seed))
    a, b, c = split(0), split(0), split(1)
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)
    assert any(not x.equals(z) for x, z in zip(a, c))
    counts = positives.groupby("user").size().to_numpy()
    n_train, n_valid, n_test = holdout_counts(counts, (0.7, 0.1, 0.2))
    assert (len(a[0]), len(a[1]), len(a[2])) == (n_train.sum(), n_valid.sum(), n_test.sum())


def test_random_ratio_needs_a_generator_and_kind_is_checked():
    positives = positives_frame(2)
    with pytest.raises(ValueError):
        ratio_split(positives, (0.7, 0.1, 0.2), "random_ratio")
    with pytest.raises(ValueError):
        ratio_split(positives, (0.7, 0.1, 0.2), "leave_one_out")


def test_ratio_split_rejects_users_with_fewer_than_three_positives():
    positives = pd.DataFrame({"user": [0, 0, 0, 1, 1], "item": [1, 2, 3, 1, 2], "timestamp": [1, 2, 3, 1, 2]})
    with pytest.raises(DataError):
        ratio_split(positives, (0.8, 0.1, 0.1), "temporal_ratio")


@pytest.fixture(scope="module")
def raw():
    return make_synthetic(num_users=40, num_items=120, per_user=20, seed=3)


@pytest.fixture(scope="module")
def holdout(raw):
    return prepare(raw, PrepConfig(split="temporal_ratio", rating_threshold=0))


def test_prepare_returns_a_holdout_split_whose_parts_partition_the_positives(raw, holdout):
    assert isinstance(holdout, Split) and holdout.kind == "temporal_ratio"
    assert holdout.protocols == ("full",) and holdout.validation_protocol == "full"
    assert holdout.test_negatives.shape == (holdout.num_users, 0)
    positives = filter_users(binarize(raw.interactions, 0), 10)
    assert len(positives) == len(raw.interactions)  # threshold 0: every rating is a positive
    train, valid, test = holdout.train_matrix(), holdout.target_matrix("valid"), holdout.target_matrix("test")
    # disjoint
    assert not (train & valid).any() and not (train & test).any() and not (valid & test).any()
    # no duplicate rows within a part, and together they cover every known positive
    assert train.sum() == holdout.num_train and valid.sum() == len(holdout.valid_users)
    assert test.sum() == len(holdout.test_users)
    np.testing.assert_array_equal(train | valid | test, holdout.positive_matrix())
    assert holdout.positive_matrix().sum() == len(positives)
    # 20 positives per user at 80/10/10
    np.testing.assert_array_equal(train.sum(1), 16)
    np.testing.assert_array_equal(valid.sum(1), 2)
    np.testing.assert_array_equal(test.sum(1), 2)
    assert holdout.statistics()["valid_positives"] == 2 * holdout.num_users


def test_prepared_temporal_split_keeps_each_users_time_order(raw, holdout):
    # map the split's indices back to raw ids, then to the raw timestamps
    inter = raw.interactions.assign(user=(raw.interactions["user"] + 1).astype(str),
                                    item=(raw.interactions["item"] + 1).astype(str))
    time = {(u, i): t for u, i, t in zip(inter["user"], inter["item"], inter["timestamp"])}

    def times(users, items):
        frame = pd.DataFrame({"user": holdout.user_raw_ids[users], "t": [
            time[(holdout.user_raw_ids[u], holdout.item_raw_ids[i])] for u, i in zip(users, items)]})
        return frame.groupby("user")["t"]

    train = times(holdout.train_users, holdout.train_items)
    valid = times(holdout.valid_users, holdout.valid_items)
    test = times(holdout.test_users, holdout.test_items)
    assert (train.max() <= valid.min()).all() and (valid.max() <= test.min()).all()


def test_exclude_matrices(holdout):
    np.testing.assert_array_equal(holdout.exclude_matrix("test"), holdout.train_matrix() | holdout.target_matrix("valid"))
    np.testing.assert_array_equal(holdout.exclude_matrix("valid"), holdout.train_matrix())
    np.testing.assert_array_equal(holdout.target_matrix("valid"), holdout.dense(holdout.valid_users, holdout.valid_items))
    np.testing.assert_array_equal(holdout.target_matrix("test"), holdout.dense(holdout.test_users, holdout.test_items))
    with pytest.raises(ValueError):
        holdout.exclude_matrix("train")


def test_save_and_load_round_trip_a_holdout_split(holdout, tmp_path):
    path = tmp_path / "split.npz"
    save_split(holdout, path)
    loaded = load_split(path)
    assert type(loaded) is Split
    for field in dataclasses.fields(Split):
        want, got = getattr(holdout, field.name), getattr(loaded, field.name)
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want, err_msg=field.name)
            assert got.dtype == want.dtype, field.name
        elif isinstance(want, dict):
            assert list(got) == list(want), field.name
            for key in want:
                np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=field.name)
        else:
            assert got == want, field.name


def test_random_ratio_prepare_is_seeded(raw):
    a = prepare(raw, PrepConfig(split="random_ratio", ratios=(0.7, 0.1, 0.2), rating_threshold=0, seed=1))
    b = prepare(raw, PrepConfig(split="random_ratio", ratios=(0.7, 0.1, 0.2), rating_threshold=0, seed=1))
    c = prepare(raw, PrepConfig(split="random_ratio", ratios=(0.7, 0.1, 0.2), rating_threshold=0, seed=2))
    np.testing.assert_array_equal(a.target_matrix("test"), b.target_matrix("test"))
    assert not np.array_equal(a.target_matrix("test"), c.target_matrix("test"))
    np.testing.assert_array_equal(a.target_matrix("test").sum(1), 4)  # 20 positives at 70/10/20


def test_a_leave_one_out_split_carries_the_sampled_and_full_protocols(raw):
    split = prepare(raw, PrepConfig(rating_threshold=0))
    assert split.kind == "leave_one_out" and split.protocols == ("sampled", "full")
    assert split.validation_protocol == "sampled"
    np.testing.assert_array_equal(split.valid_users, np.arange(split.num_users))
    np.testing.assert_array_equal(split.stage_items("test"), split.test_items)
    assert split.negatives("valid").shape == (split.num_users, 99)
    # one target per user; full ranking masks every other known positive (the target never is)
    np.testing.assert_array_equal(split.target_matrix("test").sum(1), 1)
    np.testing.assert_array_equal(split.exclude_matrix("valid"), split.positive_matrix())
    with pytest.raises(ValueError, match="several"):
        prepare(raw, PrepConfig(split="temporal_ratio", rating_threshold=0)).stage_items("test")


def test_splits_saved_before_the_two_containers_became_one_still_load(raw, holdout, tmp_path):
    """Run folders written by earlier versions hold ``container = "Split"`` (leave-one-out, no held-out user rows)
    or ``"HoldoutSplit"`` (no negatives arrays); both load as today's Split."""
    import json

    loo = prepare(raw, PrepConfig(rating_threshold=0))
    for split, container, dropped in ((loo, "Split", ("kind", "valid_users", "test_users")),
                                      (holdout, "HoldoutSplit", ("valid_negatives", "test_negatives"))):
        save_split(split, tmp_path / "new.npz")
        with np.load(tmp_path / "new.npz") as data:
            arrays = {k: data[k] for k in data.files if k not in dropped}
        meta = json.loads(str(arrays.pop("meta")))
        meta = {k: v for k, v in meta.items() if k not in dropped} | {"container": container}
        np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)), **arrays)
        loaded = load_split(tmp_path / "old.npz")
        assert loaded.kind == split.kind and loaded.protocols == split.protocols
        for stage in ("valid", "test"):
            np.testing.assert_array_equal(loaded.target_matrix(stage), split.target_matrix(stage))
            np.testing.assert_array_equal(loaded.exclude_matrix(stage), split.exclude_matrix(stage))
            np.testing.assert_array_equal(loaded.negatives(stage), split.negatives(stage))
