"""Metrics against scikit-learn and hand-computed values."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from tfvctr import metrics as m


@pytest.mark.parametrize("ties", [False, True], ids=["distinct_scores", "tied_scores"])
def test_auc_equals_sklearn(ties):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.random(500) + 0.3 * labels
    if ties:
        scores = np.round(scores, 1)  # many ties, each counting one half
    assert m.auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_counts_a_tie_as_one_half_by_hand():
    # pairs (pos, neg): (0.8, 0.2) win, (0.8, 0.5) win, (0.5, 0.2) win, (0.5, 0.5) tie → 3.5 / 4
    assert m.auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)


def test_auc_is_nan_with_one_class():
    assert math.isnan(m.auc([1, 1], [0.3, 0.4]))


def test_average_ranks_share_the_mean_rank_of_ties():
    np.testing.assert_allclose(m.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_log_loss_equals_sklearn():
    rng = np.random.default_rng(1)
    labels, probs = rng.integers(0, 2, 200), rng.uniform(0.01, 0.99, 200)
    assert m.log_loss(labels, probs) == pytest.approx(skm.log_loss(labels, probs), rel=1e-9)


def test_relative_auc_is_deepctr_eq8():
    # (0.75 - 0.5) / (0.70 - 0.5) - 1 = 0.25
    assert m.relative_auc(0.75, 0.70) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="Expected an AUC other than 0.5"):
        m.relative_auc(0.7, 0.5)


def test_per_user_auc_averages_users_with_both_classes_equally():
    users = ["a", "a", "a", "b", "b", "c", "c"]
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.95, 0.2, 0.8, 0.5, 0.6]
    # a: positive 0.9 beats 0.1, loses to 0.95 → 0.5; b: 0.2 < 0.8 → 0.0; c has no negative: left out.
    value, count = m.per_user_auc(labels, scores, users)
    assert count == 2
    assert value == pytest.approx(0.25)


def test_calibration_reports_mean_predicted_observed_and_ece():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.3, 0.6, 0.8])
    c = m.calibration(labels, probs, bins=2)
    assert c["mean_predicted"] == pytest.approx(0.45)
    assert c["observed"] == pytest.approx(0.5)
    assert c["ratio"] == pytest.approx(0.9)
    # bins: (0.1, 0.3) → pred 0.2 vs 0 ; (0.6, 0.8) → pred 0.7 vs 1 ; ECE = 0.5*0.2 + 0.5*0.3
    assert c["ece"] == pytest.approx(0.25)
    assert [b["count"] for b in c["bins"]] == [2, 2]


def test_roc_curve_area_equals_auc():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.2 * labels, 2)
    fpr, tpr = m.roc_curve(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.auc(labels, scores), abs=1e-12)


def test_gap_closed_is_the_share_of_floor_to_ceiling():
    assert m.gap_closed(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert m.gap_closed(0.7, 0.6, 0.6) is None


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="Expected as many scores as labels"):
        m.auc([1, 0], [0.5])
