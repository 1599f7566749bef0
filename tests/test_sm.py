"""SM (separate models): the filter's loss against a hand computation, only the requirement's attributes enter the
adversarial game, one step moves f and the requirement's discriminators only, a single compilation, and the method
names one trainer model per non-empty requirement, each fitted and timed separately."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.backbones import make_backbone
from jaxfair.backbones.base import freeze
from jaxfair.backbones.fit import backbone_model
from jaxfair.data.preprocess import PrepConfig, prepare
from jaxfair.data.synthetic import make_synthetic
from jaxfair.methods import adversaries, afrl, sm
from jaxfair.methods.base import Context, best_params
from jaxfair.pipeline.run import fit_models
from jaxfair.training.trainer import TrainConfig, fit, tree_equal

M, D, B = 3, 4, 5
CLASSES = (2, 3, 4)
SENSITIVE = np.array([True, False, True])  # requirement G+O: attribute 1 is not sensitive
dot = lambda a, b: jnp.sum(a * b, axis=-1)


def numpy_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(B, D)).astype(np.float32)
    pos, neg = rng.normal(size=(2, B, D)).astype(np.float32)
    labels = np.stack([rng.integers(0, c, B) for c in CLASSES], axis=1).astype(np.int32)
    weight = np.array([1, 1, 1, 0, 1], np.float32)  # row 3 is padding
    attr_weight = np.array([1, 0, 1, 0, 1], np.float32)  # user 1's labels withheld
    f_w = rng.normal(size=(D, D)).astype(np.float32)
    head_w = rng.normal(size=(M, D, max(CLASSES))).astype(np.float32)
    mask = adversaries.class_mask(CLASSES)
    prior = adversaries.class_prior(labels, attr_weight, mask)
    f_params = [{"w": jnp.asarray(f_w), "b": jnp.zeros(D)}]  # one linear layer
    d_params = [{"w": jnp.asarray(head_w), "b": jnp.zeros((M, max(CLASSES)))}]  # a stack of linear heads
    args = dict(
        u=u, pos_vecs=pos, neg_vecs=neg, labels=labels, weight=weight, attr_weight=attr_weight, mask=jnp.asarray(mask),
        prior=jnp.asarray(prior), select=jnp.asarray(SENSITIVE, jnp.float32), score=dot,
    )
    return f_params, d_params, args, (u, pos, neg, labels, weight, attr_weight, f_w, head_w, prior)


def test_filter_loss_is_bpr_minus_lambda_ce_of_the_sensitive_attributes(toy):
    f_params, d_params, args, (u, pos, neg, labels, weight, attr_weight, f_w, head_w, _) = toy
    z = u @ f_w
    diff = np.sum(z * pos, 1) - np.sum(z * neg, 1)
    bpr = np.sum(np.log1p(np.exp(-diff)) * weight) / weight.sum()
    ce = np.zeros(B)
    for i in np.flatnonzero(SENSITIVE):
        logp = numpy_log_softmax(z @ head_w[i][:, : CLASSES[i]])
        ce += -logp[np.arange(B), labels[:, i]]
    adversarial = np.sum(ce * attr_weight) / attr_weight.sum()
    got = sm.filter_loss(f_params, d_params, lam=2.5, adversary="paper", **args)
    np.testing.assert_allclose(got, bpr - 2.5 * adversarial, rtol=1e-5)
    d_loss = sm.discriminator_loss(d_params, jnp.asarray(z), labels, attr_weight, args["mask"], args["select"])
    np.testing.assert_allclose(d_loss, adversarial, rtol=1e-5)


def test_confusion_adversary_is_cross_entropy_to_the_prior_of_the_sensitive_attributes(toy):
    f_params, d_params, args, (u, pos, neg, labels, weight, attr_weight, f_w, head_w, prior) = toy
    z = u @ f_w
    diff = np.sum(z * pos, 1) - np.sum(z * neg, 1)
    bpr = np.sum(np.log1p(np.exp(-diff)) * weight) / weight.sum()
    ce = np.zeros(B)
    for i in np.flatnonzero(SENSITIVE):
        c = CLASSES[i]
        ce += -(numpy_log_softmax(z @ head_w[i][:, :c]) * prior[i, :c]).sum(1)
    expected = bpr + 0.5 * np.sum(ce * attr_weight) / attr_weight.sum()
    got = sm.filter_loss(f_params, d_params, lam=0.5, adversary="confusion", **args)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("adversary", afrl.ADVERSARIES)
def test_a_non_sensitive_attribute_does_not_enter_the_filter_loss(toy, adversary):
    f_params, d_params, args, _ = toy
    loss = lambda d, a: sm.filter_loss(f_params, d, lam=3.0, adversary=adversary, **a)
    base = loss(d_params, args)
    other_labels = dict(args, labels=args["labels"].copy())
    other_labels["labels"][:, 1] = (other_labels["labels"][:, 1] + 1) % CLASSES[1]  # attribute 1 is not in S
    np.testing.assert_array_equal(loss(d_params, other_labels), base)
    other_head = jax.tree.map(lambda leaf: leaf.at[1, ..., 0].add(1.0), d_params)  # class 0's logit of D_1
    np.testing.assert_array_equal(loss(other_head, args), base)
    sensitive_head = jax.tree.map(lambda leaf: leaf.at[0, ..., 0].add(1.0), d_params)  # attribute 0 is in S
    assert not np.allclose(loss(sensitive_head, args), base)
    if adversary == "paper":
        sensitive_labels = dict(args, labels=args["labels"].copy())
        sensitive_labels["labels"][:, 2] = (sensitive_labels["labels"][:, 2] + 1) % CLASSES[2]
        assert not np.allclose(loss(d_params, sensitive_labels), base)


@pytest.fixture
def setup():
    rng = np.random.default_rng(2)
    U, I = 30, 20
    labels = np.stack([rng.integers(0, c, U) for c in CLASSES], 1)
    data = adversaries.make_data(rng.normal(size=(U, D)) * 2.0 + 1.0, rng.normal(size=(I, D)), labels, CLASSES)
    config = sm.SMConfig(hidden=8, train=TrainConfig(learning_rate=1e-2))
    batch = {
        "user": jnp.asarray(rng.integers(0, U, 8), jnp.int32),
        "pos": jnp.asarray(rng.integers(0, I, 8), jnp.int32),
        "neg": jnp.asarray(rng.integers(0, I, 8), jnp.int32),
        "weight": jnp.ones(8),
    }
    return sm.init_state(jax.random.key(0), data, SENSITIVE, config), data, config, batch


def test_init_state_shapes_and_filter_embeddings(setup):
    state, data, config, _ = setup
    assert set(state.params) == set(state.opt_state.inner_states) == {"f", "D"}
    assert len(state.params["f"]) == config.layers and len(state.params["D"]) == config.head_layers
    chex.assert_shape(state.params["D"][-1]["w"], (M, config.hidden, max(CLASSES)))
    out = sm.filter_embeddings(state.params, data.user_vecs)
    chex.assert_shape(out, data.user_vecs.shape)
    assert not np.allclose(out, data.user_vecs)


@pytest.mark.parametrize("adversary", afrl.ADVERSARIES)
def test_step_moves_f_and_the_sensitive_discriminators_only_compiles_once_and_stays_finite(setup, adversary):
    state, data, _, batch = setup
    config = sm.SMConfig(hidden=8, train=TrainConfig(learning_rate=1e-2), adversary=adversary)
    chex.clear_trace_counter()  # the parametrised cases share the counter
    step = jax.jit(chex.assert_max_traces(sm.make_train_step(data, dot, SENSITIVE, config), n=1))
    new, metrics = step(state, batch, jax.random.key(1))
    new, metrics = step(new, jax.tree.map(lambda x: x[::-1], batch), jax.random.key(2))
    chex.assert_tree_all_finite((new.params, new.opt_state, metrics))
    assert set(metrics) == {"loss", "loss_D"} and int(new.step) == 2
    assert not tree_equal(new.params["f"], state.params["f"])
    for i in range(M):
        head = lambda params: jax.tree.map(lambda leaf: leaf[i], params["D"])
        moved = not tree_equal(head(new.params), head(state.params))
        assert moved == bool(SENSITIVE[i]), i  # D_1 (not in S) has zero loss weight and stays put


def test_discriminator_update_lowers_its_loss(setup):
    state, data, _, batch = setup
    config = sm.SMConfig(hidden=8, train=TrainConfig(learning_rate=1e-2), lam=0.0)
    step = jax.jit(sm.make_train_step(data, dot, SENSITIVE, config))
    first = None
    for k in range(30):
        state, metrics = step(state, batch, jax.random.key(k))
        first = float(metrics["loss_D"]) if first is None else first
    assert float(metrics["loss_D"]) < first


def test_config_validation():
    with pytest.raises(ValueError, match="adversary"):
        sm.SMConfig(adversary="minimax")
    with pytest.raises(ValueError, match="lam"):
        sm.SMConfig(lam=-1.0)
    with pytest.raises(ValueError, match="layers"):
        sm.SMConfig(layers=0)
    assert sm.SMConfig().lam == 10.0 and sm.SMConfig().train.epochs == 15


def test_make_train_step_rejects_a_requirement_of_the_wrong_length(setup):
    _, data, config, _ = setup
    with pytest.raises(ValueError, match="sensitive"):
        sm.make_train_step(data, dot, np.array([True, False]), config)


def test_sm_fits_one_timed_filter_per_non_empty_requirement():
    raw = make_synthetic(num_users=60, num_items=150, per_user=20)
    split = prepare(raw, PrepConfig(attributes=("gender", "age")))
    backbone, backbone_config = make_backbone("pmf", {"dim": 8})
    backbone_context = backbone.context(split)
    trained = fit(backbone_model("train", split, backbone, backbone_context, TrainConfig(epochs=2), (10, 20)), 0,
                  log=lambda m: None)
    frozen = freeze(backbone, backbone_context, trained.best_params)
    user_vecs = frozen.user_vecs
    context = Context(split=split, frozen=frozen, backbone=backbone, backbone_config=backbone_config, evaluate=None,
                      probe=None, seed=0)
    method = sm.SMConfig(hidden=8, train=TrainConfig(batch_size=128, epochs=2, patience=2))
    data = sm.METHOD.prepare(context, method)
    messages = []
    runs = fit_models(sm.METHOD, context, data, method, None, messages.append)
    # 2^2 - 1 requirements, in requirements.all_requirements order; the empty one is not trained
    assert list(runs) == ["sm_G", "sm_A", "sm_G_A"]
    served = best_params(runs)
    for name, result in runs.items():
        params = result.best_params
        assert result.seconds > 0 and result.epochs_run >= 1 and result.best_epoch >= 1
        assert 0.0 <= result.best_valid["ndcg@10"] <= 1.0
        chex.assert_tree_all_finite(params)
        assert tree_equal(params, served[name])
        chex.assert_shape(sm.filter_embeddings(params, user_vecs["test"]), user_vecs["test"].shape)
        assert any(m.startswith(f"[{name}] epoch 1/2") for m in messages)  # each filter is its own trainer run
    assert not tree_equal(runs["sm_G"].best_params["f"], runs["sm_A"].best_params["f"])  # separately trained
    for sensitive, name in ((np.array([True, False]), "sm_G"), (np.array([True, True]), "sm_G_A")):
        np.testing.assert_array_equal(sm.serve(data, served, method, user_vecs["test"], sensitive),
                                      sm.filter_embeddings(served[name], user_vecs["test"]))
    np.testing.assert_array_equal(sm.serve(data, served, method, user_vecs["test"], np.zeros(2, bool)),
                                  user_vecs["test"])
