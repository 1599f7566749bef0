"""Scale: one training epoch of each method on data sets shaped like MovieLens-1M and MovieLens-20M, on 1 and on N
devices, with its time, steps per second and peak memory (issue 21, item 5).

    python -m benchmarks.scale                                   # ml-1m, every method, 1 and 4 devices, 200 steps
    python -m benchmarks.scale --presets ml-20m --methods pmf afrl itfr --devices 1 --max-steps 0 \
        --out benchmarks/results/scale_ml20m.json                 # whole epochs at ML-20M's size (the issue's check)

The data are the seeded synthetic presets (:mod:`jaxfair.data.synthetic_scale`: ``ml-1m`` 6,040 users x 3,706
items x 1.0M ratings, ``ml-20m`` 138,493 x 26,744 x 20.0M), prepared by each method's own MovieLens-100k config
(``configs/``), its ``data.source`` replaced. Each ``(preset, devices)`` pair runs in its own process, because the
device count is fixed when JAX starts (CPU devices are forced with ``XLA_FLAGS``; on a GPU or TPU host the same
command uses the real devices, at most as many as it has). In that process the split is prepared once, and for each
method the stage it trains is built as the pipeline builds it (PMF and LightGCN: the backbone's own training; AFRL
and Cofair: the method on a frozen backbone, whose parameters are a fresh initialisation because the backbone is
not what is timed; ITFR and DifFaiRec: their own models), its state and each epoch's batches placed on the mesh as
the trainer places them (:mod:`jaxfair.training.mesh`), and one epoch is run as the trainer runs it (one jitted
``lax.scan`` over the epoch's batches), compiled ahead of time, then timed. ``--max-steps N`` times
the first N steps of the epoch and reports the whole epoch's time as ``N``-step time x ``batches / N``
(``epoch_seconds_estimated``); 0 runs the whole epoch. Reported per method: batches per epoch, seconds, steps per
second, the process's peak resident memory so far (host; it includes the data's generation and preparation) and,
where the backend reports it, the device's peak bytes. Validation is not timed (the streamed full-ranking evaluation
is measured by ``benchmarks/sparse_scale.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {  # method -> (config, overrides that fit the synthetic presets' genres)
    "pmf": ("configs/pmf_ml100k.toml", []),
    "lightgcn": ("configs/lightgcn_ml100k.toml", []),
    "afrl": ("configs/afrl_pmf_ml100k.toml", []),
    "cofair": ("configs/cofair_pmf_ml100k.toml", ["cofair.retrain_baseline=false"]),
    "itfr": ("configs/itfr_mf_ml100k.toml", []),
    "diffairec": ("configs/diffairec_ml100k.toml", []),
}
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scale.json"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def device_peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def stage_model(method_name: str, config, split):
    """The trained stage's :class:`~jaxfair.training.trainer.Model`, built as the pipeline builds it."""
    import dataclasses

    import jax

    from jaxfair.backbones import make_backbone
    from jaxfair.backbones.base import freeze
    from jaxfair.methods import get_method
    from jaxfair.methods.base import Context
    from jaxfair.pipeline.run import _backbone_model

    backbone, _ = make_backbone(config.backbone.name, dataclasses.asdict(config.backbone.config))
    if method_name in ("pmf", "lightgcn"):
        return _backbone_model(config, split, backbone, backbone.context(split))
    method = get_method(config.method)
    frozen = None
    if method.frozen_backbone:
        context = backbone.context(split)
        frozen = freeze(backbone, context, jax.jit(lambda key: backbone.init(key, split))(jax.random.key(0)))
    context = Context(split=split, frozen=frozen, backbone=backbone, backbone_config=config.backbone.config,
                      evaluate=config.evaluate, probe=config.probe, seed=config.seed)
    data = method.prepare(context, config.method_config)
    return method.models(context, data, config.method_config, {})[0]


def time_epoch(model, devices: int, max_steps: int) -> dict:
    """One epoch of ``model`` (or its first ``max_steps`` steps) as the trainer runs it, on ``devices``."""
    import jax
    import numpy as np

    from jaxfair.training.mesh import epochs_on, make_mesh

    state, run_epoch, place_batches = epochs_on(make_mesh(devices, 1), model.step, model.end_epoch,
                                                jax.jit(model.init)(jax.random.key(0)))
    batches = model.batches(np.random.default_rng([0, 0]))
    total = int(jax.tree.leaves(batches)[0].shape[0])
    steps = total if max_steps <= 0 else min(max_steps, total)

    def first(n):  # the epoch's first n batches, placed
        return place_batches(jax.tree.map(lambda x: x[:n], batches))

    timed, key = first(steps), jax.random.key(1)
    tick = time.perf_counter()
    compiled = run_epoch.lower(state, timed, key).compile()  # ahead of time: the timed call runs, not compiles
    compile_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, timed, key))
    seconds = time.perf_counter() - tick
    return {"batches_per_epoch": total, "batch_size": int(jax.tree.leaves(batches)[0].shape[1]), "steps_timed": steps,
            "seconds": seconds, "steps_per_second": steps / seconds, "compile_seconds": compile_seconds,
            "epoch_seconds_estimated": seconds * total / steps, "loss": float(metrics["loss"])}


