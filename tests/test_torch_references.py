"""jaxfair's training steps against their PyTorch references (:mod:`benchmarks.references`), on tiny synthetic inputs.

Each test starts both frameworks from the same state, takes the same step(s) on the same batch (with the JAX step's
own random draws given to PyTorch where the step draws any) and compares real numbers: parameters, Adam first
moments, method state and metrics. Tolerances are those of the step benchmarks' checks:

* AFRL (no check in its benchmark): ITFR's, below;
* Cofair: metrics within ``1e-4`` absolute (``check_max_abs_diff_*`` of ``benchmarks.cofair_step``); parameters
  within ``1e-4 * max(1, largest |value|)``;
* ITFR: every compared quantity within ``1e-4 * max(1, largest |value|)``;
* DifFaiRec / DiffRec: ``benchmarks.diffairec_step``'s :func:`passes` (parameters where Adam is well conditioned
  within ``1e-5``, everywhere within the learning rate; moments, loss history, metrics and scores within
  ``1e-5 * max(1, largest |value|)``).

Every test is marked ``torch`` and skipped, with the reason, when PyTorch is not installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import afrl_step, cofair_step, diffairec_step, itfr_step
from benchmarks.references import afrl as torch_afrl
from benchmarks.references import cofair as torch_cofair
from benchmarks.references import diffairec as torch_diffairec
from benchmarks.references import itfr as torch_itfr
from jaxfair.backbones import diffusion
from jaxfair.backbones.base import dot_score
from jaxfair.methods import afrl, cofair, diffairec, itfr
from jaxfair.training.trainer import TrainConfig

pytestmark = pytest.mark.torch

TORCH_REASON = "PyTorch reference checks need torch: pip install -e '.[bench]'"
RELATIVE = 1e-4  # ITFR's check: max abs diff < RELATIVE * max(1, largest |JAX value|)
COFAIR_METRICS = 1e-4  # Cofair's check: absolute, on the step metrics


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason=TORCH_REASON)


def largest_diff(reference, other) -> tuple[float, float]:
    """``(max |reference - other|, max |reference|)`` over matching leaves of two pytrees (float64)."""
    ref = [np.asarray(x, np.float64) for x in jax.tree.leaves(reference)]
    oth = [np.asarray(x, np.float64) for x in jax.tree.leaves(other)]
    assert len(ref) == len(oth) and all(a.shape == b.shape for a, b in zip(ref, oth))
    return (max(float(np.max(np.abs(a - b))) for a, b in zip(ref, oth)),
            max(float(np.max(np.abs(a))) for a in ref))


def assert_close(reference, other, what):
    diff, scale = largest_diff(reference, other)
    assert diff < RELATIVE * max(1.0, scale), f"{what}: max abs diff {diff:.3g} (largest |value| {scale:.3g})"


# --- AFRL ---------------------------------------------------------------------------------------------------------


def test_afrl_step_matches_the_torch_reference(torch):
    """Three steps of Algorithm 1 (C, E, D, F, G in turn, each player with its own Adam) from the same parameters and
    the same requirement draws: the five losses, every player's parameters and Adam first moment agree."""
    users, items, dim, batch, steps = 30, 20, 8, 16, 3
    config = afrl.Config(hidden=16, train=TrainConfig(learning_rate=1e-2))
    data, batches = afrl_step.make_inputs(users, items, dim, batch, steps)
    step = jax.jit(afrl.make_train_step(data, dot_score, config))
    state = afrl.init_state(jax.random.key(0), data, config)
    initial = state.params
    model = torch_afrl.TorchAFRL(data.user_vecs, data.item_vecs, data.labels, data.class_mask, config,
                                 params=state.params)
    assert largest_diff(initial, model.exported_params())[0] == 0.0
    for i in range(steps):
        numpy_batch = {k: v[i] for k, v in batches.items()}
        key = jax.random.key(100 + i)
        sensitive = np.asarray(jax.random.bernoulli(key, 0.5, (batch, len(afrl_step.CLASSES))))  # the step's draw
        assert sensitive.any() and not sensitive.all()
        state, metrics = step(state, jax.tree.map(jnp.asarray, numpy_batch), key)
        torch_metrics = model.step({k: torch.tensor(v) for k, v in numpy_batch.items()}, torch.tensor(sensitive))
        assert set(torch_metrics) == set(metrics)
        for name, value in torch_metrics.items():
            assert_close(metrics[name], value.numpy(), f"step {i} {name}")
        assert_close(state.params, model.exported_params(), f"step {i} params")
        moments = {p: state.opt_state.inner_states[p].inner_state[0].mu[p] for p in afrl.PLAYERS}
        assert_close(moments, model.exported_first_moments(), f"step {i} Adam first moments")
        for p in afrl.PLAYERS:
            assert int(state.opt_state.inner_states[p].inner_state[0].count) == i + 1
    moved = largest_diff(initial, state.params)[0]
    assert moved > 10 * RELATIVE * max(1.0, largest_diff(initial, initial)[1])  # the steps moved the parameters


