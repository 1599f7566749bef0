"""A jitted initialiser gives exactly the values it gives op by op (the trainer jits every model's ``init``, and a
one-bit difference at the start of an adversarial run ends elsewhere)."""

import jax
import numpy as np
import pytest

from jaxfair.backbones import BACKBONES, diffusion, make_backbone
from jaxfair.data.preprocess import prepare
from jaxfair.data.synthetic import make_synthetic
from jaxfair.methods import adversaries, afrl, cofair, diffairec
from jaxfair.methods.mlp import mlp_init, stack_init


def assert_bitwise_equal(eager, jitted):
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))  # bits


def jit_matches_eager(init, key):
    assert_bitwise_equal(init(key), jax.jit(init)(key))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_initialises_the_same_bits_under_jit(name):
    split = prepare(make_synthetic(num_users=40, num_items=120, per_user=20))
    backbone = make_backbone(name, {"dim": 8})[0] if name not in ("sasrec", "bert4rec") else \
        make_backbone(name, {"dim": 8, "max_len": 10})[0]
    jit_matches_eager(lambda key: backbone.init(key, split), jax.random.key(3))


def test_the_method_initialisers_give_the_same_bits_under_jit():
    rng = np.random.default_rng(0)
    classes = (2, 7, 21)
    labels = np.stack([rng.integers(0, c, 50) for c in classes], 1)
    data = adversaries.make_data(rng.normal(size=(50, 64)), rng.normal(size=(30, 64)), labels, classes)
    key = jax.random.key(5)
    jit_matches_eager(lambda k: afrl.init_state(k, data, afrl.AFRLConfig()), key)
    jit_matches_eager(lambda k: cofair.init_params(k, 64, 7, cofair.CofairConfig()), key)
    jit_matches_eager(lambda k: mlp_init(k, (64, 32, 7)), key)
    jit_matches_eager(lambda k: stack_init(k, 3, (64, 32, 7)), key)
    jit_matches_eager(lambda k: diffairec.init_counterfactual(k, 40, 16), key)
    jit_matches_eager(lambda k: diffusion.init_denoiser(k, 40, diffusion.Config()), key)
