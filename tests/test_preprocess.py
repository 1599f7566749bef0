"""Preprocessing follows AFRL section 4.1.1, and negatives never leak a positive."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from jaxfair.data.dataset import DataError, load_split, save_split
from jaxfair.data.preprocess import (
    AGE_BUCKET_LABELS,
    PrepConfig,
    age_bucket,
    binarize,
    check_held_out,
    encode_attributes,
    filter_users,
    leave_one_out,
    prepare,
    split_probe_users,
)
from jaxfair.data.sampling import bpr_pairs, sample_negatives
from jaxfair.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def raw():
    return make_synthetic(num_users=60, num_items=150, per_user=20, seed=3)


@pytest.fixture(scope="module")
def split(raw):
    return prepare(raw, PrepConfig(seed=5))


def test_binarize_keeps_ratings_at_or_above_threshold():
    frame = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 2], "rating": [3.9, 4.0, 5.0], "timestamp": [1, 2, 3]})
    assert binarize(frame, 4.0)["item"].tolist() == [1, 2]


def test_filter_users_drops_users_below_minimum_and_fails_when_nothing_is_left():
    frame = pd.DataFrame({"user": [0] * 3 + [1] * 2, "item": [0, 1, 2, 0, 1]})
    assert filter_users(frame, 3)["user"].unique().tolist() == [0]
    with pytest.raises(DataError, match="nothing is left"):
        filter_users(frame, 4)


def test_leave_one_out_uses_time_order_not_file_order():
    frame = pd.DataFrame({"user": [0, 0, 0, 0], "item": [10, 11, 12, 13], "timestamp": [40, 10, 30, 20]})
    train, valid, test = leave_one_out(frame)
    assert test.tolist() == [10] and valid.tolist() == [12]
    assert train["item"].tolist() == [11, 13]  # chronological


def test_split_parts_are_disjoint_and_cover_every_positive(raw, split):
    positives = filter_users(binarize(raw.interactions), 10)
    assert split.num_train + 2 * split.num_users == len(positives)
    known = split.positive_matrix()
    assert known.sum() == len(positives)
    assert known[np.arange(split.num_users), split.valid_items].all()
    assert known[np.arange(split.num_users), split.test_items].all()
    train = split.train_matrix()
    assert not train[np.arange(split.num_users), split.valid_items].any()
    assert not train[np.arange(split.num_users), split.test_items].any()
    assert np.all(np.diff(split.train_users) >= 0)  # grouped by user


def test_every_user_keeps_at_least_min_positives(split):
    counts = np.diff(split.positives_indptr)
    assert counts.min() >= 10


def test_age_buckets_map_raw_ages_and_ml1m_codes_onto_the_same_seven_buckets():
    expected = {7: 0, 17: 0, 18: 1, 24: 1, 25: 2, 34: 2, 35: 3, 44: 3, 45: 4, 49: 4, 50: 5, 55: 5, 56: 6, 73: 6}
    assert {age: age_bucket(age) for age in expected} == expected
    assert [AGE_BUCKET_LABELS[age_bucket(code)] for code in (1, 18, 25, 35, 45, 50, 56)] == list(AGE_BUCKET_LABELS)


def test_encode_attributes_gender_two_classes_and_occupation_categories():
    users = pd.DataFrame({"raw_id": ["1", "2", "3"], "gender": ["M", "f", "F"], "occupation": ["writer", "artist", "writer"]})
    values, classes = encode_attributes(users, ("gender", "occupation"))
    assert classes["gender"] == ("F", "M") and values["gender"].tolist() == [1, 0, 0]
    assert classes["occupation"] == ("artist", "writer") and values["occupation"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("column,value,message", [("gender", "X", "unknown gender 'X'"), ("age", "old", "age .old. is not a number")])
def test_encode_attributes_rejects_unknown_values_naming_the_user(column, value, message):
    users = pd.DataFrame({"raw_id": ["7", "8"], "gender": ["M", "F"], "age": ["20", "30"]})
    users.loc[1, column] = value
    with pytest.raises(DataError, match=f"user 8: {message}"):
        encode_attributes(users, ("gender", "age"))


def test_eval_negatives_are_distinct_non_positive_and_seeded(raw, split):
    known = split.positive_matrix()
    for negatives in (split.valid_negatives, split.test_negatives):
        assert negatives.shape == (split.num_users, 99)
        assert not known[np.arange(split.num_users)[:, None], negatives].any()
        assert all(len(set(row)) == 99 for row in negatives)
    again = prepare(raw, PrepConfig(seed=5))
    other = prepare(raw, PrepConfig(seed=6))
    assert np.array_equal(again.test_negatives, split.test_negatives)
    assert not np.array_equal(other.test_negatives, split.test_negatives)


def test_training_negatives_never_hit_any_known_positive(split):
    known = split.positive_matrix()
    pairs = bpr_pairs(split, np.random.default_rng(0), known)
    assert not known[pairs["user"], pairs["neg"]].any()
    assert np.array_equal(pairs["pos"], split.train_items)


def test_sample_negatives_refuses_when_a_user_has_too_few_free_items():
    known = np.array([[True, True, False], [False, False, False]])
    with pytest.raises(ValueError, match="user 0 has only 1 non-positive"):
        sample_negatives(known, np.array([0, 1]), 2, np.random.default_rng(0), replace=False)


def test_probe_split_is_a_seeded_partition_of_users():
    parts = split_probe_users(100, (0.8, 0.1, 0.1), np.random.default_rng(1))
    together = np.concatenate(list(parts.values()))
    assert sorted(together.tolist()) == list(range(100))
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [80, 10, 10]
    assert np.array_equal(parts["test"], split_probe_users(100, (0.8, 0.1, 0.1), np.random.default_rng(1))["test"])


def test_histories_hold_the_most_recent_items_left_padded(split):
    valid = split.histories("valid", 5)
    test = split.histories("test", 5)
    user_items = split.train_items[split.train_users == 0]
    assert valid[0].tolist() == user_items[-5:].tolist()
    assert test[0].tolist() == user_items[-4:].tolist() + [split.valid_items[0]]
    long = split.histories("valid", 200)
    assert (long[0, : 200 - len(user_items)] == split.num_items).all()


def test_statistics_count_users_items_and_classes(split):
    stats = split.statistics()
    assert stats["users"] == split.num_users and stats["items"] == split.num_items
    assert sum(stats["attribute_class_counts"]["gender"].values()) == split.num_users
    assert stats["positives"] == split.positive_matrix().sum()


def test_split_file_round_trip_is_exact(split, tmp_path):
    save_split(split, tmp_path / "split.npz")
    back = load_split(tmp_path / "split.npz")
    for field in dataclasses.fields(split):
        a, b = getattr(split, field.name), getattr(back, field.name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b) and a.dtype == b.dtype, field.name
        elif isinstance(a, dict):
            assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a), field.name
        else:
            assert a == b, field.name
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_held_out_item_that_is_also_trained_on_or_both_validated_and_tested_is_refused():
    split = prepare(make_synthetic(num_users=40, num_items=60, per_user=15, seed=1), PrepConfig(eval_negatives=5))
    check_held_out(split)  # prepare's own split is clean
    user, item = int(split.train_users[0]), int(split.train_items[0])
    test_items = split.test_items.copy()
    test_items[user] = item  # leave-one-out: test_users is every user, in order
    with pytest.raises(DataError, match=f"user index {user} has item index {item} in both its training and its test"):
        check_held_out(dataclasses.replace(split, test_items=test_items))
    with pytest.raises(DataError, match="among both its validation and its test positives"):
        check_held_out(dataclasses.replace(split, valid_items=split.test_items.copy()))
