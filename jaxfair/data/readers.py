"""Readers for MovieLens-100k, MovieLens-1M and RecBole atomic files, each returning a :class:`RawDataset`.

Every reader assigns contiguous ids ``0..n-1`` in increasing raw id (numeric order when the ids are integers). The
users and items are every row of the user and item files, rated or not; interactions keep the ratings file's order.
Each file's lines are field-counted on the raw bytes, parsed by pandas' C parser, then validated column-wise, so
ML-1M reads in well under a second. Any problem raises :class:`DataError` naming the file, the 1-based line (a header
counts as line 1) and what is wrong, e.g. ``/x/u.data, line 17: item id 'abc' is not an integer``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from jaxfair.data.dataset import DataError, RawDataset

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_GENDERS = ("F", "M")
_INTER_FIELDS = ("user_id", "item_id", "rating", "timestamp")
_SEP_NAMES = {"\t": "tab", "|": "'|'", "::": "'::'"}
# Multi-character separators are swapped for this control character so pandas can use its fast C parser.
_UNIT_SEP = "\x1f"


@dataclasses.dataclass(frozen=True)
class _Table:
    """One parsed file: its columns (str, or numbers where allowed and parseable) and each row's 1-based line."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def error(self, row: int | None, problem: str) -> DataError:
        where = self.path if row is None else f"{self.path}, line {int(self.lines[row])}"
        return DataError(f"{where}: {problem}")

    def check(self, *problems: tuple[np.ndarray, Callable[[int], str]]) -> None:
        """Raise for the earliest row flagged by any ``(bad_mask, describe(row))`` pair, so reports follow the file."""
        found = [(int(np.argmax(bad)), describe) for bad, describe in problems if bad.any()]
        if found:
            row, describe = min(found, key=lambda f: f[0])
            raise self.error(row, describe(row))


def _read_table(
    path: Path, sep: str, fields: list[str] | None = None, *, numeric: tuple[str, ...] = (), encoding: str = "latin-1"
) -> _Table:
    """Parse a delimited file after checking that every line has the right number of fields.

    Args:
      path: the file.
      sep: field separator (``"::"`` allowed).
      fields: column names; ``None`` reads them from an atomic ``field:type`` header line.
      numeric: columns pandas may parse as numbers (they stay str where some value is not a number).
      encoding: ``"latin-1"``, or ``"utf-8"`` (falling back to latin-1 when the bytes are not UTF-8).

    Returns:
      The table without blank lines; non-numeric columns hold str.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if encoding == "utf-8":
        data = data.removeprefix(b"\xef\xbb\xbf")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "latin-1"  # older RecBole conversions keep the GroupLens latin-1 bytes
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    split_on = sep if len(sep) == 1 else _UNIT_SEP
    if len(sep) > 1:
        data = data.replace(sep.encode(), split_on.encode())
    if data and not data.endswith(b"\n"):
        data += b"\n"
    # Separators and newlines are ASCII, so fields are counted on the raw bytes (UTF-8 never reuses ASCII bytes).
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    first = 1
    if fields is None:
        if not len(ends) or not data[: ends[0]].strip():
            raise DataError(f"{path}, line 1: expected a header line of field:type entries")
        fields = [entry.split(":")[0].strip() for entry in data[: ends[0]].decode(encoding).split(split_on)]
        repeated = sorted({f for f in fields if fields.count(f) > 1})
        if repeated:
            raise DataError(f"{path}, line 1: field {repeated[0]!r} appears more than once in the header")
        first, starts, ends = 2, starts[1:], ends[1:]
    seps = np.flatnonzero(buf == ord(split_on))
    counts = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
    odd = np.flatnonzero(counts != len(fields))
    blank = np.zeros(len(ends), bool)
    blank[odd] = [not data[starts[i] : ends[i]].strip() for i in odd]
    wrong = odd[~blank[odd]]
    if len(wrong):
        row = int(wrong[0])
        raise DataError(
            f"{path}, line {row + first}: expected {len(fields)} {_SEP_NAMES.get(sep, repr(sep))}-separated fields "
            f"({', '.join(fields)}), found {counts[row]}"
        )
    if blank.all():
        return _Table(path, pd.DataFrame({f: pd.Series([], dtype=str) for f in fields}), np.zeros(0, np.int64))
    frame = pd.read_csv(
        io.BytesIO(data), sep=split_on, header=None, names=range(len(fields)), skiprows=first - 1,
        dtype={k: str for k, f in enumerate(fields) if f not in numeric}, encoding=encoding, na_filter=False,
        quoting=csv.QUOTE_NONE, skip_blank_lines=False, index_col=False, engine="c", low_memory=False,
    )  # fmt: skip
    if len(frame) != len(ends):
        raise DataError(f"{path}: could not parse the file (found {len(frame)} rows in {len(ends)} lines)")
    frame.columns = fields
    numbers = np.arange(first, first + len(ends))
    if blank.any():
        frame, numbers = frame[~blank].reset_index(drop=True), numbers[~blank]
    return _Table(path, frame, numbers)


def _shown(values: pd.Series, row: int) -> str:
    """A value as it reads in the file, quoted, for messages."""
    return repr(str(values.iat[row]))


def _parse_ints(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """int64 values and a mask of entries that are not integers."""
    num = pd.to_numeric(values, errors="coerce")
    if num.dtype.kind in "iu":
        return num.to_numpy(np.int64), np.zeros(len(num), bool)
    arr = num.to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    return np.where(bad, 0, arr).astype(np.int64), bad


def _parse_floats(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a mask of entries that are not finite numbers."""
    arr = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr)
    return np.where(bad, 0.0, arr), bad


