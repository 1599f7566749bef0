"""Generic jitted training steps: ``(state, batch, key) -> (state, metrics)`` and a scan over an epoch of batches."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """Parameters, optimizer state and step counter: a plain pytree, so orbax saves it as is."""

    params: Any
    opt_state: Any
    step: jax.Array


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def make_train_step(
    loss_fn: Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]], tx: optax.GradientTransformation
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """One gradient step on ``loss_fn(params, batch, key) -> (loss, metrics)``; not jitted (jit or scan it).

    The metrics gain ``loss``, ``grad_norm`` and ``param_norm`` for free.
    """

    def step(state: TrainState, batch: dict, key: jax.Array) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def make_epoch_fn(step: Callable, end_epoch: Callable | None = None, constrain: Callable | None = None) -> Callable:
    """Jit a ``lax.scan`` of ``step`` over batches stacked on a leading axis.

    Args:
      step: ``(state, batch, key) -> (state, metrics)``.
      end_epoch: optional ``state -> state`` applied once after the last batch (ITFR rolls its epoch statistics).
      constrain: optional ``state -> state`` applied to the state entering and leaving the epoch (on a mesh, a
        sharding constraint: the state keeps its parameters' shardings, :mod:`jaxfair.training.mesh`).

    Returns:
      ``epoch(state, batches, key) -> (state, metrics)`` where metrics are averaged over the epoch's batches. Each
      batch's key is ``fold_in(key, state.step)`` so a resumed run draws the same keys as an uninterrupted one.
    """

    def body(state, batch, key):
        return step(state, batch, jax.random.fold_in(key, state.step))

    @jax.jit
    def epoch(state, batches, key):
        if constrain is not None:
            state = constrain(state)
        state, metrics = jax.lax.scan(lambda s, b: body(s, b, key), state, batches)
        if end_epoch is not None:
            state = end_epoch(state)
        if constrain is not None:
            state = constrain(state)
        return state, jax.tree.map(jnp.mean, metrics)

    return epoch
