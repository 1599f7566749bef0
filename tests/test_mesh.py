"""Training on a device mesh (issue 21, item 1): the same training on 4 devices as on 1, data parallel and with the
embedding tables split by rows, for the PMF and LightGCN backbones and the four methods; a checkpoint written on 4
devices restores on 1 and training continues as it would have on 4.

The 4 devices are CPU devices forced by ``XLA_FLAGS`` in a fresh process (``tests/mesh_worker.py``): JAX reads the
flag when its backend starts. Tolerances: 1e-5 on the selected parameters of PMF, LightGCN, ITFR and DifFaiRec; 1e-4
for AFRL and Cofair, whose min-max games carry the other summation order's rounding further through Adam (measured
3.1e-5 and 1.7e-5 after two epochs); validation metrics to 1e-5 for all.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from jaxfair.training import mesh
from jaxfair.training.trainer import TrainConfig

WORKER = pathlib.Path(__file__).with_name("mesh_worker.py")
PARAMS_TOLERANCE = {"pmf": 1e-5, "lightgcn": 1e-5, "itfr": 1e-5, "diffairec": 1e-5, "afrl": 1e-4, "cofair": 1e-4}


def worker(out, cases, devices, **env):
    """Start ``tests/mesh_worker.py`` with ``devices`` forced CPU devices, its output to files (a pipe nobody reads
    yet would stall it, and with it the other process at their shared barrier); returns (process, output files)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAXFAIR_COMPILE_CACHE="off",
               **env)
    tag = f"{'-'.join(cases)}-{env.get('JAX_PROCESS_ID', 'single')}"
    files = (pathlib.Path(out) / f"{tag}.out", pathlib.Path(out) / f"{tag}.err")
    with open(files[0], "w") as stdout, open(files[1], "w") as stderr:
        process = subprocess.Popen([sys.executable, str(WORKER), str(out), *cases], env=env, stdout=stdout,
                                   stderr=stderr, cwd=pathlib.Path(__file__).resolve().parents[1])
    return process, files


def finish(started) -> list[dict]:
    process, (stdout, stderr) = started
    process.wait(timeout=1500)
    assert process.returncode == 0, stderr.read_text()[-3000:]
    return [json.loads(line) for line in stdout.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("mesh")


@pytest.fixture(scope="module")
def reports(workdir):
    lines = finish(worker(workdir, [*PARAMS_TOLERANCE, "checkpoint", "hosts"], devices=4))
    assert lines[0] == {"devices": 4}
    return {line["case"]: line for line in lines[1:]}


@pytest.mark.parametrize("case", list(PARAMS_TOLERANCE))
@pytest.mark.parametrize("layout", ["4x1", "4x2"])  # 4 devices: data parallel; 2 x 2 with row-sharded tables
def test_four_devices_train_the_same_model_as_one(reports, case, layout):
    report = reports[case]
    assert report[f"params_{layout}"] <= PARAMS_TOLERANCE[case], report
    assert report[f"valid_{layout}"] <= 1e-5, report


def test_a_checkpoint_written_on_four_devices_restores_on_one_and_training_continues(reports):
    report = reports["checkpoint"]
    assert report["row_sharded_leaves"] >= 1  # the user table (and its Adam moments) really was split by rows
    assert report["training_on"], report  # the 4-device runs said so
    assert (report["resumed_from"], report["epochs"], report["resumed_devices"]) == (2, 4, 1)
    assert report["params"] <= 1e-5, report


def test_one_device_is_the_default_on_cpu_and_asking_for_more_than_exist_is_a_clear_error():
    assert mesh.make_mesh(TrainConfig().devices) is None  # this process: CPU, so no mesh (as before)
    assert mesh.make_mesh(1) is None
    with pytest.raises(mesh.MeshError, match="xla_force_host_platform_device_count"):
        mesh.make_mesh(10_000)
    with pytest.raises(ValueError, match="devices"):
        TrainConfig(devices=-1)


def test_two_processes_of_two_devices_train_as_one_process_of_four(reports, workdir):
    """Issue 21, item 2: ``jax.distributed`` on CPU (gloo collectives), two local processes standing for two hosts,
    each building only its own shards of the batches and parameters."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = [worker(workdir, ["hosts"], devices=2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                        JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
    outputs = [finish(p) for p in processes]
    reference = reports["hosts"]["params"]
    for lines in outputs:
        assert lines[0] == {"devices": 4}  # two processes' devices form one mesh
        report = lines[1]
        assert (report["processes"], report["local_devices"]) == (2, 2)
        for got, expected in zip(report["params"], reference, strict=True):
            assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
