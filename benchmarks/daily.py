"""Three-day rehearsal of `tfvctr daily` on demo data (docs/daily.md, README "The daily loop").

    nice python benchmarks/daily.py --out /tmp/daily_bench [--ads 1000 --impressions 60000 --days 4]
        [--steps 800 --warm-steps 300 --sampling-rate 0.5 --freeze-cnn]
    nice python benchmarks/daily.py --out /tmp/daily_bench --warm-vs-scratch 0,1,2 [--variants "name=k=v;k=v ..."]
    nice python benchmarks/daily.py --out /tmp/rates --compare-rates 1,0.1 --seeds 0,1,2 --steps 600
    nice python benchmarks/daily.py --out /tmp/rates --compare-rates "1 0.3 0.1:training.steps=300 0.1:importance_weights"
    nice python benchmarks/daily.py --out /tmp/low --scenario large --ads 2000 --impressions 400000 \
        --compare-rates "1 0.1 0.1:same_passes" --eval-every 200     # CTR 1 %
    nice python benchmarks/daily.py --out /tmp/cal --compare-rates 1,0.1 --seeds 0,1,2 --calibration platt
    nice python benchmarks/daily.py --out /tmp/share --compare-rates "1 0.1 1:train_share=0.57"

Demo-data days arrive one at a time (the catalogue of day D holds the ads shown by day
D + 1, so new ads arrive every day, a day before their first impression); `tfvctr daily` runs on days 0, 1, ..., days-2 with a dev
server (`tfvctr serve --model-base W/serving`) started after the first day and a client
asking it every 50 ms throughout. After each day the served model (the promoted model dir:
the export's fresh-process check holds it to the Keras model within 1e-5) and a model
retrained from scratch on the same window (same config, `training.steps`) are scored on
the *next* day's impressions: AUC, cold-ad AUC (ads with no impression in the window),
expected calibration error (of recalibrated CTRs). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from typing import Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _eval_data(work: str, config_path: str, ads: str, impressions: str, window: list[str], next_day: int,
               out: str) -> str:
    """The window's days + the next day, preprocessed with the next day as eval (validation none): the eval
    split is the traffic the served version meets next, and its cold ads have no impression in the window."""
    import yaml

    from beam_jobs import build_tfrecords
    from tfvctr.io import tables
    from tfvctr.io.schema import parse_day

    days = {int(d) for d in window} | {next_day}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    path = out + "-impressions.jsonl"
    with open(path, "w") as f:
        for row in tables.iter_rows(impressions):
            if parse_day(row["day"])[0] in days:
                f.write(json.dumps(row) + "\n")
    with open(config_path) as f:
        data = yaml.safe_load(f)
    data["dataset"]["validation"] = {"mode": "none"}
    data["dataset"]["negative_sampling_rate"] = 1.0
    cfg = out + ".yaml"
    with open(cfg, "w") as f:
        yaml.safe_dump(data, f)
    args = argparse.Namespace(config=cfg, ads=ads, impressions=path, out=out, eval_from_day=str(next_day), seed=None,
                              overwrite=True)
    build_tfrecords.run_args(args, [], verbose=False)
    return out


def _score(model_dir: str, data: str) -> dict:
    from tfvctr import evaluation

    m = evaluation.evaluate(model_dir, data, write=False)
    return {"auc": m["auc"], "cold_auc": (m.get("cold") or {}).get("auc"), "ece": m["calibration"].get("ece"),
            "impressions": m["impressions"]}


class Server:
    def __init__(self, base: str, name: str):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
        self.proc = subprocess.Popen([sys.executable, "-m", "tfvctr.cli", "serve", "--port", "0", "--model-base", base,
                                      "--model-name", name, "--poll-seconds", "0.5"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.url = None
        for line in self.proc.stdout:
            if "REST API on http://" in line:
                self.url = line.split("REST API on ")[1].split("/v1/")[0]
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        if self.url is None:
            raise RuntimeError("dev server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _eval_shards(data_dir: str) -> list[str]:
    """The eval split's shards ordered by their content: two preprocesses of the same tables at different rates
    write the same eval records but may name the shards differently, and paired AUC errors need one order."""
    import hashlib

    from tfvctr import data as data_lib
    from tfvctr import layout

    def digest(path: str) -> str:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    return sorted(data_lib.list_shards(data_dir, layout.EVAL), key=digest)


def _calibration_fit(model_dir: str, data_dir: str, offset: float) -> tuple[dict, dict]:
    """Eval-split calibration of a model's scored CTRs (`tfvctr.daily.recalibration.calibration_fit`): the slope says
    why an ECE is high (b < 1: over-confident), `ece_best_shift` whether a better recalibration constant would help.
    Also returns the predictions (labels, probs, ads), in `_eval_shards` order."""
    import keras

    from tfvctr import data as data_lib
    from tfvctr import evaluation, layout
    from tfvctr.config import load_config
    from tfvctr.daily import recalibration
    from tfvctr.features import FeatureEncoder

    config = load_config(os.path.join(model_dir, layout.CONFIG))
    dataset = data_lib.make_dataset(config, data_dir, layout.EVAL, training=False,
                                    encoder=FeatureEncoder.from_data_dir(config.dataset, data_dir), batch_size=64,
                                    with_meta=True, files=_eval_shards(data_dir))
    model = keras.saving.load_model(os.path.join(model_dir, layout.MODEL), compile=False)
    # The passthrough columns (the demo's true_ctr) tell apart a user's two impressions of one ad.
    pred = evaluation.score(evaluation.Evaluator(model, tuple(config.dataset.passthrough), logit_offset=offset), dataset)
    fit = recalibration.calibration_fit(pred["labels"], pred["probs"])
    keys = {"ads": np.asarray(pred["ads"]).astype("S"), "users": np.asarray(pred["users"]).astype("S")}
    if "true_ctr" in pred:
        keys["true_ctr"] = np.asarray(pred["true_ctr"], np.float32)
    return {k: round(v, 4) for k, v in fit.items()}, {"labels": pred["labels"], "probs": pred["probs"], **keys}


def ece_floor(probs: np.ndarray, draws: int = 50, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model would show on this eval day: the mean ECE over `draws` sets of labels
    drawn from the model's own CTRs (the binning's sampling noise alone)."""
    from tfvctr import metrics

    rng = np.random.default_rng(seed)
    probs = np.asarray(probs, np.float64)
    return float(np.mean([metrics.calibration(rng.random(probs.size) < probs, probs)["ece"] for _ in range(draws)]))


