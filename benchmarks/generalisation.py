"""Do the models generalise to data nobody tuned them on? The scenario suite of issue 12.

For every scenario of `tfvctr demo-data --scenario` (docs/demo_data.md#scenarios), with one
config for all of them (configs/demo.yaml: no per-scenario tuning) and the same step
budget everywhere:

* the **floor**: scikit-learn logistic regression on hashed one-hot non-visual features
  (the config's features; numeric ones in train-quantile buckets), C chosen on the valid
  split (never on the eval day);
* the **image ceiling**: the same regression told each ad's true visual effect
  (`true_visual_logit` of ad_effects.csv) as one more feature;
* the **Bayes ceiling**: the AUC of the simulator's own click probability `true_ctr`;
* through the package (`tfvctr demo-data` and `tfvctr preprocess` as subprocesses, then the
  `train` and `evaluate` Python APIs in a child process per scenario and seed): the DCN
  without image (`model.architecture=dcn`), the CNN without attention
  (`model.attention=none`), CBAM (`model.attention=cbam`) and CSCNN-DCN (the config as is);

each on the eval day, on all ads and on cold ads (ads without train impressions: the
generator's cold ads plus held-out validation ads seen on the eval day, exactly
`tfvctr evaluate`'s set), mean ± std over `--seeds` training seeds, and the share of the
floor → image-ceiling gap each model closes on cold ads. Then it checks the acceptance
targets of issue 12, prints which hold, and writes docs/generalisation.md and
docs/img/generalisation.png.

It resumes: every finished cell (scenario × model × seed) is a line of WORK/results.jsonl
and is skipped on the next run; generated and preprocessed data are kept in WORK too.

Usage:
    python benchmarks/generalisation.py --plan                 # the budget plan only
    python benchmarks/generalisation.py                        # the suite (~60 min on 2 cores)
    python benchmarks/generalisation.py --quick --work /tmp/g  # one tiny scenario, one seed, few steps
    python benchmarks/generalisation.py --scenarios texture --seeds 1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tfvctr.demo_data import auc  # noqa: E402 (after the path fix, so the script runs from anywhere)
from tfvctr.demo_data.scenarios import SCENARIOS  # noqa: E402

TFVCTR = os.path.join(os.path.dirname(sys.executable), "tfvctr")

# model key -> (label, config overrides); the order of the table rows.
MODELS: dict[str, tuple[str, list[str]]] = {
    "dcn": ("DCN, no image", ["model.architecture=dcn"]),
    "cnn": ("CNN, no attention", ["model.attention=none"]),
    "cbam": ("CBAM", ["model.attention=cbam"]),
    "cscnn": ("CSCNN-DCN", []),
}
IMAGE_MODELS = ("cnn", "cbam", "cscnn")

# The default suite: every scenario but `large` (1M impressions; `--scenarios all` adds
# it): seven of 50k-150k impressions and the demo (200k) as the large-scale one, so that
# 8 scenarios x 4 models x 3 seeds fit in 60 minutes on 2 cores (`--plan` prints the
# estimate).
SUITE = tuple(s for s in SCENARIOS if s != "large")
STEPS = 300  # training.steps of every cell (configs/demo.yaml's 2,500 would take ~5 h)
EVALS = 6  # validation evaluations per run (training.eval_every = steps / EVALS)
QUICK = {"scenario": "texture", "ads": 80, "impressions": 4000, "image_size": 32, "steps": 20, "models": "dcn,cscnn",
         "evals": 2}  # fmt: skip
LARGE = 200_000  # scenarios of this many impressions or more have the 50% target (else 25%)
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)

# Seconds on the 2-core build machine for 300 steps, from a texture run's CPU seconds
# (dcn 14, cnn 23, cbam 30, cscnn 35) over the ~1.5 cores TensorFlow keeps busy: the
# machine was shared (load ~10) when we measured, so wall clocks were 2-3x these. Replaced
# by the mean wall clock of finished cells of the same model once there are some.
COST = {"child": 10.0, "dcn": 10.0, "cnn": 15.0, "cbam": 20.0, "cscnn": 23.0, "data_per_1k": 0.2, "data": 12.0,
        "lr_per_1k": 0.015}  # fmt: skip


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    scenarios: list[str]
    seeds: int
    steps: int
    models: list[str]
    sizes: dict[str, dict[str, int]]  # scenario -> {"ads", "impressions", "image_size"}
    evals: int = EVALS
    config_sha: str = ""  # the resolved config's fingerprint: results under another are not mixed in

    def mine(self, rows: list[dict]) -> list[dict]:
        """The result rows of this plan: same steps, same resolved config."""
        return [r for r in rows if r.get("steps") == self.steps and r.get("config_sha") == self.config_sha]

    def cells(self) -> list[tuple[str, str, int]]:
        return [(s, m, seed) for s in self.scenarios for seed in range(self.seeds) for m in self.models]


def estimate(plan: Plan, done: list[dict]) -> dict[str, float]:
    """Seconds per stage, from COST scaled by steps, or from the finished cells."""
    measured = {}
    for m in plan.models:
        secs = [r["seconds"] for r in done if r["model"] == m and r.get("steps") == plan.steps]
        if secs:
            measured[m] = float(np.mean(secs))
    scale = plan.steps / 300.0
    cell = {m: measured.get(m, COST[m] * scale) for m in plan.models}
    imps = sum(plan.sizes[s]["impressions"] for s in plan.scenarios) / 1000.0
    data = len(plan.scenarios) * COST["data"] + imps * COST["data_per_1k"]
    lr = imps * COST["lr_per_1k"] * len(C_GRID)
    children = len(plan.scenarios) * plan.seeds * COST["child"]
    train = len(plan.scenarios) * plan.seeds * sum(cell.values())
    return {
        "data": data,
        "lr": lr,
        "children": children,
        "train": train,
        "total": data + lr + children + train,
        **{f"cell_{m}": v for m, v in cell.items()},
    }


def print_plan(plan: Plan, done: list[dict]) -> None:
    e = estimate(plan, done)
    log(
        f"budget plan: {len(plan.scenarios)} scenarios x {len(plan.models)} models x {plan.seeds} seeds = "
        f"{len(plan.cells())} cells of {plan.steps} steps ({len(done)} already done)"
    )
    for s in plan.scenarios:
        z = plan.sizes[s]
        log(f"  {s:10s} {z['ads']:6d} ads {z['impressions']:8d} impressions  {z['image_size']} px")
    per_cell = ", ".join(f"{MODELS[m][0]} {e['cell_' + m]:.0f} s" for m in plan.models)
    log(f"  per cell: {per_cell}; {COST['child']:.0f} s per child process (TensorFlow import)")
    log(
        f"  estimate: data {e['data'] / 60:.1f} min, regressions {e['lr'] / 60:.1f} min, "
        f"training + evaluation {(e['train'] + e['children']) / 60:.1f} min; total {e['total'] / 60:.1f} min "
        f"(all cells, finished ones included)"
    )


# --------------------------------------------------------------------------- data


def run_cli(args: list[str], log_path: str) -> None:
    """Runs `tfvctr ARGS`, output to log_path; exits with the log's tail on failure."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as f:
        code = subprocess.run([TFVCTR, *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"generalisation: `tfvctr {' '.join(args)}` failed (exit {code}); log {log_path}:\n{tail}")


def write_config(base: str, path: str, quick: bool) -> tuple[str, str]:
    """The suite's config: `base` as is (quick: 32 px images), shared by every scenario.

    Returns fingerprints of the dataset, model and training sections as written (whole,
    and of the dataset section alone), so results or data made under other settings are
    not mixed in. Defaults the code fills in are not part of it: new fields land in
    config.py all the time; the resolved config is written beside it for the record.
    """
    import hashlib

    import yaml

    from tfvctr.config import load_config

    with open(base) as f:
        data = yaml.safe_load(f)
    if quick:
        data["dataset"]["image_size"] = QUICK["image_size"]
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    with open(path.replace(".yaml", ".resolved.yaml"), "w") as f:
        yaml.safe_dump(load_config(path).to_dict(), f, sort_keys=False)

    def sha(value: Any) -> str:
        return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]

    sections = {k: data.get(k) for k in ("dataset", "model", "training")}
    return sha(sections), sha(sections["dataset"])


