"""Several seeds of one model trained as one program: states stacked on a leading seed axis, the epoch mapped over
them, in sequence (``jax.lax.map``, the default) or batched (``jax.vmap``, ``batched=True``).

:func:`fit_seeds` is :func:`jaxfair.training.trainer.fit` for ``S`` seeds at once. Seed ``s`` gets exactly what a
separate ``fit(model, s)`` gets: the initialisation key and train key from ``jax.random.key(s)``, epoch ``e``'s
batches from ``np.random.default_rng([s, e])`` and its step keys from ``fold_in(train_key, e)``, the same validation,
early stopping and best-parameter selection, and, with an output folder per seed, the same checkpoints and JSON-lines
log (so a seed's folder resumes under plain :func:`fit`, and :func:`fit_seeds` resumes from folders at different
epochs). ``tests/test_seeds.py`` checks every seed's parameters and validation metrics against separate runs.

Two forms of the one program:

* ``batched=False`` (default): ``lax.map`` runs the seeds' epochs one after another inside the program, each with
  exactly the unbatched computation of a separate run, so every seed's parameters are bit-identical to its own
  ``fit`` (tested). Results reproduce to the last digit whatever trains downstream.
* ``batched=True``: ``vmap`` batches the seeds' steps into one computation (what an accelerator needs to be busy).
  Batched matrix products round differently: parameters differ from a separate run by float rounding (about 5e-7
  on a PMF backbone), and a stage trained downstream of such a backbone can amplify that (AFRL on MovieLens-100k
  selected another epoch: mean NDCG@10 0.873x the backbone's against 0.895x, docs/runs.md). Opt in with
  ``--batch-seeds``.

Early stopping is per seed: a seed that has stopped (patience spent, or its last epoch done) stays in the program,
and its state is frozen by masking (``where(active, new, old)`` after the epoch), so the others go on without a
recompilation. What is one program: the initialisation (``lax.map`` of the initialiser) and every epoch (the scanned
epoch mapped or vmapped over the seeds). What is not: validation, which calls ``model.validate`` once per seed (it returns host floats and may run
any protocol), and the checkpoint writes, one per seed.

Cost: batched, on an accelerator ``S`` seeds should take about one seed's time until the device is full (not
measured here); on a CPU the arithmetic is ``S`` times one seed's in both forms, and only dispatch and per-epoch
overheads are shared (``benchmarks/seeds.py`` measures both forms).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.training.checkpoint import Checkpointer
from jaxfair.training.step import make_epoch_fn
from jaxfair.training.trainer import (FitResult, Model, _best_valid_from_log, _format_seconds, _run_keys,
                                      _truncate_log, fault_point, initial_carry)


def _masked(active: jax.Array, new, old):
    """``new`` where ``active`` (a ``(S,)`` bool) else ``old``, leaf by leaf (PRNG key leaves through their data)."""

    def pick(n, o):
        if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(pick(jax.random.key_data(n), jax.random.key_data(o)),
                                            impl=jax.random.key_impl(n))
        return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


def make_seeds_epoch_fn(step: Callable, end_epoch: Callable | None = None, batched: bool = False) -> Callable:
    """``seeds_epoch(states, batches, keys, active) -> (states, metrics)``: :func:`make_epoch_fn`'s epoch over a
    leading seed axis of ``states`` ``(S, ...)``, ``batches`` ``(S, num_batches, B, ...)`` and ``keys`` ``(S,)``, by
    ``lax.map`` (bit-identical to separate runs) or, ``batched``, by ``vmap``; seeds whose ``active`` is False keep
    their state. ``metrics``: each ``(S,)``, the epoch means per seed."""
    epoch = make_epoch_fn(step, end_epoch)

    @jax.jit
    def seeds_epoch(states, batches, keys, active):
        if batched:
            new, metrics = jax.vmap(epoch)(states, batches, keys)
        else:
            new, metrics = jax.lax.map(lambda args: epoch(*args), (states, batches, keys))
        return _masked(active, new, states), metrics

    return seeds_epoch


def _init_all(init: Callable, keys: jax.Array):
    """Every seed's initial state, stacked: ``lax.map`` of the initialiser (bit-identical to separate calls)."""
    return jax.jit(lambda k: jax.lax.map(init, k))(keys)