def _aligned(a: dict, b: dict) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Index arrays that put two scorings of the same eval impressions in one order, or None. The eval records of
    two preprocesses hold the same impressions but not always in the same order (their chunks differ), so the
    impressions are matched by (ad, user, simulated true CTR) when both carry them, else by ad alone (stable)."""
    if a["labels"].size != b["labels"].size:
        return None
    names = [k for k in ("true_ctr", "users", "ads") if k in a and k in b]
    ia, ib = (np.lexsort([x[k] for k in names]) for x in (a, b))
    if not all(np.array_equal(a[k][ia], b[k][ib]) for k in names) or not np.array_equal(a["labels"][ia],
                                                                                         b["labels"][ib]):
        return None
    return ia, ib


def delong(labels, scores: list) -> tuple[list[float], np.ndarray]:
    """DeLong et al. (1988), in Sun & Xu's (2014) midrank form: the AUCs of several scorings of the same examples
    and the covariance matrix of their sampling errors. The error of one AUC is sqrt(cov[i, i]); that of a paired
    difference sqrt(cov[i, i] + cov[j, j] - 2 cov[i, j]), much smaller when both models rank alike."""
    from tfvctr.metrics import average_ranks

    labels = np.asarray(labels) > 0.5
    m, n = int(labels.sum()), int((~labels).sum())
    v10, v01, aucs = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        tz, tx, ty = average_ranks(s), average_ranks(s[labels]), average_ranks(s[~labels])
        aucs.append(float((tz[labels].sum() - m * (m + 1) / 2) / (m * n)))
        v10.append((tz[labels] - tx) / n)        # per click: the share of non-clicks ranked below it
        v01.append(1.0 - (tz[~labels] - ty) / m)  # per non-click: the share of clicks ranked above it
    cov = np.atleast_2d(np.cov(np.array(v10))) / m + np.atleast_2d(np.cov(np.array(v01))) / n
    return aucs, cov


IMPORTANCE = "importance_weights"


PASSES = "same_passes"


def _rate_spec(spec: str) -> dict:
    """`RATE[:key=value;...;importance_weights;same_passes;train_share=S]` → the rate, its config overrides, whether
    the loss is importance-weighted, whether the step count is scaled to the first entry's passes over its data,
    and the share of train-day impressions kept before the preprocess (1: all)."""
    rate, _, rest = spec.partition(":")
    sets = [x for x in rest.split(";") if x]
    share = [float(x.split("=", 1)[1]) for x in sets if x.startswith("train_share=")]
    return {"w": float(rate), "overrides": [x for x in sets if x not in (IMPORTANCE, PASSES)
                                            and not x.startswith("train_share=")],
            "weighted": IMPORTANCE in sets, "same_passes": PASSES in sets, "share": share[-1] if share else 1.0}


def scaled_steps(steps: int, chunks: int, first_chunks: int) -> int:
    """The step count that makes as many passes over `chunks` train chunks as `steps` make over `first_chunks`
    (a step reads `training.ads_per_batch` chunks whatever the rate)."""
    return max(1, round(steps * chunks / first_chunks))


def write_train_share(impressions: str, out: str, share: float, before_day: int, seed: int = 0) -> int:
    """Copy `impressions` keeping a seeded share of the rows of days < `before_day` (the train days) and every
    later row; returns how many rows were kept. The held-out ads' rows of those days (valid split) are thinned
    too: the eval day is untouched."""
    import csv
    import random

    from tfvctr.io.schema import parse_day

    rng, kept = random.Random(seed), 0
    with open(impressions, newline="") as f, open(out, "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, fieldnames=reader.fieldnames)
        writer.writeheader()
        for row in reader:
            if parse_day(row["day"])[0] >= before_day or rng.random() < share:
                writer.writerow(row)
                kept += 1
    return kept


def compare_rates(raw: str, out: str, specs: list[str], steps: int, seeds: list[int], base_config: str,
                  eval_every: int = 100, calibration: str = "none") -> None:
    """`--compare-rates 1,0.1 [--seeds 0,1,2]`: the demo config trained at each negative sampling rate on the same
    tables (eval = the last day; one preprocess per rate, its draw seeded by `dataset.seed` 0), once per training
    seed: one JSON line per (rate, seed) with train impressions, train time, the selected step, AUC, cold AUC, ECE,
    log loss and the eval calibration fit (`_calibration_fit`); then per rate the mean ± std over seeds, the
    paired differences to the first entry, and the eval day's AUC sampling errors (DeLong: one AUC, and a paired
    difference on the same impressions).

    An entry may carry variants, `RATE:key=value;key=value` (config overrides of the training only: the data is
    the rate's); `importance_weights`: the loss weighs each kept non-click by 1 / w (the gradient of the whole log
    in expectation), so the model learns the real odds and is scored without the log(w) shift; `same_passes`: the
    step count scaled to the first entry's passes over its train split (`scaled_steps`); `train_share=S`: a seeded
    share S of the train days' raw impressions, clicks and non-clicks alike, kept before the preprocess
    (`write_train_share`; the eval day untouched). Entries are separated by spaces, or by commas when none holds a
    `:`. A model dir that finished already is reused with its figures (`bench_row.json`; the train time is the
    first run's).

    `calibration="platt"` (`--calibration platt`) trains every entry with `training.calibration: platt`: `ece` is
    then the served (Platt-calibrated) CTRs' ECE as `tfvctr evaluate` scores it, and `ece_uncalibrated` that of the
    same model's CTRs with log(w) alone, so one training gives both, paired; `platt_slope` and `platt_intercept`
    are the fitted a and b, `calibration_slope_served` the eval day's slope of the served CTRs.
    """
    import statistics

    import yaml

    from beam_jobs import build_tfrecords
    from tfvctr import calibration as calibration_lib
    from tfvctr import evaluation, metrics
    from tfvctr.config import load_config
    from tfvctr.daily import recalibration
    from tfvctr.models.losses import pointwise_loss
    from tfvctr.training.trainer import train

    results: dict[str, list[dict]] = {}
    prepared: dict[tuple[float, float], tuple] = {}
    parsed = {spec: _rate_spec(spec) for spec in specs}
    if calibration != "none" and any(p["weighted"] for p in parsed.values()):
        # The trainer fits a and b on logits shifted by log(w); importance weights drop that shift afterwards.
        raise SystemExit("--calibration platt: not with importance_weights (the map would be fitted on the shifted "
                         "logits); run those entries without --calibration")
    # Shares after whole logs: their train days are read from a whole log's manifest.
    for spec in sorted(specs, key=lambda x: parsed[x]["share"] < 1.0):
        w, share = parsed[spec]["w"], parsed[spec]["share"]
        if (w, share) in prepared:
            continue
        with open(base_config) as f:
            d = yaml.safe_load(f)
        d["dataset"]["negative_sampling_rate"] = w
        d["training"].update(steps=steps, decay_steps=[], eval_every=eval_every, checkpoint_every=eval_every,
                             patience=3)
        d.pop("tune", None)
        suffix = "" if share == 1.0 else f"-share{share:g}"
        cfg = os.path.join(out, f"rate{w}{suffix}.yaml")
        with open(cfg, "w") as f:
            yaml.safe_dump(d, f)
        data = os.path.join(out, f"data{w}{suffix}")
        impressions = os.path.join(raw, "impressions.csv")
        if share < 1.0:
            whole = next(iter(prepared.values()))[2]
            before = (whole["validation"] or {}).get("valid_from_day", whole["eval_from_day"])
            impressions = os.path.join(out, f"impressions{suffix}.csv")
            if not os.path.exists(impressions):
                write_train_share(os.path.join(raw, "impressions.csv"), impressions + ".tmp", share, before)
                os.replace(impressions + ".tmp", impressions)
        if os.path.exists(os.path.join(data, "manifest.json")):
            with open(os.path.join(data, "manifest.json")) as f:
                m = json.load(f)
        else:
            t = time.time()
            m = build_tfrecords.run(["--config", cfg, "--ads", os.path.join(raw, "ads.csv"), "--impressions",
                                     impressions, "--out", data, "--overwrite"], verbose=False)
            print(json.dumps({"preprocess": os.path.basename(data), "seconds": round(time.time() - t)}), flush=True)
        prepared[(w, share)] = (cfg, data, m)
    first_chunks = prepared[(parsed[specs[0]]["w"], parsed[specs[0]]["share"])][2]["splits"]["train"]["chunks"]
    first_train = prepared[(parsed[specs[0]]["w"], parsed[specs[0]]["share"])][2]["splits"]["train"]["impressions"]
    predictions: dict[tuple[str, int], dict] = {}
    for seed in seeds:  # seeds outside: a cut-short run still has paired rows
        for spec in specs:
            p = parsed[spec]
            w = p["w"]
            cfg, data, m = prepared[(w, p["share"])]
            name = spec if spec == str(w) or ":" in spec else str(w)
            model = os.path.join(out, "model" + name.replace(":", "_").replace(";", "_").replace("=", "") + f"-seed{seed}")
            n_steps = scaled_steps(steps, m["splits"]["train"]["chunks"], first_chunks) if p["same_passes"] else steps
            cached, saved = os.path.join(model, "bench_row.json"), os.path.join(model, "bench_eval.npz")
            if os.path.exists(cached) and os.path.exists(saved):
                with open(cached) as f:
                    row = json.load(f)
                with np.load(saved) as z:
                    predictions[(name, seed)] = dict(z)
                results.setdefault(name, []).append(row)
                print(json.dumps(row), flush=True)
                continue
            timing = os.path.join(model, "bench_seconds.json")
            loss_fn = None
            if p["weighted"]:
                def loss_fn(labels, logits, w=w):  # each kept non-click stands for 1 / w of them
                    return pointwise_loss(labels, logits, labels + (1.0 - labels) / w)
            trained_before = os.path.exists(os.path.join(model, "selection.json"))
            t = time.time()
            config = load_config(cfg, [f"training.seed={seed}", f"training.steps={n_steps}",
                                       f"training.calibration={calibration}", *p["overrides"]])
            n_steps = config.training.steps  # a variant's own training.steps wins
            result = train(config, data, model, loss_fn=loss_fn, log=None)
            seconds = round(time.time() - t)
            if os.path.exists(timing):
                with open(timing) as f:
                    seconds = json.load(f)
            elif trained_before:
                seconds = None  # finished by a run that did not time it
            else:
                with open(timing, "w") as f:
                    json.dump(seconds, f)
            if p["weighted"]:  # the model predicts the real odds: evaluate and export must not shift them
                recalibration.write_model_rate(model, 1.0, data)
            r = evaluation.evaluate(model, data, write=False)
            fit, pred = _calibration_fit(model, data, recalibration.logit_offset(recalibration.model_rate(model)))
            # `pred` holds the CTRs with log(w) alone; `r` those served (with Platt's a and b when fitted).
            platt = calibration_lib.read_calibration(model) or {}
            served_fit = {}
            if r.get("platt"):
                a, b = r["platt"]["slope"], r["platt"]["intercept"]
                q = np.clip(pred["probs"].astype(np.float64), 1e-7, 1 - 1e-7)
                served = 1.0 / (1.0 + np.exp(-(a * np.log(q / (1 - q)) + b)))
                served_fit = {"calibration_slope_served": round(
                    recalibration.calibration_fit(pred["labels"], served)["calibration_slope"], 4)}
            train_imp = m["splits"]["train"]["impressions"]
            row = {"spec": name, "w": w, "seed": seed, "steps": n_steps, "train_impressions": train_imp,
                   "train_share_of_first": round(train_imp / first_train, 4),
                   "train_chunks": m["splits"]["train"]["chunks"], "train_ads": m["splits"]["train"]["ads"],
                   "train_ctr": round(m["splits"]["train"]["positives"] / train_imp, 4),
                   "downsampled": m["downsampled_negatives"], "train_seconds": seconds,
                   "best_step": result.get("best_step"), "last_step": int(result["step"]),
                   "auc": r["auc"], "cold_auc": r["cold"]["auc"], "ece": r["calibration"]["ece"],
                   "log_loss": r["log_loss"], "eval_impressions": int(pred["labels"].size),
                   "eval_clicks": int(pred["labels"].sum()), **fit,
                   "ece_uncalibrated": metrics.calibration(pred["labels"], pred["probs"])["ece"],
                   "platt_method": platt.get("method", "none"), "platt_slope": platt.get("slope"),
                   "platt_intercept": platt.get("intercept"), **served_fit}
            np.savez(saved, **{k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in pred.items()})
            with open(cached, "w") as f:
                json.dump(row, f)
            predictions[(name, seed)] = pred
            results.setdefault(name, []).append(row)
            print(json.dumps(row), flush=True)
    first_name = next(iter(results))
    first = results[first_name]

    def spread(values: list) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    for name, rows in results.items():
        line = [f"{name}:", f"steps {rows[0]['steps']}", f"train impressions {rows[0]['train_impressions']} "
                f"({rows[0]['train_share_of_first']:.0%} of {first_name}'s)",
                f"train s {spread([r['train_seconds'] for r in rows])}"]
        line += [f"{k} {spread([r.get(k) for r in rows])}" for k in (
            "auc", "cold_auc", "ece", "ece_uncalibrated", "log_loss", "calibration_slope", "calibration_slope_served",
            "platt_slope", "platt_intercept")]
        se = [math.sqrt(delong(predictions[(name, r["seed"])]["labels"], [predictions[(name, r["seed"])]["probs"]])[1][0, 0])
              for r in rows]
        line.append(f"AUC sampling error (DeLong) {statistics.mean(se):.4f}")
        floor = [ece_floor(predictions[(name, r["seed"])]["probs"]) for r in rows]
        line.append(f"ECE floor {statistics.mean(floor):.4f}")
        if rows is not first:
            pairs = [(r, f) for r in rows for f in first if f["seed"] == r["seed"]]
            line += [f"paired {k} - {first_name}: {spread([r[k] - f[k] for r, f in pairs])}" for k in ("auc", "ece")]
            if all(f.get("ece_uncalibrated") is not None for _, f in pairs):
                line += [f"paired ece_uncalibrated - {first_name}: "
                         f"{spread([r['ece_uncalibrated'] - f['ece_uncalibrated'] for r, f in pairs])}",
                         f"paired ece - {first_name}'s ece_uncalibrated: "
                         f"{spread([r['ece'] - f['ece_uncalibrated'] for r, f in pairs])}"]
            paired_se = []
            for r, _ in pairs:
                a, b = predictions[(name, r["seed"])], predictions[(first_name, r["seed"])]
                order = _aligned(a, b)
                if order is not None:
                    cov = delong(a["labels"][order[0]], [a["probs"][order[0]], b["probs"][order[1]]])[1]
                    paired_se.append(math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
            if paired_se:
                line.append(f"paired AUC sampling error (DeLong) {statistics.mean(paired_se):.4f}")
        print("  ".join(line), flush=True)


def warm_vs_scratch(out: str, seeds: list[int], variants: list[str], day: int, steps: Optional[int]) -> None:
    """`--warm-vs-scratch 0,1,2`: the warm-started daily model of day `day` vs a model retrained from scratch on
    the same window, per training seed (paired), on a finished rehearsal's folders (`OUT/W/window/*`, the
    scored days' `OUT/eval/*`): only training varies, the data and the held-out draws stay.

    Per seed: day 0 from scratch (`training.steps`), then days 1..`day` warm-started under each variant
    (`name=key=value;key=value`, daily overrides as `--set`), and day `day` from scratch; each scored on the
    next day's impressions. One JSON line per (seed, model), then mean ± std of the paired differences.
    """
    import statistics

    from tfvctr.config import load_config
    from tfvctr.daily.driver import warm_rates
    from tfvctr.training.trainer import train

    work, root = os.path.join(out, "W"), os.path.join(out, "warm_vs_scratch")
    eval_dir = os.path.join(out, "eval", str(day))

    def config(d: int, seed: int, overrides: list[str]):
        cfg = load_config(os.path.join(work, "configs", f"{d}.yaml"), [f"training.seed={seed}", *overrides])
        return cfg

    def fit(cfg, d: int, model: str, n: int, warm: Optional[str]) -> dict:
        # A model trained by an earlier run (same seed, data and config: the same weights) is reused.
        timing = os.path.join(model, "bench_seconds.json")
        done = os.path.exists(timing)
        t = time.time()
        r = train(cfg, os.path.join(work, "window", str(d)), model, steps=n, warm_start=warm, log=None)
        seconds = time.time() - t
        if done:
            with open(timing) as f:
                seconds = json.load(f)
        else:
            with open(timing, "w") as f:
                json.dump(seconds, f)
        s = _score(model, eval_dir)
        return {**s, "train_seconds": round(seconds, 1), "best_step": r.get("best_step"), "steps": int(r["step"])}

    rows: dict[str, list[float]] = {}
    for seed in seeds:
        base = os.path.join(root, f"seed{seed}")
        cfg = config(0, seed, [])
        first = os.path.join(base, "day0")
        fit(cfg, 0, first, steps or cfg.training.steps, None)
        cfg = config(day, seed, [])
        scratch = fit(cfg, day, os.path.join(base, f"scratch{day}"), steps or cfg.training.steps, None)
        print(json.dumps({"seed": seed, "model": "scratch", **scratch}), flush=True)
        for variant in variants:
            name, _, sets = variant.partition("=")
            overrides = [x for x in sets.split(";") if x]
            warm = first
            for d in range(1, day + 1):
                cfg = config(d, seed, overrides)
                cfg.training.freeze_cnn = cfg.daily.freeze_cnn
                warm_rates(cfg, cfg.daily.warm_learning_rate_factor)  # as tfvctr daily does
                model = os.path.join(base, f"{name}-day{d}")
                r = fit(cfg, d, model, cfg.daily.warm_steps or cfg.training.steps, warm)
                warm = model
            print(json.dumps({"seed": seed, "model": name, **r, "auc_minus_scratch": r["auc"] - scratch["auc"],
                              "time_fraction": r["train_seconds"] / scratch["train_seconds"]}), flush=True)
            rows.setdefault(name, []).append(r["auc"] - scratch["auc"])
    for name, diffs in rows.items():
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        print(f"{name}: warm - scratch AUC on day {day + 1}: mean {statistics.mean(diffs):+.4f} ± {sd:.4f} "
              f"(n={len(diffs)}: {', '.join(f'{x:+.4f}' for x in diffs)})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--scenario", default="demo")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "demo.yaml"),
                   help="the base config of the rehearsal and of --compare-rates (figures depend on it: pin it to "
                        "reproduce a table measured with an older configs/demo.yaml)")
    p.add_argument("--ads", type=int, default=1000)
    p.add_argument("--impressions", type=int, default=60000)
    p.add_argument("--days", type=int, default=4, help="demo days; the daily loop runs days 0..days-2")
    p.add_argument("--steps", type=int, default=800, help="first day and from-scratch steps")
    p.add_argument("--warm-steps", type=int, default=300)
    p.add_argument("--sampling-rate", type=float, default=0.5, help="dataset.negative_sampling_rate")
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--freeze-cnn", action="store_true",
                   help="daily.freeze_cnn: warm days train the head only and the table is extended, not rebuilt "
                        "(default: the CNN trains, as daily's default)")
    p.add_argument("--compare-rates", default=None,
                   help="e.g. 1,0.1: only compare negative sampling rates (demo config, --steps steps, eval = the last "
                        "day); a rate may carry variants: \"1 0.1:training.steps=270 0.1:importance_weights "
                        "0.1:same_passes 1:train_share=0.57\" (compare_rates' docstring)")
    p.add_argument("--seeds", default="0", help="--compare-rates: training seeds, e.g. 0,1,2")
    p.add_argument("--calibration", default="none", choices=["none", "platt"],
                   help="--compare-rates: training.calibration of every entry (platt: each row has the ECE with "
                        "and without Platt's map, from one training)")
    p.add_argument("--eval-every", type=int, default=100,
                   help="--compare-rates: training.eval_every (and checkpoint_every); patience stays 3 evaluations")
    p.add_argument("--warm-vs-scratch", default=None, help="e.g. 0,1,2: only compare, per training seed, warm-started "
                                                           "vs from-scratch models on a finished rehearsal in --out")
    p.add_argument("--variants", default="frozen=", help="warm-start variants for --warm-vs-scratch, separated "
                                                         "by spaces: name=key=value;key=value")
    p.add_argument("--day", type=int, default=2, help="--warm-vs-scratch: the day compared")
    args = p.parse_args()

    import yaml

    from serving.client import ServingClient, ServingError
    from tfvctr.config import load_config
    from tfvctr.daily.driver import run_day
    from tfvctr.daily.rehearsal import first_days, write_catalog
    from tfvctr.demo_data import generate
    from tfvctr.training.trainer import train

    out = os.path.abspath(args.out)
    if args.warm_vs_scratch:
        warm_vs_scratch(out, [int(x) for x in args.warm_vs_scratch.split(",")], args.variants.split(), args.day,
                        None)
        return
    raw = os.path.join(out, "raw")
    if not os.path.exists(os.path.join(raw, "impressions.csv")):
        generate(raw, num_ads=args.ads, num_impressions=args.impressions, days=args.days, formats=("csv",),
                 scenario=args.scenario)
    impressions = os.path.join(raw, "impressions.csv")
    if args.compare_rates:
        # Spaces separate entries that carry variants (a variant's value may hold a comma).
        specs = args.compare_rates.split() if ":" in args.compare_rates else args.compare_rates.replace(",", " ").split()
        compare_rates(raw, out, specs, args.steps, [int(x) for x in args.seeds.split(",")], args.config,
                      args.eval_every, args.calibration)
        return
    with open(args.config) as f:
        data = yaml.safe_load(f)
    data["name"] = "daily"
    data["dataset"]["negative_sampling_rate"] = args.sampling_rate
    data["training"].update(steps=args.steps, decay_steps=[], eval_every=100, checkpoint_every=100, patience=3)
    data["embed"]["coverage"] = 1.0
    # The other daily keys keep their defaults (warm_learning_rate_factor 0.25).
    data["daily"] = {"window_days": args.window, "warm_steps": args.warm_steps, "freeze_cnn": args.freeze_cnn,
                     "promote_metric": "auc", "promote_margin": 0.005}
    data.pop("tune", None)
    config = os.path.join(out, "daily.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    work = os.path.join(out, "W")
    first = first_days(impressions)
    rows, server, stop, counts, thread = None, None, threading.Event(), {"ok": 0, "failed": 0}, None
    lines = []
    for day in range(args.days - 1):
        catalog = os.path.join(out, f"ads-{day}.jsonl")
        n_ads = write_catalog(os.path.join(raw, "ads.csv"), first, day, catalog)
        done = os.path.join(work, "days", f"{day}.json")
        if os.path.exists(done):  # a re-run resumes: the day's loop ran already (the scratch model resumes too)
            with open(done) as f:
                report = json.load(f)
        else:
            report = run_day(config, work, str(day), catalog, impressions, log=print)
        state = json.load(open(os.path.join(work, "state.json")))
        window = report["window"]
        # From scratch on the same window, the same config and the first day's step count.
        scratch = os.path.join(out, "scratch", str(day))
        cfg = load_config(os.path.join(work, "configs", f"{day}.yaml"))
        cfg.training.freeze_cnn = False
        t0 = time.time()
        train(cfg, os.path.join(work, "window", str(day)), scratch, log=None)
        scratch_seconds = time.time() - t0
        eval_dir = _eval_data(work, config, catalog, impressions, window, day + 1, os.path.join(out, "eval", str(day)))
        served = _score(state["promoted"]["model_dir"], eval_dir)
        fresh = _score(scratch, eval_dir)
        e = report.get("embed", {})
        t = report["timings"]
        lines.append(
            f"| {day} | {n_ads} | v{report['served_version']} ({'promoted' if report['promotion']['promoted'] else 'kept'}) "
            f"| {served['auc']:.4f} / {fresh['auc']:.4f} | {served['cold_auc'] or float('nan'):.4f} / "
            f"{fresh['cold_auc'] or float('nan'):.4f} | {served['ece']:.4f} / {fresh['ece']:.4f} "
            f"| {t['train']:.0f} / {scratch_seconds:.0f} s | {e.get('embedded', '-')} / {e.get('reused', '-')} "
            f"| {t['preprocess']:.0f} / {t.get('compare', 0):.0f} / {t.get('embed', 0):.0f} / {t.get('export', 0):.0f} s |")
        print(lines[-1], flush=True)
        if server is None:
            server = Server(os.path.join(work, "serving"), "daily")
            from tfvctr.io import tables

            ads_rows = {r["ad_id"]: r for r in tables.iter_rows(os.path.join(raw, "ads.csv"))}
            rows = []
            for imp in tables.iter_rows(impressions):
                ad = ads_rows[imp["ad_id"]]
                rows.append({"ad_id": ad["ad_id"], "category": ad["category"], "brand": ad["brand"],
                             "price": float(ad["price"]), "keywords": (ad["keywords"].split("|") + [""] * 4)[:4],
                             "user_age": imp["user_age"], "device": imp["device"], "hour": imp["hour"],
                             "position": float(imp["position"]),
                             "user_interests": (imp["user_interests"].split("|") + [""] * 4)[:4]})
                if len(rows) == 20:
                    break

            def load(url: str = server.url, batch: list = rows) -> None:
                client = ServingClient(url, "daily", timeout=30, retries=0)  # no retries: every failure counts
                while not stop.is_set():
                    try:
                        client.predict(batch)
                        counts["ok"] += 1
                    except (ServingError, OSError):
                        counts["failed"] += 1
                    time.sleep(0.05)

            thread = threading.Thread(target=load)
            thread.start()
    time.sleep(2)
    stop.set()
    if thread is not None:
        thread.join()
    if server is not None:
        server.stop()
    print()
    print("| day | ads in catalogue | served | eval AUC served / scratch | cold AUC served / scratch "
          "| ECE served / scratch | train time warm / scratch | ads embedded / reused "
          "| preprocess / compare / embed / export |")
    print("|---:|---:|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)
    print(f"\ndev server through days 1..{args.days - 2}: {counts['ok']} requests answered, {counts['failed']} failed "
          f"(20 candidates each)")


if __name__ == "__main__":
    main()
