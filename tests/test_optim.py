"""The optimizers (``jaxfair.training.optim``): ``make`` is Adam, with coupled L2 when ``weight_decay > 0``; the players
of a game, moved one after another by ``update_player``, follow exactly one separate Adam per player, and an update
of one player leaves every other player's parameters and optimizer state (moments and count) as they were, which a
plain update of the partition would not; AFRL's and Cofair's steps count one Adam step per player update."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.methods import adversaries, afrl, cofair
from jaxfair.training import optim
from jaxfair.training.trainer import TrainConfig, tree_equal

# A three-player game: a classifier C, a discriminator D (its own step size, several updates per round, as in
# AFRL's and Cofair's inner maximisation) and an encoder F (with coupled L2) playing against D.
RATES = {"C": 1e-2, "D": 3e-2, "F": 5e-3}
DECAY = {"C": 0.0, "D": 0.0, "F": 1e-2}
ORDER = ("C", "D", "D", "F")  # one round: C, then D twice, then F against the updated D


def game_params(seed=0):
    rng = np.random.default_rng(seed)
    leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {"C": {"w": leaf(4, 3), "b": leaf(3)}, "D": [leaf(3, 2), leaf(2)], "F": {"w": leaf(5, 4)}}


X = jnp.asarray(np.random.default_rng(1).normal(size=(8, 5)), jnp.float32)


def losses(params):
    """Each player's loss of its own subtree, coupled to the others' current values."""
    z = jnp.tanh(X @ params["F"]["w"])  # (8, 4)

    def classifier(c):
        return jnp.mean((jnp.tanh(z @ c["w"] + c["b"]) - 0.5) ** 2)

    def discriminator(d):
        return jnp.mean(jax.nn.softplus(jnp.tanh(z @ params["C"]["w"]) @ d[0] + d[1]))

    def encoder(f):
        h = jnp.tanh(X @ f["w"])
        return jnp.mean(h**2) - 0.1 * jnp.mean(jnp.tanh(h @ params["C"]["w"]) @ params["D"][0])

    return {"C": classifier, "D": discriminator, "F": encoder}


def game_players():
    return optim.players({p: optim.make(TrainConfig(learning_rate=RATES[p], weight_decay=DECAY[p])) for p in RATES})


def separate_adam(p):
    """What one player would have on its own: Adam (after coupled L2 when it has one) over its subtree alone."""
    adam = optax.adam(RATES[p])
    return optax.chain(optax.add_decayed_weights(DECAY[p]), adam) if DECAY[p] > 0 else adam


def adam_states(state):
    """Every ``ScaleByAdamState`` inside an optimizer state."""
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    return [s for s in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(s)]


def adam_count(opt_state, player):
    """The Adam step count of ``player``'s inner state in a partition state."""
    (state,) = adam_states(opt_state.inner_states[player])
    return int(state.count)


def test_update_player_in_turn_equals_one_separate_adam_per_player():
    players = game_players()
    params = game_params()
    opt_state = players.init(params)
    ref_params = dict(params)
    ref_states = {p: separate_adam(p).init(params[p]) for p in RATES}
    for _ in range(4):
        for p in ORDER:
            params, opt_state, loss = optim.update_player(players, params, opt_state, p, losses(params)[p])
            ref_loss, grads = jax.value_and_grad(losses(ref_params)[p])(ref_params[p])
            updates, ref_states[p] = separate_adam(p).update(grads, ref_states[p], ref_params[p])
            ref_params = dict(ref_params, **{p: optax.apply_updates(ref_params[p], updates)})
            assert float(loss) == float(ref_loss)
    chex.assert_trees_all_equal(params, ref_params)  # bit for bit
    for p in RATES:
        (ours,), (theirs,) = adam_states(opt_state.inner_states[p]), adam_states(ref_states[p])
        assert int(ours.count) == int(theirs.count) == 4 * ORDER.count(p)
        chex.assert_trees_all_equal(ours.mu[p], theirs.mu)
        chex.assert_trees_all_equal(ours.nu[p], theirs.nu)
    assert not tree_equal(params, game_params())  # every player did move


