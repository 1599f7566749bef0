"""fetch installs only verified copies, falls back from GroupLens to the RecBole wheel, and reuses its cache.

Downloaders are replaced by fakes; the expected counts are shrunk to a 100-rating dataset (10 users x 10 items).
"""

import io
import subprocess
import urllib.error
import zipfile

import pytest

from jaxfair.data import fetch as fetch_mod
from jaxfair.data.dataset import DataError
from jaxfair.data.fetch import cache_dir, fetch, load
from jaxfair.data.readers import read_dataset


def ratings(n):
    return [(r % 10 + 1, r // 10 + 1, r % 5 + 1, 880_000_000 + r) for r in range(n)]


def ml100k_files(n=100):
    return {
        "u.data": "".join(f"{u}\t{i}\t{x}\t{t}\n" for u, i, x, t in ratings(n)),
        "u.user": "".join(f"{u}|{20 + u}|{'MF'[u % 2]}|student|0000{u}\n" for u in range(1, 11)),
        "u.item": "".join(f"{i}|Movie {i}||||" + "|".join("1" if g == i else "0" for g in range(19)) + "\n"
                          for i in range(1, 11)),
    }  # fmt: skip


def atomic_files(n=100):
    return {
        "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{x}\t{t}\n" for u, i, x, t in ratings(n)),
        "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{20 + u}\t{'MF'[u % 2]}\tstudent\t0000{u}\n" for u in range(1, 11)),
        "ml-100k.item": "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
        + "".join(f"{i}\tMovie {i}\tDrama\n" for i in range(1, 11)),
    }


def ml1m_files(n=100):
    return {
        "ratings.dat": "".join(f"{u}::{i}::{x}::{t}\n" for u, i, x, t in ratings(n)),
        "users.dat": "".join(f"{u}::{'MF'[u % 2]}::25::4::0000{u}\n" for u in range(1, 11)),
        "movies.dat": "".join(f"{i}::Movie {i}::Drama|Comedy\n" for i in range(1, 11)),
    }


def write_files(folder, files):
    for name, text in files.items():
        (folder / name).write_text(text)


def make_wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name, text in files.items():
            zf.writestr(f"recbole/dataset_example/ml-100k/{name}", text)
    return path


class Downloads:
    """Fake sources that record their calls; ``None`` contents mean the source fails like an offline network."""

    def __init__(self, monkeypatch, tmp_path, grouplens=None, wheel=None):
        self.calls = []
        self.wheel = make_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", wheel) if wheel else None
        self.grouplens_files = grouplens
        monkeypatch.setattr(fetch_mod, "_download_grouplens", self.grouplens)
        monkeypatch.setattr(fetch_mod, "_download_recbole_wheel", self.recbole)

    def grouplens(self, name, dest):
        self.calls.append("grouplens")
        if self.grouplens_files is None:
            raise urllib.error.URLError("Name or service not known")
        write_files(dest, self.grouplens_files)

    def recbole(self, dest):
        self.calls.append("wheel")
        if self.wheel is None:
            raise OSError("pip download exited with 1: no network")
        target = dest / self.wheel.name
        target.write_bytes(self.wheel.read_bytes())
        return target


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("JAXFAIR_DATA", str(folder))
    monkeypatch.setitem(fetch_mod.EXPECTED, "ml-100k", fetch_mod.Expected(("u.data", "u.user", "u.item"), 100, 10, 10))
    monkeypatch.setitem(
        fetch_mod.EXPECTED, "ml-1m", fetch_mod.Expected(("ratings.dat", "users.dat", "movies.dat"), 100, 10, 10)
    )
    return folder


def test_cache_dir_is_jaxfair_data_else_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFAIR_DATA", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("JAXFAIR_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "jaxfair"


def test_real_expectations_are_the_published_counts():
    counts = {name: (e.ratings, e.users, e.items) for name, e in fetch_mod.EXPECTED.items()}
    assert counts == {"ml-100k": (100_000, 943, 1_682), "ml-1m": (1_000_209, 6_040, 3_706)}


def test_grouplens_download_is_verified_and_installed(cache, tmp_path, monkeypatch):
    downloads = Downloads(monkeypatch, tmp_path, grouplens=ml100k_files())
    lines = []
    path = fetch("ml-100k", log=lines.append)
    assert path == cache / "ml-100k"
    assert {"u.data", "u.user", "u.item"} <= {p.name for p in path.iterdir()}
    assert len(read_dataset(path).interactions) == 100
    assert downloads.calls == ["grouplens"]
    assert lines[0].startswith("downloading ml-100k from https://files.grouplens.org/")
    assert [p.name for p in cache.iterdir()] == ["ml-100k"]  # no temporary folder left behind


def test_falls_back_to_the_recbole_wheel_when_grouplens_fails(cache, tmp_path, monkeypatch):
    downloads = Downloads(monkeypatch, tmp_path, grouplens=None, wheel=atomic_files())
    lines = []
    path = fetch("ml-100k", log=lines.append)
    assert downloads.calls == ["grouplens", "wheel"]
    assert sorted(p.name for p in path.glob("ml-100k.*")) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    raw = read_dataset(path)
    assert (raw.name, len(raw.interactions), raw.num_users, raw.num_items) == ("ml-100k", 100, 10, 10)
    assert any("GroupLens unreachable" in line and "recbole 1.2.1 wheel" in line for line in lines)
    assert [p.name for p in cache.iterdir()] == ["ml-100k"]


