"""Spec of the six backbones: shapes of their epochs and embeddings, a jitted step that compiles once, broadcasting
scores, training that lowers the BPR loss, sequence-specific behaviour and the registry's errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfair.backbones import BACKBONES, Backbone, make_backbone
from jaxfair.config import ConfigError
from jaxfair.data.preprocess import prepare
from jaxfair.data.synthetic import make_synthetic
from jaxfair.training.step import init_state, make_epoch_fn, make_train_step

# Small configurations keep every backbone's compile and epochs to a few seconds.
SMALL = {
    "pmf": {"dim": 16},
    "cosine_mf": {"dim": 16},
    "deepmodel": {"dim": 16, "hidden": [16, 8]},
    "lightgcn": {"dim": 16, "num_layers": 2},
    "sasrec": {"dim": 16, "max_len": 12, "num_blocks": 1, "num_heads": 2},
    # More masked positions than the default 0.2 make the per-epoch loss less noisy on 40 users.
    "bert4rec": {"dim": 16, "max_len": 12, "num_blocks": 1, "num_heads": 2, "mask_prob": 0.5},
}
SEQUENTIAL = ("sasrec", "bert4rec")
# Rows of a batch: training pairs for the pair-wise models, users for the sequential ones.
BATCH = {"pmf": 128, "cosine_mf": 128, "deepmodel": 128, "lightgcn": 128, "sasrec": 16, "bert4rec": 16}
NAMES = list(BACKBONES)


@pytest.fixture(scope="module")
def split():
    return prepare(make_synthetic(num_users=40, num_items=120, per_user=20))


def build(name: str) -> Backbone:
    return make_backbone(name, SMALL[name])[0]


def num_rows(name: str, split) -> int:
    return split.num_users if name in SEQUENTIAL else split.num_train


def test_registry_names():
    assert NAMES == ["pmf", "deepmodel", "sasrec", "bert4rec", "lightgcn", "cosine_mf"]
    for name, module in BACKBONES.items():
        bb, config = make_backbone(name)
        assert bb.name == name
        assert config == module.Config()
        assert config.dim == 64


@pytest.mark.parametrize("name", NAMES)
def test_epoch_shapes_and_padding(name, split):
    bb = build(name)
    batches = bb.make_epoch(split, np.random.default_rng(0), BATCH[name])
    n = num_rows(name, split)
    nb = -(-n // BATCH[name])
    extra = (SMALL[name]["max_len"],) if name in SEQUENTIAL else ()
    assert set(batches) == {"user", "pos", "neg", "weight"} | ({"seq"} if name in SEQUENTIAL else set())
    assert batches["user"].shape == (nb, BATCH[name])
    for key in ("pos", "neg", "weight") + (("seq",) if name in SEQUENTIAL else ()):
        assert batches[key].shape == (nb, BATCH[name]) + extra, key
    weight = batches["weight"].reshape(nb * BATCH[name], -1)
    assert n < nb * BATCH[name]  # the data really needs padding rows
    assert np.all(weight[n:] == 0)
    assert np.all(weight[:n].sum(axis=1) > 0) if name not in SEQUENTIAL else weight[:n].sum() > 0
    if name not in SEQUENTIAL:
        # Every training positive appears exactly once among the weighted rows.
        w = batches["weight"] > 0
        got = sorted(zip(batches["user"][w].tolist(), batches["pos"][w].tolist()))
        assert got == sorted(zip(split.train_users.tolist(), split.train_items.tolist()))


@pytest.mark.parametrize("name", NAMES)
def test_negatives_are_never_known_positives(name, split):
    bb = build(name)
    batches = bb.make_epoch(split, np.random.default_rng(1), BATCH[name])
    known = split.positive_matrix()
    users = batches["user"]
    if name in SEQUENTIAL:
        users = np.broadcast_to(users[..., None], batches["neg"].shape)
    live = batches["weight"] > 0
    assert np.all(batches["neg"][live] < split.num_items)
    assert not known[users[live], batches["neg"][live]].any()
    assert known[users[live], batches["pos"][live]].all()


@pytest.mark.parametrize("name", NAMES)
def test_jitted_step_compiles_once_and_updates(name, split):
    chex.clear_trace_counter()  # the counter is keyed by code, shared by every parametrisation
    bb = build(name)
    params = bb.init(jax.random.key(0), split)
    context = bb.context(split)
    tx = optax.adam(1e-2)
    step = make_train_step(lambda p, b, k: bb.loss(p, context, b, k), tx)
    jitted = jax.jit(chex.assert_max_traces(step, n=1))
    batches = bb.make_epoch(split, np.random.default_rng(0), BATCH[name])
    assert batches["user"].shape[0] >= 2
    state = init_state(params, tx)
    for b in range(2):
        batch = jax.tree.map(lambda x: x[b], batches)
        new_state, metrics = jitted(state, batch, jax.random.key(b))
        assert np.isfinite(float(metrics["loss"]))
        chex.assert_tree_all_finite(new_state.params)
        changed = jax.tree.leaves(jax.tree.map(lambda a, c: bool(jnp.any(a != c)), state.params, new_state.params))
        assert any(changed)
        state = new_state
    assert int(state.step) == 2
    if name in SEQUENTIAL:
        # The padding row gets no gradient, so it stays exactly zero.
        assert np.all(np.asarray(state.params["items"][split.num_items]) == 0)


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_and_broadcast_score(name, split):
    bb = build(name)
    params = bb.init(jax.random.key(1), split)
    context = bb.context(split)
    d = SMALL[name]["dim"]
    items = bb.item_embeddings(params, context)
    assert items.shape == (split.num_items, d)
    chex.assert_tree_all_finite(items)
    for stage in ("valid", "test"):
        users = bb.user_embeddings(params, context, stage)
        assert users.shape == (split.num_users, d)
        chex.assert_tree_all_finite(users)
    scores = bb.score(params, users[:, None, :], items[None, :, :])
    assert scores.shape == (split.num_users, split.num_items)
    for u, i in [(0, 0), (3, 17), (split.num_users - 1, split.num_items - 1)]:
        np.testing.assert_allclose(scores[u, i], bb.score(params, users[u], items[i]), rtol=1e-4, atol=1e-5)
    # (B, 1, d) against (B, N, d), the shape used to score sampled candidates.
    cand = items[jnp.asarray(split.test_negatives[:5])]
    assert bb.score(params, users[:5, None, :], cand).shape == (5, split.test_negatives.shape[1])


@pytest.mark.parametrize("name", NAMES)
def test_training_reduces_bpr_loss(name, split):
    bb = build(name)
    context = bb.context(split)
    tx = optax.adam(1e-2)
    epoch = make_epoch_fn(make_train_step(lambda p, b, k: bb.loss(p, context, b, k), tx))
    state = init_state(bb.init(jax.random.key(2), split), tx)
    rng = np.random.default_rng(2)
    losses = []
    for e in range(8):
        state, metrics = epoch(state, bb.make_epoch(split, rng, BATCH[name]), jax.random.key(e))
        losses.append(float(metrics["bpr"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.02, losses


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_test_stage_sees_the_validation_item(name, split):
    bb = build(name)
    params = bb.init(jax.random.key(3), split)
    context = bb.context(split)
    valid = np.asarray(bb.user_embeddings(params, context, "valid"))
    test = np.asarray(bb.user_embeddings(params, context, "test"))
    differs = np.abs(valid - test).max(axis=1) > 1e-5
    assert differs.all()


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_user_embeddings_are_deterministic(name, split):
    # Dropout is off at evaluation: two calls agree exactly.
    bb = build(name)
    params = bb.init(jax.random.key(4), split)
    context = bb.context(split)
    np.testing.assert_array_equal(bb.user_embeddings(params, context, "test"), bb.user_embeddings(params, context, "test"))


def test_sasrec_targets_are_next_items(split):
    bb = build("sasrec")
    batches = bb.make_epoch(split, np.random.default_rng(6), split.num_users)  # one batch, no padding rows
    u = 5
    row = int(np.flatnonzero(batches["user"][0] == u)[0])
    seq, pos, weight = batches["seq"][0][row], batches["pos"][0][row], batches["weight"][0][row]
    pad = split.num_items
    train = split.train_items[split.train_users == u][-(SMALL["sasrec"]["max_len"] + 1) :]
    live = weight > 0
    assert live.sum() == len(train) - 1
    np.testing.assert_array_equal(seq[live], train[:-1])
    np.testing.assert_array_equal(pos[live], train[1:])
    assert np.all(pos[~live] == pad)


def test_bert4rec_masks_at_least_one_position(split):
    # With a tiny mask_prob most rows draw no mask, so the at-least-one rule does the work (mask_last off, or it
    # would supply the mask).
    bb, _ = make_backbone("bert4rec", dict(SMALL["bert4rec"], mask_prob=0.01, mask_last=False))
    batches = bb.make_epoch(split, np.random.default_rng(5), split.num_users)
    weight, seq, pos = batches["weight"][0], batches["seq"][0], batches["pos"][0]
    mask_id = split.num_items + 1
    assert np.all(weight.sum(axis=1) >= 1)
    np.testing.assert_array_equal(seq == mask_id, weight > 0)
    # Unmasked slots keep the history; masked ones point at the true item.
    hist = split.histories("train", SMALL["bert4rec"]["max_len"])
    order = batches["user"][0]
    np.testing.assert_array_equal(np.where(weight > 0, pos, seq), hist[order])


def test_bert4rec_mask_last_matches_the_evaluation_layout(split):
    # mask_last (the default) masks every row's most recent item on top of the random masks, so the last slot holds
    # [mask] with only earlier items around it, exactly like the rows user_embeddings reads.
    bb, config = make_backbone("bert4rec", dict(SMALL["bert4rec"], mask_prob=0.01))
    assert config.mask_last
    batches = bb.make_epoch(split, np.random.default_rng(6), split.num_users)
    weight, seq, pos = batches["weight"][0], batches["seq"][0], batches["pos"][0]
    mask_id = split.num_items + 1
    hist = split.histories("train", SMALL["bert4rec"]["max_len"])[batches["user"][0]]
    assert np.all(seq[:, -1] == mask_id) and np.all(weight[:, -1] == 1)
    np.testing.assert_array_equal(pos[:, -1], hist[:, -1])
    np.testing.assert_array_equal(seq == mask_id, weight > 0)
    np.testing.assert_array_equal(np.where(weight > 0, pos, seq), hist)
    # Random masks still fall inside the history.
    assert (weight[:, :-1] > 0).any()
    context = bb.context(split)
    assert np.all(np.asarray(context["valid"])[:, -1] == mask_id)


def test_make_backbone_rejects_unknown_name():
    with pytest.raises(ConfigError, match=r"backbone\.name: unknown backbone 'x'.*pmf"):
        make_backbone("x")


@pytest.mark.parametrize("name", NAMES)
def test_make_backbone_rejects_unknown_option(name):
    with pytest.raises(ConfigError, match=r"^backbone\.dimm: unknown key"):
        make_backbone(name, {"dimm": 8})


@pytest.mark.parametrize("name", NAMES)
def test_make_backbone_rejects_bad_values(name):
    with pytest.raises(ConfigError, match="dim"):
        make_backbone(name, {"dim": 0})
    with pytest.raises(ConfigError, match=r"backbone\.dim"):
        make_backbone(name, {"dim": "64"})


@pytest.mark.parametrize("causal", [True, False])
def test_encoder_causality(causal):
    # SASRec's encoder must not let position t see later items; BERT4Rec's sees both directions.
    from jaxfair.backbones import transformer

    enc = transformer.Encoder(dim=8, num_blocks=1, num_heads=2, ffn_dim=8, dropout=0.0, causal=causal)
    params = transformer.init_params(jax.random.key(0), enc, table_rows=12, pad_id=10, max_len=6)
    seq = jnp.asarray([[10, 10, 1, 2, 3, 4]])
    changed = seq.at[0, 5].set(7)
    a = transformer.encode(params, enc, seq, pad_id=10)
    b = transformer.encode(params, enc, changed, pad_id=10)
    earlier_same = bool(jnp.allclose(a[0, 2:5], b[0, 2:5], atol=1e-6))
    assert earlier_same == causal
    assert not jnp.allclose(a[0, 5], b[0, 5])