# --- Cofair -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exposure_weight", [0.0, 1.0])
@pytest.mark.parametrize("mode", ["per_user", "per_row"])
def test_cofair_step_matches_the_torch_reference(torch, exposure_weight, mode):
    """The configs' step (capped adversary, a linear D updated 5 times per batch, residual filter), with and without
    the soft exposure term: two steps from the same parameters give the same metrics and parameters, in jaxfair's
    per-user mode (the dataset has no more users than a batch has rows) and in its per-row mode."""
    users, items, dim, levels, batch = 40, 30, 8, 3, 64
    config = cofair.Config(levels=levels, shared_dim=dim, adapter_dim=dim, adversary="capped", discriminator_layers=1,
                           discriminator_steps=5, residual=True, exposure_weight=exposure_weight,
                           exposure_candidates=min(20, items - 1), exposure_k=min(10, items - 2),
                           train=TrainConfig(learning_rate=1e-3, batch_size=batch))
    user_vecs, item_vecs, labels, batches = cofair_step.make_inputs(users, items, dim, batch, 2)
    exclude = cofair_step.random_exclude(users, items)
    if mode == "per_user":
        data = cofair.make_data(user_vecs, item_vecs, labels, 2, exclude=exclude)
    else:
        data = cofair_step.padded_data(user_vecs, item_vecs, labels, 2, batch, exclude)
        assert data.user_vecs.shape[0] > batch
    step = jax.jit(cofair.make_train_step(data, dot_score, config))
    state = cofair.init_state(jax.random.key(0), data, config)
    initial = state.params
    model = torch_cofair.TorchCofair(state.params, user_vecs, item_vecs, labels, config, exclude)
    for i, (numpy_batch, torch_batch) in enumerate(zip(batches, torch_cofair.torch_batches(batches))):
        state, metrics = step(state, jax.tree.map(jnp.asarray, numpy_batch), jax.random.key(0))
        torch_metrics = model.step(torch_batch)
        assert set(torch_metrics) <= set(metrics)
        for name, value in torch_metrics.items():
            diff = float(np.max(np.abs(np.asarray(metrics[name], np.float64) - value)))
            assert diff < COFAIR_METRICS, f"step {i} {name}: {metrics[name]} vs {value}"
        assert_close(state.params, model.exported_params(), f"step {i} params")
        gap = np.asarray(metrics["exposure_gap"])
        assert np.all(gap > 0) if exposure_weight > 0 else np.all(gap == 0)
    assert largest_diff(initial, state.params)[0] > 10 * RELATIVE  # two Adam steps of 1e-3 moved the parameters


