"""`tfvctr daily`: one day of the production loop, a thin driver over the stage commands (docs/daily.md).

For day D, under the work dir W:

1. **preprocess** only day D's impressions (`W/data/D/`: train + the held-out ads' valid
   split, no eval split);
2. **window**: `W/window/D/` is the data dir the trainer reads: `train/` links to the train
   shards of the last `daily.window_days` days (the new day's `daily.new_day_repeat` times),
   `valid/` (and `eval/`, for the export's warmup rows) to day D's held-out ads, `vocab/` and
   `stats.json` frozen from the first day (`W/frozen/`; with `daily.vocabulary: grow` the
   day's new values are appended, `grow_vocabularies`); older dated folders are deleted;
3. **train** `W/models/D/`, warm-started from the promoted model at `daily.warm_learning_rate_factor`
   times the learning rate (from scratch on the first day; its tables widened first when the
   vocabularies grew, `widen_warm_start`);
4. **promote** only if the new model is not worse than the promoted one on day D's valid
   split by more than `daily.promote_margin` (`daily.promote_metric`); otherwise the old
   version keeps serving, and the day's report says why;
5. **embed** `W/tables/D/`: when the CNN's weights did not change (`daily.freeze_cnn`), only
   ads that are new or whose image bytes changed go through the CNN, the rest of the table
   is reused; else the table is rebuilt;
6. **export** the next version into `W/serving/<name>/<N>/` (checked by the export's
   fresh-process TF1 check before it appears), where a running `tfvctr serve --model-base
   W/serving` picks it up.

`W/state.json` holds the days seen, the window, the promoted model and version; `W/days/D.json`
the day's report (what ran, how long, how many ads embedded vs reused, the promotion decision).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Optional

import yaml

from tfvctr import layout
from tfvctr.config import Config, config_from_dict, load_config
from tfvctr.errors import DataError, TfvctrError
from tfvctr.io import fs, tables
from tfvctr.io.schema import format_day, parse_day

STATE = "state.json"
Log = Callable[[str], None]


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fs.write_atomic(path, json.dumps(fs.json_finite(value), indent=1, default=str) + "\n")


def load_state(workdir: str) -> dict:
    """`W/state.json`, or the state of a new work dir."""
    path = os.path.join(workdir, STATE)
    if not os.path.exists(path):
        return {"days": [], "window": [], "first_day": None, "day_format": None, "promoted": None, "history": []}
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass
class Paths:
    workdir: str

    def __post_init__(self) -> None:
        self.workdir = os.path.abspath(self.workdir)

    def data(self, day: str) -> str:
        return os.path.join(self.workdir, "data", day)

    def window(self, day: str) -> str:
        return os.path.join(self.workdir, "window", day)

    def model(self, day: str) -> str:
        return os.path.join(self.workdir, "models", day)

    def table(self, day: str) -> str:
        return os.path.join(self.workdir, "tables", day)

    @property
    def frozen(self) -> str:
        return os.path.join(self.workdir, "frozen")

    @property
    def serving(self) -> str:
        return os.path.join(self.workdir, "serving")

    def report(self, day: str) -> str:
        return os.path.join(self.workdir, "days", f"{day}.json")

    def config(self, day: str) -> str:
        return os.path.join(self.workdir, "configs", f"{day}.yaml")


# ----------------------------------------------------------------------------- the day's data


def day_config(config: Config, day_number: int) -> dict:
    """The config of day D's preprocess and training: held-out ads drawn per day.

    `ads` validation with the seed `validation.seed (or dataset.seed) + D`: each day holds
    out another share of ads, so no ad is kept out of training forever (a fixed draw would
    never let the model learn a tenth of the catalogue's ids).
    """
    data = config.to_dict()
    v = data["dataset"]["validation"]
    base = v["seed"] if v["seed"] is not None else data["dataset"]["seed"]
    v.update(mode="ads", seed=int(base) + int(day_number))
    data["dataset"]["eval_days"] = 1
    return data


def filter_day(impressions: str, day_number: int, out: str) -> dict[str, int]:
    """Day D's rows of the impressions table → `out` (JSON Lines); counts kept and skipped."""
    kept = other = 0
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        for row in tables.iter_rows(impressions):
            try:
                number, _ = parse_day(row.get("day"))
            except ValueError:
                number = None
            if number != day_number:
                other += 1
                continue
            f.write(json.dumps(row, default=_jsonable) + "\n")
            kept += 1
    if not kept:
        raise DataError(f"{impressions}: no impressions of day {day_number} ({other} rows of other days)")
    return {"impressions": kept, "other_days": other}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def preprocess_day(config_path: str, ads: str, impressions: str, out: str, beam_args: list[str]) -> dict:
    """`tfvctr preprocess` of one day with no eval split (train + valid), into `out`."""
    from beam_jobs import build_tfrecords

    args = argparse.Namespace(config=config_path, ads=ads, impressions=impressions, out=out, eval_from_day=None,
                              seed=None, overwrite=True, no_eval=True)
    return build_tfrecords.run_args(args, list(beam_args), verbose=False)


def _shards(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith((".tfrecord", ".tfrecord.gz")))


def _link_split(sources: list[tuple[str, int]], dest: str) -> int:
    """Symlinks the shards of each `(folder, repeat)` into `dest`; returns the number of links."""
    os.makedirs(dest, exist_ok=True)
    n = 0
    for folder, repeat in sources:
        tag = os.path.basename(os.path.dirname(folder))
        for r in range(repeat):
            for shard in _shards(folder):
                ext = ".tfrecord.gz" if shard.endswith(".gz") else ".tfrecord"
                os.symlink(shard, os.path.join(dest, f"{tag}-{r}-{os.path.basename(shard).split('.')[0]}{ext}"))
                n += 1
    return n


def build_window(paths: Paths, day: str, window: list[str], repeat: int) -> str:
    """`W/window/D/`: the one data dir the trainer, evaluate, embed and export read (see the module docstring)."""
    dest = paths.window(day)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    train = [(os.path.join(paths.data(d), layout.TRAIN), repeat if d == day else 1) for d in window]
    if not _link_split(train, os.path.join(dest, layout.TRAIN)):
        raise DataError(f"{dest}: the window's days {window} hold no train impressions")
    today = os.path.join(paths.data(day), layout.VALID)
    if not _link_split([(today, 1)], os.path.join(dest, layout.VALID)):
        raise DataError(f"{today}: day {day} has no held-out ads to validate on (dataset.validation.ads_share)")
    _link_split([(today, 1)], os.path.join(dest, layout.EVAL))  # the export's warmup rows
    shutil.copytree(os.path.join(paths.frozen, layout.VOCAB_DIR), os.path.join(dest, layout.VOCAB_DIR))
    shutil.copy(os.path.join(paths.frozen, layout.STATS), os.path.join(dest, layout.STATS))
    # ad_counts over the window: an ad is cold (valid) when no window day trained on it.
    counts: dict[str, dict] = {}
    for d in window:
        with open(os.path.join(paths.data(d), layout.AD_COUNTS)) as f:
            for line in f:
                row = json.loads(line)
                old = counts.get(row["ad_id"])
                if old is None:
                    counts[row["ad_id"]] = row
                else:
                    for key in ("train_impressions", "valid_impressions", "eval_impressions", "downsampled_negatives"):
                        old[key] = old.get(key, 0) + row.get(key, 0)
                    old.update(image=row["image"], category=row["category"])
    with open(os.path.join(dest, layout.AD_COUNTS), "w") as f:
        for row in counts.values():
            f.write(json.dumps(row, sort_keys=True) + "\n")
    with open(os.path.join(paths.data(day), layout.MANIFEST)) as f:
        manifest = json.load(f)
    manifest["window"] = {"days": window, "new_day_repeat": repeat, "frozen_from": paths.frozen}
    train_counts = {"impressions": 0, "positives": 0, "chunks": 0}
    for d in window:
        with open(os.path.join(paths.data(d), layout.MANIFEST)) as f:
            s = json.load(f)["splits"][layout.TRAIN]
        for k in train_counts:
            train_counts[k] += s[k]
    manifest["splits"][layout.TRAIN].update(train_counts)
    _write_json(os.path.join(dest, layout.MANIFEST), manifest)
    return dest


# ----------------------------------------------------------------------------- vocabularies


def _read_lines(path: str) -> list[str]:
    from tfvctr.features import read_vocabulary

    return read_vocabulary(path) if os.path.exists(path) else []


def grow_vocabularies(frozen: str, day_data: str) -> dict[str, list[str]]:
    """`daily.vocabulary: grow`: appends to `frozen/vocab/*.txt` the values of day D's vocabularies not in them.

    Day D's preprocess wrote the values its train split counts at least `min_frequency`
    times, most frequent first; those not yet in the vocabulary are appended in that order,
    so every old value keeps its line (its id) and a value is never removed. `stats.json`'s
    `vocab_size` follows; numeric statistics stay those of the first day.

    Returns:
        {vocabulary file name without .txt: the values appended} (only files that grew).
    """
    added: dict[str, list[str]] = {}
    folder = os.path.join(frozen, layout.VOCAB_DIR)
    for name in sorted(os.listdir(os.path.join(day_data, layout.VOCAB_DIR))):
        if not name.endswith(".txt"):
            continue
        path = os.path.join(folder, name)
        old = _read_lines(path)
        seen = set(old)
        new = [v for v in _read_lines(os.path.join(day_data, layout.VOCAB_DIR, name)) if v not in seen]
        if new:
            fs.write_atomic(path, "".join(f"{v}\n" for v in old + new))
            added[name[: -len(".txt")]] = new
    if added:
        stats_path = os.path.join(frozen, layout.STATS)
        with open(stats_path) as f:
            stats = json.load(f)
        for feature, values in added.items():
            if "vocab_size" in stats.get(feature, {}):
                stats[feature]["vocab_size"] += len(values)
        _write_json(stats_path, stats)
    return added


def widen_warm_start(config: Config, window_dir: str, model_dir: str, out: str, log: Log) -> Optional[str]:
    """The promoted model in tables sized for the window's (grown) vocabularies, or None when no table grew.

    Builds the model of `config` for `window_dir`'s vocabularies (its initialisers draw every
    weight), then copies each of `model_dir`'s weights in: whole when the shapes agree, into
    the first rows when a table grew along axis 0 (appended values: the old ids are the first
    rows). The new values' rows keep the layer's own initialisation. Weights pair up in model
    order (both models come from the same config), not by name: Keras numbers layer names
    per process. Writes `out/model.keras` (a warm start for `train(warm_start=out)`).
    """
    import keras
    import numpy as np

    import tfvctr.models  # noqa: F401 - registers the layers for load_model
    from tfvctr import data as data_lib
    from tfvctr.features import FeatureEncoder
    from tfvctr.models.factory import build_model
    from tfvctr.training.loop import model_inputs

    old = keras.saving.load_model(os.path.join(model_dir, layout.MODEL), compile=False)
    encoder = FeatureEncoder.from_data_dir(config.dataset, window_dir)
    new = build_model(config, encoder.num_categories, encoder.vocab_sizes, seed=config.training.seed)
    sample, _ = next(iter(data_lib.make_dataset(config, window_dir, layout.VALID, training=False, encoder=encoder,
                                                batch_size=1)))
    new(model_inputs(sample))
    if len(old.weights) != len(new.weights):
        raise TfvctrError(f"{model_dir}: {len(old.weights)} weights, the model of the window has {len(new.weights)}; "
                          f"was it trained with another model config?")
    grown = []
    for o, n in zip(old.weights, new.weights, strict=True):
        a = np.asarray(o.numpy())
        if tuple(a.shape) == tuple(n.shape):
            n.assign(a)
        elif a.ndim and tuple(a.shape[1:]) == tuple(n.shape[1:]) and a.shape[0] < n.shape[0]:
            b = np.array(n.numpy())
            b[: a.shape[0]] = a
            n.assign(b)
            grown.append(f"{n.path} {a.shape[0]}->{n.shape[0]}")
        else:
            raise TfvctrError(f"{model_dir}: weight {o.path} {tuple(a.shape)} does not fit {n.path} {tuple(n.shape)} "
                              f"(vocabularies may only grow)")
    if not grown:
        return None
    os.makedirs(out, exist_ok=True)
    new.save(os.path.join(out, layout.MODEL))
    log(f"daily: warm start widened: {', '.join(grown)}")
    return out


# ----------------------------------------------------------------------------- embedding


def tower_hash(model_dir: str) -> str:
    """sha256 of the visual tower's weights (not of the .keras file: its zip carries timestamps)."""
    import keras
    import numpy as np

    import tfvctr.models  # noqa: F401 - registers the layers for load_model

    tower = keras.saving.load_model(os.path.join(model_dir, layout.VISUAL_TOWER), compile=False)
    h = hashlib.sha256()
    for w in tower.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


IMAGES = "daily_images.json"  # in a daily table: {ad_id: sha256 of the image bytes}


def image_hashes(ads: str) -> tuple[dict[str, str], dict[str, dict]]:
    """`({ad_id: sha256 of its image bytes}, {ad_id: raw row with an absolute image path})` of the catalog."""
    hashes, rows = {}, {}
    for row in tables.iter_rows(ads):
        ad_id = str(row["ad_id"])
        path = tables.resolve_image_path(str(row["image"]), ads)
        try:
            with fs.open(path, "rb") as f:
                hashes[ad_id] = hashlib.sha256(f.read()).hexdigest()[:16]
        except OSError:
            hashes[ad_id] = "unreadable"  # embed dead-letters it; it is retried every day
        rows[ad_id] = {**row, "image": path}
    return hashes, rows


def _embed(model_dir: str, ads: str, data: str, out: str, beam_args: list[str]) -> dict:
    from beam_jobs import embed_ads

    return embed_ads.run(["--model", model_dir, "--ads", ads, "--out", out, "--data", data, "--coverage", "1",
                          "--overwrite", *beam_args], verbose=False)


def _read_table_arrays(path: str) -> dict:
    import io

    import numpy as np

    with open(os.path.join(path, layout.TABLE_INDEX)) as f:
        index = json.load(f)
    parts = []
    for name in index["shards"]:
        with open(os.path.join(path, name), "rb") as f, np.load(io.BytesIO(f.read())) as npz:
            parts.append({k: npz[k] for k in npz.files})
    keys = ("ad_id", "category", "impressions", "vectors")
    return {"index": index, **{k: np.concatenate([p[k] for p in parts]) for k in keys}}


def _write_merged(out: str, ad_id, category, impressions, vectors, index: dict, dtype: str) -> None:
    import io

    import numpy as np

    order = np.argsort(ad_id)
    ad_id, category, impressions, vectors = ad_id[order], category[order], impressions[order], vectors[order]
    os.makedirs(out, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, ad_id=ad_id.astype(str), category=category.astype(str), impressions=impressions.astype(np.int64),
             vectors=vectors.astype(dtype))
    with open(os.path.join(out, layout.table_shard(0)), "wb") as f:
        f.write(buf.getvalue())
    cats = sorted(set(category.tolist()))
    means = np.stack([vectors[category == c].astype(np.float64).mean(axis=0) for c in cats])
    buf = io.BytesIO()
    np.savez(buf, category=np.array(cats, dtype=str), vectors=means.astype(dtype))
    with open(os.path.join(out, layout.CATEGORY_MEANS), "wb") as f:
        f.write(buf.getvalue())
    index = {**index, "rows": int(len(ad_id)), "shards": [layout.table_shard(0)],
             "size_bytes": os.path.getsize(os.path.join(out, layout.table_shard(0)))}
    _write_json(os.path.join(out, layout.TABLE_INDEX), index)


def embed_day(paths: Paths, day: str, model_dir: str, ads: str, window_dir: str, previous: Optional[dict],
              beam_args: list[str], log: Log) -> dict:
    """The table of `model_dir` in `W/tables/D/`: incremental when the CNN did not change, else rebuilt."""
    import numpy as np

    out = paths.table(day)
    shutil.rmtree(out, ignore_errors=True)
    hashes, rows = image_hashes(ads)
    tower = tower_hash(model_dir)
    old_hashes = None
    if previous and previous.get("tower") == tower and os.path.exists(os.path.join(previous["table"], IMAGES)):
        with open(os.path.join(previous["table"], IMAGES)) as f:
            old_hashes = json.load(f)
    if old_hashes is None:
        reason = "first table" if not previous else "the CNN's weights changed"
        log(f"daily: embed: rebuilding the table ({reason}) ...")
        index = _embed(model_dir, ads, window_dir, out, beam_args)
        info = {"mode": "rebuilt", "reason": reason, "embedded": index["rows"], "reused": 0}
    else:
        old = _read_table_arrays(previous["table"])
        todo = sorted(a for a, h in hashes.items() if old_hashes.get(a) != h)
        keep = np.array([a in hashes and old_hashes.get(a) == hashes[a] for a in old["ad_id"].astype(str)], bool)
        log(f"daily: embed: CNN unchanged; {len(todo)} new or changed ads through the CNN, "
            f"{int(keep.sum())} rows reused ...")
        parts = {k: old[k][keep] for k in ("ad_id", "category", "impressions", "vectors")}
        index = {**old["index"], "model_dir": model_dir}
        if todo:
            subset = os.path.join(paths.workdir, "incoming", f"{day}-ads.jsonl")
            with open(subset, "w") as f:
                for a in todo:
                    f.write(json.dumps(rows[a], default=_jsonable) + "\n")
            part = out + ".new"
            new_index = _embed(model_dir, subset, window_dir, part, beam_args)
            new = _read_table_arrays(part)
            parts = {k: np.concatenate([parts[k], new[k]]) for k in parts}
            index["dead_letter_ads"] = new_index["dead_letter_ads"]
            shutil.rmtree(part, ignore_errors=True)
        _write_merged(out, parts["ad_id"], parts["category"], parts["impressions"], parts["vectors"], index,
                      old["index"]["dtype"])
        embedded = len(todo) - int(index.get("dead_letter_ads", 0) if todo else 0)
        info = {"mode": "incremental", "reason": "the CNN's weights did not change", "embedded": embedded,
                "reused": int(keep.sum())}
    _write_json(os.path.join(out, IMAGES), {a: h for a, h in hashes.items()})
    with open(os.path.join(out, layout.TABLE_INDEX)) as f:
        index = json.load(f)
    index["daily"] = info
    _write_json(os.path.join(out, layout.TABLE_INDEX), index)
    return {**info, "rows": index["rows"], "tower": tower, "table": out}


# ----------------------------------------------------------------------------- promotion


def promotion(new: dict, current: Optional[dict], metric: str, margin: float) -> tuple[bool, str]:
    """Whether the new model is promoted, and why (`metric`: "auc", higher is better, or "log_loss").

    Example:
        >>> promotion({"auc": 0.70}, {"auc": 0.71}, "auc", 0.002)
        (False, "new auc 0.7000 is worse than the served model's 0.7100 by 0.0100 > promote_margin 0.002")
    """
    if current is None:
        return True, "no model serves yet"
    a, b = float(new[metric]), float(current[metric])
    worse = (b - a) if metric == "auc" else (a - b)
    if worse > margin:
        return False, (f"new {metric} {a:.4f} is worse than the served model's {b:.4f} by {worse:.4f} > "
                       f"promote_margin {margin:g}")
    return True, f"new {metric} {a:.4f} vs served {b:.4f} (within promote_margin {margin:g})"


def _valid_metrics(model_dir: str, window_dir: str) -> dict:
    from tfvctr import evaluation

    m = evaluation.evaluate(model_dir, window_dir, split=layout.VALID, write=False)
    cold = m.get("cold") or {}
    return {"auc": m["auc"], "log_loss": m["log_loss"], "impressions": m["impressions"],
            "cold_auc": cold.get("auc"), "ece": (m.get("calibration") or {}).get("ece")}


# ----------------------------------------------------------------------------- the day


def warm_rates(cfg: Config, factor: float) -> None:
    """A warm-started day's learning rates: `training.learning_rate` (and `cnn_learning_rate`) times `factor`.

    Example:
        >>> from tfvctr.config import config_from_dict
        >>> cfg = config_from_dict({"dataset": {"features": []}, "training": {"learning_rate": 0.002}}, "x")
        >>> warm_rates(cfg, 0.25); cfg.training.learning_rate, cfg.training.cnn_learning_rate
        (0.0005, None)
    """
    cfg.training.learning_rate *= factor
    if cfg.training.cnn_learning_rate is not None:
        cfg.training.cnn_learning_rate *= factor


def run_day(config_path: str, workdir: str, day: str, ads: str, impressions: str, *,
            overrides: Optional[list[str]] = None, beam_args: Optional[list[str]] = None,
            log: Optional[Log] = print) -> dict:
    """Runs day `day` of the loop (see the module docstring); returns the day's report."""
    log = log or (lambda line: None)
    beam_args = list(beam_args or [])
    paths = Paths(workdir)
    config = load_config(config_path, overrides)
    daily = config.daily
    try:
        day_number, day_format = parse_day(day)
    except ValueError as e:
        raise TfvctrError(f"--day: {str(e)[len('day: '):]}") from None
    day = format_day(day_number, day_format)
    state = load_state(paths.workdir)
    if state["days"] and day_number <= state["days"][-1]:
        raise TfvctrError(f"--day {day}: days arrive in order; {paths.workdir}/{STATE} has run up to day "
                          f"{format_day(state['days'][-1], state['day_format'])}")
    os.makedirs(paths.workdir, exist_ok=True)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"day": day, "timings": timings}

    # 1. preprocess day D alone
    start = time.time()
    cfg = config_from_dict(day_config(config, day_number), config_path)
    os.makedirs(os.path.dirname(paths.config(day)), exist_ok=True)
    with open(paths.config(day), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    incoming = os.path.join(paths.workdir, "incoming", f"{day}-impressions.jsonl")
    report["input"] = filter_day(impressions, day_number, incoming)
    log(f"daily {day}: preprocess {report['input']['impressions']} impressions of day {day} -> {paths.data(day)} ...")
    manifest = preprocess_day(paths.config(day), ads, incoming, paths.data(day), beam_args)
    os.remove(incoming)
    s = manifest["splits"]
    report["preprocess"] = {"train": s[layout.TRAIN]["impressions"], "valid": s[layout.VALID]["impressions"],
                            "held_out_ads": manifest["validation"]["held_out_ads"],
                            "downsampled_negatives": manifest.get("downsampled_negatives", 0)}
    if state["first_day"] is None:
        # Vocabularies and statistics frozen from the first day: every later model indexes ids the same way.
        shutil.rmtree(paths.frozen, ignore_errors=True)
        shutil.copytree(os.path.join(paths.data(day), layout.VOCAB_DIR), os.path.join(paths.frozen, layout.VOCAB_DIR))
        shutil.copy(os.path.join(paths.data(day), layout.STATS), os.path.join(paths.frozen, layout.STATS))
        state["first_day"], state["day_format"] = day, day_format
    elif daily.vocabulary == "grow":
        added = grow_vocabularies(paths.frozen, paths.data(day))
        report["vocabulary"] = {"mode": "grow", "added": {k: len(v) for k, v in added.items()}}
        if added:
            log(f"daily {day}: vocabularies grown: " + ", ".join(f"{k} +{len(v)}" for k, v in added.items()))
    timings["preprocess"] = time.time() - start

    # 2. the window
    window = (state["window"] + [day])[-daily.window_days:]
    window_dir = build_window(paths, day, window, daily.new_day_repeat)
    report["window"] = window
    promoted = state["promoted"]
    keep = set(window) | ({promoted["day"]} if promoted else set())
    for kind in ("data", "window"):
        folder = os.path.join(paths.workdir, kind)
        for old in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if old not in keep:
                shutil.rmtree(os.path.join(folder, old), ignore_errors=True)
                log(f"daily {day}: deleted {kind}/{old} (outside the {daily.window_days}-day window)")

    # 3. train, warm-started from the promoted model
    from tfvctr.training.trainer import train

    start = time.time()
    warm = promoted["model_dir"] if promoted else None
    steps = daily.warm_steps if (warm and daily.warm_steps) else cfg.training.steps
    if warm and daily.freeze_cnn:
        cfg.training.freeze_cnn = True
    if warm:
        warm_rates(cfg, daily.warm_learning_rate_factor)
    log(f"daily {day}: train {steps} steps on {window} " + (f"warm-started from {warm}" if warm else "from scratch"))
    widened = os.path.join(paths.workdir, "incoming", f"{day}-warm-start")
    shutil.rmtree(widened, ignore_errors=True)
    if warm and daily.vocabulary == "grow" and not os.path.exists(paths.model(day)):
        # A grown vocabulary has more rows than the promoted model's tables (a resumed day
        # restores its own checkpoint instead).
        warm_from = widen_warm_start(cfg, window_dir, warm, widened, log) or warm
    else:
        warm_from = warm
    result = train(cfg, window_dir, paths.model(day), steps=steps, warm_start=warm_from, log=None)
    shutil.rmtree(widened, ignore_errors=True)
    timings["train"] = time.time() - start
    report["train"] = {"steps": int(result["step"]), "warm_start": warm, "freeze_cnn": cfg.training.freeze_cnn,
                       "learning_rate": cfg.training.learning_rate,
                       "best_step": result.get("best_step")}
    if result.get("calibration"):  # training.calibration: platt (M/calibration.json; the export applies it)
        report["train"]["calibration"] = result["calibration"]

    # 4. promote?
    start = time.time()
    new_metrics = _valid_metrics(paths.model(day), window_dir)
    current = _valid_metrics(promoted["model_dir"], window_dir) if promoted else None
    ok, why = promotion(new_metrics, current, daily.promote_metric, daily.promote_margin)
    timings["compare"] = time.time() - start
    report["promotion"] = {"promoted": ok, "reason": why, "new": new_metrics, "served": current}
    log(f"daily {day}: {'promote' if ok else 'keep serving the old version'}: {why}")

    if ok:
        # 5. embed
        start = time.time()
        report["embed"] = embed_day(paths, day, paths.model(day), ads, window_dir,
                                    promoted.get("embed") if promoted else None, beam_args, log)
        timings["embed"] = time.time() - start
        log(f"daily {day}: table {report['embed']['mode']}: {report['embed']['embedded']} ads embedded, "
            f"{report['embed']['reused']} reused")
        # 6. export the next version
        from tfvctr.export import export_model

        start = time.time()
        info = export_model(paths.model(day), report["embed"]["table"], paths.serving, log=None)
        timings["export"] = time.time() - start
        report["export"] = {"version": info["version"], "path": info["path"], "check": info["check"]}
        log(f"daily {day}: exported version {info['version']} -> {info['path']} (checked)")
        old_table = promoted["embed"]["table"] if promoted and promoted.get("embed") else None
        state["promoted"] = {"day": day, "model_dir": paths.model(day), "version": info["version"],
                             "metrics": new_metrics, "embed": report["embed"]}
        if old_table and old_table != report["embed"]["table"]:
            shutil.rmtree(old_table, ignore_errors=True)  # the export holds its own copy of the rows
    else:
        shutil.rmtree(paths.model(day), ignore_errors=True)  # never served; the report keeps its figures
    state["days"].append(day_number)
    state["window"] = window
    state["history"].append({"day": day, "promoted": ok, "reason": why,
                             "version": state["promoted"]["version"] if state["promoted"] else None})
    report["served_version"] = state["promoted"]["version"] if state["promoted"] else None
    report["seconds"] = sum(timings.values())
    _write_json(paths.report(day), report)
    _write_json(os.path.join(paths.workdir, STATE), state)
    return report
