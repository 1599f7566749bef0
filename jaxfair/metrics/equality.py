"""Group gaps of a full-ranking evaluation: "absolute equality" and top-K "equal opportunity" (DifFaiRec's two
fairness measures), over the user groups of one sensitive attribute.

With ``U_g`` the users of group ``g`` that have held-out positives, ``n_u`` a user's held-out positives and
``hits_u@K`` how many of them are in the user's top ``K``:

* absolute-equality gap of a per-user metric ``M`` (Recall@K or NDCG@K):
  ``AE_M@K = max_g Mbar_g - min_g Mbar_g`` with ``Mbar_g = (1 / |U_g|) sum_{u in U_g} M_u@K``
  (for two groups, ``|Mbar_0 - Mbar_1|``);
* equal-opportunity gap: ``EO@K = max_g TPR_g - min_g TPR_g`` with ``TPR_g = sum_{u in U_g} hits_u@K /
  sum_{u in U_g} n_u``, the share of the group's held-out positives that reach the top K, i.e. the true-positive
  rate of the classifier "item is in the user's top K" over the group's (user, held-out item) pairs (Hardt et al.'s
  equal opportunity). It pools pairs where Recall averages users, so a group's heavy users weigh more here.

Groups without held-out positives are left out; every value is a float.
"""

from __future__ import annotations

import numpy as np

from jaxfair.metrics.group import group_means, max_gap


def group_rates(hits: np.ndarray, num_relevant: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """``TPR_g = sum hits / sum n`` per group ``(G,)``, NaN for a group without held-out positives."""
    hits = np.bincount(groups, weights=np.asarray(hits, np.float64), minlength=num_groups)
    total = np.bincount(groups, weights=np.asarray(num_relevant, np.float64), minlength=num_groups)
    return np.where(total > 0, hits / np.maximum(total, 1.0), np.nan)


def ranking_gaps(per_user: dict[str, np.ndarray], num_relevant: np.ndarray, groups: np.ndarray, num_groups: int,
                 ks: tuple[int, ...]) -> dict:
    """The gaps at every cut-off.

    Args:
      per_user: :func:`jaxfair.metrics.ranking.full_protocol`'s output (``recall@K``, ``ndcg@K``, ``precision@K``
        per user, float ``(U,)``).
      num_relevant: int ``(U,)`` held-out positives per user (users with 0 are left out).
      groups: int ``(U,)`` in ``[0, G)``; num_groups: ``G``.
      ks: cut-offs present in ``per_user``.

    Returns:
      ``{"@K": {"recall_gap", "ndcg_gap", "eo_gap", "recall_by_group", "ndcg_by_group", "tpr_by_group"}}``;
      the ``*_by_group`` lists have ``G`` entries (NaN for an empty group).
    """
    num_relevant = np.asarray(num_relevant)
    has = num_relevant > 0
    groups = np.asarray(groups)[has]
    out = {}
    for k in ks:
        recall = np.asarray(group_means(per_user[f"recall@{k}"][has], groups, num_groups), np.float64)
        ndcg = np.asarray(group_means(per_user[f"ndcg@{k}"][has], groups, num_groups), np.float64)
        hits = np.rint(per_user[f"precision@{k}"][has] * k)
        tpr = group_rates(hits, num_relevant[has], groups, num_groups)
        out[f"@{k}"] = {
            "recall_gap": float(max_gap(recall)),
            "ndcg_gap": float(max_gap(ndcg)),
            "eo_gap": float(np.nanmax(tpr) - np.nanmin(tpr)),
            "recall_by_group": recall.tolist(),
            "ndcg_by_group": ndcg.tolist(),
            "tpr_by_group": tpr.tolist(),
        }
    return out
