"""Download MovieLens datasets into a local cache, verified and installed atomically, and load datasets by name.

``fetch("ml-100k")`` tries the GroupLens zip, then the copy of ML-100k shipped in the RecBole 1.2.1 wheel on PyPI;
``fetch("ml-1m")`` uses GroupLens only. A download is unpacked into a temporary folder inside the cache, checked
against the known counts of ratings, users and items, and only then renamed to ``<cache>/<name>``, with a marker
file that later calls trust without touching the network. Nothing half-written is ever left under that name.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from typing import Callable

from jaxfair.data.dataset import DataError, RawDataset
from jaxfair.data.readers import read_dataset
from jaxfair.data.synthetic_scale import SOURCE_PREFIX, load_source

DATASETS = ("ml-100k", "ml-1m")
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
TIMEOUT_S = 20
MARKER = ".verified"


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a complete copy holds: source files, ratings, and distinct users and items among the ratings."""

    grouplens_files: tuple[str, ...]
    ratings: int
    users: int
    items: int


EXPECTED = {
    "ml-100k": Expected(("u.data", "u.user", "u.item"), 100_000, 943, 1_682),
    "ml-1m": Expected(("ratings.dat", "users.dat", "movies.dat"), 1_000_209, 6_040, 3_706),
}
_WHEEL_FILES = tuple(f"ml-100k.{ext}" for ext in ("inter", "user", "item"))


def cache_dir() -> pathlib.Path:
    """The dataset cache: ``$JAXFAIR_DATA`` when set, else ``~/.cache/jaxfair``."""
    env = os.environ.get("JAXFAIR_DATA")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "jaxfair"


def _download_grouplens(name: str, dest: pathlib.Path) -> None:
    """Download ``<name>.zip`` from GroupLens and unpack the files of its top folder straight into ``dest``."""
    archive = dest / f"{name}.zip"
    with urllib.request.urlopen(GROUPLENS_URL.format(name=name), timeout=TIMEOUT_S) as response:
        with open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            parts = pathlib.PurePosixPath(member.filename).parts
            if not member.is_dir() and len(parts) == 2 and parts[0] == name:
                (dest / parts[1]).write_bytes(zf.read(member))
    archive.unlink()


def _download_recbole_wheel(dest: pathlib.Path) -> pathlib.Path:
    """Download the RecBole 1.2.1 wheel from PyPI into ``dest`` with pip and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", RECBOLE_REQUIREMENT, "-d"]
    done = subprocess.run([*command, str(dest)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(f"pip download exited with {done.returncode}: {lines[-1] if lines else 'no output'}")
    wheels = sorted(dest.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        raise OSError(f"pip download left no recbole wheel in {dest}")
    return wheels[0]


def _unpack_wheel(wheel: pathlib.Path, dest: pathlib.Path) -> None:
    """Copy the RecBole example ML-100k atomic files out of ``wheel`` into ``dest``."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for file in _WHEEL_FILES:
            member = f"recbole/dataset_example/ml-100k/{file}"
            if member not in names:
                raise DataError(f"{wheel.name} has no {member}")
            (dest / file).write_bytes(zf.read(member))


def _verify(name: str, folder: pathlib.Path, files: tuple[str, ...]) -> RawDataset:
    """Check ``folder`` holds ``files`` and the full dataset ``name``; raise DataError saying what differs."""
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    raw = read_dataset(folder)
    want = EXPECTED[name]
    got = (len(raw.interactions), raw.interactions["user"].nunique(), raw.interactions["item"].nunique())
    if got != (want.ratings, want.users, want.items):
        raise DataError(
            f"{folder}: expected {want.ratings} ratings by {want.users} users of {want.items} items for {name}, "
            f"found {got[0]} ratings by {got[1]} users of {got[2]} items"
        )
    return raw


