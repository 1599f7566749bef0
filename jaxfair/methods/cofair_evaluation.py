"""How Cofair's fairness levels are measured (the evaluation half of :mod:`jaxfair.methods.cofair`).

Protocol (the Cofair issue's, after the public code): every rating a positive, each user's positives split 80/10/10
by time, full ranking with the training (and for test, validation) positives masked; model selection on validation
only. Per level ``0..T`` (level 0 is the backbone's own embedding), all levels in one ``jax.vmap``:
Recall/NDCG/Precision/HR@K, DP@K and EOpp@K (:mod:`jaxfair.metrics.exposure`); the probe AUC of the sensitive
attribute (standard probe, and the unseen-user audit on the users whose label Cofair never trained on); the fraction
of probe-test users whose attacker loss decreases from each level to the next (by the level's probe and by Cofair's
own discriminator). The retraining baseline's models are measured like a level.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxfair.data.dataset import UserItems
from jaxfair.metrics.exposure import blocked_ranking_report, full_ranking_report
from jaxfair.metrics.probe import cross_fitted_probe, probe_attribute
from jaxfair.tables import format_table


def level_report(levels, item_vecs, score, targets, exclude, groups, num_groups: int,
                 ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """Full-ranking accuracy and exposure fairness of every level in one vmapped pass.

    Args:
      levels: ``(L, U, d)`` user embeddings per level, from :func:`jaxfair.methods.cofair.level_embeddings`.
      targets, exclude: bool ``(U, I)``, or :class:`~jaxfair.data.dataset.UserItems` on data above the memory rule
        (:meth:`~jaxfair.data.dataset.Split.ranking_masks`): then the users are streamed in blocks, all levels of a
        block side by side (:func:`~jaxfair.metrics.exposure.blocked_ranking_report`), and no ``(U, I)`` array is
        built.

    Returns:
      Metric name -> ``(L,)``.

    A single embedding set (``L = 1``) is reported without ``jax.vmap``: jax/jaxlib 0.10.2 on CPU miscompiles the
    scorer's ``sum(u[:, :, None, :] * v[None, None], -1)`` when the leading axis has size 1 (wrong scores, so
    recall 0 on MovieLens-100k; ``tests/test_exposure.py`` checks both paths against the direct report).
    """
    if isinstance(targets, UserItems) or isinstance(exclude, UserItems):
        return blocked_ranking_report(score, levels, item_vecs, targets, exclude, groups, num_groups=num_groups, ks=ks)
    if levels.shape[0] == 1:
        one = full_ranking_report(score, levels[0], item_vecs, targets, exclude, groups, num_groups=num_groups, ks=ks)
        return {name: value[None] for name, value in one.items()}
    return jax.vmap(
        lambda u: full_ranking_report(score, u, item_vecs, targets, exclude, groups, num_groups=num_groups, ks=ks)
    )(levels)


def attacker_loss_drops(per_user_losses: np.ndarray) -> list[float]:
    """Fraction of users whose attacker loss decreases from level ``t`` to ``t + 1``, for ``t = 0..L-2``.

    Args:
      per_user_losses: ``(L, n)`` attacker loss of each user at each level.
    """
    return [float(np.mean(per_user_losses[t + 1] < per_user_losses[t])) for t in range(per_user_losses.shape[0] - 1)]


def probe_levels(embeddings: np.ndarray, split, attribute: str, key, probe_config) -> tuple[list[dict], np.ndarray]:
    """A fresh probe per embedding set ``(L, U, d)`` (level ``t``'s key ``fold_in(key, t)``); returns the probe
    results and the per-user probe losses ``(L, n_test)`` on the probe test users."""
    labels = split.user_attributes[attribute]
    num_classes = len(split.attribute_classes[attribute])
    test_labels = labels[split.probe_users["test"]]
    results, losses = [], []
    for level, emb in enumerate(embeddings):
        result = probe_attribute(emb, labels, split.probe_users, num_classes, jax.random.fold_in(key, level),
                                 probe_config, return_test_proba=True)
        proba = result.pop("test_proba")
        losses.append(-np.log(np.clip(proba[np.arange(len(test_labels)), test_labels], 1e-12, None)))
        results.append(result)
    return results, np.stack(losses)


def audit_levels(embeddings: np.ndarray, split, attribute: str, users: np.ndarray, key, probe_config) -> list[dict]:
    """The unseen-user audit of every embedding set ``(L, U, d)``: probes fitted, selected and scored (cross-fitted)
    on ``users`` only; level ``t`` draws from ``fold_in(key, 200 + t)``."""
    labels = split.user_attributes[attribute]
    num_classes = len(split.attribute_classes[attribute])
    return [cross_fitted_probe(emb, labels, users, num_classes, jax.random.fold_in(key, 200 + level), probe_config)
            for level, emb in enumerate(embeddings)]


def exposure_floor(levels, item_vecs, score, targets, exclude, labels: np.ndarray, num_groups: int,
                   ks: tuple[int, ...], shuffles: int, seed: int, rows: np.ndarray | None = None) -> list[dict]:
    """How low DP@K / EOpp@K can go: the gaps between *random* groups of the same sizes as the attribute's groups.

    DP@K is a Jensen-Shannon distance between two groups' exposure over ~1,700 items, estimated from a few hundred
    users per group, so it is far from 0 even when the groups are unrelated to what users like. For every level
    (``levels (L, U, d)``), the gaps are measured for ``shuffles`` permutations of ``labels`` (one generator seeded
    with ``seed`` per level, so every level meets the same random groupings), over the users ``rows`` (default
    all).

    Returns:
      Per level, ``{"dp@k_floor": mean over shuffles, "dp@k_floor_std", "dp@k_excess": real - floor}`` for every
      gap name (``dp@k``, ``eopp@k``), and ``"dp@k"`` (the real gap over ``rows``).
    """
    rows = np.arange(labels.shape[0]) if rows is None else np.asarray(rows)
    pick = lambda mask: mask.select(rows) if isinstance(mask, UserItems) else mask[rows]
    targets, exclude, labels = pick(targets), pick(exclude), np.asarray(labels)[rows]
    out = []
    for level in np.asarray(levels):
        def gaps(groups, level=level):
            report = full_ranking_report(score, jax.numpy.asarray(level[rows]), item_vecs, targets, exclude,
                                         jax.numpy.asarray(groups), num_groups=num_groups, ks=ks)
            return {n: float(v) for n, v in report.items() if n.startswith(("dp@", "eopp@"))}

        rng = np.random.default_rng(seed)
        real = gaps(labels)
        shuffled = [gaps(rng.permutation(labels)) for _ in range(shuffles)]
        entry = {}
        for name, value in real.items():
            values = [s[name] for s in shuffled]
            entry.update({name: value, f"{name}_floor": float(np.mean(values)),
                          f"{name}_floor_std": float(np.std(values)), f"{name}_excess": value - float(np.mean(values))})
        out.append(entry)
    return out


def curve_steps(values) -> dict:
    """How a curve over levels ``1..T`` moves: ``nonrising`` steps (at most ``T - 1``) and ``smallest_fall`` (the
    least it falls at any step; negative when it rises somewhere)."""
    steps = -np.diff(np.asarray(values, dtype=float))
    return {"nonrising": int(np.sum(steps >= 0)), "smallest_fall": float(steps.min()) if steps.size else 0.0}


def curve_figure(results: dict, k: int = 10):
    """Recall@k against DP@k and against probe AUC: Cofair's levels as a line, baseline models as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    block = results["cofair"]
    levels = block["levels"]
    baseline = (block.get("retrain_baseline") or {}).get("models", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (label, get) in zip(axes, ((f"DP@{k} (JS distance)", lambda m: m["metrics"][f"dp@{k}"]),
                                       ("probe AUC", lambda m: m["probe_auc"]))):
        xs = [get(m) for m in levels]
        ys = [m["metrics"][f"recall@{k}"] for m in levels]
        ax.plot(xs, ys, "o-", label="Cofair levels 0..T")
        for m, x, y in zip(levels, xs, ys):
            ax.annotate(str(m["level"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if baseline:
            ax.scatter([get(m) for m in baseline], [m["metrics"][f"recall@{k}"] for m in baseline], marker="s",
                       color="tab:red", label="retraining, one model per lambda")
        ax.set_xlabel(label + " (lower is fairer)")
        ax.set_ylabel(f"Recall@{k}")
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['dataset']} / {results['backbone']['name']} / {block['attribute']}: test users")
    fig.tight_layout()
    return fig


def results_table(results: dict, k: int = 10) -> str:
    """Per level (and per baseline model): Recall@k, NDCG@k, DP@k, EOpp@k, the unseen-user audit, the probe AUC."""
    block = results["cofair"]
    rows = [{"model": f"cofair level {m['level']}", **_row(m, k)} for m in block["levels"]]
    rows += [{"model": f"retrain lambda={m['lambda']:.4g}", **_row(m, k)}
             for m in (block.get("retrain_baseline") or {}).get("models", [])]
    drops = block["attacker_loss_drop_fraction"]
    title = (f"{results['dataset']} / {results['backbone']['name']} / {block['attribute']} / full ranking, test "
             "users; AUC 0.5 and DP 0 = fair; unseen = audit on users whose label Cofair never saw\n")
    footer = ("\nusers whose attacker loss drops from level t to t+1 (probe): "
              + ", ".join(f"{t}->{t + 1}: {f:.2f}" for t, f in enumerate(drops["probe"])))
    return title + format_table(rows, list(rows[0])) + footer


def _row(m: dict, k: int) -> dict:
    return {
        f"recall@{k}": m["metrics"][f"recall@{k}"],
        f"ndcg@{k}": m["metrics"][f"ndcg@{k}"],
        f"dp@{k}": m["metrics"][f"dp@{k}"],
        f"eopp@{k}": m["metrics"][f"eopp@{k}"],
        "unseen auc": m.get("unseen_auc", "-"),
        "probe auc": m["probe_auc"],
    }
