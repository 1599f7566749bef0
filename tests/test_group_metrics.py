import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.metrics.group import (
    demographic_parity_gap,
    equal_opportunity_gap,
    exposure_distribution,
    group_means,
    js_distance,
    max_gap,
    pairwise_js_distance,
)


def test_group_means_with_empty_group():
    means = group_means(jnp.array([1.0, 2.0, 3.0, 4.0, 10.0]), jnp.array([0, 0, 1, 1, 3]), 4)
    np.testing.assert_allclose(means, [1.5, 3.5, np.nan, 10.0])
    assert float(max_gap(means)) == pytest.approx(8.5)
    assert math.isnan(float(max_gap(jnp.array([jnp.nan, jnp.nan]))))


def test_demographic_parity_gap():
    predicted = jnp.array([True, False, True, True, False, True])
    groups = jnp.array([0, 0, 0, 1, 1, 2])
    # Positive rates 2/3, 1/2, 1 and an empty group 3 that is ignored.
    assert float(demographic_parity_gap(predicted, groups, 4)) == pytest.approx(0.5)
    assert float(demographic_parity_gap(predicted.astype(jnp.int32), groups, 4)) == pytest.approx(0.5)


def test_equal_opportunity_gap():
    predicted = jnp.array([1, 0, 1, 1, 1, 1])
    labels = jnp.array([1, 1, 0, 1, 1, 0])
    groups = jnp.array([0, 0, 0, 1, 1, 2])
    # TPR: group 0 = 1/2 (the false positive does not count), group 1 = 1, group 2 has no positive label.
    assert float(equal_opportunity_gap(predicted, labels, groups, 3)) == pytest.approx(0.5)
    # With group 2's label positive and missed, its TPR of 0 widens the gap.
    assert float(equal_opportunity_gap(predicted.at[5].set(0), labels.at[5].set(1), groups, 3)) == pytest.approx(1.0)


def test_exposure_distribution_counts_and_weights():
    topk = jnp.array([[0, 1], [1, 2], [3, 3]])
    groups = jnp.array([0, 0, 1])
    dist = exposure_distribution(topk, groups, 3, 4)
    np.testing.assert_allclose(dist[0], [0.25, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(dist[1], [0.0, 0.0, 0.0, 1.0])
    assert np.isnan(dist[2]).all()  # group 2 has no users
    weighted = exposure_distribution(topk, groups, 3, 4, weights=jnp.array([1.0, 0.5]))
    np.testing.assert_allclose(weighted[0], [1 / 3, 1 / 2, 1 / 6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(weighted[1], [0.0, 0.0, 0.0, 1.0])
    per_slot = exposure_distribution(topk, groups, 2, 4, weights=jnp.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))
    np.testing.assert_allclose(per_slot[0], [0.25, 0.0, 0.75, 0.0])


def test_js_distance_values():
    p = jnp.array([1.0, 0.0])
    q = jnp.array([0.5, 0.5])
    # m = (3/4, 1/4): KL(p||m) = log2(4/3), KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2).
    expected = math.sqrt(0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5))
    assert float(js_distance(p, q)) == pytest.approx(expected, rel=1e-5)
    assert float(js_distance(q, p)) == pytest.approx(expected, rel=1e-5)
    assert float(js_distance(q, q)) == pytest.approx(0.0, abs=1e-6)
    assert float(js_distance(jnp.array([0.5, 0.5, 0, 0]), jnp.array([0, 0, 0.2, 0.8]))) == pytest.approx(1.0)
    # Unnormalised weights are normalised first.
    assert float(js_distance(2 * p, 4 * q)) == pytest.approx(expected, rel=1e-5)


def test_js_distance_symmetric_and_bounded_on_random():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), 20) * (rng.random((20, 6)) < 0.7)
    q = rng.dirichlet(np.ones(6), 20)
    p[:, 0] += 0.01  # keep every row non-empty
    a, b = np.asarray(js_distance(p, q)), np.asarray(js_distance(q, p))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert ((a >= 0) & (a <= 1)).all() and a.shape == (20,)


def test_pairwise_js_distance():
    a, b = [1.0, 0.0], [0.0, 1.0]
    # Pairs (a, b) = 1, (a, a) = 0, (b, a) = 1.
    assert float(pairwise_js_distance(jnp.array([a, b, a]))) == pytest.approx(2 / 3)
    two = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    assert float(pairwise_js_distance(two)) == pytest.approx(float(js_distance(two[0], two[1])))
    # A group with no exposure (NaN row) is left out.
    with_empty = jnp.array([[1.0, 0.0], [jnp.nan, jnp.nan], [0.5, 0.5]])
    assert float(pairwise_js_distance(with_empty)) == pytest.approx(float(js_distance(two[0], two[1])))
    assert math.isnan(float(pairwise_js_distance(jnp.array([[1.0, 0.0], [jnp.nan, jnp.nan]]))))


def test_group_functions_jit():
    groups = jnp.array([0, 1, 1])
    f = jax.jit(lambda v, g: max_gap(group_means(v, g, 2)))
    assert float(f(jnp.array([1.0, 2.0, 4.0]), groups)) == pytest.approx(2.0)
    g = jax.jit(lambda t, g: pairwise_js_distance(exposure_distribution(t, g, 2, 3)))
    assert float(g(jnp.array([[0], [1], [1]]), groups)) == pytest.approx(1.0)