def prepare(scenario: str, work: str, config: str, size: dict[str, int], dataset_sha: str) -> dict[str, str]:
    """Generates and preprocesses one scenario (each skipped when already done, preprocess
    only if under the same dataset settings)."""
    d = os.path.join(work, scenario)
    raw, data = os.path.join(d, "raw"), os.path.join(d, "data")
    os.makedirs(d, exist_ok=True)
    # Markers written after each step succeeded: a step killed half-way runs again.
    generated, preprocessed = os.path.join(d, "generated.ok"), os.path.join(d, "preprocessed.ok")
    if not os.path.exists(generated):
        for stale in (preprocessed, os.path.join(d, "lr.json")):  # built from the data about to be replaced
            if os.path.exists(stale):
                os.remove(stale)
        start = time.time()
        run_cli(["demo-data", "--out", raw, "--scenario", scenario, "--ads", str(size["ads"]),
                 "--impressions", str(size["impressions"]), "--image-size", str(size["image_size"]),
                 "--format", "csv", "--no-progress"], os.path.join(d, "demo_data.log"))  # fmt: skip
        open(generated, "w").close()
        log(f"  {scenario}: generated in {time.time() - start:.0f} s")
    if os.path.exists(preprocessed):
        with open(preprocessed) as f:
            if f.read().strip() != dataset_sha:  # other dataset settings: other splits
                os.remove(preprocessed)
    if not os.path.exists(preprocessed):
        if os.path.exists(os.path.join(d, "lr.json")):
            os.remove(os.path.join(d, "lr.json"))
        for name in os.listdir(d):  # model dirs trained on the data about to be replaced
            if name.startswith(tuple(f"{m}_seed" for m in MODELS)):
                shutil.rmtree(os.path.join(d, name))
        start = time.time()
        workers = ["--direct_num_workers", "2"] if size["impressions"] >= 350_000 else []
        run_cli(["preprocess", "--config", config, "--ads", os.path.join(raw, "ads.csv"),
                 "--impressions", os.path.join(raw, "impressions.csv"), "--out", data, "--overwrite", *workers],
                os.path.join(d, "preprocess.log"))  # fmt: skip
        with open(preprocessed, "w") as f:
            f.write(dataset_sha)
        log(f"  {scenario}: preprocessed in {time.time() - start:.0f} s")
    return {"dir": d, "raw": raw, "data": data}


