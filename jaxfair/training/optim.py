"""Optimizers, declared once: every optimizer of every model is built here from its loop section's settings.

:func:`make` is the one factory (after big_vision's ``optax.py::make``): Adam at ``learning_rate``, with coupled L2
(``weight_decay * theta`` added to the gradient before Adam, as ``torch.optim.Adam(weight_decay=...)`` does) when
``weight_decay > 0``.

A min-max game or an EM scheme has several *players*, each a top-level subtree of the parameters (AFRL's C, E, D, F,
G; Cofair's filter and D). :func:`players` declares them with ``optax.partition``: one transformation per label, one
optimizer state per player inside the partition's state. A step that updates the players one after another (AFRL's
Algorithm 1, Cofair's discriminator then filter) calls :func:`update_player`, which applies only that player's
inner transformation to only that player's subtree: no other player's parameters move and no other player's Adam
moments or step count advance. (Passing the partition a zero gradient for the other players would still advance
their moments; ``tests/test_optim.py`` shows the sequence equals one separate Adam per player.)
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import optax

from jaxfair.training.step import init_state


def make(train, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The optimizer a loop section asks for.

    Args:
      train: a :class:`jaxfair.training.trainer.TrainConfig` (its ``learning_rate`` and ``weight_decay``).
      learning_rate: overrides ``train.learning_rate`` (a player with its own step size, e.g. Cofair's D).
    """
    rate = train.learning_rate if learning_rate is None else learning_rate
    tx = optax.adam(rate)
    if train.weight_decay > 0:
        tx = optax.chain(optax.add_decayed_weights(train.weight_decay), tx)
    return tx


class Players(NamedTuple):
    """The players of a game: ``transforms`` (label -> its transformation; the label is the top-level parameter key
    it owns) and ``tx``, their ``optax.partition`` (init it on the whole parameter dict)."""

    transforms: Mapping[str, optax.GradientTransformation]
    tx: optax.GradientTransformation

    def init(self, params: dict):
        return self.tx.init(params)


def players(transforms: Mapping[str, optax.GradientTransformation]) -> Players:
    """Declare players: each key of ``transforms`` labels the top-level parameter subtree of that name."""
    transforms = dict(transforms)
    return Players(transforms, optax.partition(transforms, {name: name for name in transforms}))


def same_players(names, train) -> Players:
    """Players ``names`` that all use the optimizer ``make(train)``, each with its own state."""
    return players({name: make(train) for name in names})


def init_players(params: dict, players_: Players):
    """A :class:`~jaxfair.training.step.TrainState` holding ``params`` and the players' partitioned state."""
    return init_state(params, players_.tx)


def _player_mask(players_: Players, name: str) -> dict:
    return {label: label == name for label in players_.transforms}


def update_player(players_: Players, params: dict, opt_state, name: str, loss_fn: Callable):
    """Differentiate ``loss_fn(params[name])`` and move player ``name`` alone by its own transformation.

    Args:
      players_: from :func:`players`; ``opt_state``: its partition state.
      loss_fn: ``subtree -> scalar``.

    Returns:
      ``(params, opt_state, loss)`` with only ``params[name]`` and ``name``'s inner state changed.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params[name])
    inner = optax.masked(players_.transforms[name], _player_mask(players_, name))
    # The other players' entries pass through ``masked`` untouched and are dropped below, so any value will do.
    updates, state = inner.update(dict(params, **{name: grads}), opt_state.inner_states[name], params)
    params = dict(params, **{name: optax.apply_updates(params[name], updates[name])})
    opt_state = opt_state._replace(inner_states={**opt_state.inner_states, name: state})
    return params, opt_state, loss


def apply_player_grads(players_: Players, params: dict, opt_state, name: str, grads):
    """:func:`update_player` for a gradient already computed (e.g. with auxiliary outputs)."""
    inner = optax.masked(players_.transforms[name], _player_mask(players_, name))
    updates, state = inner.update(dict(params, **{name: grads}), opt_state.inner_states[name], params)
    params = dict(params, **{name: optax.apply_updates(params[name], updates[name])})
    return params, opt_state._replace(inner_states={**opt_state.inner_states, name: state})
