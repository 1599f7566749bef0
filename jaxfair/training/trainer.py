"""The one training loop: epochs, shuffled batches, early stopping, progress with ETA, JSON-lines log, checkpoints.

Methods do not loop; they hand the trainer a :class:`Model` (how to initialise a state, build an epoch's batches, take
one step and validate), and the trainer owns everything else: it scans the step over each epoch in one jitted call. Randomness is explicit: the run's seed gives
the initialisation key, and epoch ``e`` draws its batches from ``np.random.default_rng([seed, e])`` and its step keys
from ``fold_in(train_key, e)``. A run resumed from its checkpoint therefore continues exactly as if it had never
stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.training.checkpoint import Checkpointer
from jaxfair.training.mesh import epochs_on, make_mesh


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One trained stage's loop and optimizer: the ``[backbone.train]`` and ``[<method>.train]`` sections.

    Attributes:
      epochs: maximum number of epochs.
      batch_size: rows per step (the last batch is padded, never dropped).
      learning_rate: Adam's step size (:func:`jaxfair.training.optim.make` builds every optimizer from this section).
      weight_decay: coupled L2 added to the gradient before Adam (0: plain Adam).
      patience: stop after this many validations without improvement of ``monitor``.
      monitor: validation metric to maximise for early stopping and model selection.
      checkpoint_every: with an output folder, save the resumable state every this many epochs and at the last
        epoch (a resumed run replays the epochs after the newest checkpoint exactly; their log lines are rewritten).
      devices: local devices the stage trains on (:mod:`jaxfair.training.mesh`): 1 is one device, as before; 0 (the
        default) every device of a GPU or TPU platform and one on CPU; N > 1 a mesh of the first N.
      model_axis: devices of the mesh's ``model`` axis, over which embedding tables are row-sharded (the rest of
        the mesh is the ``data`` axis the batch is split over).
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    monitor: str = "ndcg@10"
    checkpoint_every: int = 1
    devices: int = 0
    model_axis: int = 1

    def __post_init__(self):
        if self.devices < 0:
            raise ValueError(f"devices must be 0 (every accelerator; one device on CPU) or more, got {self.devices}")
        for name in ("epochs", "batch_size", "patience", "checkpoint_every", "model_axis"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")


class Model(NamedTuple):
    """One model the trainer fits (a backbone, a fairness method, one of SM's filters...).

    Attributes:
      name: checkpoint folder (``checkpoints/<name>``) and log (``<name>_log.jsonl``) name.
      train: its :class:`TrainConfig` (loop and optimizer settings).
      init: ``key -> state``, any pytree with a ``params`` field.
      step: ``(state, batch, key) -> (state, metrics)``; the trainer scans it over an epoch's batches and jits
        that (:func:`jaxfair.training.step.make_epoch_fn`); ``metrics`` hold ``loss``.
      batches: ``rng -> batches``, numpy arrays stacked ``(num_batches, B, ...)``.
      validate: ``params -> dict[str, float]`` holding ``train.monitor``.
      end_epoch: optional ``state -> state`` run after each epoch's last batch (inside the jitted epoch).
    """

    name: str
    train: TrainConfig
    init: Callable[[jax.Array], Any]
    step: Callable
    batches: Callable[[np.random.Generator], dict]
    validate: Callable[[Any], dict]
    end_epoch: Callable | None = None


@dataclasses.dataclass
class FitResult:
    state: Any
    best_params: Any
    best_epoch: int
    best_valid: dict
    epochs_run: int
    seconds: float
    resumed_from: int | None


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL) when ``$JAXFAIR_FAULT`` names this point: how the kill-and-resume tests stop a run
    at a chosen place (``<model>:<epoch>`` after an epoch's checkpoint, ``evaluate``, ``results``). A no-op
    otherwise."""
    if os.environ.get("JAXFAIR_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def seed_key(seed: int) -> jax.Array:
    """``jax.random.key(seed)`` built on the host, so no program is compiled for it: with 64-bit integers off, JAX
    keeps a seed's low 32 bits and its key data is ``[0, seed mod 2**32]`` (``tests/test_trainer.py`` checks they
    are equal)."""
    return jax.random.wrap_key_data(jax.device_put(np.array([0, int(seed) & 0xFFFFFFFF], np.uint32)))


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@jax.jit
def _split_in_two(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jax.random.split(key)`` as two keys, in one program."""
    first, second = jax.random.split(key)
    return first, second


def _run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, train_key)``, the split of ``jax.random.key(seed)``."""
    return _split_in_two(seed_key(seed))


def initial_carry(state) -> dict:
    """The trainer's carry before the first epoch (what a checkpoint holds): the state, its parameters as the best so
    far, and the loop counters."""
    return {"state": state, "best_params": state.params, "epoch": np.array(0, np.int64),
            "best_epoch": np.array(-1, np.int64), "best_value": np.array(-np.inf, np.float64),
            "bad_epochs": np.array(0, np.int64)}


def fit(
    model: Model,
    seed: int,
    out_dir: str | pathlib.Path | None = None,
    *,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` until ``model.train.epochs`` or early stopping, keeping the best parameters by validation.

    ``seed`` gives the initialisation key, the epochs' batch draws and their step keys (module docstring).

    With ``out_dir``: checkpoints go to ``out_dir/checkpoints/<name>`` every ``train.checkpoint_every`` epochs and
    after the last one, and the loop resumes from the newest one; every epoch appends a JSON line to
    ``out_dir/<name>_log.jsonl``.

    Returns:
      :class:`FitResult` with the final state, the best parameters and their validation metrics.
    """
    config, name = model.train, model.name
    mesh = make_mesh(config.devices, config.model_axis)
    init_key, train_key = _run_keys(seed)
    state = jax.jit(model.init)(init_key)  # one program, not one per array the initialiser builds
    state, run_epoch, place_batches = epochs_on(mesh, model.step, model.end_epoch, state)
    if mesh is not None:
        log(f"[{name}] training on {mesh.devices.size} devices: data axis {mesh.shape['data']}, model axis "
            f"{mesh.shape['model']}")
    carry = initial_carry(state)
    checkpointer = log_file = None
    resumed_from = None
    best_valid: dict = {}
    if out_dir is not None:
        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer(out_dir / "checkpoints" / name, max_to_keep=2, log=log)
        if checkpointer.latest_step() is not None:
            carry = checkpointer.restore(carry)
            resumed_from = int(carry["epoch"])
            best_valid = _best_valid_from_log(out_dir / f"{name}_log.jsonl", int(carry["best_epoch"]))
            log(f"[{name}] resuming after epoch {resumed_from} from {checkpointer.latest_step()}")
        _truncate_log(out_dir / f"{name}_log.jsonl", resumed_from or 0)
        log_file = open(out_dir / f"{name}_log.jsonl", "a")

    start = time.perf_counter()
    epoch_times: list[float] = []
    try:
        epoch = int(carry["epoch"])
        while epoch < config.epochs and int(carry["bad_epochs"]) < config.patience:
            tick = time.perf_counter()
            batches = place_batches(model.batches(np.random.default_rng([seed, epoch])))
            state, train_metrics = run_epoch(carry["state"], batches, jax.random.fold_in(train_key, epoch))
            valid = {k: float(v) for k, v in model.validate(state.params).items()}
            if config.monitor not in valid:
                raise KeyError(f"validation metrics lack the monitored {config.monitor!r}; have {sorted(valid)}")
            value = valid[config.monitor]
            improved = value > float(carry["best_value"])
            if not math.isfinite(float(train_metrics["loss"])):
                raise FloatingPointError(f"[{name}] training loss became {float(train_metrics['loss'])} at epoch {epoch + 1}")
            carry = {
                "state": state,
                "best_params": state.params if improved else carry["best_params"],
                "epoch": np.array(epoch + 1, np.int64),
                "best_epoch": np.array(epoch + 1, np.int64) if improved else carry["best_epoch"],
                "best_value": np.array(value, np.float64) if improved else carry["best_value"],
                "bad_epochs": np.array(0, np.int64) if improved else carry["bad_epochs"] + 1,
            }
            if improved:
                best_valid = valid
            epoch += 1
            epoch_times.append(time.perf_counter() - tick)
            train = {k: float(v) for k, v in train_metrics.items()}
            if checkpointer is not None:
                # The log line first: a checkpoint always has its epoch's line (a resume truncates the log to it).
                log_file.write(json.dumps({"epoch": epoch, "train": train, "valid": valid, "seconds": epoch_times[-1]}) + "\n")
                log_file.flush()
                last = epoch >= config.epochs or int(carry["bad_epochs"]) >= config.patience
                if last or epoch % config.checkpoint_every == 0:
                    checkpointer.save(epoch, carry)
                fault_point(f"{name}:{epoch}")
            eta = float(np.mean(epoch_times)) * (config.epochs - epoch)
            log(
                f"[{name}] epoch {epoch}/{config.epochs}  loss {train['loss']:.4f}  "
                f"valid {config.monitor} {value:.4f} (best {float(carry['best_value']):.4f} @ {int(carry['best_epoch'])})  "
                f"{epoch_times[-1]:.2f}s/epoch  ETA <= {_format_seconds(eta)}"
            )
        if int(carry["bad_epochs"]) >= config.patience:
            log(f"[{name}] early stop: no improvement of {config.monitor} for {config.patience} epochs")
    finally:
        if checkpointer is not None:
            checkpointer.close()
        if log_file is not None:
            log_file.close()
    return FitResult(
        state=carry["state"],
        best_params=carry["best_params"],
        best_epoch=int(carry["best_epoch"]),
        best_valid=best_valid,
        epochs_run=int(carry["epoch"]),
        seconds=time.perf_counter() - start,
        resumed_from=resumed_from,
    )


def _log_records(path: pathlib.Path) -> list[dict]:
    """The complete JSON lines of an epoch log (a line cut short by a kill is skipped)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _truncate_log(path: pathlib.Path, last_epoch: int) -> None:
    """Keep the log lines of epochs up to ``last_epoch`` (the later ones are replayed after a resume)."""
    if path.exists():
        kept = [record for record in _log_records(path) if record.get("epoch", 0) <= last_epoch]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(tmp, path)  # atomic: a kill leaves the old log or the new one


def _best_valid_from_log(path: pathlib.Path, best_epoch: int) -> dict:
    for record in _log_records(path):
        if record.get("epoch") == best_epoch:
            return record["valid"]
    return {}


def tree_equal(a, b) -> bool:
    """True when two pytrees hold identical arrays (used to prove frozen players and exact resumes)."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.array_equal(x, y), a, b))
    return all(bool(x) for x in leaves)