# --------------------------------------------------------------------------- regressions


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _splits(impressions: list[dict], data_dir: str) -> tuple[np.ndarray, set[str]]:
    """Each impression's split ("train", "valid", "eval") as preprocess assigned it, and the cold ads.

    From DATA/manifest.json (`eval_from_day`, `validation.valid_from_day`) and
    DATA/ad_counts.jsonl (`held_out` ads); the counts must match the manifest's.
    """
    with open(os.path.join(data_dir, "manifest.json")) as f:
        manifest = json.load(f)
    days = np.array([int(r["day"]) for r in impressions])
    eval_from = int(manifest["eval_from_day"])
    valid_from = (manifest.get("validation") or {}).get("valid_from_day")
    held_out: set[str] = set()
    cold: set[str] = set()  # no train impressions: the set `tfvctr evaluate` calls cold (read_cold_ads)
    with open(os.path.join(data_dir, "ad_counts.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row.get("held_out"):
                    held_out.add(str(row["ad_id"]))
                if int(row["train_impressions"]) == 0:
                    cold.add(str(row["ad_id"]))
    ads = np.array([r["ad_id"] for r in impressions])
    is_eval = days >= eval_from
    in_valid = ~is_eval & np.isin(ads, sorted(held_out))
    if valid_from is not None:
        in_valid |= ~is_eval & (days >= int(valid_from))
    split = np.full(len(impressions), "train", dtype=object)
    split[is_eval] = "eval"
    split[in_valid] = "valid"
    for name, counts in manifest.get("splits", {}).items():
        if int((split == name).sum()) != int(counts["impressions"]):
            sys.exit(f"generalisation: {data_dir}: {int((split == name).sum())} {name} impressions by the manifest's "
                     f"rules, but the manifest counts {counts['impressions']}; the split rules changed")  # fmt: skip
    return split, cold


def auc_standard_error(value: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982): the sampling error of an AUC over this many clicks and non-clicks."""
    if positives < 1 or negatives < 1 or math.isnan(value):
        return float("nan")
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    var = value * (1 - value) + (positives - 1) * (q1 - value**2) + (negatives - 1) * (q2 - value**2)
    return math.sqrt(var / (positives * negatives))


def _tokens(r: dict, ad: dict, features: list, edges: dict[str, np.ndarray]) -> list[str]:
    out = []
    for f in features:
        row = ad if f.source == "ad" else r
        value = row.get(f.name, "")
        if f.kind == "multi":
            out.extend(f"{f.name}={v}" for v in value.split("|") if v)
        elif f.kind == "numeric":
            try:
                x = float(value)
            except ValueError:
                out.append(f"{f.name}=missing")
                continue
            out.append(f"{f.name}#{int(np.searchsorted(edges[f.name], x))}")
        else:
            out.append(f"{f.name}={value}")
    return out


def regressions(paths: dict[str, str], config_path: str) -> dict[str, Any]:
    """The floor, the image ceiling and the Bayes ceiling of one scenario (cached in lr.json)."""
    cache = os.path.join(paths["dir"], "lr.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    import scipy.sparse as sp
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from tfvctr.config import load_config

    start, cpu_start = time.time(), time.process_time()
    dataset = load_config(config_path).dataset
    ads = {a["ad_id"]: a for a in _read_csv(os.path.join(paths["raw"], "ads.csv"))}
    effects = {
        e["ad_id"]: float(e["true_visual_logit"]) for e in _read_csv(os.path.join(paths["raw"], "ad_effects.csv"))
    }
    impressions = _read_csv(os.path.join(paths["raw"], "impressions.csv"))
    split, cold_ads = _splits(impressions, paths["data"])
    features = [f for f in dataset.features]
    train = split == "train"
    edges = {}
    for f in features:
        if f.kind == "numeric":
            rows = [ads[r["ad_id"]] if f.source == "ad" else r for r, t in zip(impressions, train, strict=True) if t]
            values = np.array([float(x[f.name]) for x in rows if x.get(f.name, "") != ""])
            edges[f.name] = np.unique(np.quantile(values, np.linspace(0, 1, int(f.num_buckets) + 1)[1:-1]))
    hasher = FeatureHasher(n_features=2**20, input_type="string", alternate_sign=False)
    X = hasher.transform(_tokens(r, ads[r["ad_id"]], features, edges) for r in impressions).tocsr()
    # Only the hashed columns that occur: L-BFGS then works on thousands of weights, not 2^20.
    X = X[:, np.unique(X.indices)]
    visual = sp.csr_matrix(np.array([[effects[r["ad_id"]]] for r in impressions]))
    X_told = sp.hstack([X, visual]).tocsr()
    y = np.array([int(r["label"]) for r in impressions])
    true_ctr = np.array([float(r["true_ctr"]) for r in impressions])
    ad_ids = np.array([r["ad_id"] for r in impressions])
    ev = split == "eval"
    cold = ev & np.isin(ad_ids, sorted(cold_ads))
    valid = split == "valid"
    if not valid.any():  # no valid split: the last train day picks C (never the eval day)
        days = np.array([int(r["day"]) for r in impressions])
        last = days[train].max()
        valid, train = train & (days == last), train & (days < last)

    def fit(matrix) -> dict[str, Any]:
        best = None
        for c in C_GRID:
            model = LogisticRegression(C=c, max_iter=1000).fit(matrix[train], y[train])
            score = auc(y[valid], model.decision_function(matrix[valid]))
            if best is None or score > best[0]:
                best = (score, c, model)
        _, c, model = best
        p = model.predict_proba(matrix)[:, 1]
        return {"C": c, "valid_auc": best[0], "auc": auc(y[ev], p[ev]), "cold_auc": auc(y[cold], p[cold]),
                "log_loss": float(log_loss(y[ev], p[ev], labels=[0, 1]))}  # fmt: skip

    result = {
        "floor": fit(X),
        "told": fit(X_told),
        "bayes": {"auc": auc(y[ev], true_ctr[ev]), "cold_auc": auc(y[cold], true_ctr[cold])},
        "counts": {"train": int(train.sum()), "valid": int(valid.sum()), "eval": int(ev.sum()),
                   "cold": int(cold.sum()), "cold_ads": len(cold_ads), "clicks_cold": int(y[cold].sum())},
        # What the eval day's size alone allows: differences below ~2 of these are noise.
        "cold_auc_se": auc_standard_error(auc(y[cold], true_ctr[cold]), int(y[cold].sum()), int((1 - y[cold]).sum())),
        "auc_se": auc_standard_error(auc(y[ev], true_ctr[ev]), int(y[ev].sum()), int((1 - y[ev]).sum())),
        "seconds": round(time.time() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }  # fmt: skip
    with open(cache, "w") as f:
        json.dump(result, f, indent=2)
    return result


# --------------------------------------------------------------------------- neural cells


def cell_overrides(model: str, seed: int, steps: int, eval_every: Optional[int]) -> list[str]:
    overrides = [*MODELS[model][1], f"training.seed={seed}", f"training.steps={steps}", f"name={model}_seed{seed}"]
    if eval_every:
        overrides.append(f"training.eval_every={eval_every}")
    return overrides


def child_main(spec_path: str) -> None:
    """In a child process: train + evaluate each cell of the spec, appending to results.jsonl."""
    with open(spec_path) as f:
        spec = json.load(f)
    from tfvctr.training.strategy import make_strategy

    strategy = make_strategy()  # before any other TensorFlow op
    import keras

    from tfvctr.config import load_config
    from tfvctr.evaluation import evaluate
    from tfvctr.training.trainer import train

    for cell in spec["cells"]:
        start, cpu_start = time.time(), time.process_time()
        probe = load_config(spec["config"])
        eval_every = None
        if hasattr(probe.training, "eval_every"):
            # The same number of validations whatever the steps (the default assumes 2,500).
            eval_every = max(spec["steps"] // spec["evals"], 1)
        config = load_config(spec["config"], cell_overrides(cell["model"], cell["seed"], spec["steps"], eval_every))
        model_dir = cell["model_dir"]
        train(config, spec["data"], model_dir, steps=spec["steps"], strategy=strategy)
        metrics = evaluate(model_dir, spec["data"])
        row = {
            "scenario": spec["scenario"], "model": cell["model"], "seed": cell["seed"], "steps": spec["steps"],
            "config_sha": spec["config_sha"],
            "auc": metrics["auc"], "cold_auc": metrics.get("cold", {}).get("auc"), "log_loss": metrics["log_loss"],
            "cold_impressions": metrics.get("cold", {}).get("impressions"),
        }  # fmt: skip
        selection = os.path.join(model_dir, "selection.json")
        if os.path.exists(selection):
            with open(selection) as f:
                s = json.load(f)
            row.update(best_step=s.get("best_step"), last_step=s.get("last_step"), stopped_early=s.get("stopped_early"),
                       selection_metric=s.get("metric"), valid=s.get("best"))  # fmt: skip
        # CPU seconds too: on a shared machine the wall clock says more about the neighbours.
        row["seconds"], row["cpu_seconds"] = round(time.time() - start, 1), round(time.process_time() - cpu_start, 1)
        with open(spec["results"], "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"  {spec['scenario']} {cell['model']} seed {cell['seed']}: AUC {row['auc']:.4f} cold "
            f"{row['cold_auc'] if row['cold_auc'] is None else round(row['cold_auc'], 4)} "
            f"(best step {row.get('best_step')}, {row['seconds']:.0f} s)",
            flush=True,
        )
        keras.backend.clear_session()


def run_cells(scenario: str, seed: int, models: list[str], paths: dict, config: str, plan: "Plan", work: str) -> None:
    steps, evals = plan.steps, plan.evals
    results = os.path.join(work, "results.jsonl")
    cells = [{"model": m, "seed": seed, "model_dir": os.path.join(paths["dir"], f"{m}_seed{seed}_{plan.config_sha}")}
             for m in models]  # fmt: skip
    # A cell killed mid-way runs again: `train` resumes from its checkpoints in model_dir.
    spec = {"scenario": scenario, "data": paths["data"], "config": config, "steps": steps, "results": results,
            "cells": cells, "evals": evals, "config_sha": plan.config_sha}  # fmt: skip
    spec_path = os.path.join(paths["dir"], f"spec_seed{seed}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    log_path = os.path.join(paths["dir"], f"train_seed{seed}.log")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "a") as f:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", spec_path],
                                stdout=subprocess.PIPE, stderr=f, env=env, text=True)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if line.startswith("  "):
                print(line, end="", flush=True)
        code = proc.wait()
    if code != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"generalisation: training {scenario} seed {seed} failed (exit {code}); log {log_path}:\n{tail}")


def load_results(work: str) -> list[dict]:
    path = os.path.join(work, "results.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: that cell runs again
                    pass
    return rows


# --------------------------------------------------------------------------- summary, checks, docs


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarise(plan: Plan, rows: list[dict], lr: dict[str, dict]) -> dict[str, dict]:
    """Per scenario: floor/ceilings and per model mean, std and gap share (cold ads)."""
    out = {}
    for s in plan.scenarios:
        r = lr[s]
        floor, told = r["floor"]["cold_auc"], r["told"]["cold_auc"]
        gap = told - floor
        models = {}
        for m in plan.models:
            mine = sorted((x for x in rows if x["scenario"] == s and x["model"] == m and x.get("steps") == plan.steps),
                          key=lambda x: x["seed"])  # fmt: skip
            mine = list({x["seed"]: x for x in mine}.values())
            a, a_sd = _mean_std([x["auc"] for x in mine])
            c, c_sd = _mean_std([x["cold_auc"] for x in mine])
            models[m] = {"auc": a, "auc_std": a_sd, "cold_auc": c, "cold_auc_std": c_sd, "n": len(mine),
                         "gap_share": (c - floor) / gap if gap > 0 else float("nan"),
                         "cold_by_seed": {x["seed"]: x["cold_auc"] for x in mine},
                         "best_steps": [x.get("best_step") for x in mine],
                         "seconds": float(np.mean([x["seconds"] for x in mine])) if mine else float("nan")}  # fmt: skip
        out[s] = {"lr": r, "models": models, "gap": gap}
    return out


def checks(plan: Plan, summary: dict[str, dict]) -> list[tuple[bool, str]]:
    """The acceptance targets of issue 12, each with the figures that decide it."""
    res = []
    for s, v in summary.items():
        floor = v["lr"]["floor"]
        m = v["models"]
        size = plan.sizes[s]["impressions"]
        visual = SCENARIOS[s].visual_strength > 0
        if "dcn" in m and m["dcn"]["n"]:
            d = m["dcn"]
            for key, label in (("auc", "all ads"), ("cold_auc", "cold ads")):
                margin = d[key] - floor[key]
                res.append((margin >= -0.003, f"{s}: DCN within 0.003 of the floor or above on {label}: "
                            f"{d[key]:.4f} vs {floor[key]:.4f} ({margin:+.4f})"))  # fmt: skip
        if "cscnn" in m and m["cscnn"]["n"]:
            c = m["cscnn"]
            margin = c["cold_auc"] - floor["cold_auc"]
            res.append((margin >= 0, f"{s}: CSCNN-DCN not below the floor on cold ads: {c['cold_auc']:.4f} vs "
                        f"{floor['cold_auc']:.4f} ({margin:+.4f})"))  # fmt: skip
            if visual and "dcn" in m and m["dcn"]["n"]:
                seeds = sorted(set(c["cold_by_seed"]) & set(m["dcn"]["cold_by_seed"]))
                diffs = np.array([c["cold_by_seed"][k] - m["dcn"]["cold_by_seed"][k] for k in seeds], dtype=float)
                sd = float(diffs.std(ddof=1)) if diffs.size > 1 else float("nan")
                mean = float(diffs.mean()) if diffs.size else float("nan")
                ok = diffs.size > 1 and mean > 2 * sd
                res.append((ok, f"{s}: CSCNN-DCN beats the DCN on cold ads by more than 2 std (paired over "
                            f"{diffs.size} seeds): {mean:+.4f} vs 2 x {sd:.4f}"))  # fmt: skip
            if visual:
                target = 0.5 if size >= LARGE else 0.25
                share = c["gap_share"]
                res.append((share >= target, f"{s}: CSCNN-DCN closes >= {target:.0%} of the floor -> image-ceiling gap "
                            f"on cold ads ({size:,} impressions): {share:.0%} of {v['gap']:.4f}"))  # fmt: skip
    return res


# Written by hand: what the figures mean and what was tried where a target is missed.
NOTES = """## Notes

* **What the figures say** (the run above: 900 steps, momentum SGD for the embeddings and
  head, Adam for the CNN; docs/generalisation_experiments.md has how the defaults were
  chosen). The DCN is within 0.003 of the floor on all ads in 4 of 8 scenarios and on cold
  ads in 3. The image helps cold ads clearly only where its effect is large and the same
  kind in every category: on contrast, attention lifts cold-ad AUC from 0.660 (CNN without
  attention) to 0.693 (CBAM) and 0.704 (CSCNN-DCN, 46 % of the gap); on colour the three
  sit within 0.003. Elsewhere the attention models add at most ~0.01 over the DCN (demo,
  region: CBAM just above the floor there, CSCNN-DCN just under it), the CNN without
  attention nothing, and CBAM and CSCNN-DCN are within one std of each other. On geometry all four
  are ~0.03 under the floor on cold ads: even the regression needs its strong L2
  (C = 0.03) there. On the `no_visual` control the image models score like the DCN: they
  no longer hurt where the image carries nothing.
* **What was tried here**: nothing per scenario, by design (one config, no tuning). The
  knobs issue 12 names (embedding L2, weight decay, dropout, per-part learning rates,
  `tfvctr tune`) are for the defaults in configs/demo.yaml; rerun this benchmark after
  changing them: its results are keyed by the config as written, so a changed config
  trains again and old rows are ignored, never mixed.
* **Steps and budget**: `STEPS` (300) is the default so that 8 scenarios x 4 models x 3
  seeds fit in an hour on 2 cores; the SGD head needs ~900 (docs/training.md), and at 900
  the whole suite takes ~80 min (`--plan` prints the estimate), over the hour. Model
  selection (`training.eval_every` = steps / 6, `selection_metric`, `patience`) keeps the
  best step on the valid split, shown per seed in *best step*. Where the best step is the
  last one the run was still improving.
* **Noise**: the std is over training seeds (`training.seed` 0..N-1) on one generated
  dataset per scenario. The eval day's own sampling error (Hanley-McNeil, under each
  scenario) is fixed across seeds and often larger: on the small low-CTR scenarios a
  cold-ad difference of 0.02-0.05 is within it.
* **The floor's C** (and the image ceiling's) is picked on the valid split, the split the
  trainer selects on (by default ads held out whole, so cold-like); it never sees the
  eval day. Held-out ads prefer strong regularisation on the demo (C = 0.003), which
  costs the floor some warm-ad AUC but is the fair protocol.
