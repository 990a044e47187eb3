"""Negative downsampling and its exact recalibration (He et al. 2014, §6.3; docs/daily.md).

Training on every click and a share `w` of the non-clicks (`dataset.negative_sampling_rate`)
multiplies the odds the model learns by `1 / w`. The served CTR must be the CTR of the real
traffic (eCPM = bid × CTR), so it is recalibrated::

    q = p / (p + (1 - p) / w)

which, in logits, is a constant shift: logit(q) = log(q / (1 - q)) = log(w · p / (1 - p))
= logit(p) + log(w). The export adds `log(w)` to the head's logit inside the graph (both
`logit` and `ctr = sigmoid(logit)` are then calibrated) and `tfvctr evaluate` does the same,
so the ECE it reports is that of the served CTRs. AUC is unchanged (a monotone shift).

A module of tiny helpers: importing it costs nothing (no TensorFlow).
"""

from __future__ import annotations

import json
import math
from typing import Any

from tfvctr import layout
from tfvctr.io import fs

RATE_KEY = "negative_sampling_rate"


def recalibrate(p: Any, w: float) -> Any:
    """He et al. 2014: `q = p / (p + (1 - p) / w)`, the CTR before non-clicks were kept at rate `w`.

    Example:
        >>> round(recalibrate(0.5, 0.1), 6)   # odds 1 at w = 0.1 are odds 0.1 on all traffic
        0.090909
    """
    return p / (p + (1.0 - p) / w)


def logit_offset(w: float) -> float:
    """The logit shift of `recalibrate`: `logit(q) = logit(p) + log(w)` (0 when nothing was sampled)."""
    if not 0.0 < w <= 1.0:
        raise ValueError(f"negative sampling rate: expected a value in (0, 1], received {w}")
    return math.log(w)


def data_rate(data_dir: str) -> float:
    """The negative sampling rate of a `tfvctr preprocess` output (its manifest; 1.0 before the key existed)."""
    path = fs.join(data_dir, layout.MANIFEST)
    if not fs.exists(path):
        return 1.0
    with fs.open(path) as f:
        manifest = json.load(f)
    return float(manifest.get(RATE_KEY, 1.0))


def write_model_rate(model_dir: str, w: float, data_dir: str) -> None:
    """`M/negative_sampling.json`: the rate the model's train split was sampled at, for export and evaluate."""
    record = {RATE_KEY: w, "logit_offset": logit_offset(w), "data_dir": data_dir}
    fs.write_atomic(fs.join(model_dir, layout.NEGATIVE_SAMPLING), json.dumps(record, indent=1) + "\n")


def model_rate(model_dir: str) -> float:
    """The rate a model dir was trained at (1.0 when it has no `negative_sampling.json`: no sampling)."""
    path = fs.join(model_dir, layout.NEGATIVE_SAMPLING)
    if not fs.exists(path):
        return 1.0
    with fs.open(path) as f:
        return float(json.load(f)[RATE_KEY])


def calibration_fit(labels: Any, probs: Any) -> dict:
    """How served CTRs miss: the logistic fit `P(click) = σ(a + b · logit(p))`, and the best constant shift.

    `slope` b < 1 is over-confidence (CTRs spread too far from the mean: a model that memorised
    its train split), b > 1 under-confidence; `intercept` a. `best_shift` is the one constant
    added to every logit that fits the labels best, and `ece_best_shift` the expected
    calibration error after it (`tfvctr.metrics.calibration`): when it stays high, no
    recalibration constant (a better log w) would help, the spread is wrong. Used by
    `benchmarks/daily.py --compare-rates` (docs/daily.md).
    """
    import numpy as np

    from tfvctr import metrics

    y = np.asarray(labels, dtype=np.float64)
    q = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    z = np.log(q / (1 - q))
    a, b = 0.0, 1.0
    for _ in range(100):  # Newton on the two-parameter log loss (concave: converges from (0, 1))
        p = 1.0 / (1.0 + np.exp(-(a + b * z)))
        h = p * (1 - p)
        step = np.linalg.solve([[h.sum(), (h * z).sum()], [(h * z).sum(), (h * z * z).sum()]],
                               [np.sum(p - y), np.sum((p - y) * z)])
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    shift = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(z + shift)))
        step = np.sum(p - y) / np.sum(p * (1 - p))
        shift -= step
        if abs(step) < 1e-10:
            break
    shifted = 1.0 / (1.0 + np.exp(-(z + shift)))
    return {"calibration_slope": float(b), "calibration_intercept": float(a), "best_shift": float(shift),
            "ece_best_shift": metrics.calibration(y, shifted)["ece"], "mean_ctr_over_observed": float(q.mean() / y.mean())}
