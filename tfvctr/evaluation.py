"""`tfvctr evaluate`: score every eval impression once and write `M/metrics.json` + plots.

Shaped like orbit's evaluator: `eval_begin` → `eval_step` per batch (model outputs on
device) → `eval_reduce` (host-side accumulation of labels, scores, users, ads) →
`eval_end` (all metrics from the accumulated predictions, so AUC, per-user AUC and the
cold-ad AUC are exact, not streamed approximations).

Metrics (tfvctr.metrics): AUC, log loss, per-user AUC (CSCNN Eq. 13), AUC and log loss on
cold ads (ads with no train impressions, from `DATA_DIR/ad_counts.jsonl`), calibration,
the simulator's ceiling AUC when the passthrough `true_ctr` is present, and relative AUC
(DeepCTR Eq. 8) against a baseline `metrics.json`.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

import tfvctr.models  # noqa: F401 - registers the model classes for load_model
from tfvctr import data as data_lib
from tfvctr import layout
from tfvctr import metrics as m
from tfvctr.config import load_config
from tfvctr.errors import DataError, TfvctrError
from tfvctr.features import FeatureEncoder
from tfvctr.fingerprint import check_model_data, trained_data_dir
from tfvctr.io import fs

CEILING_COLUMN = "true_ctr"


def read_cold_ads(data_dir: str, below: int = 1) -> Optional[set[str]]:
    """Ads with fewer than `below` train impressions, or None without ad_counts.jsonl.

    `below=1` (default): ads absent from training. CSCNN's cold items (§4.1) are items with
    fewer than 5 training interactions: `below=5`.
    """
    path = fs.join(data_dir, layout.AD_COUNTS)
    if not fs.exists(path):
        return None
    cold = set()
    with fs.open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if int(row["train_impressions"]) < below:
                    cold.add(str(row["ad_id"]))
            except (ValueError, KeyError) as e:
                raise DataError(f"{path}:{line_no}: expected a JSON object with ad_id and train_impressions ({e})") from None
    return cold


class Evaluator:
    """Accumulates predictions of `model` over batches `(inputs, labels, meta)`."""

    def __init__(self, model: Any, passthrough: tuple[str, ...] = (), logit_offset: float = 0.0,
                 logit_scale: float = 1.0, output: str = "ctr"):
        self.model = model
        self.passthrough = tuple(passthrough)
        # log(w) of negative downsampling (tfvctr.daily.recalibration): the CTRs scored are the
        # recalibrated ones the export serves, so log loss and calibration are those of serving.
        # With `training.calibration: platt` (tfvctr.calibration.transform) the served logit is
        # scale · logit + offset; scale 1.0 skips the multiplication (bit-identical without it).
        offset, scale = float(logit_offset), float(logit_scale)
        if output not in ("ctr", "logit"):
            raise ValueError(f"Evaluator: expected output 'ctr' or 'logit', received {output!r}")

        def predict(inputs):
            logit = tf.cast(model(inputs, training=False), tf.float32)
            if scale != 1.0:
                logit = logit * scale
            logit = logit + offset
            # "logit": the served logit itself, under the key "probs" (tfvctr.calibration fits on it).
            return logit if output == "logit" else tf.sigmoid(logit)

        # Batches differ in impression count: trace once for generalised shapes, not per batch.
        self._predict = tf.function(predict, reduce_retracing=True)

    def eval_begin(self) -> dict:
        return {"labels": [], "probs": [], "users": [], "ads": [], **{p: [] for p in self.passthrough}}

    def eval_step(self, batch: tuple) -> dict:
        inputs, labels, meta = batch
        probs = self._predict(inputs)
        ads = meta["ad_id"].numpy()[inputs["ad_index"].numpy()]
        out = {"labels": labels.numpy(), "probs": probs.numpy(), "users": meta["user_id"].numpy(), "ads": ads}
        for p in self.passthrough:
            out[p] = meta[p].numpy()
        return out

    def eval_reduce(self, state: dict, outputs: dict) -> dict:
        for k, v in outputs.items():
            state[k].append(v)
        return state

    def eval_end(self, state: dict) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(v) if v else np.zeros([0])) for k, v in state.items()}


def score(evaluator: Evaluator, dataset: Any) -> dict[str, np.ndarray]:
    """Every prediction of `evaluator.model` over `dataset` (batches `(inputs, labels, meta)`)."""
    state = evaluator.eval_begin()
    for batch in dataset:
        state = evaluator.eval_reduce(state, evaluator.eval_step(batch))
    return evaluator.eval_end(state)


def cold_mask(ads: np.ndarray, cold_ads: set[str]) -> np.ndarray:
    """Which impressions (by their ad id) belong to a cold ad."""
    ads = np.array([a.decode() if isinstance(a, bytes) else str(a) for a in ads])
    return np.isin(ads, np.array(sorted(cold_ads))) if cold_ads else np.zeros(ads.size, bool)


# The figures model selection watches (`tfvctr.training.selection`), and their direction.
SELECTION_METRICS = {"valid_auc": "max", "valid_cold_auc": "max", "valid_logloss": "min"}


def selection_metrics(pred: dict[str, np.ndarray], cold_ads: Optional[set[str]]) -> dict[str, Optional[float]]:
    """AUC, cold-ad AUC and log loss of the valid split (None where undefined).

    Cheaper than `compute_metrics` (no per-user AUC or calibration): it runs every
    `training.eval_every` steps. Cold ads are those with no train impressions
    (`read_cold_ads`); `valid_cold_auc` is None when the valid split holds none.
    """
    labels, probs = pred["labels"], pred["probs"]

    def finite(x: float) -> Optional[float]:
        return float(x) if math.isfinite(x) else None

    cold = cold_mask(pred["ads"], cold_ads or set())
    return {
        "valid_auc": finite(m.auc(labels, probs)),
        "valid_cold_auc": finite(m.auc(labels[cold], probs[cold])) if cold.any() else None,
        "valid_logloss": finite(m.log_loss(labels, probs)),
    }


def read_selection(model_dir: str) -> Optional[dict]:
    """`M/selection.json` (the chosen step of model selection), or None if training had no valid split."""
    return fs.read_json_if_exists(fs.join(model_dir, layout.SELECTION))


def compute_metrics(pred: dict[str, np.ndarray], cold_ads: Optional[set[str]] = None, baseline: Optional[dict] = None) -> dict:
    """All metrics of one set of predictions (see the module docstring)."""
    labels, probs = pred["labels"], pred["probs"]
    user_auc, users = m.per_user_auc(labels, probs, pred["users"])
    out: dict[str, Any] = {
        "impressions": int(labels.size),
        "positives": int(labels.sum()),
        "auc": m.auc(labels, probs),
        "log_loss": m.log_loss(labels, probs),
        "per_user_auc": user_auc,
        "per_user_auc_users": users,
        "calibration": m.calibration(labels, probs),
    }
    if cold_ads is not None:
        cold = cold_mask(pred["ads"], cold_ads)
        out["cold"] = {
            "impressions": int(cold.sum()),
            "auc": m.auc(labels[cold], probs[cold]) if cold.any() else float("nan"),
            "log_loss": m.log_loss(labels[cold], probs[cold]) if cold.any() else float("nan"),
        }
        if CEILING_COLUMN in pred and cold.any():
            out["cold"]["ceiling_auc"] = m.auc(labels[cold], pred[CEILING_COLUMN][cold])
    if CEILING_COLUMN in pred:
        out["ceiling_auc"] = m.auc(labels, pred[CEILING_COLUMN])
    if baseline is not None:
        base_auc = float(baseline["auc"])
        out["baseline"] = {"name": baseline.get("name", "baseline"), "auc": base_auc}
        out["relative_auc"] = m.relative_auc(out["auc"], base_auc)
        if "ceiling_auc" in out:
            out["gap_closed"] = m.gap_closed(out["auc"], base_auc, out["ceiling_auc"])
        base_cold = baseline.get("cold", {}).get("auc")
        if base_cold is not None and "cold" in out and not math.isnan(float(base_cold)):
            out["cold"]["relative_auc"] = m.relative_auc(out["cold"]["auc"], float(base_cold))
    return out


def plot_roc(labels: np.ndarray, probs: np.ndarray, path: str, title: str = "ROC") -> None:
    # Lazy: pyplot must load after the file-only Agg backend is chosen (no display on servers),
    # and only the plotting path needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = m.roc_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(fpr, tpr, label=f"AUC {m.auc(labels, probs):.4f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_reliability(calib: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = [b["mean_predicted"] for b in calib["bins"]]
    obs = [b["observed"] for b in calib["bins"]]
    top = max(pred + obs + [1e-3]) * 1.05
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(pred, obs, "o-", label=f"ECE {calib['ece']:.4f}")
    ax.plot([0, top], [0, top], "k:", lw=0.8)
    ax.set(xlabel="mean predicted CTR", ylabel="observed CTR", title="reliability", xlim=(0, top), ylim=(0, top))
    ax.legend(loc="upper left")
    _save(fig, path)


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt  # lazy, as in plot_roc

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def load_baseline(path: str) -> dict:
    if not fs.exists(path):
        raise TfvctrError(f"{path}: baseline metrics file not found")
    data = fs.read_json(path, TfvctrError)
    if "auc" not in data:
        raise TfvctrError(f"{path}: no `auc` key; expected a metrics.json written by `tfvctr evaluate`")
    data.setdefault("name", path)
    return data


def evaluate(
    model_dir: str,
    data_dir: str,
    *,
    baseline: Optional[str] = None,
    model: Any = None,
    encoder: Any = None,
    split: str = "eval",
    batch_size: Optional[int] = None,
    write: bool = True,
    cold_below: int = 1,
) -> dict:
    """Evaluates the model in `model_dir` on `DATA_DIR/split`; writes metrics.json, roc.png, calibration.png.

    Args:
        model_dir: a `tfvctr train` model dir (config.yaml, model.keras, data_dir.txt).
        data_dir: the grouped TFRecords to score.
        baseline: a metrics.json to compute the relative AUC against (DeepCTR Eq. 8).
        model, encoder: use these instead of loading `model.keras` / the vocabularies.
        split: "eval" (default), "valid" or "train".
        batch_size: ads per batch (default `training.ads_per_batch`).
        write: write the files (False: only return the metrics).
        cold_below: cold ads have fewer train impressions than this (1: none; CSCNN: 5).

    Returns:
        The metrics dict that `metrics.json` holds.
    """
    if model is None:
        check_model_data(model_dir, data_dir, "evaluate")  # unfinished training, a data dir that does not fit
    config = load_config(fs.join(model_dir, layout.CONFIG))
    files = data_lib.list_shards(data_dir, split)
    if encoder is None:
        # Ids must be the ones the model was trained with: the training data's vocabularies.
        encoder = FeatureEncoder.from_data_dir(config.dataset, trained_data_dir(model_dir, data_dir))
    if model is None:
        path = fs.join(model_dir, layout.MODEL)
        if not fs.exists(path):
            raise TfvctrError(f"{path}: no trained model; run `tfvctr train --model-dir {model_dir}` first")
        model = keras.saving.load_model(path, compile=False)
    passthrough = tuple(p for p in config.dataset.passthrough)
    dataset = data_lib.make_dataset(
        config, data_dir, split, training=False, encoder=encoder, batch_size=batch_size, with_meta=True, files=files
    )
    from tfvctr import calibration
    from tfvctr.daily import recalibration

    # He et al.'s log(w) and, with training.calibration: platt, the valid split's a and b: the export's map.
    scale, offset = calibration.transform(model_dir)
    with data_lib.data_errors(files):
        pred = score(Evaluator(model, passthrough, logit_offset=offset, logit_scale=scale), dataset)
    if pred["labels"].size == 0:
        raise DataError(f"{fs.join(data_dir, split)}: no impressions to evaluate")
    result = compute_metrics(pred, read_cold_ads(data_dir, cold_below), load_baseline(baseline) if baseline else None)
    result.update(split=split, data_dir=data_dir, model_dir=model_dir, name=config.name)
    result["negative_sampling_rate"] = recalibration.model_rate(model_dir)  # CTRs recalibrated by this rate
    fit = calibration.slope_intercept(calibration.read_calibration(model_dir))
    if fit is not None:  # CTRs calibrated: sigmoid(slope · (logit + log w) + intercept)
        result["platt"] = {"slope": fit[0], "intercept": fit[1]}
    # Which step's weights model.keras holds: the best one by the valid split, or None when
    # training had no valid split (then it is the last step).
    selection = read_selection(model_dir)
    result["best_step"] = selection["best_step"] if selection else None
    if selection:
        result["selection"] = {"metric": selection["metric"], "best": selection["best"], "last_step": selection["last_step"],
                               "stopped_early": selection["stopped_early"]}
    if write:
        fs.write_atomic(fs.join(model_dir, layout.METRICS), json.dumps(fs.json_finite(result), indent=2))
        plot_roc(pred["labels"], pred["probs"], fs.join(model_dir, layout.ROC_PLOT), title=f"ROC ({config.name}, {split})")
        plot_reliability(result["calibration"], fs.join(model_dir, layout.CALIBRATION_PLOT))
    return result