def test_both_sources_failing_says_why_and_where_to_put_the_files(cache, tmp_path, monkeypatch):
    Downloads(monkeypatch, tmp_path)
    with pytest.raises(DataError) as err:
        fetch("ml-100k", log=lambda line: None)
    message = str(err.value)
    assert "Name or service not known" in message and "no network" in message
    assert str(cache / "ml-100k") in message
    assert "u.data, u.user, u.item" in message and "local folder" in message
    assert list(cache.iterdir()) == []


def test_a_copy_failing_verification_leaves_nothing_in_the_cache(cache, tmp_path, monkeypatch):
    Downloads(monkeypatch, tmp_path, grouplens=ml100k_files(99), wheel=atomic_files(99))
    with pytest.raises(DataError, match="found 99 ratings"):
        fetch("ml-100k", log=lambda line: None)
    assert list(cache.iterdir()) == []
    downloads = Downloads(monkeypatch, tmp_path, grouplens=ml100k_files())
    assert fetch("ml-100k", log=lambda line: None) == cache / "ml-100k"
    assert downloads.calls == ["grouplens"]  # the failed attempt was not trusted


def test_a_bad_grouplens_copy_falls_back_to_the_wheel(cache, tmp_path, monkeypatch):
    downloads = Downloads(monkeypatch, tmp_path, grouplens=ml100k_files(99), wheel=atomic_files())
    path = fetch("ml-100k", log=lambda line: None)
    assert downloads.calls == ["grouplens", "wheel"]
    assert not (path / "u.data").exists() and (path / "ml-100k.inter").exists()


def test_a_second_call_reuses_the_cache_without_downloading(cache, tmp_path, monkeypatch):
    Downloads(monkeypatch, tmp_path, grouplens=ml100k_files())
    first = fetch("ml-100k", log=lambda line: None)
    downloads = Downloads(monkeypatch, tmp_path)
    lines = []
    assert fetch("ml-100k", log=lines.append) == first
    assert downloads.calls == [] and lines == []


def test_files_put_in_the_cache_by_hand_are_verified_not_downloaded(cache, tmp_path, monkeypatch):
    downloads = Downloads(monkeypatch, tmp_path)
    (cache / "ml-100k").mkdir(parents=True)
    write_files(cache / "ml-100k", atomic_files())
    assert fetch("ml-100k", log=lambda line: None) == cache / "ml-100k"
    assert downloads.calls == []
    (cache / "ml-1m").mkdir()
    write_files(cache / "ml-1m", ml1m_files(50))
    with pytest.raises(DataError, match="is not a complete copy of ml-1m.*found 50 ratings"):
        fetch("ml-1m", log=lambda line: None)
    assert (cache / "ml-1m" / "ratings.dat").exists()  # a person's files are never deleted


def test_ml1m_comes_from_grouplens_only(cache, tmp_path, monkeypatch):
    downloads = Downloads(monkeypatch, tmp_path, grouplens=ml1m_files())
    assert len(load("ml-1m", log=lambda line: None).interactions) == 100
    downloads = Downloads(monkeypatch, tmp_path, wheel=atomic_files())
    with pytest.raises(DataError) as err:
        fetch("ml-1m", cache=tmp_path / "other", log=lambda line: None)
    assert downloads.calls == ["grouplens"]
    assert str(tmp_path / "other" / "ml-1m") in str(err.value)
    assert "ratings.dat, users.dat, movies.dat" in str(err.value)


def test_unknown_names_list_the_known_ones(cache):
    with pytest.raises(DataError, match="'ml-20m'.*ml-100k, ml-1m"):
        fetch("ml-20m")


def test_load_reads_a_local_folder_and_rejects_a_missing_one(tmp_path):
    write_files(tmp_path, ml1m_files())
    assert load(tmp_path).name == "ml-1m"
    with pytest.raises(DataError, match="neither a known dataset"):
        load(tmp_path / "nowhere")


def test_grouplens_zip_is_unpacked_from_its_top_folder(tmp_path, monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in ml100k_files().items():
            zf.writestr(f"ml-100k/{name}", text)
        zf.writestr("ml-100k/extra/nested.txt", "")
    opened = []

    def urlopen(url, timeout):
        opened.append((url, timeout))
        return io.BytesIO(archive.getvalue())

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", urlopen)
    fetch_mod._download_grouplens("ml-100k", tmp_path)
    assert opened == [("https://files.grouplens.org/datasets/movielens/ml-100k.zip", fetch_mod.TIMEOUT_S)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.data", "u.item", "u.user"]


def test_recbole_wheel_is_fetched_with_pip_download(tmp_path, monkeypatch):
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        make_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", atomic_files())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch_mod.subprocess, "run", run)
    wheel = fetch_mod._download_recbole_wheel(tmp_path)
    assert wheel == tmp_path / "recbole-1.2.1-py3-none-any.whl"
    assert commands[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "recbole==1.2.1", "-d",
                               str(tmp_path)]  # fmt: skip
