"""One XLA device per CPU core (up to 8) for a jaxfair process on a CPU machine.

JAX gives a CPU machine one device by default, and a program of many small independent problems (the attribute
probes: every fold, draw of folds and weight decay of an audit) then runs on about one core. Split into several
devices, the probe program shards its problems over them (:mod:`jaxfair.metrics.probe`) and every core works: on the
2-core CPU machine the README's main job takes 108.7 s instead of 148.4 s on one device (``benchmarks/main_job.py``,
``docs/benchmarks.md``). Everything else keeps running on the first device, as before.

The ``jaxfair`` command and :func:`jaxfair.harness.sweep` call :func:`split_host` before JAX starts its backend.
``JAXFAIR_CPU_DEVICES`` sets the count (``1`` keeps JAX's single device); a process that already started JAX, or
runs on a GPU or TPU, is left as it is (the probes then shard over its accelerators, if it has several).
"""

from __future__ import annotations

import os

from jaxfair.config import ConfigError

MAX_DEFAULT = 8


def device_count_wanted() -> int:
    """``$JAXFAIR_CPU_DEVICES`` when set (at least 1), else the machine's cores, at most 8."""
    env = os.environ.get("JAXFAIR_CPU_DEVICES", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(f"JAXFAIR_CPU_DEVICES must be a whole number, got {env!r}") from None
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT))


def split_host() -> int | None:
    """Ask JAX for :func:`device_count_wanted` CPU devices; returns the count asked for, or ``None`` when JAX's
    backend had already started (then nothing changes) or ``XLA_FLAGS`` already sets the count."""
    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    count = device_count_wanted()
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backend has started: too late to change
        return None
    return count
