"""Results tables carry each attribute's 95% interval beside its point estimate (issue 22, item 3)."""

from jaxfair.methods.base import interval_columns
from jaxfair.methods.requirements import _row


def test_intervals_become_low_and_high_columns_and_absent_intervals_none():
    columns = interval_columns("unseen_auc", {"gender": [0.48, 0.58], "age": None})
    assert columns == {"unseen_auc_lo/gender": 0.48, "unseen_auc_hi/gender": 0.58}


def test_a_requirement_row_has_the_audit_and_the_probe_with_their_intervals():
    block = {"mean_unseen_auc": 0.53, "mean_auc": 0.51, "unseen_auc": {"gender": 0.53},
             "unseen_auc_std": {"gender": 0.01}, "unseen_auc_ci": {"gender": [0.49, 0.57]}, "probe_auc": {"gender": 0.51},
             "probe_auc_ci": {"gender": [0.45, 0.56]}, "mlp_unseen_auc": {"gender": 0.55},
             "mlp_unseen_auc_ci": {"gender": [0.50, 0.60]}, "metrics": {"ndcg@10": 0.3}}
    backbone = {"unseen_auc": {"gender": {"auc": 0.66}}, "auc": {"gender": {"auc": 0.77}},
                "mlp_unseen_auc": {"gender": {"auc": 0.67}}}
    row = _row(block, backbone, {"ndcg@10": 0.32}, ["gender"])
    assert (row["unseen_auc_lo/gender"], row["unseen_auc/gender"], row["unseen_auc_hi/gender"]) == (0.49, 0.53, 0.57)
    assert (row["auc_lo/gender"], row["auc/gender"], row["auc_hi/gender"]) == (0.45, 0.51, 0.56)
    assert (row["mlp_unseen_auc_lo/gender"], row["mlp_unseen_auc_hi/gender"]) == (0.50, 0.60)
    assert list(row)[0] == "unseen_auc"  # the unseen-user audit first
