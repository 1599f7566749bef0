"""Readers give one RawDataset shape for ML-100k, ML-1M and RecBole atomic files, and report bad lines precisely."""

import numpy as np
import pandas as pd
import pytest

from jaxfair.data.dataset import DataError
from jaxfair.data.readers import ML100K_GENRES, read_atomic, read_dataset, read_ml100k, read_ml1m

# Ids are chosen so that string order (1, 10, 2) differs from numeric order (1, 2, 10).
USERS = [("1", "24", "M", "technician", "85711"), ("2", "53", "F", "other", "94043"), ("10", "23", "m", "writer", "")]
ITEMS = [
    ("1", "Toy Story (1995)", ("Animation", "Children's", "Comedy")),
    ("2", "GoldenEye (1995)", ("Action", "Adventure", "Thriller")),
    ("3", "Four Rooms (1995)", ("Thriller",)),
    ("20", "Café Society (1995)", ()),
]
RATINGS = [
    ("10", "3", "4", "881250949"),
    ("1", "1", "5", "881250950"),
    ("2", "20", "3", "881250951"),
    ("1", "2", "1", "881250952"),
    ("10", "1", "2", "881250953"),
    ("2", "1", "4", "881250954"),
]


def write(path, lines, encoding="utf-8"):
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return path


def write_ml100k(folder):
    folder.mkdir(exist_ok=True)
    write(folder / "u.data", ["\t".join(r) for r in RATINGS])
    write(folder / "u.user", ["|".join(u) for u in USERS])
    flags = lambda genres: [str(int(g in genres)) for g in ML100K_GENRES]  # noqa: E731
    items = ["|".join([i, title, "01-Jan-1995", "", "http://x", *flags(genres)]) for i, title, genres in ITEMS]
    write(folder / "u.item", items, encoding="latin-1")
    return folder


def write_ml1m(folder):
    folder.mkdir(exist_ok=True)
    write(folder / "ratings.dat", ["::".join(r) for r in RATINGS])
    write(folder / "users.dat", ["::".join([u, gender, age, occupation, z]) for u, age, gender, occupation, z in USERS])
    movies = [f"{i}::{title}::{'|'.join(genres)}" for i, title, genres in ITEMS]
    write(folder / "movies.dat", movies, encoding="latin-1")
    return folder


def write_atomic(folder, name="ml-100k"):
    folder.mkdir(exist_ok=True)
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    write(folder / f"{name}.inter", [header] + ["\t".join(r) for r in RATINGS])
    header = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    write(folder / f"{name}.user", [header] + ["\t".join(u) for u in USERS])
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
    write(folder / f"{name}.item", [header] + [f"{i}\t{title}\t1995\t{' '.join(g)}" for i, title, g in ITEMS])
    return folder


def replace_line(path, line, text):
    lines = path.read_bytes().decode("latin-1").splitlines()
    lines[line - 1] = text
    write(path, lines, encoding="latin-1")


def assert_same(a, b):
    assert a.name == b.name
    # Equal data; only the line numbers kept for messages may differ (an atomic file has a header line).
    pd.testing.assert_frame_equal(a.interactions.drop(columns="line"), b.interactions.drop(columns="line"))
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)


def test_ml100k_ids_are_contiguous_in_numeric_order_of_raw_ids(tmp_path):
    raw = read_ml100k(write_ml100k(tmp_path / "ml"))
    assert raw.name == "ml-100k"
    assert list(raw.users["raw_id"]) == ["1", "2", "10"]
    assert list(raw.items["raw_id"]) == ["1", "2", "3", "20"]
    assert list(raw.interactions["user"]) == [2, 0, 1, 0, 2, 1]
    assert list(raw.interactions["item"]) == [2, 0, 3, 1, 0, 0]
    assert list(raw.interactions["rating"]) == [4.0, 5.0, 3.0, 1.0, 2.0, 4.0]
    assert raw.interactions["timestamp"].iloc[0] == 881250949


def test_ml100k_dtypes_attributes_and_genres(tmp_path):
    raw = read_ml100k(write_ml100k(tmp_path / "ml"))
    assert raw.interactions.dtypes.to_dict() == {
        "user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64, "line": np.int64
    }  # fmt: skip
    assert list(raw.interactions["line"]) == list(range(1, len(raw.interactions) + 1))  # for messages
    assert raw.attribute_names == ("age", "gender", "occupation")
    assert raw.users.iloc[1][["raw_id", "age", "gender", "occupation"]].tolist() == ["2", "53", "F", "other"]
    assert all(isinstance(v, str) for v in raw.users["age"])
    assert raw.items["title"].tolist()[3] == "Café Society (1995)"
    assert raw.items["genres"].tolist() == [g for _, _, g in ITEMS]
    assert raw.items.index.tolist() == [0, 1, 2, 3]


