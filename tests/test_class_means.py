"""The attacker-free fairness statistics of jaxfair.methods.class_means, against least-squares probes in numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair.methods.class_means import between_class_share, linear_share


def np_regression_r2(x, labels, w, num_classes):
    """Mean over classes' indicators of the weighted R^2 of a least-squares fit (with intercept) on ``x``, float64;
    for two classes both indicators have the same R^2, the squared canonical correlation."""
    design = np.c_[np.ones(len(x)), x] * np.sqrt(w)[:, None]
    r2 = []
    for k in range(num_classes):
        y = (labels == k).astype(float)
        mean = w @ y / w.sum()
        target = (y - mean) * np.sqrt(w)
        coef, *_ = np.linalg.lstsq(design, y * np.sqrt(w), rcond=None)
        residual = y * np.sqrt(w) - design @ coef
        r2.append(1.0 - residual @ residual / (target @ target))
    return r2


def planted(seed, n=300, d=6, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d))
    x[:, 0] += shift * labels
    return x, labels


def test_linear_share_of_two_classes_is_the_r2_of_a_least_squares_probe():
    x, labels = planted(0)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(x))
    got = float(linear_share(jnp.asarray(x[None], jnp.float32), jnp.asarray(labels), jnp.asarray(w), 2, ridge=0.0)[0])
    expected = np_regression_r2(x, labels, w, 2)
    np.testing.assert_allclose(expected[0], expected[1], rtol=1e-9)
    np.testing.assert_allclose(got, expected[0], rtol=1e-4)
    assert 0.1 < got < 0.5


def test_linear_share_of_k_classes_is_pillais_trace_over_k_minus_1():
    """``tr(S_t^{-1} S_b) / (K - 1)`` from numpy's total covariance and between-class scatter."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 400)
    x = rng.normal(size=(400, 5)) + np.eye(3, 5)[labels] * np.array([1.0, 0.5, 0.0, 0, 0])
    mu = x.mean(0)
    total = (x - mu).T @ (x - mu) / len(x)
    between = sum((labels == k).mean() * np.outer(x[labels == k].mean(0) - mu, x[labels == k].mean(0) - mu)
                  for k in range(3))
    expected = np.trace(np.linalg.solve(total, between)) / 2
    got = float(linear_share(jnp.asarray(x[None], jnp.float32), jnp.asarray(labels), jnp.ones(400), 3, ridge=0.0)[0])
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_linear_share_ignores_invertible_linear_maps_where_the_between_class_share_does_not():
    """Stretching the directions without the attribute lowers mean_gap's statistic but not the linear share."""
    x, labels = planted(3)
    stretch = np.diag([1.0, 30.0, 30.0, 30.0, 30.0, 30.0])
    mixed = x @ stretch @ np.random.default_rng(4).normal(size=(6, 6))
    w = jnp.ones(len(x))
    before = [float(f(jnp.asarray(x[None], jnp.float32), jnp.asarray(labels), w, 2, **kw)[0])
              for f, kw in ((between_class_share, {}), (linear_share, {"ridge": 0.0}))]
    after = [float(f(jnp.asarray(mixed[None], jnp.float32), jnp.asarray(labels), w, 2, **kw)[0])
             for f, kw in ((between_class_share, {}), (linear_share, {"ridge": 0.0}))]
    assert after[0] < 0.05 * before[0]
    np.testing.assert_allclose(after[1], before[1], rtol=1e-3)


def test_linear_share_is_zero_without_a_class_gap_and_one_without_spread_along_it():
    rng = np.random.default_rng(5)
    half = rng.normal(size=(50, 4))
    labels = jnp.asarray(np.r_[np.zeros(50, int), np.ones(50, int)])
    same_means = np.r_[half, half]
    assert abs(float(linear_share(jnp.asarray(same_means[None], jnp.float32), labels, jnp.ones(100), 2)[0])) < 1e-5
    separated = np.r_[half, half]
    separated[:, 0] = np.r_[np.zeros(50), np.ones(50)]  # the attribute is coordinate 0, constant inside each class
    got = float(linear_share(jnp.asarray(separated[None], jnp.float32), labels, jnp.ones(100), 2, ridge=0.0)[0])
    np.testing.assert_allclose(got, 1.0, rtol=1e-4)


def test_linear_share_drops_zero_weight_users_and_absent_classes():
    x, labels = planted(6, n=120)
    w = np.ones(120)
    w[:10] = 0.0
    moved = x.copy()
    moved[:10] = 1e3
    three = np.where(labels == 1, 2, 0)  # class 1 of 3 never occurs: still scaled by K' - 1 = 1
    a = float(linear_share(jnp.asarray(x[None], jnp.float32), jnp.asarray(labels), jnp.asarray(w), 2)[0])
    b = float(linear_share(jnp.asarray(moved[None], jnp.float32), jnp.asarray(labels), jnp.asarray(w), 2)[0])
    c = float(linear_share(jnp.asarray(x[None], jnp.float32), jnp.asarray(three), jnp.asarray(w), 3)[0])
    np.testing.assert_allclose(b, a, rtol=1e-4)
    np.testing.assert_allclose(c, a, rtol=1e-4)


@pytest.mark.parametrize("ridge", [1e-2, 1.0])
def test_the_ridge_only_shrinks_the_linear_share_and_keeps_it_finite_with_fewer_users_than_dimensions(ridge):
    x, labels = planted(7, n=200)
    exact = float(linear_share(jnp.asarray(x[None], jnp.float32), jnp.asarray(labels), jnp.ones(200), 2, ridge=0.0)[0])
    shrunk = float(linear_share(jnp.asarray(x[None], jnp.float32), jnp.asarray(labels), jnp.ones(200), 2, ridge=ridge)[0])
    assert 0.0 < shrunk < exact
    wide = np.random.default_rng(8).normal(size=(1, 10, 32))
    few = float(linear_share(jnp.asarray(wide, jnp.float32), jnp.asarray(np.arange(10) % 2), jnp.ones(10), 2, ridge=ridge)[0])
    assert np.isfinite(few) and 0.0 <= few <= 1.0
