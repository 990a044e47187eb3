"""Post-hoc calibration of the served CTR on the valid split (`training.calibration: platt`; docs/daily.md).

He et al.'s recalibration (`tfvctr.daily.recalibration`) fixes the *mean* CTR of a model
trained on downsampled non-clicks; it cannot fix the *spread*: a model that has made many
passes over few non-clicks is over-confident (a calibration slope below 1, docs/daily.md).
Platt scaling (Platt 1999, "Probabilistic outputs for support vector machines") fits two
numbers, a slope `a` and an intercept `b`, on a held-out split::

    ctr = sigmoid(a · (logit + log w) + b)

by minimising the log loss of the valid split (which keeps every impression: it is never
downsampled), after model selection, on the chosen step's logits. Two parameters cannot
overfit a few thousand impressions; `a > 0` keeps every ranking (AUC, eCPM order) as it is.
The trainer writes `M/calibration.json`; `tfvctr evaluate`, the export's graph and its
fresh-process check apply it as one affine map of the head's logit (`transform`).

A module of tiny helpers: importing it costs nothing (no TensorFlow).
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from tfvctr import layout
from tfvctr.daily import recalibration
from tfvctr.io import fs

METHODS = ("none", "platt")


def fit_platt(labels: Any, logits: Any, max_iter: int = 100) -> tuple[float, float]:
    """`(a, b)` minimising the log loss of `P(click) = sigmoid(a · logit + b)` (Newton's method).

    The two-parameter log loss is convex; Newton from the identity (a, b) = (1, 0) converges
    in a few steps on real scores. Raises `ValueError` when it does not (separable labels:
    the slope runs off to infinity) or when there is nothing to fit (one class only).

    Example:
        >>> a, b = fit_platt([0, 0, 1, 1, 0, 1], [-2.0, -0.5, 0.5, 2.0, 0.3, -0.2])
        >>> round(a, 3), round(b, 3)   # the logit separates these labels better than it says: a > 1
        (2.114, -0.056)
    """
    import numpy as np

    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if y.size != z.size:
        raise ValueError(f"fit_platt: {y.size} labels for {z.size} logits")
    if not 0 < y.sum() < y.size:
        raise ValueError(f"fit_platt: expected clicks and non-clicks, received {int(y.sum())} clicks in {y.size}")
    if not np.all(np.isfinite(z)):
        raise ValueError("fit_platt: the logits hold non-finite values")
    a, b = 1.0, 0.0
    loss = log_loss(y, z)
    for _ in range(max_iter):
        p = 0.5 * (1.0 + np.tanh(0.5 * (a * z + b)))  # sigmoid without exp's overflow
        h = p * (1.0 - p)
        grad = np.array([np.sum((p - y) * z), np.sum(p - y)])
        hess = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            raise ValueError("fit_platt: singular Hessian (all logits equal?)") from None
        # Damped: a full Newton step from (1, 0) can overshoot when the answer is far from it.
        t = 1.0
        while t > 1e-6 and not log_loss(y, (a - t * step[0]) * z + b - t * step[1]) <= loss:
            t /= 2
        a, b = a - t * step[0], b - t * step[1]
        loss = log_loss(y, a * z + b)
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a) > 1e3:
            break
        if np.abs(t * step).max() < 1e-10:
            return float(a), float(b)
    raise ValueError(f"fit_platt: no convergence in {max_iter} Newton steps (labels separable by the logit?)")


def log_loss(labels: Any, logits: Any) -> float:
    """Mean log loss of `sigmoid(logits)` (in logits: no clipping error for confident scores)."""
    import numpy as np

    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    # -[y log σ(z) + (1 - y) log(1 - σ(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_record(labels: Any, logits: Any, min_clicks: int, step: Optional[int]) -> dict:
    """The `M/calibration.json` record of a valid split scored at the chosen `step`.

    `logits` are the He-recalibrated logits (`logit + log w`). Falls back to the identity
    (`"method": "none"` with a `"reason"`) when the split has fewer than `min_clicks`
    clicks or non-clicks, when the fit does not converge, or when the fitted slope is not
    positive (the map would reverse the ranking): the served CTRs then stay those of
    the recalibration alone.
    """
    import numpy as np

    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    clicks = int(y.sum())
    record: dict[str, Any] = {"method": "platt", "step": step, "valid_impressions": int(y.size), "valid_clicks": clicks,
                              "min_clicks": int(min_clicks)}
    if min(clicks, y.size - clicks) < min_clicks:
        return {**record, "method": "none", "requested": "platt",
                "reason": f"the valid split has {clicks} clicks and {y.size - clicks} non-clicks; Platt scaling needs "
                          f"at least training.calibration_min_clicks = {min_clicks} of each"}
    try:
        a, b = fit_platt(y, z)
    except ValueError as e:
        return {**record, "method": "none", "requested": "platt", "reason": str(e)}
    if not a > 0:
        return {**record, "method": "none", "requested": "platt",
                "reason": f"the fitted slope {a:.4g} is not positive: the valid split ranks against the model"}
    return {**record, "slope": a, "intercept": b, "valid_logloss_before": log_loss(y, z),
            "valid_logloss_after": log_loss(y, a * z + b)}


def write_calibration(model_dir: str, record: dict) -> None:
    """`M/calibration.json` (atomically)."""
    fs.write_atomic(fs.join(model_dir, layout.CALIBRATION), json.dumps(record, indent=1) + "\n")


def read_calibration(model_dir: str) -> Optional[dict]:
    """`M/calibration.json`, or None when the model was trained with `training.calibration: none`."""
    return fs.read_json_if_exists(fs.join(model_dir, layout.CALIBRATION))


def slope_intercept(record: Optional[dict]) -> Optional[tuple[float, float]]:
    """`(a, b)` of a calibration record, or None when it applies nothing (absent, or `"method": "none"`)."""
    if not record or record.get("method") != "platt":
        return None
    return float(record["slope"]), float(record["intercept"])


def affine(w: float, record: Optional[dict]) -> tuple[float, float]:
    """`(scale, offset)` with served logit = `scale · logit + offset` for a model trained at rate `w`.

    `sigmoid(a · (logit + log w) + b)` = `sigmoid(a · logit + (a · log w + b))`; without a
    calibration `(1, log w)`, the recalibration alone (scale exactly 1.0: callers skip the
    multiplication, so a model without calibration is scored bit for bit as before).

    Example:
        >>> affine(0.1, None) == (1.0, math.log(0.1))
        True
        >>> [round(x, 4) for x in affine(0.1, {"method": "platt", "slope": 0.8, "intercept": 0.1})]
        [0.8, -1.7421]
    """
    offset = recalibration.logit_offset(w)
    fit = slope_intercept(record)
    if fit is None:
        return 1.0, offset
    a, b = fit
    return a, a * offset + b


def transform(model_dir: str) -> tuple[float, float]:
    """`affine` of a model dir: its `negative_sampling.json` and `calibration.json`."""
    return affine(recalibration.model_rate(model_dir), read_calibration(model_dir))