"""


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}"


def plot(summary: dict[str, dict], models: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(names) + 2), 4.8))
    series = [("floor (LR)", lambda v: (v["lr"]["floor"]["cold_auc"], 0.0), "#999999")]
    colours = {"dcn": "#4c72b0", "cnn": "#55a868", "cbam": "#c44e52", "cscnn": "#8172b2"}
    for m in models:
        series.append((MODELS[m][0], lambda v, m=m: (v["models"][m]["cold_auc"], v["models"][m]["cold_auc_std"]),
                       colours[m]))  # fmt: skip
    series.append(("image ceiling (LR told the effect)", lambda v: (v["lr"]["told"]["cold_auc"], 0.0), "#dd8452"))
    series.append(("Bayes (true_ctr)", lambda v: (v["lr"]["bayes"]["cold_auc"], 0.0), "#333333"))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, get, colour) in enumerate(series):
        vals = [get(summary[n]) for n in names]
        ax.bar(x + (i - len(series) / 2 + 0.5) * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
               label=label, color=colour, capsize=2)  # fmt: skip
    lows = [summary[n]["lr"]["floor"]["cold_auc"] for n in names] + [
        summary[n]["models"][m]["cold_auc"] for n in names for m in models
    ]
    lo = np.nanmin(lows)
    ax.set_ylim(max(0.4, lo - 0.05), min(1.0, max(summary[n]["lr"]["bayes"]["cold_auc"] for n in names) + 0.02))
    ax.set_xticks(x, names)
    ax.set_ylabel("cold-ad AUC, eval day")
    ax.set_title("Cold-ad AUC, eval day (mean ± std over seeds; one config)", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc(plan: Plan, summary: dict, results: list[tuple[bool, str]], path: str, png: str, command: str,
              minutes: float) -> None:  # fmt: skip
    rel_png = os.path.relpath(png, os.path.dirname(os.path.abspath(path)))
    lines = [
        "# Generalisation: the scenario suite (issue 12)",
        "",
        "Written by `benchmarks/generalisation.py`; do not edit by hand. Every scenario of",
        "`tfvctr demo-data --scenario` ([demo_data.md](demo_data.md#scenarios)) is trained with the",
        "same config (`configs/demo.yaml`, no per-scenario tuning) for the same number of steps,",
        "and scored on the eval day (day 6). **Cold ads** are the ads without train impressions",
        "(`tfvctr evaluate`'s set: the generator's cold ads plus validation-held-out ads seen on",
        "the eval day). The **floor** is a scikit-learn logistic regression on hashed one-hot",
        "non-visual features (C chosen on the valid split); the **image ceiling** is the same",
        "regression told each ad's true visual effect (`true_visual_logit`); **Bayes** is the AUC",
        "of the simulator's `true_ctr`. *Gap closed* is (model - floor) / (image ceiling - floor)",
        "on cold ads.",
        "",
        f"Command: `{command}` — {len(plan.scenarios)} scenarios × {len(plan.models)} models × "
        f"{plan.seeds} seeds, {plan.steps} steps per run; the runs and the regressions took {minutes:.0f} min of",
        "wall clock on the 2-core build machine, shared with other jobs (data generation and",
        "preprocessing, about 1 min per 100k impressions, not included). Config fingerprint "
        f"`{plan.config_sha}` (the resolved config is `WORK/config.resolved.yaml`).",
        "",
        f"![cold-ad AUC per scenario]({rel_png})",
        "",
        "## Acceptance (issue 12)",
        "",
    ]
    held = sum(ok for ok, _ in results)
    missing = [x for x in SUITE if x not in plan.scenarios]
    if missing and plan.steps == STEPS:
        lines += [f"**Partial suite**: {len(plan.scenarios)} of the {len(SUITE)} default scenarios; "
                  f"`python benchmarks/generalisation.py` runs the others ({', '.join(missing)}) and reuses "
                  "every finished run.", ""]  # fmt: skip
    lines.append(f"{held} of {len(results)} targets hold.")
    lines.append("")
    for ok, text in results:
        lines.append(f"- {'holds' if ok else '**misses**'}: {text}")
    lines += ["", "## Results", ""]
    for s, v in summary.items():
        z = plan.sizes[s]
        r = v["lr"]
        sc = SCENARIOS[s]
        p = sc.simulator_params()
        lines += [
            f"### {s}",
            "",
            f"{sc.summary}. {z['ads']:,} ads, {z['impressions']:,} impressions, {z['image_size']} px, "
            f"visual strength {p.visual_strength}, user bias std {p.user_bias_std}; eval day "
            f"{r['counts']['eval']:,} impressions, cold {r['counts']['cold']:,} ({r['counts']['clicks_cold']} clicks); "
            f"sampling error of an AUC near the ceiling (Hanley-McNeil): all {r.get('auc_se', float('nan')):.4f}, "
            f"cold {r.get('cold_auc_se', float('nan')):.4f}.",
            "",
            "| model | runs | AUC | cold-ad AUC | gap closed (cold) | best step |",
            "|---|---|---|---|---|---|",
            f"| floor: logistic regression (C={r['floor']['C']}) | | {r['floor']['auc']:.4f} | "
            f"{r['floor']['cold_auc']:.4f} | 0% | |",
        ]  # fmt: skip
        for m in plan.models:
            x = v["models"][m]
            share = "n/a" if math.isnan(x["gap_share"]) else f"{x['gap_share']:.0%}"
            steps = ", ".join(str(b) for b in x["best_steps"] if b is not None) or "last"
            lines.append(f"| {MODELS[m][0]} | {x['n']} of {plan.seeds} | {_fmt(x['auc'], x['auc_std'])} | "
                         f"{_fmt(x['cold_auc'], x['cold_auc_std'])} | {share} | {steps} |")  # fmt: skip
        lines += [
            f"| image ceiling: regression told the visual effect (C={r['told']['C']}) | | {r['told']['auc']:.4f} | "
            f"{r['told']['cold_auc']:.4f} | 100% | |",
            f"| Bayes: AUC of true_ctr | | {r['bayes']['auc']:.4f} | {r['bayes']['cold_auc']:.4f} | | |",
            "",
        ]
    lines += ["## Time per run", "", "| scenario | " + " | ".join(MODELS[m][0] for m in plan.models) + " |",
              "|---|" + "---|" * len(plan.models)]  # fmt: skip
    for s, v in summary.items():
        secs = [v["models"][m]["seconds"] for m in plan.models]
        lines.append(f"| {s} | " + " | ".join("n/a" if math.isnan(x) else f"{x:.0f} s" for x in secs) + " |")
    lines += ["", "Seconds per run: training (with its validation evaluations) and the eval-day evaluation,",
              "in one process per scenario and seed (the TensorFlow import is not included). The build",
              "machine was shared with other jobs while these ran, so the wall clocks are upper bounds.", "",
              NOTES]  # fmt: skip
    with open(path, "w") as f:
        f.write("\n".join(lines))


# --------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(REPO, "out", "generalisation"),
                        help="work dir: data, model dirs, results.jsonl (default: out/generalisation, git-ignored)")  # fmt: skip
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated scenario names, or 'all' (default: {','.join(SUITE)})")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per model (default: 3)")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per run (default: {STEPS})")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of {','.join(MODELS)} (default: all; --quick: {QUICK['models']})")  # fmt: skip
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.yaml"), help="the one config")
    parser.add_argument("--doc", default=None,
                        help="markdown to write (default: docs/generalisation.md; --quick: WORK/generalisation.md)")  # fmt: skip
    parser.add_argument("--png", default=None, help="plot to write (default: docs/img/generalisation.png)")
    parser.add_argument("--quick", action="store_true",
                        help=f"one tiny {QUICK['scenario']} scenario ({QUICK['impressions']} impressions, "
                        f"{QUICK['image_size']} px), one seed, {QUICK['steps']} steps, DCN and CSCNN-DCN only "
                        "(the test suite runs it)")  # fmt: skip
    parser.add_argument("--plan", action="store_true", help="print the budget plan and exit")
    parser.add_argument("--report", action="store_true",
                        help="write the doc and the checks from the cells finished so far; train nothing")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0

    names = args.models or (QUICK["models"] if args.quick else ",".join(MODELS))
    models = [m.strip() for m in names.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected a subset of {','.join(MODELS)}")
    if args.quick:
        scenarios = [QUICK["scenario"]]
        sizes = {QUICK["scenario"]: {"ads": QUICK["ads"], "impressions": QUICK["impressions"],
                                     "image_size": QUICK["image_size"]}}  # fmt: skip
        seeds = 1 if args.seeds == 3 else args.seeds
        steps = args.steps or QUICK["steps"]
    else:
        names = args.scenarios or ",".join(SUITE)
        scenarios = list(SCENARIOS) if names == "all" else [s.strip() for s in names.split(",") if s.strip()]
        bad = [s for s in scenarios if s not in SCENARIOS]
        if bad:
            parser.error(f"--scenarios: unknown {bad}; expected names from {','.join(SCENARIOS)} or 'all'")
        sizes = {s: {"ads": SCENARIOS[s].num_ads, "impressions": SCENARIOS[s].num_impressions, "image_size": 64}
                 for s in scenarios}  # fmt: skip
        seeds, steps = args.seeds, args.steps or STEPS
    plan = Plan(scenarios, seeds, steps, models, sizes, QUICK["evals"] if args.quick else EVALS)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    config = os.path.join(work, "config.yaml")
    plan.config_sha, dataset_sha = write_config(args.config, config, args.quick)
    if args.doc is None:  # a quick run never overwrites the suite's page
        args.doc = (
            os.path.join(work, "generalisation.md") if args.quick else os.path.join(REPO, "docs", "generalisation.md")
        )
    rows = load_results(work)
    done = plan.mine(rows)
    print_plan(plan, done)
    if len(rows) > len(done):
        log(
            f"  ({len(rows) - len(done)} finished cells of other steps or another config {plan.config_sha} are ignored)"
        )
    if args.plan:
        return 0
    started = time.time()

    lr = {}
    if args.report:  # what finished so far, nothing new run
        for s in scenarios:
            cache = os.path.join(work, s, "lr.json")
            if os.path.exists(cache):
                with open(cache) as f:
                    lr[s] = json.load(f)
        plan.scenarios = [s for s in scenarios if s in lr]
        if not plan.scenarios:
            sys.exit(f"generalisation: nothing finished in {work} yet")
    else:
        paths = {}
        for s in scenarios:
            paths[s] = prepare(s, work, config, sizes[s], dataset_sha)
            lr[s] = regressions(paths[s], config)
            f = lr[s]
            log(f"  {s}: floor {f['floor']['auc']:.4f} / cold {f['floor']['cold_auc']:.4f}; image ceiling "
                f"{f['told']['auc']:.4f} / {f['told']['cold_auc']:.4f}; Bayes {f['bayes']['auc']:.4f} / "
                f"{f['bayes']['cold_auc']:.4f}")  # fmt: skip
        # Seeds outermost: a suite cut short still has every scenario at one seed.
        for seed in range(seeds):
            for s in scenarios:
                finished = {
                    r["model"] for r in plan.mine(load_results(work)) if r["scenario"] == s and r["seed"] == seed
                }
                todo = [m for m in models if m not in finished]
                if todo:
                    run_cells(s, seed, todo, paths[s], config, plan, work)
    elapsed = 0.0 if args.report else time.time() - started
    timing_path = os.path.join(work, "wall_seconds.json")
    previous = 0.0
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            previous = json.load(f).get("seconds", 0.0)
    with open(timing_path, "w") as f:
        json.dump({"seconds": previous + elapsed}, f)
    summary = summarise(plan, plan.mine(load_results(work)), lr)
    results = checks(plan, summary)
    log(f"\n=== acceptance (issue 12): {sum(ok for ok, _ in results)} of {len(results)} hold")
    for ok, text in results:
        log(f"  {'HOLDS ' if ok else 'MISSES'} {text}")
    png = args.png or os.path.join(os.path.dirname(os.path.abspath(args.doc)), "img", "generalisation.png")
    plot(summary, models, png)
    command = (
        "python benchmarks/generalisation.py"
        + (" --quick" if args.quick else "")
        + (f" --scenarios {','.join(scenarios)}" if args.scenarios else "")
        + (f" --seeds {seeds}" if seeds != 3 and not args.quick else "")
        + (f" --steps {steps}" if args.steps else "")
        + (f" --models {args.models}" if args.models and not args.quick else "")
    )
    spent = sum(r["seconds"] for r in plan.mine(load_results(work)) if r["scenario"] in plan.scenarios)
    spent += sum(lr[s].get("seconds", 0.0) for s in plan.scenarios)
    write_doc(plan, summary, results, args.doc, png, command, spent / 60)
    log(f"\nwrote {args.doc} and {png} ({elapsed / 60:.1f} min this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
