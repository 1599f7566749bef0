"""How the methods judged by group accuracy gaps are evaluated (DifFaiRec, DiffRec and the regularised MF): a
model's ``(U, I)`` ranking scores and its probed ``(U, h)`` user latents, on validation and test.

Per stage (``valid``: training positives masked; ``test``: training and validation positives masked): full-ranking
Recall/Precision/NDCG/HR@K over the users with a positive in the stage, and the group gaps of
:mod:`jaxfair.metrics.equality` (absolute equality of Recall and NDCG, equal opportunity) at every K; settings are
chosen on the validation gaps. The sensitive attribute's standard probe on the latents (key
``fold_in(key(seed), 7)``). The cut-offs are :data:`REPORT_KS` and the configured ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfair.data.dataset import UserItems
from jaxfair.methods.base import Evaluation
from jaxfair.metrics.equality import ranking_gaps
from jaxfair.metrics.probe import probe_attribute
from jaxfair.metrics.ranking import full_protocol, has_target_rows, summarize
from jaxfair.tables import format_table

REPORT_KS = (10, 20)


def precomputed_score(score_rows: jax.Array, item_ids: jax.Array) -> jax.Array:
    """A ``full_protocol`` scorer for precomputed scores: ``score_rows (B, 1, I)`` are the users' item scores
    (passed as the "user vectors"), ``item_ids (1, I, 1)`` is ignored. Returns ``(B, I)``."""
    del item_ids
    return score_rows[:, 0, :]


def items_placeholder(num_items: int) -> jax.Array:
    """The "item vectors" that go with :func:`precomputed_score`: ``(I, 1)`` zeros."""
    return jnp.zeros((num_items, 1), jnp.float32)


def report_ks(context) -> tuple[int, ...]:
    return tuple(sorted(set(REPORT_KS) | set(context.evaluate.ks)))


def evaluate_scores(context, scores: np.ndarray, latents: np.ndarray, attribute: str) -> Evaluation:
    """Validation and test ranking metrics and group gaps of ``scores (U, I)``, and the probe on ``latents (U, h)``.

    The scores are these methods' own dense output; the stages' masks follow the memory rule
    (:meth:`~jaxfair.data.dataset.Split.ranking_masks`: per-user sets, built per block of users, above it).

    Returns:
      An :class:`~jaxfair.methods.base.Evaluation` with ``valid``/``test`` metrics, ``valid_gaps``/``gaps`` and the
      probe; each table has one row, ``all``, with the metrics and the gaps (``recall_gap@k``, ``ndcg_gap@k``,
      ``eo_gap@k``), the test row also ``probe_auc``.
    """
    split, ks, batch = context.split, report_ks(context), context.evaluate.batch_size
    groups = np.asarray(split.user_attributes[attribute], np.int32)
    num_groups = len(split.attribute_classes[attribute])
    items = items_placeholder(split.num_items)
    results, tables = {}, {}
    for stage in ("valid", "test"):
        targets, exclude = split.ranking_masks(stage)
        per_user = full_protocol(precomputed_score, scores, items, targets, exclude, ks, batch)
        has = has_target_rows(targets)
        results[stage] = summarize({k: v[has] for k, v in per_user.items()})
        counts = targets.counts() if isinstance(targets, UserItems) else targets.sum(axis=1)
        gaps = ranking_gaps(per_user, counts, groups, num_groups, ks)
        results["gaps" if stage == "test" else "valid_gaps"] = gaps
        tables[stage] = {"all": {**results[stage], **{f"{name}@{k}": gaps[f"@{k}"][name] for k in ks
                                                      for name in ("recall_gap", "ndcg_gap", "eo_gap")}}}
    key = jax.random.fold_in(jax.random.key(context.seed), 7)
    probe = probe_attribute(np.asarray(latents), groups, split.probe_users, num_groups, key, context.probe)
    results.update(attribute=attribute, groups=list(split.attribute_classes[attribute]),
                   group_users=np.bincount(groups, minlength=num_groups).tolist(),
                   probe_auc=probe["auc"], probe_auc_ci=probe.get("auc_ci"))
    tables["test"]["all"]["probe_auc"] = probe["auc"]
    return Evaluation(results=results, tables=tables)


def gap_report(results: dict, name: str, k: int = 20) -> str:
    """One row: test Recall/NDCG@10 and @k, the gaps at k, the probe AUC, epochs and time per epoch."""
    block = results[name]
    gaps = block["gaps"][f"@{k}"]
    fits = results["models"]
    row = {
        "recall@10": block["test"]["recall@10"], "ndcg@10": block["test"]["ndcg@10"],
        f"recall@{k}": block["test"][f"recall@{k}"], f"ndcg@{k}": block["test"][f"ndcg@{k}"],
        f"AE-recall@{k}": gaps["recall_gap"], f"AE-ndcg@{k}": gaps["ndcg_gap"], f"EO@{k}": gaps["eo_gap"],
        "probe AUC": block["probe_auc"],
        "epochs": sum(f["epochs_run"] for f in fits.values()),
        "s/epoch": float(np.mean([f["seconds_per_epoch"] for f in fits.values()])),
    }
    header = (f"test, {results['dataset']}, groups by {block['attribute']} (gaps: lower is fairer; probe AUC: 0.5 "
              "is fairest)\n")
    return header + format_table([row], list(row))
