"""Kill and resume: ``jaxfair train`` killed with SIGKILL (in a subprocess) at a stage of the pipeline, then run again
with the same command, finishes with byte-identical ``.npy`` outputs and the same results (timings and the resume
bookkeeping aside) as a run never interrupted; a finished run run again reports "complete" and changes nothing.

Kill points (``$JAXFAIR_FAULT``, :func:`jaxfair.training.trainer.fault_point`): ``train:<epoch>`` after an epoch of
the backbone, ``train:<last>`` between the backbone and the method, ``<model>:<epoch>`` during the method's training,
``evaluate`` before the evaluation and ``results`` after the arrays but before ``results.json``.

The full matrix (AFRL and Cofair at all five points, ITFR and DifFaiRec at their three) is marked slow; CI runs the
cases marked True below: AFRL killed during the backbone's training, during its own training and before the
evaluation, and Cofair, ITFR and DifFaiRec killed during their own training (each with a checkpoint every epoch, so
the resume restores a half-trained model).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKBONE_EPOCHS = 3

COMMON = """
[probe]
steps = 40
eval_every = 20
bootstrap = 20
audit_repeats = 2
audit_max_repeats = 2
"""

CONFIGS = {
    "afrl": f"""
method = "afrl"
[data]
source = "{{data}}"
attributes = ["gender", "age"]
[backbone]
name = "pmf"
dim = 8
[backbone.train]
epochs = {BACKBONE_EPOCHS}
batch_size = 256
learning_rate = 0.01
[evaluate]
protocols = ["sampled"]
ks = [10]
[afrl]
hidden = 8
[afrl.train]
epochs = 2
batch_size = 128
learning_rate = 0.001
""",
    "cofair": f"""
method = "cofair"
[data]
source = "{{data}}"
recipe = "cofair"
attributes = ["gender"]
[backbone]
name = "pmf"
dim = 8
[backbone.train]
epochs = {BACKBONE_EPOCHS}
batch_size = 256
learning_rate = 0.01
monitor = "recall@10"
[evaluate]
protocols = ["full"]
ks = [10]
[cofair]
levels = 2
shared_dim = 8
adapter_dim = 8
discriminator_hidden = 8
baseline_lambdas = [1.0]
floor_shuffles = 2
[cofair.train]
epochs = 2
batch_size = 256
learning_rate = 0.005
monitor = "recall@10"
""",
    "itfr": """
method = "itfr"
[data]
source = "{data}"
recipe = "itfr"
genre_groups = ["Action", "Comedy", "Drama"]
k_core = 3
attributes = ["gender"]
[backbone]
name = "pmf"
dim = 8
l2 = 0.0
[evaluate]
protocols = ["full"]
ks = [10, 20]
[itfr]
item_genres = ["Action", "Comedy", "Drama"]
[itfr.train]
epochs = 2
batch_size = 256
learning_rate = 0.01
monitor = "ndcg@20"
checkpoint_every = 1
""",
    "diffairec": """
method = "diffairec"
[data]
source = "{data}"
recipe = "diffairec"
attributes = ["gender"]
[backbone]
name = "pmf"
dim = 8
l2 = 0.0
[evaluate]
protocols = ["full"]
ks = [10, 20]
[diffairec]
latent_dim = 8
components = 2
[diffairec.diffusion]
steps = 3
hidden = [16]
time_dim = 4
[diffairec.train]
epochs = 2
batch_size = 32
learning_rate = 0.01
monitor = "ndcg@20"
checkpoint_every = 1
""",
}

CASES = [
    ("afrl", "train:1", True),  # during the backbone's training
    ("afrl", f"train:{BACKBONE_EPOCHS}", False),  # between the backbone and the method
    ("afrl", "afrl:1", True),  # during the method's training
    ("afrl", "evaluate", True),
    ("afrl", "results", False),
    ("cofair", "train:1", False),
    ("cofair", f"train:{BACKBONE_EPOCHS}", False),
    ("cofair", "cofair:1", True),
    ("cofair", "retrain0:1", False),  # during the retraining baseline, after Cofair itself
    ("cofair", "evaluate", False),
    ("itfr", "itfr:1", True),
    ("itfr", "evaluate", False),
    ("itfr", "results", False),
    ("diffairec", "diffairec:1", True),
    ("diffairec", "evaluate", False),
    ("diffairec", "results", False),
]


def _case(method, point, in_ci):
    marks = () if in_ci else (pytest.mark.slow,)
    return pytest.param(method, point, marks=marks, id=f"{method}-{point}")


def train(config: pathlib.Path, out: pathlib.Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JAXFAIR_FAULT"}
    if fault:
        env["JAXFAIR_FAULT"] = fault
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "jaxfair.cli", "train", str(config), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)


VOLATILE = ("seconds", "resumed_from_epoch")


def comparable(value):
    """``results.json`` without wall times and resume bookkeeping (everything else must match exactly)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()
                if not any(word in k for word in VOLATILE) and k not in ("timings", "run")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-data")
    write_ml100k_folder(make_synthetic(num_users=90, num_items=120, per_user=25, seed=9), folder)
    return folder


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Each method's uninterrupted run (made once, on first use)."""
    root = tmp_path_factory.mktemp("resume-reference")
    done = {}

    def get(method):
        if method not in done:
            config = root / f"{method}.toml"
            config.write_text(CONFIGS[method].format(data=data) + COMMON)
            out = root / method
            result = train(config, out)
            assert result.returncode == 0, result.stderr[-3000:]
            done[method] = (config, out)
        return done[method]

    return get


@pytest.mark.parametrize("method, point", [_case(*case) for case in CASES])
def test_a_run_killed_at_any_stage_resumes_to_identical_outputs(method, point, reference, tmp_path):
    config, clean = reference(method)
    out = tmp_path / "run"
    killed = train(config, out, fault=point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert not (out / "results.json").exists()
    resumed = train(config, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    clean_arrays = sorted(p.name for p in clean.glob("*.npy"))
    assert sorted(p.name for p in out.glob("*.npy")) == clean_arrays
    for name in clean_arrays:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    expected = comparable(json.loads((clean / "results.json").read_text()))
    assert comparable(json.loads((out / "results.json").read_text())) == expected
    assert not list(out.rglob(".*.tmp")) and not (out / "run.lock").exists()


def test_a_finished_run_run_again_is_complete_and_untouched(reference):
    config, clean = reference("afrl")
    before = {p: p.stat().st_mtime_ns for p in clean.rglob("*") if p.is_file()}
    again = train(config, clean)
    assert again.returncode == 0 and "complete" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in clean.rglob("*") if p.is_file()} == before
