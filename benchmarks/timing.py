"""Timing and reporting helpers shared by the step benchmarks (:mod:`benchmarks.afrl_step`,
:mod:`benchmarks.cofair_step`, :mod:`benchmarks.itfr_step`, :mod:`benchmarks.diffairec_step`).

The benchmarks import it as ``from benchmarks.timing import ...``: they are run as modules from the repository root
(``python -m benchmarks.<name>``), and the tests import them as ``from benchmarks import <name>``.

* :func:`interleaved_ms` times variants round-robin, so that load from other processes falls on all of them alike;
  :func:`nothing` (also ``_nothing``) is the ``prepare`` of a variant that needs none.
* :func:`median_and_quartiles` / :func:`quartiles` summarise the wall times.
* :func:`device_info` and :func:`jaxlib_version` describe the machine and the JAX build; the load average recorded at
  the start (and, by the caller, at the end) bounds how far numbers from a shared machine can be trusted.
* :func:`torch_or_reason` imports PyTorch, or says why the reference is skipped; :func:`write_json` writes results.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time

import numpy as np

TORCH_HINT = "pip install torch==2.13.0 (the bench extra)"


def parse_with_quick(parser, argv, quick: dict, default_out=None):
    """Add the options every step benchmark shares (``--no-torch``, ``--quick``, ``--out``) and parse ``argv``. With
    ``--quick``, ``quick`` gives the defaults of the flags not given on the command line (tiny shapes, few repeats)."""
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--quick", action="store_true", help=f"tiny defaults for flags not given: {quick}")
    where = f" (default {default_out}; with --quick, only written when given)" if default_out else ""
    parser.add_argument("--out", help="results JSON" + where)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def interleaved_ms(variants: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times (ms) of ``repeats`` calls of every variant, taken round-robin (one call of each variant in turn)
    so that load from other processes falls on all variants alike.

    ``variants``: name -> ``(prepare, call)``; ``prepare()`` runs untimed before each timed ``call(r)``.
    """
    times = {name: [] for name in variants}
    for r in range(repeats):
        for name, (prepare, call) in variants.items():
            prepare()
            tick = time.perf_counter()
            call(r)
            times[name].append(1e3 * (time.perf_counter() - tick))
    return times


def nothing():
    """The ``prepare`` of a variant that needs nothing done before its timed calls."""


_nothing = nothing


def jax_step_caller(step, state, batch_list, key):
    """``call(r)``: one jitted ``step`` on batch ``r`` of ``batch_list`` (cycling) from the state the previous call
    left, blocked on. The first (compiling) call is made here."""
    import jax

    current = [jax.block_until_ready(step(state, batch_list[0], key))[0]]

    def call(r):
        current[0], metrics = step(current[0], batch_list[r % len(batch_list)], key)
        jax.block_until_ready((current[0], metrics))

    return call


def jax_epoch_caller(epoch, state, batches, key):
    """``call(r)``: one jitted ``epoch`` over ``batches`` from the state the previous call left, blocked on."""
    import jax

    current = [state]

    def call(r):
        current[0], metrics = epoch(current[0], batches, key)
        jax.block_until_ready((current[0], metrics))

    return call


def quartiles(values) -> list[float]:
    """``[25th, 75th]`` percentiles."""
    return [float(np.percentile(values, 25)), float(np.percentile(values, 75))]


def median_and_quartiles(values):
    """``(median, [25th, 75th] percentiles)``."""
    return statistics.median(values), quartiles(values)


def device_info() -> dict:
    """The machine, JAX's backend and devices, and the load average now (``load_average_at_start``; :func:`finish`
    adds ``load_average_at_end``: other processes skew the timings)."""
    import jax

    return {"machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "load_average_at_start": list(os.getloadavg())}


def jaxlib_version() -> str | None:
    import jaxlib

    return getattr(jaxlib, "__version__", None) or jaxlib.version.__version__


def torch_or_reason(no_torch: bool):
    """``(torch, None)``, or ``(None, why it is skipped)`` when ``no_torch`` or when it is not installed."""
    if no_torch:
        return None, "--no-torch given"
    try:
        import torch
    except ImportError as error:
        return None, f"torch is not installed ({error}); {TORCH_HINT}"
    return torch, None


def write_json(out, results: dict) -> pathlib.Path:
    """Write ``results`` as indented JSON to ``out`` (parents created) and say so."""
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def finish(results: dict, out, report) -> dict:
    """A step benchmark's ending: record the load average now, print ``report(results)``, write ``out`` (if given)."""
    results["device"]["load_average_at_end"] = list(os.getloadavg())  # other processes skew the timings
    report(results)
    if out:
        write_json(out, results)
    return results
