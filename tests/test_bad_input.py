"""The bad-input catalog: every kind of bad input or fault a user met (issue 23), through the ``jaxfair`` command.

Each case asserts the exit status (2 for an input or environment problem, 1 for an unexpected error; 0 where the
fault is repaired, e.g. a damaged checkpoint with an older one to fall back on), that the one-line message names the
problem, that no traceback reaches the terminal, and that nothing was half-written (no ``results.json`` in a run
that failed, no temporary file left behind) or lost (a finished run's files unchanged).
"""

import fcntl
import json
import os
import pathlib
import shutil
import socket

import numpy as np
import pytest

from jaxfair.cli import main
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

CONFIG = """
[data]
source = "{data}"
seed = 1
eval_negatives = 20

[backbone]
name = "pmf"
dim = 8

[backbone.train]
epochs = 2
batch_size = 128
learning_rate = 0.01

[evaluate]
protocols = ["sampled"]
ks = [10]

[probe]
steps = 40
eval_every = 20
bootstrap = 20
audit_repeats = 2
audit_max_repeats = 2
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalog-data")
    write_ml100k_folder(make_synthetic(num_users=60, num_items=80, per_user=18, seed=2), folder)
    return folder


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run (and its config) that cases copy before damaging."""
    root = tmp_path_factory.mktemp("catalog-run")
    config = root / "run.toml"
    config.write_text(CONFIG.format(data=data))
    assert main(["train", str(config), "--out", str(root / "out")]) == 0
    return config, root / "out"


class Case:
    """What a case gets: a scratch folder, the synthetic data, a finished run, and helpers to damage copies."""

    def __init__(self, tmp: pathlib.Path, data: pathlib.Path, finished):
        self.tmp, self.data, (self.run_config, self.run) = tmp, data, finished
        self.out = tmp / "out"
        self.held = None  # a lock another "run" holds during the case

    def config(self, extra: str = "", replace: tuple[str, str] | None = None, data=None) -> str:
        text = CONFIG.format(data=data or self.data)
        if replace:
            assert replace[0] in text
            text = text.replace(*replace)
        path = self.tmp / "run.toml"
        path.write_text(text + extra)
        return str(path)

    def data_copy(self, edit, name: str = "u.data") -> pathlib.Path:
        """A copy of the data folder whose file ``name`` has its lines passed through ``edit(lines) -> lines``."""
        folder = self.tmp / "data"
        shutil.copytree(self.data, folder)
        lines = (folder / name).read_text().splitlines()
        (folder / name).write_text("".join(line + "\n" for line in edit(lines)))
        return folder

    def users_copy(self, edit) -> pathlib.Path:
        return self.data_copy(edit, "u.user")

    def run_copy(self) -> pathlib.Path:
        shutil.copytree(self.run, self.out)
        return self.out

    def embeddings(self, array=None) -> str:
        path = self.tmp / "emb.npy"
        np.save(path, np.load(self.run / "user_embeddings.npy") if array is None else array)
        return str(path)

    def users_csv(self, edit=None) -> str:
        path = self.tmp / "users.csv"
        text = (self.run / "users.csv").read_text()
        path.write_text(edit(text) if edit else text)
        return str(path)


def _field(line: str, index: int, value: str) -> str:
    parts = line.split("\t")
    parts[index] = value
    return "\t".join(parts)


