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
* :func:`torch_thread_counts` and :func:`torch_variants`: every step benchmark times its PyTorch reference eager and
  under ``torch.compile``, each with 1 thread and with every core (the warm-up calls, compilation included, are run
  before timing and reported, never timed).
* :func:`xla_flops`, :func:`matmul_rates` and :func:`roofline`: what bounds a step (its XLA FLOP count per call
  against this machine's measured dense matmul rate, large and at the step's own small shape, in the same run).
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
TORCH_MODES = ("eager", "compile")
COMPILE_RECOMPILE_LIMIT = 64  # torch._dynamo's per-function recompile limit while the compiled variants warm up


def parse_with_quick(parser, argv, quick: dict, default_out=None):
    """Add the options every step benchmark shares (``--no-torch``, ``--no-compile``, ``--quick``, ``--out``) and parse
    ``argv``. With ``--quick``, ``quick`` gives the defaults of the flags not given on the command line (tiny shapes,
    few repeats, no ``torch.compile``)."""
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile variants (each compiles for tens of seconds; --quick skips them)")
    parser.add_argument("--quick", action="store_true", help=f"tiny defaults for flags not given: {quick}")
    where = f" (default {default_out}; with --quick, only written when given)" if default_out else ""
    parser.add_argument("--out", help="results JSON" + where)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**{"no_compile": True, **quick})
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


# --- PyTorch: eager and torch.compile, 1 thread and every core ----------------------------------------------------


def torch_thread_counts() -> list[int]:
    """The PyTorch thread counts every step benchmark times: 1 (the reference that suffers least when other processes
    share the cores) and every core of the machine (``os.cpu_count()``)."""
    return sorted({1, os.cpu_count() or 1})


def torch_variant_name(prefix: str, mode: str, threads: int, suffix: str = "") -> str:
    """``<prefix>_<mode>_<threads>t<suffix>``, e.g. ``torch_eager_1t``, ``torch_compile_2t``, ``torch_eager_1t_G12``."""
    return f"{prefix}_{mode}_{threads}t{suffix}"


def torch_modes(no_compile: bool) -> tuple[str, ...]:
    """The PyTorch modes a benchmark times: eager, and ``torch.compile`` unless ``--no-compile``."""
    return TORCH_MODES[:1] if no_compile else TORCH_MODES