# --- ITFR ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_groups", [4, 12])
def test_itfr_step_matches_the_torch_reference(torch, num_groups):
    """One SAM + collaborative-balance step on the same batch, from the first-epoch state (similarity = identity) and
    from the state after two epochs (similarity against the previous epoch's group gradients): parameters, group
    weights, Adam first moments and the epoch sums agree."""
    params, user_group, rows = itfr_step.make_inputs(20, 15, 8, 32, 3)
    rows = itfr_step.with_groups(rows, user_group, num_groups, 15, seed=num_groups)
    config = itfr.Config()
    setup = itfr_step.JaxSetup(params, rows, num_groups, config)
    assert int(setup.initial.epoch) == 0 and int(setup.later.epoch) == 2
    checks = itfr_step.check_same_step(setup, config, torch_itfr.torch_batches(rows)[0])
    assert set(checks) == {"first_epoch", "later_epoch"}
    for state, quantities in checks.items():
        assert set(quantities) == {"params", "weights", "adam_first_moment", "epoch_grad_sum", "epoch_loss_sum"}
        for name, q in quantities.items():
            assert q["max_abs_diff"] < RELATIVE * max(1.0, q["max_abs"]), (state, name, q)
    # the step is not a no-op: the group weights leave uniform and the parameters move by about the learning rate
    later = setup.step(setup.later, setup.batch_list[0], setup.key)[0]
    assert float(np.ptp(np.asarray(later.weights))) > RELATIVE
    assert largest_diff(setup.later.params, later.params)[0] > 5 * RELATIVE  # Adam moves an entry by up to lr = 1e-3


# --- DifFaiRec / DiffRec ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, swap, serve", [("diffairec", "condition", "average"), ("diffairec", "input", "factual"),
                                                ("diffairec", "input", "average"), ("diffrec", "condition", "average")])
def test_diffusion_step_and_scores_match_the_torch_reference(torch, model, swap, serve):
    """One training step with the JAX step's own random draws (timesteps, noise, dropout mask, counterfactual groups),
    from the initial state (uniform timesteps, first Adam step) and from the warm state (importance sampling on), and
    the full-ranking scores of every user from the warm parameters."""
    users, items, num_groups, batch, eval_batch = 48, 40, 2, 16, 32
    dc = diffusion.Config(steps=5, hidden=(32,), time_dim=10)
    method = diffairec.Config(latent_dim=8, serve=serve, swap=swap, diffusion=dc)
    interactions, groups = diffairec_step.make_inputs(users, items, 0.1, num_groups)
    tokens = np.asarray(diffairec.group_tokens(interactions, groups, num_groups, method))
    batches = diffusion.user_batches(users, np.random.default_rng(0), batch)
    key = jax.random.key(0)
    if model == "diffairec":
        params = diffairec.init_params(key, items, dc, method)
    else:
        params, method = diffusion.init_denoiser(key, items, dc), None
    setup = diffairec_step.JaxSetup(model, dc, method, interactions, groups, tokens, params, batches)
    reference = diffairec_step.torch_model(setup.initial, dc, method, interactions, groups, tokens, threads=1)
    checks = diffairec_step.check_same_step(setup, reference, torch_diffairec.torch_batches(batches)[0])
    assert checks["warm"]["importance_sampling_active"] and not checks["initial"]["importance_sampling_active"]
    for state in ("initial", "warm"):
        assert set(checks[state]) == {"params", "adam_first_moment", "loss_history", "metrics",
                                      "importance_sampling_active"}
        for quantity, values in checks[state].items():
            if isinstance(values, dict):
                assert diffairec_step.passes(quantity, values), (state, quantity, values)
        assert checks[state]["params"]["max_abs_diff_well_conditioned"] < diffairec_step.PARAM_TOLERANCE
        assert checks[state]["params"]["well_conditioned_fraction"] > 0.5
    scores = diffairec_step.check_same_scores(setup, reference, eval_batch)
    assert diffairec_step.passes("scores", scores), scores
    assert scores["max_abs"] > 0.1  # real scores, not an empty comparison