def _steps(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def damage_newest_train_checkpoint(c: Case) -> None:
    out = c.run_copy()
    (out / "results.json").unlink()
    (out / "backbone.json").unlink()
    newest = _steps(out / "checkpoints" / "train")[-1]
    for path in newest.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def damage_every_train_checkpoint(c: Case) -> None:
    out = c.run_copy()
    (out / "results.json").unlink()
    (out / "backbone.json").unlink()
    for step in _steps(out / "checkpoints" / "train"):
        (step / "_CHECKPOINT_METADATA").unlink(missing_ok=True)
        for path in step.rglob("*"):
            if path.is_file():
                path.write_bytes(b"")


def live_lock(c: Case) -> None:
    """Another run holds the folder: its lock (a flock on the folder, released when the case ends) and its record."""
    out = c.run_copy()
    (out / "results.json").unlink()
    c.held = os.open(out, os.O_RDONLY)
    fcntl.flock(c.held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (out / "run.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                              "started": "2026-12-03 09:00:00", "command": "jaxfair train x"}))


def stale_lock(c: Case) -> None:
    out = c.run_copy()
    (out / "results.json").unlink()
    (out / "run.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(),
                                              "started": "2026-12-03 09:00:00", "command": "jaxfair train x"}))


def boom(*args, **kwargs):
    raise RuntimeError("a bug")


# (id, setup(case) -> argv, exit status, words the message must hold). Setups may damage copies in the case's
# scratch folder; "{out}" in argv is the case's output folder.
CASES = [
    # -- config files and command lines --
    ("config-missing", lambda c: ["train", str(c.tmp / "nope.toml"), "--out", "{out}"], 2, ["nope.toml", "not found"]),
    ("config-bad-toml", lambda c: ["train", c.config("\n[broken\n"), "--out", "{out}"], 2, ["run.toml"]),
    ("config-unknown-section", lambda c: ["train", c.config("\n[model]\nx = 1\n"), "--out", "{out}"], 2,
     ["model", "unknown section"]),
    ("config-unknown-key", lambda c: ["train", c.config(replace=("dim = 8", "dim = 8\nwidth = 3")), "--out", "{out}"],
     2, ["width"]),
    ("config-bad-type", lambda c: ["train", c.config(replace=("dim = 8", 'dim = "big"')), "--out", "{out}"], 2,
     ["dim"]),
    ("config-no-backbone-name", lambda c: ["train", c.config(replace=('name = "pmf"', "")), "--out", "{out}"], 2,
     ["backbone.name"]),
    ("config-unknown-backbone", lambda c: ["train", c.config(replace=('"pmf"', '"pmff"')), "--out", "{out}"], 2,
     ["pmff"]),
    ("config-unknown-method", lambda c: ["train", c.config(), "--out", "{out}", "--set", 'method="afrll"'], 2,
     ["afrll"]),
    ("config-monitor-auc", lambda c: ["train", c.config(replace=("learning_rate = 0.01", 'learning_rate = 0.01\n'
                                                                 'monitor = "auc"')), "--out", "{out}"], 2,
     ["backbone.train.monitor", "auc"]),
    ("config-monitor-cutoff", lambda c: ["train", c.config(), "--out", "{out}", "--set",
                                         'backbone.train.monitor="ndcg@20"'], 2, ["ndcg@20", "evaluate.ks"]),
    ("config-negative-epochs", lambda c: ["train", c.config(replace=("epochs = 2", "epochs = -2")), "--out",
                                          "{out}"], 2, ["epochs"]),
    ("config-zero-learning-rate", lambda c: ["train", c.config(), "--out", "{out}", "--set",
                                             "backbone.train.learning_rate=0.0"], 2, ["learning_rate"]),
    ("config-sampled-on-ratio-split", lambda c: ["train", c.config(), "--out", "{out}", "--set",
                                                 'data.split="random_ratio"'], 2, ["sampled", "leave_one_out"]),
    ("config-unknown-attribute", lambda c: ["train", c.config(), "--out", "{out}", "--set",
                                            'data.attributes=["gendre"]'], 2, ["gendre"]),
    ("config-bad-duplicates-policy", lambda c: ["train", c.config(), "--out", "{out}", "--set",
                                                'data.duplicates="merge"'], 2, ["duplicates", "merge"]),
    ("config-unknown-recipe", lambda c: ["train", c.config(), "--out", "{out}", "--set", 'data.recipe="fancy"'], 2,
     ["fancy"]),
    ("set-without-equals", lambda c: ["train", c.config(), "--out", "{out}", "--set", "backbone.dim"], 2,
     ["backbone.dim"]),
    ("set-unknown-key", lambda c: ["train", c.config(), "--out", "{out}", "--set", "backbone.depth=3"], 2,
     ["depth"]),
    ("config-several-methods", lambda c: ["train", c.config("\n[afrl]\nlam = 1.0\n[sm]\n"), "--out", "{out}"], 2,
     ["several method sections"]),
    ("config-old-train-section", lambda c: ["train", c.config("\n[train]\nepochs = 3\n"), "--out", "{out}"], 2,
     ["train"]),
    # -- data --
    ("data-folder-missing", lambda c: ["train", c.config(data=c.tmp / "nowhere"), "--out", "{out}"], 2,
     ["nowhere"]),
    ("data-rating-999", lambda c: ["train", c.config(data=c.data_copy(
        lambda lines: [_field(lines[0], 2, "999"), *lines[1:]])), "--out", "{out}"], 2, ["999", "1-5", "line 1"]),
    ("data-rating-negative", lambda c: ["train", c.config(data=c.data_copy(
        lambda lines: [*lines[:4], _field(lines[4], 2, "-3"), *lines[5:]])), "--out", "{out}"], 2,
     ["-3", "scale", "line 5"]),
    ("data-duplicate-rows", lambda c: ["train", c.config(data=c.data_copy(lambda lines: lines + lines[:40])),
                                       "--out", "{out}"], 2, ["40 repeated", "data.duplicates", "lines 1, 1081"]),
    ("data-user-id-not-a-number", lambda c: ["train", c.config(data=c.data_copy(
        lambda lines: [_field(lines[0], 0, "abc"), *lines[1:]])), "--out", "{out}"], 2, ["abc", "line 1"]),
    ("data-negative-timestamp", lambda c: ["train", c.config(data=c.data_copy(
        lambda lines: [*lines[:2], _field(lines[2], 3, "-5"), *lines[3:]])), "--out", "{out}"], 2,
     ["-5", "negative", "line 3"]),
    ("data-no-times-for-leave-one-out", lambda c: ["train", c.config(data=c.data_copy(
        lambda lines: [_field(line, 3, "0") for line in lines])), "--out", "{out}"], 2,
     ["timestamp", "leave-one-out"]),
    ("data-short-line", lambda c: ["train", c.config(data=c.data_copy(
        lambda lines: [*lines[:6], "12\t7", *lines[6:]])), "--out", "{out}"], 2, ["line 7"]),
    ("data-empty-ratings", lambda c: ["train", c.config(data=c.data_copy(lambda lines: [])), "--out", "{out}"], 2,
     ["u.data"]),
    ("data-users-bad-age", lambda c: ["train", c.config(data=c.users_copy(
        lambda lines: ["|".join([lines[0].split("|")[0], "old", *lines[0].split("|")[2:]]), *lines[1:]])),
                                      "--out", "{out}"], 2, ["u.user", "old"]),
    # -- run folders --
    ("out-is-a-file", lambda c: (c.out.write_text("x"), ["train", c.config(), "--out", "{out}"])[1], 2,
     ["names a file"]),
    ("out-under-a-file", lambda c: ((c.tmp / "f").write_text("x"), ["train", c.config(), "--out",
                                                                    str(c.tmp / "f" / "sub")])[1], 2,
     ["cannot create"]),
    ("out-holds-another-config", lambda c: (c.run_copy(), ["train", c.config(), "--out", "{out}", "--set",
                                                           "backbone.train.learning_rate=0.02"])[1], 2,
     ["backbone.train.learning_rate: 0.01 -> 0.02", "--restart"]),
    ("out-holds-another-seed", lambda c: (c.run_copy(), ["train", c.config(), "--out", "{out}", "--seed", "1"])[1],
     2, ["seed: 0 -> 1"]),
    ("out-config-unreadable", lambda c: (c.run_copy(), (c.out / "config.json").write_text("{"),
                                         ["train", c.config(), "--out", "{out}"])[2], 2, ["unreadable"]),
    ("out-in-use", lambda c: (live_lock(c), ["train", c.config(), "--out", "{out}"])[1], 2,
     ["in use", str(os.getppid())]),
    ("out-stale-lock-taken-over", lambda c: (stale_lock(c), ["train", c.config(), "--out", "{out}"])[1], 0, []),
    ("checkpoint-damaged-falls-back", lambda c: (damage_newest_train_checkpoint(c),
                                                 ["train", c.config(), "--out", "{out}"])[1], 0, []),
    ("checkpoint-all-damaged", lambda c: (damage_every_train_checkpoint(c),
                                          ["train", c.config(), "--out", "{out}"])[1], 2,
     ["no checkpoint restores", "--restart"]),
    # -- evaluate --
    ("evaluate-not-a-run", lambda c: ["evaluate", str(c.tmp)], 2, ["not a finished run"]),
    ("evaluate-k-zero", lambda c: ["evaluate", str(c.run), "--k", "0"], 2, ["--k 0"]),
    ("evaluate-full-on-sampled-only", lambda c: (c.run_copy(), ["evaluate", "{out}", "--protocol", "full"])[1], 0,
     []),
    # -- probe --
    ("probe-embeddings-missing", lambda c: ["probe", str(c.tmp / "none.npy"), c.users_csv()], 2, ["none.npy"]),
    ("probe-text-as-npy", lambda c: ((c.tmp / "e.npy").write_text("1,2\n3,4\n"),
                                     ["probe", str(c.tmp / "e.npy"), c.users_csv()])[1], 2, ["not a .npy file"]),
    ("probe-3d-array", lambda c: ["probe", c.embeddings(np.zeros((2, 3, 4))), c.users_csv()], 2, ["2-d"]),
    ("probe-nan", lambda c: ["probe", c.embeddings(np.full((60, 4), np.nan)), c.users_csv()], 2, ["NaN"]),
    ("probe-row-mismatch", lambda c: ["probe", c.embeddings(np.zeros((7, 4))), c.users_csv()], 2, ["7 rows"]),
    ("probe-semicolon-users", lambda c: ["probe", c.embeddings(), c.users_csv(lambda t: t.replace(",", ";"))], 2,
     ["comma-separated", "';'"]),
    ("probe-missing-column", lambda c: ["probe", c.embeddings(), c.users_csv(), "--attributes", "zodiac"], 2,
     ["zodiac"]),
    ("probe-single-class", lambda c: ["probe", c.embeddings(), c.users_csv(
        lambda t: "\n".join([t.splitlines()[0]] + [",".join(r.split(",")[:3] + ["M"] + r.split(",")[4:])
                                                   for r in t.splitlines()[1:]]) + "\n"), "--attributes", "gender"],
     2, ["single class"]),
    ("probe-bad-probe-split", lambda c: ["probe", c.embeddings(), c.users_csv(
        lambda t: t.replace(",train,", ",training,", 1))], 2, ["probe_split"]),
    ("probe-empty-valid-split", lambda c: ["probe", c.embeddings(), c.users_csv(
        lambda t: t.replace(",valid,", ",train,"))], 2, ["valid (0)"]),
    ("probe-negative-bootstrap", lambda c: ["probe", c.embeddings(), c.users_csv(), "--bootstrap", "-5"], 2,
     ["--bootstrap -5"]),
    ("probe-unseen-without-split", lambda c: ["probe", c.embeddings(), c.users_csv(
        lambda t: "\n".join(",".join(r.split(",")[:2] + r.split(",")[3:]) for r in t.splitlines()) + "\n"),
                                              "--unseen", "test"], 2, ["probe_split"]),
    # -- report, sweep, fetch --
    ("report-missing-folder", lambda c: ["report", str(c.tmp / "gone")], 2, ["gone"]),
    ("report-unknown-column", lambda c: ["report", str(c.run), "--columns", "nope"], 2, ["nope"]),
    ("sweep-grid-missing", lambda c: ["sweep", c.config(), "--out", "{out}", "--grid", str(c.tmp / "g.toml")], 2,
     ["g.toml"]),
    ("sweep-bad-rule", lambda c: ["sweep", c.config(), "--out", "{out}", "--select", "best: {x}"], 2, ["best"]),
    ("sweep-out-is-a-file", lambda c: (c.out.write_text("x"), ["sweep", c.config(), "--out", "{out}"])[1], 2,
     ["names a file"]),
    ("fetch-cache-is-a-file", lambda c: ((c.tmp / "cache").write_text("x"),
                                         ["fetch", "ml-100k", "--cache", str(c.tmp / "cache")])[1], 2,
     ["cache", "is a file"]),
]


@pytest.mark.parametrize("name, setup, status, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_ends_in_one_line_and_leaves_nothing_half_written(name, setup, status, words, data, finished,
                                                                     tmp_path, capsys):
    case = Case(tmp_path, data, finished)
    argv = [arg.replace("{out}", str(case.out)) for arg in setup(case)]
    run_before = {p: p.read_bytes() for p in finished[1].rglob("*") if p.is_file()}
    out_before = {p: p.read_bytes() for p in case.out.rglob("*") if p.is_file()} if case.out.is_dir() else {}
    capsys.readouterr()
    try:
        assert main(argv) == status
    finally:
        if case.held is not None:
            os.close(case.held)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status:
        lines = [line for line in err.splitlines() if line.startswith("jaxfair: ")]
        assert len(lines) == 1, err
        for word in words:
            assert word in lines[0], (word, lines[0])
        if argv[0] in ("train", "sweep") and case.out.is_dir():
            assert not (case.out / "results.json").exists() or out_before  # a failed run finishes nothing
            after = {p: p.read_bytes() for p in case.out.rglob("*") if p.is_file()}
            for path, content in out_before.items():  # and loses nothing that was there
                if path.name not in ("run.lock",):
                    assert after.get(path) == content, path
    elif argv[0] == "train":
        assert (case.out / "results.json").exists() and not (case.out / "run.lock").exists()
    assert not list(tmp_path.rglob(".*.tmp"))
    assert {p: p.read_bytes() for p in finished[1].rglob("*") if p.is_file()} == run_before  # cases work on copies


def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_one_before(data, finished, tmp_path, capsys):
    case = Case(tmp_path, data, finished)
    damage_newest_train_checkpoint(case)
    assert main(["train", case.config(), "--out", str(case.out)]) == 0
    out = capsys.readouterr().out
    assert "does not restore" in out and "resuming from step 1" in out and "resuming after epoch 1" in out
    assert list((case.out / "checkpoints" / "train").glob("*.damaged-*"))
    expected = json.loads((finished[1] / "results.json").read_text())["tables"]["test"]["backbone"]
    got = json.loads((case.out / "results.json").read_text())["tables"]["test"]["backbone"]
    assert got == expected


def test_an_unexpected_error_says_where_its_trace_is(data, finished, tmp_path, capsys, monkeypatch):
    import jaxfair.pipeline

    monkeypatch.setattr(jaxfair.pipeline, "run", boom)
    case = Case(tmp_path, data, finished)
    assert main(["train", case.config(), "--out", str(case.out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError: a bug" in err
    trace = pathlib.Path(err.rsplit("the full trace is in ", 1)[1].strip())
    assert trace.is_file()
    assert "Traceback" in trace.read_text() and "boom" in trace.read_text()
    trace.unlink()


def test_duplicates_can_be_kept_by_a_named_policy_recorded_in_the_results(data, tmp_path, capsys):
    case = Case(tmp_path, data, (None, None))
    folder = case.data_copy(lambda lines: lines + [_field(line, 3, str(int(line.split("\t")[3]) + 1))
                                                   for line in lines[:40]])
    config = case.config(data=folder)
    assert main(["train", config, "--out", str(case.out), "--set", 'data.duplicates="keep_last"']) == 0
    results = json.loads((case.out / "results.json").read_text())
    assert results["config"]["data"]["duplicates"] == "keep_last"


def test_a_lock_record_left_by_a_killed_run_is_taken_over_with_a_note(data, finished, tmp_path, capsys):
    case = Case(tmp_path, data, finished)
    stale_lock(case)
    assert main(["train", case.config(), "--out", str(case.out)]) == 0
    out = capsys.readouterr().out
    assert f"left its lock (pid {2**22 + 12345}, started 2026-12-03 09:00:00); taking the folder over" in out
    assert not (case.out / "run.lock").exists()