def torch_variants(torch, build, prefix: str = "torch", modes=TORCH_MODES, warmup_calls: int = 3, suffix: str = ""):
    """PyTorch variants of one reference for :func:`interleaved_ms`: every mode in ``modes`` at every thread count
    of :func:`torch_thread_counts`.

    Args:
      build: ``threads -> (model, call)``: a fresh reference (its own state) and ``call(r)``, one timed call, which
        must look up ``model.step`` when called (the ``compile`` mode replaces it by ``torch.compile(model.step)``,
        default mode; dynamo breaks the graph at ``backward`` and the optimizer step, as it does for any user who
        compiles a training step). Dynamo's recompile limits are raised to :data:`COMPILE_RECOMPILE_LIMIT` (every
        compiled model instance, and every distinct value of a guarded argument, is one more compilation of the same
        function: under the default limit of 8 the later variants would silently run eager).
      warmup_calls: untimed calls made here, before timing (compilation happens in the first ones).

    Returns:
      ``(variants, warmup_seconds, failed)``: name -> ``(prepare, call)`` (``prepare`` sets the variant's thread
      count: ``torch.set_num_threads`` is process-wide); name -> seconds of its warm-up calls (the compile time of the
      ``compile`` variants, reported beside their step times); name -> the errors of a variant whose warm-up raised
      (reported, never silently dropped). A ``compile`` variant whose default ``torch.compile`` raises is tried
      again with ``dynamic=False`` (a dynamic-shape guard error of dynamo was seen on DiffRec's step), and the
      message says which one was timed; a variant that fails both ways is left out of the timing.
    """
    variants, warmups, failed = {}, {}, {}
    if "compile" in modes:  # dynamo guards on each model instance (and on arguments such as a player's name):
        # with the default limit of 8 the second compiled model silently falls back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                               16 * COMPILE_RECOMPILE_LIMIT)
    for threads in torch_thread_counts():
        for mode in modes:
            name = torch_variant_name(prefix, mode, threads, suffix)
            errors = []
            for option in [{}] if mode == "eager" else [{}, {"dynamic": False}]:
                torch.set_num_threads(threads)
                model, call = build(threads)
                if mode == "compile":
                    model.step = torch.compile(model.step, **option)
                tick = time.perf_counter()
                try:
                    for r in range(warmup_calls):
                        call(r)
                except Exception as error:  # noqa: BLE001 - reported in the results, the other variants still run
                    how = f"torch.compile({', '.join(f'{k}={v}' for k, v in option.items())})" if mode == "compile" \
                        else "eager"
                    errors.append(f"{how}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
                    continue
                warmups[name] = time.perf_counter() - tick
                variants[name] = ((lambda t=threads: torch.set_num_threads(t)), call)
                break
            if errors:  # a variant timed after a fallback says so; one that never ran is left out of the timing
                failed[name] = "; ".join(errors) + ("; timed with torch.compile(dynamic=False)" if name in variants
                                                    else "")
    return variants, warmups, failed


def torch_ratios(torch_ms: dict, reference_ms: float, suffix: str) -> dict:
    """``<label>_over_<suffix>``: every PyTorch time in ``torch_ms`` (label -> median ms, e.g. ``torch_eager_1t``)
    over the JAX time ``reference_ms`` (above 1: JAX is faster), plus ``best_torch_over_<suffix>``, the fastest
    PyTorch variant's ratio."""
    if not torch_ms:
        return {}
    out = {f"{label}_over_{suffix}": value / reference_ms for label, value in torch_ms.items()}
    out[f"best_torch_over_{suffix}"] = min(torch_ms.values()) / reference_ms
    return out


# --- roofline: what bounds a step ----------------------------------------------------------------------------------


def xla_flops(jitted, *args) -> float:
    """Floating-point operations XLA counts for one call of ``jitted(*args)`` (its cost analysis of the compiled
    program; dots count 2 m k n)."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def matmul_rates(shapes: dict, repeats: int = 20) -> dict:
    """This machine's float32 matmul rate in GFLOP/s, measured now with a jitted ``jnp.dot`` per shape.

    ``shapes``: label -> ``(m, k, n)``; e.g. ``{"large": (1024, 1024, 1024), "step": (256, 64, 64)}``: the dense
    peak and the rate at a step's own small shape. Median of ``repeats`` calls (each small shape is batched to at
    least ~50 MFLOP per call so call overhead does not dominate)."""
    import jax
    import jax.numpy as jnp

    rates = {}
    for label, (m, k, n) in shapes.items():
        copies = max(1, int(5e7 // (2 * m * k * n)))
        rng = np.random.default_rng(0)
        a = jnp.asarray(rng.normal(size=(copies, m, k)), jnp.float32)
        b = jnp.asarray(rng.normal(size=(copies, k, n)), jnp.float32)
        dot = jax.jit(lambda x, y: jnp.einsum("cmk,ckn->cmn", x, y))
        jax.block_until_ready(dot(a, b))
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            jax.block_until_ready(dot(a, b))
            times.append(time.perf_counter() - tick)
        rates[label] = 2 * copies * m * k * n / statistics.median(times) / 1e9
    return rates


def roofline(step_ms: float, flops: float, rates: dict) -> dict:
    """A step's achieved rate against the measured matmul rates: ``step_gflop`` per call, ``achieved_gflops``, and
    ``share_of_<label>_matmul_rate`` for every rate of :func:`matmul_rates` (1.0 would mean the step runs at that
    rate; far below 1 means the step is bound by something other than its arithmetic: small ops, memory, dispatch)."""
    achieved = flops / (step_ms / 1e3) / 1e9
    out = {"step_gflop": flops / 1e9, "achieved_gflops": achieved}
    out.update({f"{label}_matmul_gflops": rate for label, rate in rates.items()})
    out.update({f"share_of_{label}_matmul_rate": achieved / rate for label, rate in rates.items()})
    return out


def roofline_line(bound: dict) -> str:
    """One printed line for :func:`roofline`'s dict."""
    labels = [key[:-len("_matmul_gflops")] for key in bound if key.endswith("_matmul_gflops")]
    shares = ", ".join(f"{label} matmul {bound[label + '_matmul_gflops']:.1f} GFLOP/s "
                       f"({100 * bound['share_of_' + label + '_matmul_rate']:.1f}%)" for label in labels)
    return (f"XLA counts {bound['step_gflop'] * 1e3:.1f} MFLOP per step: {bound['achieved_gflops']:.1f} GFLOP/s "
            f"against {shares}")