def test_update_player_under_jit_matches_the_separate_adams_to_float_tolerance():
    players = game_players()
    params = game_params(2)
    opt_state = players.init(params)
    ref_params = dict(params)
    ref_states = {p: separate_adam(p).init(params[p]) for p in RATES}

    @jax.jit
    def round_(params, opt_state):
        for p in ORDER:
            params, opt_state, _ = optim.update_player(players, params, opt_state, p, losses(params)[p])
        return params, opt_state

    for _ in range(3):
        params, opt_state = round_(params, opt_state)
        for p in ORDER:
            grads = jax.grad(losses(ref_params)[p])(ref_params[p])
            updates, ref_states[p] = separate_adam(p).update(grads, ref_states[p], ref_params[p])
            ref_params = dict(ref_params, **{p: optax.apply_updates(ref_params[p], updates)})
    chex.assert_trees_all_close(params, ref_params, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("player", list(RATES))
def test_a_players_update_leaves_every_other_player_and_its_optimizer_state_bit_identical(player):
    players = game_players()
    params = game_params(3)
    opt_state = players.init(params)
    for p in ORDER:  # a state part-way through training: non-zero moments and counts for everyone
        params, opt_state, _ = optim.update_player(players, params, opt_state, p, losses(params)[p])
    new_params, new_state, _ = optim.update_player(players, params, opt_state, player, losses(params)[player])
    assert not tree_equal(new_params[player], params[player])
    assert adam_count(new_state, player) == adam_count(opt_state, player) + 1
    assert not tree_equal(new_state.inner_states[player], opt_state.inner_states[player])
    for other in RATES:
        if other != player:
            chex.assert_trees_all_equal(new_params[other], params[other])
            chex.assert_trees_all_equal(new_state.inner_states[other], opt_state.inner_states[other])  # moments, count
            assert adam_count(new_state, other) == adam_count(opt_state, other)


def test_apply_player_grads_is_update_player_with_the_gradient_given():
    players = game_players()
    params = game_params(4)
    opt_state = players.init(params)
    for p in ORDER:
        by_loss = optim.update_player(players, params, opt_state, p, losses(params)[p])
        by_grads = optim.apply_player_grads(players, params, opt_state, p, jax.grad(losses(params)[p])(params[p]))
        chex.assert_trees_all_equal(by_loss[:2], by_grads)
        params, opt_state = by_grads


def test_a_plain_partition_update_with_a_zero_gradient_still_advances_that_player():
    """Why ``update_player`` exists: the partition's own ``update`` runs every player's Adam, so a player handed a
    zero gradient still has its count (and moments) advanced, and once it has momentum it even moves."""
    players = game_players()
    params = game_params(5)
    opt_state = players.init(params)
    params, opt_state, _ = optim.update_player(players, params, opt_state, "D", losses(params)["D"])
    assert adam_count(opt_state, "D") == 1
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["C"] = jax.grad(losses(params)["C"])(params["C"])  # only C has a gradient
    updates, partition_state = players.tx.update(grads, opt_state, params)
    moved = optax.apply_updates(params, updates)
    assert adam_count(partition_state, "C") == 1
    assert adam_count(partition_state, "D") == 2  # advanced by a zero gradient
    assert adam_count(partition_state, "F") == 1  # F had never been updated: its count still went up
    assert not tree_equal(moved["D"], params["D"])  # D's momentum moved it without any gradient of its own
    # update_player with the same gradient for C leaves D and F exactly where they were
    _, own_state, _ = optim.update_player(players, params, opt_state, "C", losses(params)["C"])
    assert (adam_count(own_state, "C"), adam_count(own_state, "D"), adam_count(own_state, "F")) == (1, 1, 0)


def test_make_with_weight_decay_adds_it_times_theta_to_the_gradient_before_adam():
    rng = np.random.default_rng(6)
    theta = rng.normal(size=7).astype(np.float32)
    grad = rng.normal(size=7).astype(np.float32)
    lr, wd, eps = 1e-2, 0.3, 1e-8

    def first_step(tx):
        updates, _ = tx.update(jnp.asarray(grad), tx.init(jnp.asarray(theta)), jnp.asarray(theta))
        return np.asarray(optax.apply_updates(jnp.asarray(theta), updates), np.float64)

    def adam_first_step(g):  # bias-corrected moments after one step are g and g^2
        g = np.asarray(g, np.float64)
        return theta - lr * g / (np.sqrt(g**2) + eps)

    decayed = first_step(optim.make(TrainConfig(learning_rate=lr, weight_decay=wd)))
    np.testing.assert_allclose(decayed, adam_first_step(grad + wd * theta.astype(np.float64)), rtol=1e-6, atol=1e-7)
    plain = first_step(optim.make(TrainConfig(learning_rate=lr)))
    np.testing.assert_allclose(plain, adam_first_step(grad), rtol=1e-6, atol=1e-7)
    assert np.abs(decayed - plain).max() > 1e-3  # the decay changed the step (some coordinates flip sign)


def test_make_without_weight_decay_is_plain_adam_and_learning_rate_overrides():
    params = game_params(7)
    grads = jax.tree.map(lambda x: jnp.cos(x) + 0.5, params)
    for tx, reference in ((optim.make(TrainConfig(learning_rate=2e-3)), optax.adam(2e-3)),
                          (optim.make(TrainConfig(learning_rate=2e-3), learning_rate=7e-2), optax.adam(7e-2))):
        state, ref_state, p, ref = tx.init(params), reference.init(params), params, params
        for _ in range(3):
            updates, state = tx.update(grads, state, p)
            ref_updates, ref_state = reference.update(grads, ref_state, ref)
            p, ref = optax.apply_updates(p, updates), optax.apply_updates(ref, ref_updates)
        chex.assert_trees_all_equal(p, ref)
        chex.assert_trees_all_equal(state, ref_state)


def test_a_parameter_subtree_without_a_player_is_an_error_at_init():
    players = optim.players({"C": optax.adam(1e-2), "D": optax.adam(1e-2)})
    params = game_params()  # has F, which no player owns
    with pytest.raises(ValueError):
        players.init(params)
    with pytest.raises(ValueError):  # and a player without parameters
        optim.players({**players.transforms, "F": optax.adam(1e-2), "G": optax.adam(1e-2)}).init(params)
    players.init({p: params[p] for p in ("C", "D")})  # exactly the players' subtrees: fine


# ------------------------------------------------------------------------------------------- the methods' steps


def test_afrl_step_counts_discriminator_steps_d_updates_and_one_for_every_other_player():
    rng = np.random.default_rng(8)
    classes, users, items, batches = (2, 3), 20, 15, 2
    labels = np.stack([rng.integers(0, c, users) for c in classes], 1)
    data = adversaries.make_data(rng.normal(size=(users, 4)), rng.normal(size=(items, 4)), labels, classes)
    config = afrl.AFRLConfig(hidden=8, encoder_layers=2, discriminator_steps=3,
                             train=TrainConfig(learning_rate=1e-2))
    state = afrl.init_state(jax.random.key(0), data, config)
    step = jax.jit(afrl.make_train_step(data, lambda a, b: jnp.sum(a * b, -1), config))
    for k in range(batches):
        batch = {name: jnp.asarray(rng.integers(0, items if name != "user" else users, 8), jnp.int32)
                 for name in ("user", "pos", "neg")}
        state, _ = step(state, dict(batch, weight=jnp.ones(8)), jax.random.key(k))
    counts = {p: adam_count(state.opt_state, p) for p in afrl.PLAYERS}
    assert counts == {"C": batches, "E": batches, "D": 3 * batches, "F": batches, "G": batches}


def test_cofair_step_counts_discriminator_steps_d_updates_and_one_for_the_filter():
    rng = np.random.default_rng(9)
    users, items, batches = 20, 15, 2
    data = cofair.make_data(rng.normal(size=(users, 4)).astype(np.float32),
                            rng.normal(size=(items, 4)).astype(np.float32), np.arange(users) % 2, 2)
    config = cofair.CofairConfig(levels=2, shared_dim=4, adapter_dim=3, discriminator_hidden=5, discriminator_steps=4,
                                 train=TrainConfig(learning_rate=1e-2, batch_size=8))
    state = cofair.init_state(jax.random.key(0), data, config)
    step = jax.jit(cofair.make_train_step(data, lambda a, b: jnp.sum(a * b, -1), config))
    for k in range(batches):
        batch = {name: jnp.asarray(rng.integers(0, items if name != "user" else users, 8), jnp.int32)
                 for name in ("user", "pos", "neg")}
        state, _ = step(state, dict(batch, weight=jnp.ones(8)), jax.random.key(k))
    assert adam_count(state.opt_state, "D") == 4 * batches
    assert adam_count(state.opt_state, "filter") == batches