def _install(
    name: str, root: pathlib.Path, fill: Callable[[pathlib.Path], None], files: tuple[str, ...], log
) -> pathlib.Path:
    """Fill a temporary folder inside ``root``, verify it, then rename it to ``root/name``; clean up on any failure."""
    final = root / name
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=root))
    try:
        staged = scratch / name
        staged.mkdir()
        fill(staged)
        raw = _verify(name, staged, files)
        (staged / MARKER).write_text(f"{name}: {len(raw.interactions)} ratings verified\n")
        try:
            os.replace(staged, final)
        except OSError:
            # Another process may have installed the same dataset meanwhile; its copy is as good as ours.
            if not (final / MARKER).is_file():
                raise
        log(f"{name}: verified {len(raw.interactions)} ratings; saved in {final}")
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _by_hand(name: str, final: pathlib.Path) -> str:
    url = GROUPLENS_URL.format(name=name)
    files = ", ".join(EXPECTED[name].grouplens_files)
    hint = f"Download {url} by hand and put {files} from it in {final}"
    if name == "ml-100k":
        hint += f" (or the RecBole atomic files {', '.join(_WHEEL_FILES)})"
    return hint + ", or pass the path of a local folder holding them instead of the name."


def fetch(name: str, cache=None, *, log=print) -> pathlib.Path:
    """Return a verified local folder holding dataset ``name``, downloading it into the cache when needed.

    Args:
      name: one of :data:`DATASETS`.
      cache: the cache folder; :func:`cache_dir` when ``None``.
      log: called with one progress line at a time.

    Returns:
      ``<cache>/<name>``, a folder :func:`jaxfair.data.readers.read_dataset` reads.

    Raises:
      DataError: unknown name, a cached folder that fails verification, or every source failed (the message says
        where to put the files by hand).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    root = pathlib.Path(cache).expanduser() if cache is not None else cache_dir()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: the cache must be a folder, but this is a file (pass --cache a folder, or set "
                        "$JAXFAIR_DATA to one)")
    final = root / name
    if (final / MARKER).is_file():
        return final
    if final.exists():
        # Only a person puts an unmarked folder here (ours appear complete, by rename), so check it, never replace it.
        try:
            raw = _verify(name, final, ())
        except DataError as exc:
            raise DataError(f"{final} is not a complete copy of {name}: {exc}. Fix or remove that folder.") from None
        (final / MARKER).write_text(f"{name}: {len(raw.interactions)} ratings verified\n")
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{root}: cannot create the cache folder ({err.strerror})") from err

    def from_grouplens(dest: pathlib.Path) -> None:
        _download_grouplens(name, dest)

    def from_wheel(dest: pathlib.Path) -> None:
        _unpack_wheel(_download_recbole_wheel(dest.parent), dest)

    log(f"downloading {name} from {GROUPLENS_URL.format(name=name)}")
    try:
        return _install(name, root, from_grouplens, EXPECTED[name].grouplens_files, log)
    except Exception as exc:  # any failure of a source (network, archive, contents) moves on to the next
        grouplens_error = f"{type(exc).__name__}: {exc}"
    if name != "ml-100k":
        raise DataError(f"could not fetch {name} from GroupLens ({grouplens_error}). {_by_hand(name, final)}")

    log(f"GroupLens unreachable ({grouplens_error}); trying the recbole 1.2.1 wheel from PyPI")
    try:
        return _install(name, root, from_wheel, _WHEEL_FILES, log)
    except Exception as exc:
        wheel_error = f"{type(exc).__name__}: {exc}"
    raise DataError(
        f"could not fetch {name}: GroupLens failed ({grouplens_error}); the recbole 1.2.1 wheel from PyPI failed "
        f"({wheel_error}). {_by_hand(name, final)}"
    )


def load(source, cache=None, log=print) -> RawDataset:
    """Read a dataset given by name (fetched into the cache first) or by local folder.

    Args:
      source: a name in :data:`DATASETS`, ``synthetic:<preset>[:seed=<n>]`` (generated by
        :func:`jaxfair.data.synthetic_scale.make_preset`, nothing fetched), or the path of a folder in a format
        :func:`jaxfair.data.readers.read_dataset` reads.
      cache: the cache folder for named datasets; :func:`cache_dir` when ``None``.
      log: progress lines of a download.

    Returns:
      The :class:`RawDataset`.
    """
    if str(source) in DATASETS:
        return read_dataset(fetch(str(source), cache, log=log))
    if str(source).startswith(SOURCE_PREFIX):
        return load_source(str(source))
    folder = pathlib.Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"{source!r} is neither a known dataset ({', '.join(DATASETS)}, {SOURCE_PREFIX}<preset>) "
                        "nor an existing folder")
    return read_dataset(folder)
