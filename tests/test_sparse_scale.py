"""Nothing O(users x items) above the memory rule (issue 21, item 3), and nothing changed below it.

The rule: a ``(U, I)`` array is built only while ``U I <= DENSE_LIMIT`` (2**26 entries; MovieLens-100k's 943 x 1,682
keeps every dense path, bit for bit). Above it the user-item sets stay CSR (``UserItems``, ``SparseRows``), Cofair's
exposure term builds each batch's mask from its users' sets, full-ranking evaluation streams users in blocks sized by
a memory budget, and negatives are drawn against the sets. Here the limit is forced low on small data, and each
sparse or blocked path is checked against the dense one: bit for bit where the same numbers are computed in the same
order (masks, negatives, per-user metrics, Cofair's steps), to float rounding where sums over users are split into
blocks (the report's means)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.backbones import lightgcn
from jaxfair.data import dataset
from jaxfair.data.dataset import Split, UserItems, use_dense
from jaxfair.data.preprocess import PrepConfig, prepare
from jaxfair.data.sampling import bpr_pairs, sample_negatives
from jaxfair.data.synthetic import make_synthetic
from jaxfair.methods import cofair, itfr
from jaxfair.methods.cofair_evaluation import exposure_floor, level_report
from jaxfair.metrics.exposure import blocked_ranking_report, full_ranking_report
from jaxfair.metrics.intersectional import user_group_recall
from jaxfair.metrics.masks import SparseRows, rows_mask
from jaxfair.metrics.ranking import BYTES_PER_ENTRY, block_rows, full_protocol, split_ranking
from jaxfair.training.trainer import TrainConfig


def dot(u, v):
    return jnp.sum(u * v, axis=-1)


@pytest.fixture(scope="module")
def ratio_split():
    return prepare(make_synthetic(num_users=70, num_items=90, per_user=20, seed=3),
                   PrepConfig(split="temporal_ratio", rating_threshold=0.0, attributes=("gender",)))


@pytest.fixture(scope="module")
def loo_split():
    return prepare(make_synthetic(num_users=50, num_items=80, per_user=20, seed=5), PrepConfig(eval_negatives=9))


def forbid_dense(monkeypatch):
    """Force the sparse paths (limit 0) and make building any whole (U, I) matrix an error."""
    monkeypatch.setattr(dataset, "DENSE_LIMIT", 0)

    def refuse(*args, **kwargs):
        raise AssertionError("a (users, items) array was built above the memory rule")

    monkeypatch.setattr(Split, "dense", refuse)
    monkeypatch.setattr(UserItems, "dense", refuse)


@pytest.fixture
def no_dense(monkeypatch):
    forbid_dense(monkeypatch)


def random_sets(rng, num_users, num_items, density=0.15):
    dense = rng.random((num_users, num_items)) < density
    dense[0] = False  # a user with an empty set
    users, items = np.nonzero(dense)
    return dense, UserItems.from_pairs(users, items, num_users, num_items)


# --- the rule -------------------------------------------------------------------------------------------------


def test_movielens_100k_and_1m_sizes_keep_the_dense_paths_and_ml_20m_does_not():
    assert dataset.DENSE_LIMIT == 1 << 26
    assert use_dense(943, 1682) and use_dense(6040, 3706)
    assert not use_dense(138_493, 26_744)
    assert use_dense(10, 10, limit=100) and not use_dense(10, 11, limit=100)


def test_a_small_split_hands_out_dense_masks_by_default_and_sets_above_a_lowered_limit(ratio_split):
    targets, exclude = ratio_split.ranking_masks("test")
    assert isinstance(targets, np.ndarray) and targets.shape == (ratio_split.num_users, ratio_split.num_items)
    assert isinstance(ratio_split.known_positives(), np.ndarray)
    targets, exclude = ratio_split.ranking_masks("test", limit=0)
    assert isinstance(targets, UserItems) and isinstance(exclude, UserItems)
    assert isinstance(ratio_split.known_positives(limit=0), UserItems)


def test_block_rows_divides_the_memory_budget_among_items_and_embedding_sets():
    assert block_rows(1000, 1, 1000 * BYTES_PER_ENTRY * 7) == 7
    assert block_rows(1000, 3, 1000 * BYTES_PER_ENTRY * 7) == 2
    assert block_rows(10**9, 1, 1) == 1  # at least one user


# --- the sets equal the matrices ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ratio", "loo"])
def test_every_split_set_equals_its_dense_matrix(which, ratio_split, loo_split):
    split = ratio_split if which == "ratio" else loo_split
    for stage in ("valid", "test"):
        np.testing.assert_array_equal(split.target_sets(stage).dense(), split.target_matrix(stage))
        np.testing.assert_array_equal(split.exclude_sets(stage).dense(), split.exclude_matrix(stage))
    np.testing.assert_array_equal(split.train_sets().dense(), split.train_matrix())
    np.testing.assert_array_equal(split.positive_sets().dense(), split.positive_matrix())


def test_user_items_rows_selection_membership_and_union_equal_the_dense_forms():
    rng = np.random.default_rng(0)
    dense, sets = random_sets(rng, 12, 17)
    other_dense, other = random_sets(rng, 12, 17)
    rows = np.array([3, 0, 3, 11, 5])
    np.testing.assert_array_equal(sets.dense_rows(rows), dense[rows])
    np.testing.assert_array_equal(sets.select(rows).dense(), dense[rows])
    np.testing.assert_array_equal(sets.counts(), dense.sum(axis=1))
    np.testing.assert_array_equal(sets.union(other).dense(), dense | other_dense)
    users, items = rng.integers(0, 12, (6, 5)), rng.integers(0, 17, (6, 5))
    np.testing.assert_array_equal(sets.contains(users, items), dense[users, items])
    empty = UserItems.from_pairs(np.zeros(0, int), np.zeros(0, int), 3, 4)
    assert not empty.contains(np.array([0, 2]), np.array([1, 3])).any()


@pytest.mark.parametrize("replace", [True, False])
def test_negatives_drawn_against_the_sets_are_the_dense_draws(replace, loo_split):
    users = np.repeat(np.arange(loo_split.num_users), 3)
    dense = sample_negatives(loo_split.positive_matrix(), users, 4, np.random.default_rng(1), replace=replace)
    sparse = sample_negatives(loo_split.positive_sets(), users, 4, np.random.default_rng(1), replace=replace)
    np.testing.assert_array_equal(sparse, dense)


@pytest.mark.parametrize("kind", ["leave_one_out", "temporal_ratio"])
def test_a_split_prepared_above_the_limit_is_the_same_split(kind, monkeypatch):
    """Preprocessing (the CSR of the positives, the fixed evaluation negatives) builds no (U, I) array, and gives the
    same split."""
    raw = make_synthetic(num_users=50, num_items=80, per_user=20, seed=5)
    config = PrepConfig(eval_negatives=9, split=kind)
    dense = prepare(raw, config)
    forbid_dense(monkeypatch)
    sparse = prepare(raw, config)
    for field in ("positives_indptr", "positives_indices", "valid_negatives", "test_negatives", "train_items",
                  "valid_items", "test_items"):
        np.testing.assert_array_equal(getattr(sparse, field), getattr(dense, field))


def test_an_epoch_of_bpr_pairs_is_the_same_above_the_limit(ratio_split, monkeypatch):
    dense = bpr_pairs(ratio_split, np.random.default_rng(4))
    monkeypatch.setattr(dataset, "DENSE_LIMIT", 0)
    sparse = bpr_pairs(ratio_split, np.random.default_rng(4))
    for key in dense:
        np.testing.assert_array_equal(sparse[key], dense[key])


# --- full-ranking evaluation in blocks ------------------------------------------------------------------------


def embeddings(split, dim=6, seed=0, sets=None):
    rng = np.random.default_rng(seed)
    shape = (split.num_users, dim) if sets is None else (sets, split.num_users, dim)
    return (jnp.asarray(rng.normal(size=shape), jnp.float32),
            jnp.asarray(rng.normal(size=(split.num_items, dim)), jnp.float32))


def test_full_protocol_over_sets_equals_the_dense_masks_bit_for_bit(ratio_split):
    users, items = embeddings(ratio_split)
    for stage in ("valid", "test"):
        dense = full_protocol(dot, users, items, ratio_split.target_matrix(stage), ratio_split.exclude_matrix(stage),
                              (3, 10), batch_size=16)
        # A budget of 7 users per block: several blocks, the last one padded.
        sparse = full_protocol(dot, users, items, ratio_split.target_sets(stage), ratio_split.exclude_sets(stage),
                               (3, 10), batch_size=16, memory_bytes=7 * ratio_split.num_items * BYTES_PER_ENTRY)
        for name in dense:
            np.testing.assert_array_equal(sparse[name], dense[name], err_msg=name)


def test_split_ranking_above_the_limit_equals_the_dense_ranking(ratio_split, loo_split, monkeypatch):
    for split in (ratio_split, loo_split):
        users, items = embeddings(split, seed=1)
        args = (dot, {"valid": users, "test": users}, items, split, split.protocols, (5, 10), 16)
        dense = split_ranking(*args)
        monkeypatch.setattr(dataset, "DENSE_LIMIT", 0)
        assert split_ranking(*args) == dense
        monkeypatch.setattr(dataset, "DENSE_LIMIT", 1 << 26)


def assert_reports_close(blocked, dense):
    assert set(blocked) == set(dense)
    for name in dense:
        np.testing.assert_allclose(np.asarray(blocked[name]), np.asarray(dense[name]), rtol=2e-6, atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("block_users", [1, 9, 1000])
def test_the_blocked_full_ranking_report_equals_the_one_pass_report(ratio_split, block_users):
    users, items = embeddings(ratio_split, seed=2)
    groups = jnp.asarray(ratio_split.user_attributes["gender"])
    targets, exclude = ratio_split.target_matrix("test"), ratio_split.exclude_matrix("test")
    dense = full_ranking_report(dot, users, items, jnp.asarray(targets), jnp.asarray(exclude), groups, num_groups=2,
                                ks=(5, 10))
    blocked = full_ranking_report(dot, users, items, ratio_split.target_sets("test"), ratio_split.exclude_sets("test"),
                                  groups, num_groups=2, ks=(5, 10),
                                  memory_bytes=block_users * ratio_split.num_items * BYTES_PER_ENTRY)
    assert_reports_close(blocked, dense)
    # The exposure counts are integers, so the gaps agree exactly when the top-K lists do.
    for k in (5, 10):
        assert float(blocked[f"dp@{k}"]) == pytest.approx(float(dense[f"dp@{k}"]), abs=1e-7)


@pytest.mark.parametrize("num_sets", [1, 3])
def test_level_report_in_blocks_equals_the_vmapped_report_for_every_level(ratio_split, num_sets):
    levels, items = embeddings(ratio_split, seed=3, sets=num_sets)
    groups = jnp.asarray(ratio_split.user_attributes["gender"])
    dense = level_report(levels, items, jax.tree_util.Partial(dot), jnp.asarray(ratio_split.target_matrix("valid")),
                         jnp.asarray(ratio_split.exclude_matrix("valid")), groups, 2, (4,))
    blocked = level_report(levels, items, jax.tree_util.Partial(dot), *ratio_split.ranking_masks("valid", limit=0),
                           groups, 2, (4,))
    assert all(np.shape(v) == (num_sets,) for v in blocked.values())
    assert_reports_close(blocked, dense)
    five_users = num_sets * 5 * ratio_split.num_items * BYTES_PER_ENTRY
    small = blocked_ranking_report(dot, levels, items, *ratio_split.ranking_masks("valid", limit=0), groups,
                                   num_groups=2, ks=(4,), memory_bytes=five_users)
    assert_reports_close(small, dense)


def test_the_exposure_floor_over_sets_equals_the_dense_floor(ratio_split):
    levels, items = embeddings(ratio_split, seed=4, sets=2)
    labels = np.asarray(ratio_split.user_attributes["gender"])
    rows = np.arange(0, ratio_split.num_users, 2)
    dense = exposure_floor(levels, items, dot, jnp.asarray(ratio_split.target_matrix("test")),
                           jnp.asarray(ratio_split.exclude_matrix("test")), labels, 2, (5,), 2, 0, rows=rows)
    sparse = exposure_floor(levels, items, dot, *ratio_split.ranking_masks("test", limit=0), labels, 2, (5,), 2, 0,
                            rows=rows)
    for one, other in zip(sparse, dense):
        assert one == pytest.approx(other, abs=1e-6, nan_ok=True)


def test_the_intersectional_recall_over_sets_equals_the_dense_recall(ratio_split):
    users, items = embeddings(ratio_split, seed=5)
    item_group = np.arange(ratio_split.num_items) % 3
    dense = user_group_recall(dot, users, items, ratio_split.target_matrix("test"), ratio_split.exclude_matrix("test"),
                              item_group, 3, (5, 10), batch_size=16)
    sparse = user_group_recall(dot, users, items, *ratio_split.ranking_masks("test", limit=0), item_group, 3, (5, 10),
                               batch_size=16)
    np.testing.assert_array_equal(sparse, dense)


# --- Cofair's exposure term without a (U, I) array ------------------------------------------------------------


def test_a_batchs_mask_built_from_sparse_rows_equals_the_dense_rows():
    rng = np.random.default_rng(6)
    dense, sets = random_sets(rng, 15, 11, density=0.3)
    rows = SparseRows.from_sets(sets)
    users = jnp.asarray([4, 0, 4, 14, 7, 0, 2], jnp.int32)  # repeats, and the empty user 0
    got = jax.jit(lambda u: rows_mask(rows, u, 11))(users)
    np.testing.assert_array_equal(np.asarray(got), dense[np.asarray(users)])
    np.testing.assert_array_equal(np.asarray(rows_mask(rows, jnp.arange(15), 11)), dense)
    assert rows.largest[2] == np.sort(dense.sum(axis=1))[-2:].sum()


def cofair_inputs(seed, num_users=24, num_items=30, dim=6):
    rng = np.random.default_rng(seed)
    user_vecs = rng.normal(size=(num_users, dim)).astype(np.float32)
    item_vecs = rng.normal(size=(num_items, dim)).astype(np.float32)
    labels = np.arange(num_users) % 2
    exclude, sets = random_sets(rng, num_users, num_items, density=0.2)
    weight = np.ones(num_users, np.float32)
    weight[[1, 6]] = 0.0
    dense = cofair.make_data(user_vecs, item_vecs, labels, 2, weight, exclude=exclude)
    sparse = cofair.make_data(user_vecs, item_vecs, labels, 2, weight, exclude=sets)
    return dense, sparse


def batches(seed, num_batches, rows, num_users=24, num_items=30):
    rng = np.random.default_rng(seed)
    weight = np.ones((num_batches, rows), np.float32)
    weight[:, -2:] = 0.0
    return {"user": jnp.asarray(rng.integers(0, num_users, (num_batches, rows)), jnp.int32),
            "pos": jnp.asarray(rng.integers(0, num_items, (num_batches, rows)), jnp.int32),
            "neg": jnp.asarray(rng.integers(0, num_items, (num_batches, rows)), jnp.int32),
            "weight": jnp.asarray(weight)}


@pytest.mark.parametrize("user_major", [False, True])
@pytest.mark.parametrize("rows", [16, 32])  # fewer rows than users (one entry per row), and more (one per user)
def test_cofair_steps_with_the_exposure_term_on_sparse_sets_equal_the_dense_mask_bit_for_bit(user_major, rows):
    dense, sparse = cofair_inputs(7)
    assert isinstance(sparse.exclude, SparseRows)
    config = cofair.CofairConfig(levels=3, shared_dim=5, adapter_dim=4, discriminator_hidden=6, lambda0=0.3,
                                 alpha=0.2, beta=0.5, adversary="capped", exposure_weight=2.0, exposure_k=3,
                                 exposure_candidates=6, exposure_temperature=0.2, user_major=user_major,
                                 train=TrainConfig(learning_rate=1e-2, batch_size=rows))
    states = {}
    for name, data in (("dense", dense), ("sparse", sparse)):
        step = cofair.make_train_step(data, dot, config)
        state = cofair.init_state(jax.random.PRNGKey(0), data, config)
        states[name] = jax.jit(lambda s: jax.lax.scan(lambda c, b: step(c, b, jax.random.PRNGKey(0)), s,
                                                      batches(8, 3, rows)))(state)
    assert float(np.max(np.asarray(states["dense"][1]["exposure_gap"]))) > 0
    for got, want in zip(jax.tree_util.tree_leaves(states["sparse"]), jax.tree_util.tree_leaves(states["dense"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_cofair_prepares_sparse_sets_only_above_the_limit(ratio_split, monkeypatch):
    context = cofair_context(ratio_split)
    config = cofair.CofairConfig(attribute="gender", exposure_weight=1.0)
    assert isinstance(cofair._prepare(context, config).exclude, jax.Array)
    monkeypatch.setattr(dataset, "DENSE_LIMIT", 0)
    data = cofair._prepare(context, config)
    assert isinstance(data.exclude, SparseRows)
    np.testing.assert_array_equal(np.asarray(rows_mask(data.exclude, jnp.arange(ratio_split.num_users),
                                                       ratio_split.num_items)), ratio_split.exclude_matrix("valid"))


@dataclasses.dataclass
class _Frozen:
    user_vecs: dict
    item_vecs: jax.Array
    score: object


@dataclasses.dataclass
class _Evaluate:
    ks: tuple = (5, 10)


@dataclasses.dataclass
class _Context:
    split: Split
    frozen: _Frozen
    evaluate: _Evaluate


def cofair_context(split):
    users, items = embeddings(split, seed=9)
    return _Context(split, _Frozen({"valid": users, "test": users}, items, jax.tree_util.Partial(dot)), _Evaluate())


def test_cofair_trains_and_validates_with_the_exposure_term_without_any_users_by_items_array(ratio_split, no_dense):
    """Prepare, a jitted epoch of steps and the validation report, with every whole-matrix builder refusing."""
    context = cofair_context(ratio_split)
    config = cofair.CofairConfig(attribute="gender", levels=2, shared_dim=5, adapter_dim=4, exposure_weight=1.0,
                                 exposure_k=3, exposure_candidates=6,
                                 train=TrainConfig(learning_rate=1e-2, batch_size=64))
    data = cofair._prepare(context, config)
    model = cofair.cofair_model("cofair", context, data, config)
    epoch = model.batches(np.random.default_rng(0))
    state = model.init(jax.random.PRNGKey(0))
    state, metrics = jax.jit(lambda s, b: jax.lax.scan(lambda c, x: model.step(c, x, jax.random.PRNGKey(0)), s, b))(
        state, jax.tree_util.tree_map(jnp.asarray, epoch))
    assert np.isfinite(np.asarray(metrics["loss"])).all() and np.asarray(metrics["exposure_gap"]).max() > 0
    report = model.validate(state.params)
    assert 0.0 <= report["recall@10"] <= 1.0 and 0.0 <= report["dp@10"] <= 1.0


# --- LightGCN ---------------------------------------------------------------------------------------------------


def test_itfr_propagates_lightgcn_on_the_edge_list_above_its_limit_and_densely_below(ratio_split, monkeypatch):
    backbone_config = lightgcn.Config(dim=4, num_layers=2)
    backbone = lightgcn.backbone(backbone_config)
    params = backbone.init(jax.random.PRNGKey(1), ratio_split)
    context = backbone.context(ratio_split)
    dense_users, dense_items = itfr.embedding_map(backbone, backbone_config, context, ratio_split)(params)
    monkeypatch.setattr(itfr, "DENSE_LIMIT", 0)
    sparse_users, sparse_items = itfr.embedding_map(backbone, backbone_config, context, ratio_split)(params)
    np.testing.assert_allclose(np.asarray(sparse_users), np.asarray(dense_users), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sparse_items), np.asarray(dense_items), rtol=1e-5, atol=1e-6)


# --- end to end ---------------------------------------------------------------------------------------------------


def test_a_cofair_run_with_the_exposure_term_above_the_limit_builds_no_users_by_items_array_and_agrees(
        tmp_path, monkeypatch):
    """``jaxfair train`` (PMF backbone, Cofair with the exposure term, the exposure floor) twice on the same data: as
    is, and with the limit at 0 and every whole-matrix builder refusing. The same models are trained, bit for bit, and
    the metrics agree to float rounding."""
    from jaxfair.data.synthetic import write_ml100k_folder
    from jaxfair.pipeline import parse_config, run

    write_ml100k_folder(make_synthetic(num_users=90, num_items=70, per_user=18, seed=7), tmp_path / "data")
    values = {
        "data": {"source": str(tmp_path / "data"), "attributes": ["gender"], "rating_threshold": 0.0,
                 "split": "temporal_ratio", "ratios": [0.8, 0.1, 0.1]},
        "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01,
                                                        "monitor": "recall@10"}},
        "evaluate": {"protocols": ["full"], "ks": [10]},
        "probe": {"steps": 20, "eval_every": 10, "bootstrap": 0, "audit_max_repeats": 2},
        "cofair": {"levels": 2, "adversary": "capped", "exposure_weight": 1.0, "exposure_k": 5,
                   "exposure_candidates": 8, "retrain_baseline": False, "floor_shuffles": 2,
                   "train": {"learning_rate": 5e-3, "batch_size": 128, "epochs": 2, "monitor": "parity@10"}},
    }
    dense = run(parse_config(values), tmp_path / "dense", log=lambda message: None)
    forbid_dense(monkeypatch)
    sparse = run(parse_config(values), tmp_path / "sparse", log=lambda message: None)
    for got, want in zip(sparse["cofair"]["levels"], dense["cofair"]["levels"]):
        assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-5, abs=1e-6)
        assert got["valid_metrics"] == pytest.approx(want["valid_metrics"], rel=1e-5, abs=1e-6)
    for users in ("all", "unseen"):
        for got, want in zip(sparse["cofair"]["exposure_floor"][users], dense["cofair"]["exposure_floor"][users]):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True)
    # The backbone saw the same negatives and chose the same epoch; Cofair took the same steps.
    for level in (0, 2):
        name = f"user_embeddings_level{level}.npy"
        np.testing.assert_array_equal(np.load(tmp_path / "sparse" / name), np.load(tmp_path / "dense" / name))


def test_the_scale_benchmark_runs_the_sparse_paths_on_a_tiny_preset(monkeypatch):
    from benchmarks import sparse_scale

    for owner, name in ((dataset, "DENSE_LIMIT"), (Split, "dense"), (UserItems, "dense")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the script's own patches
    out = sparse_scale.main(["--preset", "tiny", "--force-sparse", "--steps", "1", "--batch", "256", "--levels", "2"])
    assert out["users"] == 300 and out["dense_limit"] == 0
    assert len(out["test_levels"]["dp@10"]) == 3 and np.isfinite(out["exposure_gap"]).all()
