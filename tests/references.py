"""numpy (float64) references shared by several test modules: the attacker-free statistics of
:mod:`jaxfair.methods.class_means`, written out directly from their definitions, over one set of users ``x (B, d)``
with integer ``labels (B,)`` and user weights ``w (B,)`` (weight 0: the user is absent)."""

import numpy as np


def _moments(x, labels, w):
    """The weighted mean, the classes present, and each present class's weight share and mean gap."""
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    mean = w @ x / w.sum()
    present = np.unique(labels[w > 0])
    shares, gaps = [], []
    for k in present:
        in_k = (labels == k) * w
        shares.append(in_k.sum() / w.sum())
        gaps.append(in_k @ x / in_k.sum() - mean)
    return w, mean, present, shares, gaps


def np_between_class_share(x, labels, w=None):
    """``sum_k p_k ||mu_k - mu||^2 / (weighted mean ||x - mu||^2)`` (``mean_gap``'s statistic)."""
    w, mean, _, shares, gaps = _moments(x, labels, w)
    between = sum(p * np.sum(g ** 2) for p, g in zip(shares, gaps))
    return between / (w @ np.sum((x - mean) ** 2, axis=-1) / w.sum())


def np_linear_share(x, labels, w=None, ridge=1e-2):
    """``tr((S_t + r I)^{-1} S_b) / min(K' - 1, d)`` with ``r = ridge tr(S_t) / d`` (``linear_share``'s statistic)."""
    w, mean, present, shares, gaps = _moments(x, labels, w)
    total = (x - mean).T @ ((x - mean) * w[:, None]) / w.sum()
    between = sum(p * np.outer(g, g) for p, g in zip(shares, gaps))
    regularised = total + ridge * np.trace(total) / len(mean) * np.eye(len(mean))
    return np.trace(np.linalg.solve(regularised, between)) / max(min(len(present) - 1, len(mean)), 1)
