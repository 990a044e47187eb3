"""Offline metrics of CTR models, exact and NumPy-only (no TensorFlow import).

* `auc`: the exact ROC AUC from all predictions (Mann-Whitney U with average ranks, so
  tied scores count one half);
* `log_loss`;
* `relative_auc`: DeepCTR Eq. 8, `relative AUC = (AUC(method) - 0.5) / (AUC(base) - 0.5) - 1`
  (the paper prints it ×100%);
* `per_user_auc`: CSCNN Eq. 13, `AUC = 1/|U| sum_u 1/|D_u| sum_{(i,j) in D_u} I(y_ui > y_uj)`:
  each user's AUC over their (clicked, not clicked) pairs, averaged with equal weight per
  user over the users that have both classes (users with one class have no pairs);
* `calibration`: mean predicted vs observed CTR, per-bin reliability table and expected
  calibration error;
* `roc_curve`: the ROC points for plotting.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(
            f"Invalid value received for argument `scores`. Expected as many scores as labels ({labels.size}). "
            f"Received: {scores.size} scores"
        )
    return labels, scores


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = run_rank[run_of]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC; nan when only one class is present."""
    labels, scores = _check(labels, scores)
    positives = labels > 0.5
    n_pos = int(positives.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1-eps])."""
    labels, probs = _check(labels, probs)
    if labels.size == 0:
        return float("nan")
    p = np.clip(probs, eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))


def relative_auc(value: float, baseline: float) -> float:
    """DeepCTR Eq. 8 (as a fraction; ×100 for the paper's percent)."""
    if baseline == 0.5:
        raise ValueError("Invalid value received for argument `baseline`. Expected an AUC other than 0.5. Received: baseline=0.5")
    return float((value - 0.5) / (baseline - 0.5) - 1.0)


def per_user_auc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> tuple[float, int]:
    """CSCNN Eq. 13: (mean over users with both classes of their AUC, number of such users)."""
    labels, scores = _check(labels, scores)
    users = np.asarray(users).reshape(-1)
    if users.size != labels.size:
        raise ValueError(
            f"Invalid value received for argument `users`. Expected one user per label ({labels.size}). Received: {users.size}"
        )
    _, inverse = np.unique(users, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    bounds = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1, order.size]
    values = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        value = auc(labels[idx], scores[idx])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), 0
    return float(np.mean(values)), len(values)


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """Mean predicted vs observed CTR overall and per quantile bin of the predictions.

    Quantile bins (equal counts) rather than equal-width ones: CTRs crowd near 0, where
    equal-width bins would leave most bins empty.
    """
    labels, probs = _check(labels, probs)
    if labels.size == 0:
        return {"mean_predicted": float("nan"), "observed": float("nan"), "ratio": float("nan"), "ece": float("nan"), "bins": []}
    order = np.argsort(probs, kind="mergesort")
    rows = []
    ece = 0.0
    for idx in np.array_split(order, min(bins, labels.size)):
        if idx.size == 0:
            continue
        pred, obs = float(probs[idx].mean()), float(labels[idx].mean())
        rows.append({"count": int(idx.size), "mean_predicted": pred, "observed": obs,
                     "low": float(probs[idx].min()), "high": float(probs[idx].max())})
        ece += idx.size / labels.size * abs(pred - obs)
    mean_pred, observed = float(probs.mean()), float(labels.mean())
    return {
        "mean_predicted": mean_pred,
        "observed": observed,
        "ratio": mean_pred / observed if observed > 0 else float("nan"),
        "ece": float(ece),
        "bins": rows,
    }


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates), one point per distinct score, from (0,0) to (1,1)."""
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order] > 0.5
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], dtype=int)
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def gap_closed(value: float, floor: float, ceiling: float) -> Optional[float]:
    """Share of the floor → ceiling AUC gap that `value` closes (docs/design.md "Yardsticks")."""
    if ceiling == floor or any(np.isnan(v) for v in (value, floor, ceiling)):
        return None
    return float((value - floor) / (ceiling - floor))