def _int_ids(table: _Table, column: str, what: str) -> tuple[np.ndarray, tuple]:
    values, bad = _parse_ints(table.frame[column])
    return values, (bad, lambda r: f"{what} id {_shown(table.frame[column], r)} is not an integer")


def _ratings_and_times(table: _Table, rating: str | None, timestamp: str | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Ratings (1.0 without a column) and int64 timestamps (0 without a column), and their problems."""
    n, problems = len(table), []
    if rating is None:
        ratings = np.ones(n)
    else:
        ratings, bad = _parse_floats(table.frame[rating])
        problems.append((bad, lambda r: f"rating {_shown(table.frame[rating], r)} is not a number"))
    if timestamp is None:
        times = np.zeros(n, np.int64)
    else:
        seconds, bad = _parse_floats(table.frame[timestamp])
        times = np.floor(seconds).astype(np.int64)
        problems.append((bad, lambda r: f"timestamp {_shown(table.frame[timestamp], r)} is not a number"))
        problems.append((~bad & (seconds < 0), lambda r: f"timestamp {_shown(table.frame[timestamp], r)} is negative"))
    return ratings, times, problems


def _attributes(table: _Table, columns: list[str], *problems) -> dict[str, np.ndarray]:
    """Stripped attribute strings, checked (with any further ``problems``): none empty, gender M/F, age a number."""
    values, problems = {}, list(problems)
    for name in columns:
        v = table.frame[name].str.strip()
        values[name] = v.to_numpy(dtype=object)
        empty = (v == "").to_numpy()
        problems.append((empty, lambda r, name=name: f"empty {name}"))
        if name == "gender":
            bad = ~v.str.upper().isin(_GENDERS).to_numpy() & ~empty
            problems.append((bad, lambda r, v=v: f"unknown gender {v.iat[r]!r} (expected M or F)"))
        elif name == "age":
            bad = pd.to_numeric(v, errors="coerce").isna().to_numpy() & ~empty
            problems.append((bad, lambda r, v=v: f"age {v.iat[r]!r} is not a number"))
    table.check(*problems)
    return values


@dataclasses.dataclass(frozen=True)
class _Entries:
    """A validated user or item file: its ids (int64 or str) and output columns, both aligned with its rows."""

    table: _Table
    keys: np.ndarray
    columns: dict[str, np.ndarray | list]


def _index(entries: _Entries | None, wanted: np.ndarray, what: str, inter: _Table) -> tuple[pd.DataFrame, np.ndarray]:
    """Sort a user or item file by id and map the interactions' ids onto its rows.

    Args:
      entries: the user or item file, or ``None`` when there is none (the ids in the interactions then make up the
        catalogue).
      wanted: the id of every interaction.
      what: ``"user"`` or ``"item"``; the interaction file's column is ``<what>_id``.
      inter: the interaction file, for messages.

    Returns:
      (the catalogue frame with ``raw_id`` and the entries' columns, int64 code of every interaction).
    """
    if entries is None:
        keys = np.unique(wanted)
        return pd.DataFrame({"raw_id": keys.astype(str).astype(object)}), np.searchsorted(keys, wanted).astype(np.int64)
    table, keys = entries.table, entries.keys
    repeated = pd.Series(keys).duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax(keys == keys[row]))
        shown = _shown(table.frame[f"{what}_id"], row)
        raise table.error(row, f"duplicate {what} id {shown} (first on line {int(table.lines[first])})")
    order = np.argsort(keys, kind="stable")
    codes = pd.Index(keys[order]).get_indexer(wanted)
    raw_wanted = inter.frame[f"{what}_id"]
    inter.check((codes < 0, lambda r: f"{what} id {_shown(raw_wanted, r)} is not in {table.path}"))
    frame = {"raw_id": keys[order].astype(str).astype(object)}
    for name, values in entries.columns.items():
        frame[name] = [values[i] for i in order] if isinstance(values, list) else values[order]
    return pd.DataFrame(frame), codes.astype(np.int64)


def _assemble(
    name: str,
    inter: _Table,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    ratings: np.ndarray,
    times: np.ndarray,
    users: _Entries | None,
    items: _Entries | None,
) -> RawDataset:
    """Build the RawDataset from validated columns (``users``/``items`` may be ``None`` for atomic files)."""
    user_frame, user_codes = _index(users, user_ids, "user", inter)
    item_frame, item_codes = _index(items, item_ids, "item", inter)
    if items is None:
        item_frame["title"] = ""
        item_frame["genres"] = [()] * len(item_frame)
    return RawDataset(
        name=name,
        interactions=pd.DataFrame({"user": user_codes, "item": item_codes, "rating": ratings, "timestamp": times,
                                   "line": np.asarray(inter.lines, np.int64)}),
        users=user_frame,
        items=item_frame,
    )


MOVIELENS_SCALE = (1.0, 5.0)  # the star ratings of every MovieLens release


def _interactions(table: _Table):
    """Integer user and item ids, ratings and timestamps of a MovieLens interaction file, all validated (ratings on
    MovieLens's 1-5 scale)."""
    if len(table) == 0:
        raise table.error(None, "no interactions")
    user_ids, user_problem = _int_ids(table, "user_id", "user")
    item_ids, item_problem = _int_ids(table, "item_id", "item")
    ratings, times, problems = _ratings_and_times(table, "rating", "timestamp")
    low, high = MOVIELENS_SCALE
    off_scale = (ratings < low) | (ratings > high)
    problems.append((off_scale, lambda r: f"rating {_shown(table.frame['rating'], r)} is outside MovieLens's "
                                          f"{low:g}-{high:g} scale"))
    table.check(user_problem, item_problem, *problems)
    return user_ids, item_ids, ratings, times


def _folder(folder) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    return path


def read_ml100k(folder) -> RawDataset:
    """Read a GroupLens MovieLens-100k folder.

    Args:
      folder: holds ``u.data`` (tab-separated user, item, rating, timestamp), ``u.user`` (``id|age|gender|
        occupation|zip``), ``u.item`` (``id|title|release date|video release date|URL|`` one 0/1 flag per genre,
        latin-1) and optionally ``u.genre`` (``name|index``; the standard 19 genres without it).

    Returns:
      The dataset ``"ml-100k"`` with user attributes ``age``, ``gender`` and ``occupation`` (the file's order, as in
      RecBole's conversion, so both give equal datasets).
    """
    folder = _folder(folder)
    inter = _read_table(folder / "u.data", "\t", list(_INTER_FIELDS), numeric=_INTER_FIELDS)
    user_ids, item_ids, ratings, times = _interactions(inter)

    users = _grouplens_users(folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip_code"])

    genre_names = _ml100k_genres(folder / "u.genre")
    flag_columns = [f"flag_{k}" for k in range(len(genre_names))]
    fields = ["item_id", "title", "release", "video", "url", *flag_columns]
    item_table = _read_table(folder / "u.item", "|", fields, numeric=("item_id",))
    item_keys, problem = _int_ids(item_table, "item_id", "item")
    flags = item_table.frame[flag_columns].apply(lambda c: c.str.strip()).to_numpy()
    bad = ~np.isin(flags, ["0", "1"])
    flag_problems = [
        (bad[:, k], lambda r, k=k: f"flag {flags[r, k]!r} of genre {genre_names[k]!r} is not 0 or 1")
        for k in range(len(genre_names))
    ]
    item_table.check(problem, *flag_problems)
    genres = [tuple(g for g, on in zip(genre_names, row) if on) for row in flags == "1"]
    return _assemble("ml-100k", inter, user_ids, item_ids, ratings, times, users,
                     _grouplens_items(item_table, item_keys, genres))


def _ml100k_genres(path: Path) -> tuple[str, ...]:
    """Genre names in flag order from ``u.genre``, or the standard 19 when the file is absent."""
    if not path.exists():
        return ML100K_GENRES
    table = _read_table(path, "|", ["name", "index"])
    index, problem = _parse_ints(table.frame["index"])
    names = table.frame["name"].str.strip()
    table.check(
        (problem, lambda r: f"genre index {_shown(table.frame['index'], r)} is not an integer"),
        ((names == "").to_numpy(), lambda r: "empty genre name"),
    )
    if len(table) == 0:
        raise table.error(None, "no genres")
    return tuple(names.to_numpy()[np.argsort(index, kind="stable")])


def read_ml1m(folder) -> RawDataset:
    """Read a GroupLens MovieLens-1M folder.

    Args:
      folder: holds ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``users.dat``
        (``UserID::Gender::Age::Occupation::Zip``) and ``movies.dat`` (``MovieID::Title::Genres``, genres
        separated by ``|``, latin-1).

    Returns:
      The dataset ``"ml-1m"`` with user attributes ``gender``, ``age`` (the ML-1M age code) and ``occupation`` (code).
    """
    folder = _folder(folder)
    inter = _read_table(folder / "ratings.dat", "::", list(_INTER_FIELDS), numeric=_INTER_FIELDS)
    user_ids, item_ids, ratings, times = _interactions(inter)

    users = _grouplens_users(folder / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip_code"])

    item_table = _read_table(folder / "movies.dat", "::", ["item_id", "title", "genres"], numeric=("item_id",))
    item_keys, problem = _int_ids(item_table, "item_id", "item")
    item_table.check(problem)
    genres = [tuple(g for g in (s.strip() for s in text.split("|")) if g) for text in item_table.frame["genres"]]
    return _assemble("ml-1m", inter, user_ids, item_ids, ratings, times, users,
                     _grouplens_items(item_table, item_keys, genres))


def _grouplens_users(path: Path, sep: str, fields: list[str]) -> "_Entries":
    """A GroupLens users file: integer ids and the ``gender``, ``age`` and ``occupation`` attributes (in the file's
    column order), validated."""
    table = _read_table(path, sep, fields, numeric=("user_id",))
    keys, problem = _int_ids(table, "user_id", "user")
    names = [f for f in fields if f in ("gender", "age", "occupation")]
    return _Entries(table, keys, _attributes(table, names, problem))


def _grouplens_items(table: "_Table", keys: np.ndarray, genres: list[tuple]) -> "_Entries":
    """A GroupLens items file's entries: stripped titles and the genre tuples."""
    titles = table.frame["title"].str.strip().to_numpy(dtype=object)
    return _Entries(table, keys, {"title": titles, "genres": genres})


def _atomic_name(folder: Path) -> str:
    if (folder / f"{folder.name}.inter").is_file():
        return folder.name
    found = sorted(folder.glob("*.inter"))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise DataError(f"{folder}: expected {folder.name}.inter or exactly one *.inter file, found {listed}")
    return found[0].stem


def _require_fields(table: _Table, fields: list[str]) -> None:
    for field in fields:
        if field not in table.frame.columns:
            header = ", ".join(table.frame.columns)
            raise DataError(f"{table.path}, line 1: missing required field {field!r} (header has: {header})")


def _atomic_keys(*columns: pd.Series) -> list[np.ndarray]:
    """Ids as int64 when every one is an integer (so they order numerically), else as stripped strings."""
    parsed = [_parse_ints(c) for c in columns]
    if not any(bad.any() for _, bad in parsed):
        return [values for values, _ in parsed]
    return [c.astype(str).str.strip().to_numpy(dtype=object) for c in columns]


def read_atomic(folder, name: str | None = None) -> RawDataset:
    """Read RecBole atomic files ``<name>.inter`` and, when present, ``<name>.user`` and ``<name>.item``.

    Each file is tab-separated with a ``field:type`` header. Ids are tokens: ordered numerically when all are
    integers, else as strings.

    Args:
      folder: the folder holding the files.
      name: file stem; defaults to the folder's name, else the stem of the folder's only ``*.inter`` file.

    Returns:
      The dataset ``name``. Interactions use ``user_id``, ``item_id``, ``rating`` (1.0 when absent) and
      ``timestamp`` (0 when absent); every user field but ``user_id`` and ``zip_code`` becomes an attribute; item
      ``movie_title`` or ``title`` becomes the title and the space-separated ``class`` or ``genre`` the genres.
      Without a user (item) file the users (items) are those seen in the interactions, with no attributes (titles).
    """
    folder = _folder(folder)
    name = name or _atomic_name(folder)
    inter = _read_table(folder / f"{name}.inter", "\t", numeric=_INTER_FIELDS, encoding="utf-8")
    _require_fields(inter, ["user_id", "item_id"])
    if len(inter) == 0:
        raise inter.error(None, "no interactions")
    columns = inter.frame.columns
    rating = "rating" if "rating" in columns else None
    timestamp = "timestamp" if "timestamp" in columns else None
    ratings, times, problems = _ratings_and_times(inter, rating, timestamp)
    inter.check(*problems)

    users = items = None
    user_path, item_path = folder / f"{name}.user", folder / f"{name}.item"
    if user_path.exists():
        table = _read_table(user_path, "\t", numeric=("user_id",), encoding="utf-8")
        _require_fields(table, ["user_id"])
        user_ids, keys = _atomic_keys(inter.frame["user_id"], table.frame["user_id"])
        attributes = _attributes(table, [c for c in table.frame.columns if c not in ("user_id", "zip_code")])
        users = _Entries(table, keys, attributes)
    else:
        (user_ids,) = _atomic_keys(inter.frame["user_id"])
    if item_path.exists():
        table = _read_table(item_path, "\t", numeric=("item_id",), encoding="utf-8")
        _require_fields(table, ["item_id"])
        item_ids, keys = _atomic_keys(inter.frame["item_id"], table.frame["item_id"])
        title = next((c for c in ("movie_title", "title") if c in table.frame.columns), None)
        genre = next((c for c in ("class", "genre") if c in table.frame.columns), None)
        titles = (
            table.frame[title].str.strip().to_numpy(dtype=object) if title else np.full(len(table), "", dtype=object)
        )
        genres = [tuple(text.split()) for text in table.frame[genre]] if genre else [()] * len(table)
        items = _Entries(table, keys, {"title": titles, "genres": genres})
    else:
        (item_ids,) = _atomic_keys(inter.frame["item_id"])
    return _assemble(name, inter, user_ids, item_ids, ratings, times, users, items)


def read_dataset(path) -> RawDataset:
    """Read a dataset folder in whichever supported format it holds.

    Args:
      path: a folder with ``u.data`` (MovieLens-100k), ``ratings.dat`` (MovieLens-1M) or ``*.inter`` (RecBole
        atomic files).

    Returns:
      What :func:`read_ml100k`, :func:`read_ml1m` or :func:`read_atomic` returns.
    """
    folder = _folder(path)
    if (folder / "u.data").is_file():
        return read_ml100k(folder)
    if (folder / "ratings.dat").is_file():
        return read_ml1m(folder)
    if any(folder.glob("*.inter")):
        return read_atomic(folder)
    raise DataError(
        f"{folder}: cannot tell the dataset format; expected u.data, u.user and u.item (MovieLens-100k), "
        "ratings.dat, users.dat and movies.dat (MovieLens-1M), or <name>.inter with <name>.user and <name>.item "
        "(RecBole atomic files)"
    )