def worker(preset: str, devices: int, methods: list[str], max_steps: int) -> dict:
    """Everything for one ``(preset, devices)`` in this process (its device count is fixed)."""
    import jax

    from jaxfair.pipeline.config import load_config
    from jaxfair.pipeline.run import load_split

    out = {"preset": preset, "devices": devices, "backend": jax.default_backend(), "device_count": jax.device_count(),
           "methods": {}}
    splits = {}
    for name in methods:
        path, extra = CONFIGS[name]
        stages = {"pmf": ["backbone"], "lightgcn": ["backbone"], "itfr": ["itfr"], "diffairec": ["diffairec"]}
        overrides = [f"data.source='synthetic:{preset}'", *extra,
                     *(f"{stage}.train.devices={devices}" for stage in stages.get(name, ["backbone", name]))]
        config = load_config(ROOT / path, overrides)
        key = json.dumps(config.data.to_dict(), default=str)
        tick = time.perf_counter()
        if key not in splits:
            splits[key] = load_split(config.data, log=lambda message: None)
        split = splits[key]
        prepare_seconds = time.perf_counter() - tick
        model = stage_model(name, config, split)
        report = time_epoch(model, devices, max_steps)
        report.update(prepare_seconds=prepare_seconds, users=int(split.num_users), items=int(split.num_items),
                      peak_rss_bytes=peak_rss_bytes(), device_peak_bytes=device_peak_bytes())
        out["methods"][name] = report
        print(json.dumps({name: report}), flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["ml-1m"])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--max-steps", type=int, default=200, help="steps timed per epoch (0: the whole epoch)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--show", metavar="RESULTS.json", help="print the table of a results file and stop")
    parser.add_argument("--worker", nargs=2, metavar=("PRESET", "DEVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.show:
        text = table(json.loads(pathlib.Path(args.show).read_text()))
        print(text)
        return {"table": text}
    if args.worker:
        result = worker(args.worker[0], int(args.worker[1]), args.methods, args.max_steps)
        print("RESULT " + json.dumps(result), flush=True)
        return result
    runs = []
    for preset in args.presets:
        for devices in args.devices:
            env = dict(os.environ)
            import jax  # noqa: F401 (only to read the platform; the workers start their own)

            if jax.default_backend() == "cpu" and devices > 1:
                env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
            command = [sys.executable, "-m", "benchmarks.scale", "--worker", preset, str(devices), "--methods",
                       *args.methods, "--max-steps", str(args.max_steps)]
            print(f"[scale] {preset} on {devices} device(s): {' '.join(args.methods)}", flush=True)
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                runs.append({"preset": preset, "devices": devices, "failed": done.stderr[-2000:]})
                print(f"[scale] failed:\n{done.stderr[-2000:]}", flush=True)
                continue
            runs.append(json.loads(lines[-1][len("RESULT "):]))
            report(runs[-1])
    result = {"runs": runs, "max_steps": args.max_steps}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


def report(run: dict) -> None:
    print(table({"runs": [run]}))


def table(results: dict) -> str:
    """One line per preset, device count and method: the docs' table (``--show``)."""
    lines = [f"{'preset':7s} {'dev':>3s} {'method':9s} {'users':>7s} {'items':>6s} {'batches':>7s} {'B':>5s} "
             f"{'steps/s':>8s} {'epoch s':>8s} {'timed':>6s} {'host GiB':>8s} {'device GiB':>10s}"]
    for run in results["runs"]:
        if "failed" in run:
            lines.append(f"{run['preset']:7s} {run['devices']:3d} failed: {run['failed'].splitlines()[-1:]}")
            continue
        for name, r in run["methods"].items():
            device = f"{r['device_peak_bytes'] / 2**30:10.2f}" if r["device_peak_bytes"] else f"{'-':>10s}"
            lines.append(f"{run['preset']:7s} {run['devices']:3d} {name:9s} {r['users']:7d} {r['items']:6d} "
                         f"{r['batches_per_epoch']:7d} {r['batch_size']:5d} {r['steps_per_second']:8.1f} "
                         f"{r['epoch_seconds_estimated']:8.1f} {r['steps_timed']:6d} "
                         f"{r['peak_rss_bytes'] / 2**30:8.2f} {device}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