@jax.jit
def _epoch_keys(train_keys: jax.Array, epochs: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in)(train_keys, epochs)


def _row(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def _stack(trees: Sequence):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def fit_seeds(model: Model, seeds: Sequence[int], out_dirs: Sequence | None = None, *,
              log: Callable[[str], None] = print, batched: bool = False) -> list[FitResult]:
    """Train ``model`` once per seed in ``seeds``, all seeds in one program (module docstring).

    Args:
      model: the :class:`~jaxfair.training.trainer.Model` (its functions must not depend on the seed; the seed enters
        through the keys and the batch draws, as in :func:`fit`).
      seeds: distinct integers.
      out_dirs: one folder per seed (or None): checkpoints ``<dir>/checkpoints/<name>`` and log
        ``<dir>/<name>_log.jsonl``, exactly as :func:`fit` writes them.
      batched: ``vmap`` the seeds (faster on accelerators; float-rounding differences) instead of ``lax.map``.

    Returns:
      one :class:`FitResult` per seed, in the order of ``seeds`` (``seconds`` is the shared wall time).

    Raises:
      ValueError: repeated seeds, no seed, or ``out_dirs`` of another length.
      FloatingPointError: a seed's training loss is not finite (the message names the seed).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"fit_seeds needs distinct seeds, got {seeds}")
    if out_dirs is not None and len(out_dirs) != len(seeds):
        raise ValueError(f"fit_seeds got {len(out_dirs)} output folders for {len(seeds)} seeds")
    config, name, count = model.train, model.name, len(seeds)
    seeds_epoch = make_seeds_epoch_fn(model.step, model.end_epoch, batched)
    keys = [_run_keys(seed) for seed in seeds]
    train_keys = jnp.stack([k[1] for k in keys])
    states = _init_all(model.init, jnp.stack([k[0] for k in keys]))
    carries = [initial_carry(_row(states, i)) for i in range(count)]
    checkpointers, log_files = [None] * count, [None] * count
    resumed_from, best_valid = [None] * count, [{} for _ in seeds]
    start = time.perf_counter()
    try:
        for i, out_dir in enumerate(out_dirs or []):
            out_dir = pathlib.Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            checkpointers[i] = Checkpointer(out_dir / "checkpoints" / name, max_to_keep=2, log=log)
            if checkpointers[i].latest_step() is not None:
                carries[i] = checkpointers[i].restore(carries[i])
                resumed_from[i] = int(carries[i]["epoch"])
                best_valid[i] = _best_valid_from_log(out_dir / f"{name}_log.jsonl", int(carries[i]["best_epoch"]))
                log(f"[{name} seed {seeds[i]}] resuming after epoch {resumed_from[i]}")
            _truncate_log(out_dir / f"{name}_log.jsonl", resumed_from[i] or 0)
            log_files[i] = open(out_dir / f"{name}_log.jsonl", "a")
        states = _stack([c["state"] for c in carries])
        best_params = _stack([c["best_params"] for c in carries])
        epochs = np.array([int(c["epoch"]) for c in carries])
        best_epoch = np.array([int(c["best_epoch"]) for c in carries])
        best_value = np.array([float(c["best_value"]) for c in carries])
        bad_epochs = np.array([int(c["bad_epochs"]) for c in carries])
        epoch_times: list[float] = []

        def active_now():
            return (epochs < config.epochs) & (bad_epochs < config.patience)

        while active_now().any():
            tick = time.perf_counter()
            active = active_now()
            first = int(np.argmax(active))  # a stopped seed trains on any batches: its result is masked away
            drawn = {i: model.batches(np.random.default_rng([seeds[i], int(epochs[i])]))
                     for i in range(count) if active[i]}
            batches = jax.tree.map(lambda *xs: np.stack(xs), *[drawn.get(i, drawn[first]) for i in range(count)])
            epoch_keys = _epoch_keys(train_keys, jnp.asarray(epochs, jnp.uint32))
            states, metrics = seeds_epoch(states, batches, epoch_keys, jnp.asarray(active))
            losses = np.asarray(metrics["loss"])
            improved = np.zeros(count, bool)
            valids = {}
            for i in np.flatnonzero(active):
                if not math.isfinite(float(losses[i])):
                    raise FloatingPointError(f"[{name} seed {seeds[i]}] training loss became {float(losses[i])} at "
                                             f"epoch {int(epochs[i]) + 1}")
                valid = {k: float(v) for k, v in model.validate(_row(states.params, i)).items()}
                if config.monitor not in valid:
                    raise KeyError(f"validation metrics lack the monitored {config.monitor!r}; have {sorted(valid)}")
                valids[i] = valid
                improved[i] = valid[config.monitor] > best_value[i]
            if improved.any():
                best_params = _select(jnp.asarray(improved), states.params, best_params)
            epoch_times.append(time.perf_counter() - tick)
            for i in np.flatnonzero(active):
                epochs[i] += 1
                if improved[i]:
                    best_epoch[i], best_value[i], bad_epochs[i] = epochs[i], valids[i][config.monitor], 0
                    best_valid[i] = valids[i]
                else:
                    bad_epochs[i] += 1
                train = {k: float(np.asarray(v)[i]) for k, v in metrics.items()}
                if checkpointers[i] is not None:
                    log_files[i].write(json.dumps({"epoch": int(epochs[i]), "train": train, "valid": valids[i],
                                                   "seconds": epoch_times[-1]}) + "\n")
                    log_files[i].flush()
                    last = epochs[i] >= config.epochs or bad_epochs[i] >= config.patience
                    if last or epochs[i] % config.checkpoint_every == 0:
                        checkpointers[i].save(int(epochs[i]), _carry(states, best_params, i, epochs, best_epoch,
                                                                     best_value, bad_epochs))
                    fault_point(f"{name}:{int(epochs[i])}")
                if bad_epochs[i] >= config.patience:
                    log(f"[{name} seed {seeds[i]}] early stop: no improvement of {config.monitor} for "
                        f"{config.patience} epochs")
            remaining = config.epochs - int(epochs[active_now()].min()) if active_now().any() else 0
            cells = "  ".join(f"s{seeds[i]} {valids[i][config.monitor]:.4f}" for i in np.flatnonzero(active))
            log(f"[{name} x{count} seeds] epoch {int(epochs[active].max())}/{config.epochs}  valid {config.monitor} "
                f"{cells}  {epoch_times[-1]:.2f}s/epoch  ETA <= {_format_seconds(np.mean(epoch_times) * remaining)}")
    finally:
        for checkpointer in checkpointers:
            if checkpointer is not None:
                checkpointer.close()
        for file in log_files:
            if file is not None:
                file.close()
    seconds = time.perf_counter() - start
    return [FitResult(state=_row(states, i), best_params=_row(best_params, i), best_epoch=int(best_epoch[i]),
                      best_valid=best_valid[i], epochs_run=int(epochs[i]), seconds=seconds,
                      resumed_from=resumed_from[i]) for i in range(count)]


@jax.jit
def _select(improved, params, best_params):
    return _masked(improved, params, best_params)


def _carry(states, best_params, i, epochs, best_epoch, best_value, bad_epochs) -> dict:
    """Seed ``i``'s trainer carry, in :func:`fit`'s checkpoint layout."""
    return {"state": _row(states, i), "best_params": _row(best_params, i), "epoch": np.array(epochs[i], np.int64),
            "best_epoch": np.array(best_epoch[i], np.int64), "best_value": np.array(best_value[i], np.float64),
            "bad_epochs": np.array(bad_epochs[i], np.int64)}
