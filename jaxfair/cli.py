"""The ``jaxfair`` command: fetch data, train and evaluate from a config file, sweep and report, audit embeddings.

    jaxfair fetch [ml-100k|ml-1m]
    jaxfair train CONFIG.toml --out DIR [--seed N | --seeds 0 1 2 3] [--set section.key=value ...]
    jaxfair sweep CONFIG.toml --out DIR [--grid GRID.toml] [--seeds 0 1 2] [--set ...] [--select RULE ...]
    jaxfair report DIR [DIR ...] [--stage test|valid] [--rows ...] [--columns ...] [--points ...] [--transpose]
                   [--paired POINT] [--update-docs FILE.md ...]
    jaxfair evaluate DIR [--protocol sampled|full ...] [--k 10 20 ...]
    jaxfair serve DIR --requests REQUESTS.csv --out recs.csv [--k 10]
    jaxfair front SWEEP [SWEEP ...] --out front.png [--row mean] [--auc unseen_auc] [--accuracy ndcg@10/backbone]
    jaxfair probe EMBEDDINGS.npy USERS.csv [--attributes gender age ...] [--seed N] [--bootstrap N]
    jaxfair methods

Errors in the input or the environment (bad config key, malformed data file, missing or busy run folder, unreadable
checkpoint, a file that cannot be written) print one line naming the problem and exit with status 2; they never end
in a traceback. An unexpected error prints one line saying where its full trace was written and exits with status 1.

``train``, ``sweep``, ``evaluate``, ``probe`` and ``serve`` keep compiled programs in a persistent cache
(:mod:`jaxfair.compile_cache`; ``JAXFAIR_COMPILE_CACHE=off`` turns it off).
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import tempfile
import time
import traceback

import numpy as np
import pandas as pd

from jaxfair.config import ConfigError
from jaxfair.data.dataset import DataError


class UsageError(ValueError):
    """Bad command-line input that is neither a config nor a data error."""


def _fetch(args) -> None:
    from jaxfair.data.fetch import fetch

    path = fetch(args.name, pathlib.Path(args.cache) if args.cache else None)
    print(f"{args.name} is ready in {path}")


def _train(args) -> None:
    from jaxfair.pipeline import load_config, run

    if args.seeds:
        from jaxfair.harness import sweep

        sweep(args.config, args.out, seeds=args.seeds, overrides=args.set, restart=args.restart,
              command=args.invocation, batch_seeds=args.batch_seeds)
        print(f"one run per seed under {pathlib.Path(args.out) / 'runs' / 'base'}; mean ± std: jaxfair report "
              f"{args.out}")
        return
    config = load_config(args.config, args.set, seed=args.seed)
    run(config, args.out, restart=args.restart)
    print(f"results written to {pathlib.Path(args.out) / 'results.json'}")


def _serve(args) -> None:
    from jaxfair.serving import serve_run

    serve_run(args.run, args.requests, args.out, k=args.k)


def _front(args) -> None:
    from jaxfair.front import front

    front(args.sweeps, args.out, row=args.row, auc=args.auc, accuracy=args.accuracy, max_auc=args.max_auc,
          min_accuracy=args.min_accuracy)


def _sweep(args) -> None:
    from jaxfair.harness import sweep

    sweep(args.config, args.out, grid=args.grid, seeds=args.seeds, overrides=args.set, select=args.select,
          restart=args.restart, command=args.invocation, batch_seeds=args.batch_seeds)
    print(f"summary written to {pathlib.Path(args.out) / 'summary.json'}; render it with: jaxfair report {args.out}")


def _report(args) -> None:
    from jaxfair.report import output, update_markdown

    if args.update_docs:
        for path in args.update_docs:
            print(f"{path}: {'updated' if update_markdown(path) else 'up to date'}")
        return
    print(output(args), end="")


def _evaluate(args) -> None:
    from jaxfair.pipeline import evaluate_run

    if args.k and min(args.k) < 1:
        raise UsageError(f"--k {' '.join(map(str, args.k))}: cut-offs must be positive")
    evaluate_run(args.run_dir, protocols=args.protocol, ks=args.k)


def _methods(args) -> None:
    from jaxfair.methods import METHODS

    width = max(len(name) for name in METHODS)
    for name, method in METHODS.items():
        print(f"{name.ljust(width)}  {method.description}")


def read_users_csv(path: pathlib.Path) -> pd.DataFrame:
    """A comma-separated users file (one row per embedding row, a header of column names), as strings.

    Raises:
      UsageError: the file is empty, does not parse, or its header is one column holding another separator (a
        ``;``- or tab-separated file).
    """
    try:
        users = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a comma-separated users file ({str(err).splitlines()[0]})") from err
    if len(users.columns) == 1:
        header = users.columns[0]
        other = next((sep for sep in (";", "\t", "|") if sep in header), None)
        if other is not None:
            raise UsageError(f"{path}, line 1: the header {header!r} is one column; the users file must be "
                             f"comma-separated, this one looks {'tab' if other == chr(9) else repr(other)}-separated")
    return users


def _probe(args) -> None:
    import jax

    from jaxfair.data.preprocess import split_probe_users
    from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe, probe_all
    from jaxfair.pipeline.outputs import write_json
    from jaxfair.tables import format_table

    embeddings_path, users_path = pathlib.Path(args.embeddings), pathlib.Path(args.users)
    for path in (embeddings_path, users_path):
        if not path.is_file():
            raise UsageError(f"{path}: file not found")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap {args.bootstrap}: the number of resamples must be 0 (no interval) or more")
    with open(embeddings_path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise UsageError(f"{embeddings_path}: not a .npy file (it lacks the NumPy header; write the array with "
                             "numpy.save)")
    try:
        embeddings = np.load(embeddings_path, allow_pickle=False)
    except ValueError as err:
        raise UsageError(f"{embeddings_path}: not a readable .npy array ({err})") from err
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.number):
        raise UsageError(f"{embeddings_path}: expected a 2-d numeric array (users x dims), got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise UsageError(f"{embeddings_path}: contains NaN or infinite values")
    users = read_users_csv(users_path)
    if len(users) != len(embeddings):
        raise UsageError(f"{users_path}: {len(users)} rows, but {embeddings_path} has {len(embeddings)} rows")
    reserved = {"user", "raw_id", "probe_split"}
    attributes = args.attributes or [c for c in users.columns if c not in reserved]
    for name in attributes:
        if name not in users.columns:
            raise UsageError(f"{users_path}: no column {name!r} (columns: {', '.join(users.columns)})")
        empty = np.flatnonzero(users[name].str.strip() == "")
        if len(empty):
            raise UsageError(f"{users_path}, line {empty[0] + 2}: empty value in column {name!r}")
    if not attributes:
        raise UsageError(f"{users_path}: no attribute columns to probe")
    if "probe_split" in users.columns:
        bad = np.flatnonzero(~users["probe_split"].isin(["train", "valid", "test"]))
        if len(bad):
            raise UsageError(f"{users_path}, line {bad[0] + 2}: probe_split must be train, valid or test")
        parts = {p: np.flatnonzero(users["probe_split"].to_numpy() == p).astype(np.int32) for p in ("train", "valid", "test")}
        thin = [f"{p} ({len(parts[p])})" for p in parts if len(parts[p]) < 2]
        if thin:
            raise UsageError(f"{users_path}: probe_split needs at least 2 users in each of train, valid and test; "
                             f"too few in {', '.join(thin)}")
    else:
        if args.unseen:
            raise UsageError(f"{users_path}: --unseen needs a probe_split column")
        parts = split_probe_users(len(users), (0.8, 0.1, 0.1), np.random.default_rng(args.seed))
    unseen_users = None
    if args.unseen:
        unseen_users = np.sort(np.concatenate([parts[stage] for stage in args.unseen]))
        if len(unseen_users) < 5:
            raise UsageError(f"--unseen {' '.join(args.unseen)}: {len(unseen_users)} users; the audit needs at least 5")
    codes, classes = {}, {}
    for name in attributes:
        labels = tuple(sorted(users[name].unique()))
        if len(labels) < 2:
            raise UsageError(f"{users_path}: column {name!r} has a single class {labels[0]!r}; nothing to probe")
        classes[name] = labels
        codes[name] = users[name].map({v: k for k, v in enumerate(labels)}).to_numpy().astype(np.int32)
    config = ProbeConfig(bootstrap=args.bootstrap)
    key = jax.random.key(args.seed)
    results = probe_all(embeddings.astype(np.float32), codes, classes, parts, key, config)
    rows = [
        {"attribute": n, "classes": len(classes[n]), "auc": r["auc"], "ci_low": (r["auc_ci"] or [np.nan])[0],
         "ci_high": (r["auc_ci"] or [np.nan, np.nan])[1]}
        for n, r in results.items()
    ]
    columns = ["attribute", "classes", "auc", "ci_low", "ci_high"]
    if unseen_users is not None:
        for i, (row, name) in enumerate(zip(rows, attributes)):
            audit = cross_fitted_probe(embeddings.astype(np.float32), codes[name], unseen_users, len(classes[name]),
                                       jax.random.fold_in(key, 100 + i), config)
            results[name]["unseen"] = audit
            ci = audit["auc_ci"] or [np.nan, np.nan]
            row.update(unseen_auc=audit["auc"], unseen_std=audit["auc_std"], repeats=audit["repeats"],
                       unseen_low=ci[0], unseen_high=ci[1])
        columns += ["unseen_auc", "unseen_std", "repeats", "unseen_low", "unseen_high"]
    print(f"probe: {len(parts['train'])} train / {len(parts['valid'])} valid / {len(parts['test'])} test users")
    print(format_table(rows, columns))
    print("AUC 0.5 = the attribute cannot be predicted from the embeddings; 1.0 = it leaks completely.")
    if unseen_users is not None:
        print(f"unseen_*: 5-fold cross-fitted probes on the {len(unseen_users)} users of probe_split "
              f"{', '.join(args.unseen)} only (use it when the embeddings were trained with the other users' labels); "
              "unseen_auc is the mean over `repeats` fresh draws of the folds, unseen_std their spread.")
    if args.out:
        write_json(pathlib.Path(args.out), {"embeddings": str(embeddings_path), "users": str(users_path), "probe": results})


def add_report_arguments(parser) -> None:
    from jaxfair.report import add_arguments

    add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxfair", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download a dataset into the cache ($JAXFAIR_DATA or ~/.cache/jaxfair)")
    p.add_argument("name", nargs="?", default="ml-100k", choices=["ml-100k", "ml-1m"])
    p.add_argument("--cache", help="cache folder (default: $JAXFAIR_DATA or ~/.cache/jaxfair)")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("train", help="train and evaluate the experiment described by a config file")
    p.add_argument("config", help="a TOML file from configs/")
    p.add_argument("--out", required=True, help="output folder (resumes if it holds an unfinished run of this config)")
    p.add_argument("--restart", action="store_true",
                   help="start afresh even if --out holds a run (the old folder is kept as <out>.old-<time>)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="override the config's seed")
    seeds.add_argument("--seeds", nargs="+", type=int,
                   help="several seeds: one run each under OUT/runs/base/seed<S> (a sweep of this config), their "
                        "backbones trained together in one program")
    p.add_argument("--batch-seeds", action="store_true", help=BATCH_SEEDS_HELP)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. afrl.lam=1.0 afrl.train.epochs=5 (values in TOML syntax)")
    p.set_defaults(func=_train)

    p = sub.add_parser("serve", help="top-K recommendations of a finished run, each user under their own fairness "
                                     "requirement and strength (or Cofair level)")
    p.add_argument("run", help="a finished run folder of 'jaxfair train'")
    p.add_argument("--requests", required=True,
                   help="CSV: user (row of the run's users.csv), 0/1 per attribute to protect, optional strength "
                        "(erasure, afrl, ffvae) or level (cofair)")
    p.add_argument("--out", required=True, help="CSV of recommendations: user, raw_id, rank, item, item_raw_id, score")
    p.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("front", help="accuracy against unseen-user audit AUC of every point of finished sweeps "
                                     "(a table and a PNG)")
    p.add_argument("sweeps", nargs="+", help="sweep folders (their summary.json)")
    p.add_argument("--out", required=True, help="the figure (PNG)")
    p.add_argument("--row", default="mean", help="test-table row (default: mean over the non-empty requirements)")
    p.add_argument("--auc", default="unseen_auc", help="leakage column (default unseen_auc)")
    p.add_argument("--accuracy", default="ndcg@10/backbone", help="accuracy column (default ndcg@10/backbone)")
    p.add_argument("--max-auc", type=float, default=0.55, help="target: leakage at most this (default 0.55)")
    p.add_argument("--min-accuracy", type=float, default=0.95, help="target: accuracy at least this (default 0.95)")
    p.set_defaults(func=_front)

    p = sub.add_parser("sweep", help="run a config over a grid of overrides and several seeds, then summarise")
    p.add_argument("config", help="a TOML file from configs/")
    p.add_argument("--out", required=True, help="sweep folder (an interrupted sweep resumes)")
    p.add_argument("--restart", action="store_true",
                   help="rerun every point afresh (each old run folder is kept as <folder>.old-<time>)")
    p.add_argument("--grid", help="grid file: [points.<label>] tables and/or a [grid] table of dotted keys")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds to run every point with (default: the config's)")
    p.add_argument("--batch-seeds", action="store_true", help=BATCH_SEEDS_HELP)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys of every point")
    p.add_argument("--select", nargs="+", default=[], metavar="RULE",
                   help="validation-only selection: 'admit: EXPR', then 'min: EXPR' / 'max: EXPR' ({row:column} "
                        "refers to a point's validation table)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("report", help="Markdown tables (mean ± std over seeds) of finished sweeps and runs")
    add_report_arguments(p)
    p.set_defaults(func=_report)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=_methods)

    p = sub.add_parser("evaluate", help="evaluate a finished run again (same split, negatives and probe keys)")
    p.add_argument("run_dir", help="a folder written by 'jaxfair train'")
    p.add_argument("--protocol", nargs="+", choices=["sampled", "full"], help="default: the run's protocols")
    p.add_argument("--k", nargs="+", type=int, help="cut-offs (default: the run's)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("probe", help="audit a user-embedding file for attribute leakage (AUC with bootstrap CI)")
    p.add_argument("embeddings", help="(U, d) .npy array")
    p.add_argument("users", help="CSV with one row per embedding row: attribute columns, optional probe_split")
    p.add_argument("--attributes", nargs="+", help="columns to probe (default: all but user, raw_id, probe_split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI")
    p.add_argument("--unseen", nargs="+", choices=["train", "valid", "test"],
                   help="also audit with probes fitted and scored only on these probe_split users (cross-fitted), "
                        "e.g. the users whose labels a fairness method never saw")
    p.add_argument("--out", help="also write the results to this JSON file")
    p.set_defaults(func=_probe)
    return parser


def _os_message(err: OSError) -> str:
    """``path: reason`` for a failed file operation (disk full, permission denied, ...)."""
    where = err.filename if err.filename is not None else ""
    return f"{where}: {err.strerror or err}" if where else str(err)


def write_trace(error: BaseException, invocation: str = "jaxfair") -> str:
    """Write ``error``'s full traceback to a fresh ``jaxfair-error-*.txt`` in the temp folder; returns where it went
    (or, when even that fails, says so)."""
    try:
        handle, name = tempfile.mkstemp(prefix=f"jaxfair-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with open(handle, "w") as out:
            out.write(f"{invocation}\n\n")
            out.write("".join(traceback.format_exception(error)))
    except OSError as err:
        return f"nowhere: it could not be written ({err})"
    return name


BATCH_SEEDS_HELP = ("batch the seeds' backbone steps with vmap (faster on an accelerator; results differ from "
                    "separate runs by float rounding); default: in sequence inside one program, bit-identical")
COMPILING = ("train", "sweep", "evaluate", "probe", "serve")  # the commands that turn on the compilation cache


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.invocation = shlex.join(["jaxfair", *argv])  # what provenance.json and error traces record
    from jaxfair.pipeline.outputs import RunError
    from jaxfair.report import ReportError
    from jaxfair.serving import ServeError
    from jaxfair.training.checkpoint import CheckpointError

    try:
        if args.command in COMPILING:
            from jaxfair.compile_cache import enable_compile_cache
            from jaxfair.cpu_devices import split_host

            from jaxfair.training.mesh import initialize_distributed

            initialize_distributed()  # several hosts, when the environment names a coordinator
            split_host()  # before anything starts JAX's backend
            enable_compile_cache()
        args.func(args)
    except (ConfigError, DataError, UsageError, RunError, ReportError, CheckpointError, ServeError) as err:
        print(f"jaxfair: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"jaxfair: error: {_os_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxfair: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: no traceback on the terminal
        trace = write_trace(err, args.invocation)
        print(f"jaxfair: unexpected error ({type(err).__name__}: {err}); the full trace is in {trace}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