def test_ml100k_genre_names_come_from_u_genre_when_present(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    write(folder / "u.genre", ["Drama|1", "Comedy|0", ""])
    write(folder / "u.item", ["1|A||||1|0", "2|B||||0|1", "3|C||||1|1", "20|D||||0|0"])
    raw = read_ml100k(folder)
    assert raw.items["genres"].tolist() == [("Comedy",), ("Drama",), ("Comedy", "Drama"), ()]


def test_ml1m_reads_double_colon_files_and_pipe_genres(tmp_path):
    raw = read_ml1m(write_ml1m(tmp_path / "ml1m"))
    assert raw.name == "ml-1m"
    assert raw.attribute_names == ("gender", "age", "occupation")
    assert list(raw.users["raw_id"]) == ["1", "2", "10"]
    assert raw.users["gender"].tolist() == ["M", "F", "m"]
    assert list(raw.interactions["item"]) == [2, 0, 3, 1, 0, 0]
    assert raw.items["genres"].tolist()[0] == ("Animation", "Children's", "Comedy")
    assert raw.items["genres"].tolist()[3] == ()
    assert raw.items["title"].tolist()[3] == "Café Society (1995)"


def test_atomic_maps_fields_and_drops_zip_code(tmp_path):
    raw = read_atomic(write_atomic(tmp_path / "ml-100k"))
    assert raw.name == "ml-100k"
    assert raw.attribute_names == ("age", "gender", "occupation")
    assert raw.items["genres"].tolist()[0] == ("Animation", "Children's", "Comedy")
    assert raw.items["title"].tolist()[0] == "Toy Story (1995)"
    assert raw.interactions.dtypes.to_dict() == {
        "user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64, "line": np.int64
    }  # fmt: skip
    assert list(raw.interactions["line"]) == list(range(2, len(raw.interactions) + 2))  # after the header


def test_ml100k_and_atomic_files_of_the_same_data_give_equal_datasets(tmp_path):
    assert_same(read_ml100k(write_ml100k(tmp_path / "a")), read_atomic(write_atomic(tmp_path / "b")))


def test_atomic_name_defaults_to_the_only_inter_file_and_rating_and_time_default(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder / "clicks.inter", ["item_id:token\tuser_id:token", "b7\tu2", "a1\tu10", "a1\tu2"])
    raw = read_atomic(folder)
    assert raw.name == "clicks"
    assert raw.users["raw_id"].tolist() == ["u10", "u2"]  # tokens that are not integers sort as strings
    assert raw.items["raw_id"].tolist() == ["a1", "b7"]
    assert raw.interactions["user"].tolist() == [1, 0, 1]
    assert raw.interactions["rating"].tolist() == [1.0, 1.0, 1.0]
    assert raw.interactions["timestamp"].tolist() == [0, 0, 0]
    assert raw.attribute_names == ()
    assert raw.items["genres"].tolist() == [(), ()]


def test_read_dataset_detects_each_format(tmp_path):
    assert read_dataset(write_ml100k(tmp_path / "a")).name == "ml-100k"
    assert read_dataset(write_ml1m(tmp_path / "b")).name == "ml-1m"
    assert read_dataset(write_atomic(tmp_path / "c", name="mine")).name == "mine"


def test_read_dataset_names_the_folder_and_the_expected_files(tmp_path):
    with pytest.raises(DataError) as err:
        read_dataset(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "u.data" in str(err.value) and "ratings.dat" in str(err.value) and ".inter" in str(err.value)


def test_blank_lines_are_skipped_but_counted(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    replace_line(folder / "u.data", 2, "")
    assert len(read_ml100k(folder).interactions) == len(RATINGS) - 1
    replace_line(folder / "u.data", 4, "1\tabc\t3\t881250952")
    with pytest.raises(DataError, match=r"u\.data, line 4: item id 'abc' is not an integer"):
        read_ml100k(folder)


def test_the_earliest_bad_line_is_reported(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    replace_line(folder / "u.data", 5, "x\t1\t3\t881250952")
    replace_line(folder / "u.data", 3, "1\t1\tgood\t881250952")
    with pytest.raises(DataError, match=r"line 3: rating 'good' is not a number"):
        read_ml100k(folder)


def ml100k_case(file, line, text):
    def breaks(folder):
        write_ml100k(folder)
        if text is None:
            (folder / file).unlink()
        else:
            replace_line(folder / file, line, text)

    return breaks


def atomic_case(file, line, text):
    def breaks(folder):
        write_atomic(folder)
        replace_line(folder / file, line, text)

    return breaks


def ml1m_case(file, line, text):
    def breaks(folder):
        write_ml1m(folder)
        replace_line(folder / file, line, text)

    return breaks


def empty_ratings(folder):
    write_ml100k(folder)
    write(folder / "u.data", [])


BAD_INPUT = {
    "missing file": (ml100k_case("u.user", None, None), "u.user", None, "file not found"),
    "too few columns": (ml100k_case("u.data", 3, "1\t2\t3"), "u.data", 3, "expected 4 tab-separated fields"),
    "too many columns": (ml100k_case("u.user", 2, "2|53|F|other|1|2"), "u.user", 2, "found 6"),
    "user id": (ml100k_case("u.data", 2, "1.5\t1\t5\t881250950"), "u.data", 2, "user id '1.5' is not an integer"),
    "item id": (ml100k_case("u.data", 6, "2\tabc\t4\t881250954"), "u.data", 6, "item id 'abc' is not an integer"),
    "rating": (ml100k_case("u.data", 1, "10\t3\tfour\t881250949"), "u.data", 1, "rating 'four' is not a number"),
    "timestamp": (ml100k_case("u.data", 2, "1\t1\t5\tnoon"), "u.data", 2, "timestamp 'noon' is not a number"),
    "gender": (ml100k_case("u.user", 3, "10|23|X|writer|1"), "u.user", 3, "unknown gender 'X' (expected M or F)"),
    "age": (ml100k_case("u.user", 2, "2|old|F|other|1"), "u.user", 2, "age 'old' is not a number"),
    "empty attribute": (ml100k_case("u.user", 1, "1|24|M||1"), "u.user", 1, "empty occupation"),
    "duplicate user": (ml100k_case("u.user", 3, "1|23|M|writer|1"), "u.user", 3,
                       "duplicate user id '1' (first on line 1)"),
    "unknown user": (ml100k_case("u.data", 4, "99\t2\t1\t881250952"), "u.data", 4, "user id '99' is not in"),
    "unknown item": (ml100k_case("u.data", 5, "10\t99\t2\t881250953"), "u.data", 5, "item id '99' is not in"),
    "genre flag": (ml100k_case("u.item", 2, "2|G||||" + "|".join("2" * 19)), "u.item", 2,
                   "flag '2' of genre 'unknown' is not 0 or 1"),
    "empty ratings": (empty_ratings, "u.data", None, "no interactions"),
    "atomic field": (atomic_case("ml-100k.inter", 1, "user_id:token\titem:token\trating:float\tt:float"),
                     "ml-100k.inter", 1, "missing required field 'item_id'"),
    "atomic rating": (atomic_case("ml-100k.inter", 3, "1\t1\t?\t881250950"), "ml-100k.inter", 3, "rating '?' is not"),
    "atomic gender": (atomic_case("ml-100k.user", 4, "10\t23\tother\twriter\t1"), "ml-100k.user", 4, "unknown gender"),
    "atomic user": (atomic_case("ml-100k.inter", 2, "7\t3\t4\t881250949"), "ml-100k.inter", 2, "user id '7' is not in"),
    "ml1m columns": (ml1m_case("movies.dat", 2, "2::GoldenEye (1995)"), "movies.dat", 2, "expected 3 '::'-separated"),
    "ml1m gender": (ml1m_case("users.dat", 1, "1::?::24::4::1"), "users.dat", 1, "unknown gender '?'"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_raises_data_error_naming_file_line_and_problem(tmp_path, case):
    breaks, file, line, problem = BAD_INPUT[case]
    folder = tmp_path / "ml-100k"
    breaks(folder)
    with pytest.raises(DataError) as err:
        read_dataset(folder)
    message = str(err.value)
    where = str(folder / file) + (f", line {line}: " if line else ": ")
    assert message.startswith(where), message
    assert problem in message, message
