"""One XLA device per core for the probes (jaxfair/cpu_devices.py), checked in fresh processes: the device count is
fixed when JAX starts its backend, and this test process's backend has started already."""

import json
import os
import subprocess
import sys

import pytest

from jaxfair.config import ConfigError
from jaxfair.cpu_devices import device_count_wanted, split_host

AUDIT = """
import json, sys
import numpy as np, jax
from jaxfair.cpu_devices import split_host
asked = split_host()
from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe
rng = np.random.default_rng(5)
labels = rng.integers(0, 3, 300)
emb = rng.normal(size=(300, 6)).astype(np.float32)
emb[:, 0] += 0.8 * (labels == 1)
config = ProbeConfig(steps=100, eval_every=20, bootstrap=200, audit_repeats=3, audit_se=0.0, audit_max_repeats=5)
out = cross_fitted_probe(emb, labels, np.arange(300), 3, jax.random.key(1), config)
print(json.dumps({"asked": asked, "devices": len(jax.devices()), "audit": out}))
"""


def run_audit(devices: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAXFAIR_CPU_DEVICES"] = devices
    done = subprocess.run([sys.executable, "-c", AUDIT], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_audit_sharded_over_several_cpu_devices_equals_the_single_device_audit():
    one, three = run_audit("1"), run_audit("3")  # 3 devices: 40 problems per call are padded to 42
    assert (one["asked"], one["devices"]) == (1, 1) and (three["asked"], three["devices"]) == (3, 3)
    a, b = one["audit"], three["audit"]
    assert a["repeats"] == b["repeats"] == 5
    for name in ("repeat_auc", "auc_ci", "fold_auc"):  # float rounding only (other program shapes)
        assert max(abs(x - y) for x, y in zip(a[name], b[name])) <= 2e-4, name


def test_the_device_count_comes_from_the_environment_or_the_cores(monkeypatch):
    monkeypatch.setenv("JAXFAIR_CPU_DEVICES", "3")
    assert device_count_wanted() == 3
    monkeypatch.delenv("JAXFAIR_CPU_DEVICES")
    assert device_count_wanted() == max(1, min(os.cpu_count() or 1, 8))
    monkeypatch.setenv("JAXFAIR_CPU_DEVICES", "many")
    with pytest.raises(ConfigError, match="JAXFAIR_CPU_DEVICES"):
        device_count_wanted()


def test_a_process_whose_jax_has_started_is_left_as_it_is(monkeypatch):
    import jax

    jax.devices()  # the backend is up
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAXFAIR_CPU_DEVICES", "4")
    assert split_host() is None
    assert len(jax.devices()) == 1
