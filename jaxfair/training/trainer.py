"""The one training loop: epochs, shuffled batches, early stopping, progress with ETA, JSON-lines log, checkpoints.

Methods do not loop; they hand the trainer a :class:`Task` (how to initialise a state, build an epoch's batches, run
one jitted epoch and validate), and the trainer owns everything else. Randomness is explicit: the run's seed gives
the initialisation key, and epoch ``e`` draws its batches from ``np.random.default_rng([seed, e])`` and its step keys
from ``fold_in(train_key, e)``. A run resumed from its checkpoint therefore continues exactly as if it had never
stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.training.checkpoint import Checkpointer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings shared by every method.

    Attributes:
      epochs: maximum number of epochs.
      batch_size: rows per step (the last batch is padded, never dropped).
      learning_rate: optimizer step size (methods read it when they build their optimizer).
      patience: stop after this many validations without improvement of ``monitor``.
      monitor: validation metric to maximise for early stopping and model selection.
      seed: the run's seed.
      checkpoint_every: with an output folder, save the resumable state every this many epochs and at the last
        epoch (a resumed run replays the epochs after the newest checkpoint exactly; their log lines are rewritten).
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 5
    monitor: str = "ndcg@10"
    seed: int = 0
    checkpoint_every: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


class Task(NamedTuple):
    """What a method gives the trainer.

    Attributes:
      init_state: ``key -> state`` (any pytree with a ``params`` field).
      epoch_batches: ``rng -> batches``, numpy arrays stacked ``(num_batches, B, ...)``.
      run_epoch: jitted ``(state, batches, key) -> (state, metrics)``.
      validate: ``params -> dict[str, float]``; must contain ``config.monitor``.
    """

    init_state: Callable[[jax.Array], Any]
    epoch_batches: Callable[[np.random.Generator], dict]
    run_epoch: Callable[[Any, dict, jax.Array], tuple[Any, dict]]
    validate: Callable[[Any], dict]


@dataclasses.dataclass
class FitResult:
    state: Any
    best_params: Any
    best_epoch: int
    best_valid: dict
    epochs_run: int
    seconds: float
    resumed_from: int | None


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def fit(
    task: Task,
    config: TrainConfig,
    out_dir: str | pathlib.Path | None = None,
    *,
    log: Callable[[str], None] = print,
    name: str = "train",
) -> FitResult:
    """Train ``task`` until ``config.epochs`` or early stopping, keeping the best parameters by validation.

    With ``out_dir``: checkpoints go to ``out_dir/checkpoints/<name>`` every ``config.checkpoint_every`` epochs and
    after the last one, and the loop resumes from the newest one; every epoch appends a JSON line to ``out_dir/<name>_log.jsonl``.

    Returns:
      :class:`FitResult` with the final state, the best parameters and their validation metrics.
    """
    key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(key)
    state = task.init_state(init_key)
    carry = {
        "state": state,
        "best_params": state.params,
        "epoch": np.array(0, np.int64),
        "best_epoch": np.array(-1, np.int64),
        "best_value": np.array(-np.inf, np.float64),
        "bad_epochs": np.array(0, np.int64),
    }
    checkpointer = log_file = None
    resumed_from = None
    best_valid: dict = {}
    if out_dir is not None:
        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer(out_dir / "checkpoints" / name)
        if checkpointer.latest_step() is not None:
            carry = checkpointer.restore(carry)
            resumed_from = int(carry["epoch"])
            best_valid = _best_valid_from_log(out_dir / f"{name}_log.jsonl", int(carry["best_epoch"]))
            log(f"[{name}] resuming after epoch {resumed_from} from {checkpointer.latest_step()}")
            _truncate_log(out_dir / f"{name}_log.jsonl", resumed_from)
        log_file = open(out_dir / f"{name}_log.jsonl", "a")

    start = time.perf_counter()
    epoch_times: list[float] = []
    try:
        epoch = int(carry["epoch"])
        while epoch < config.epochs and int(carry["bad_epochs"]) < config.patience:
            tick = time.perf_counter()
            batches = task.epoch_batches(np.random.default_rng([config.seed, epoch]))
            state, train_metrics = task.run_epoch(carry["state"], batches, jax.random.fold_in(train_key, epoch))
            valid = {k: float(v) for k, v in task.validate(state.params).items()}
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
                last = epoch >= config.epochs or int(carry["bad_epochs"]) >= config.patience
                if last or epoch % config.checkpoint_every == 0:
                    checkpointer.save(epoch, carry)
                log_file.write(json.dumps({"epoch": epoch, "train": train, "valid": valid, "seconds": epoch_times[-1]}) + "\n")
                log_file.flush()
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


def _truncate_log(path: pathlib.Path, last_epoch: int) -> None:
    """Drop the log lines of epochs after ``last_epoch`` (they are replayed after a resume)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= last_epoch]
        path.write_text("".join(line + "\n" for line in lines))


def _best_valid_from_log(path: pathlib.Path, best_epoch: int) -> dict:
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["epoch"] == best_epoch:
            return record["valid"]
    return {}


def tree_equal(a, b) -> bool:
    """True when two pytrees hold identical arrays (used to prove frozen players and exact resumes)."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.array_equal(x, y), a, b))
    return all(bool(x) for x in leaves)
