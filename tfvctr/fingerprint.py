"""What a model was trained on, recorded in `M/fingerprint.json`, and the checks that use it.

A model's weights only mean something with the inputs they were trained on: the
features (names, kinds, sizes), the vocabularies (a value's id is its line number), the
numeric statistics (normalising and bucketizing), the image size and format, and the
architecture with its sizes. `tfvctr train` records them when training starts
(`check_training_dir`); then

* training again into that model dir with an incompatible config or data is refused,
  naming what differs (a changed `training.*` value is fine: it resumes);
* `check_model_data(model_dir, data_dir, stage)` (evaluate, embed, export, saliency) refuses a
  model dir whose training never finished ("last checkpoint at step N; run `tfvctr
  train` again to resume") and a data dir whose features or image size differ from the
  model's, or whose vocabularies changed under the model; it warns when only the data
  dir's own vocabularies differ (the model's are used; new values count as unknown).

See docs/bad_input.md for the whole policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import Any, Optional

from tfvctr import layout
from tfvctr.config import Config, DatasetConfig
from tfvctr.errors import DataError, TfvctrError
from tfvctr.io import fs

VERSION = 1
# Feature settings that change the model's inputs or weight shapes (min_frequency and
# default act through the data and so through the vocabulary and statistics hashes).
_FEATURE_KEYS = ("name", "source", "kind", "embedding_dim", "vocabulary", "hash_buckets", "max_length", "combiner",
                 "transform", "num_buckets")
STAGES = ("evaluate", "embed", "export", "saliency")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read(path: str) -> Optional[bytes]:
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return f.read()


def vocabulary_hashes(dataset: DatasetConfig, data_dir: str) -> dict[str, Optional[str]]:
    """sha256 (16 hex digits) of each vocabulary the model indexes with: `category` and every
    `vocabulary: auto` feature from DATA_DIR/vocab, a path vocabulary from its file."""
    paths = {"category": fs.join(data_dir, layout.VOCAB_DIR, layout.CATEGORY_VOCAB)}
    for f in dataset.features:
        if f.kind in ("categorical", "multi") and f.vocabulary is not None:
            paths[f.name] = fs.join(data_dir, layout.vocab_file(f.name)) if f.vocabulary == "auto" else f.vocabulary
    out = {}
    for name, path in sorted(paths.items()):
        data = _read(path)
        out[name] = None if data is None else _sha(data)
    return out


def stats_hash(dataset: DatasetConfig, data_dir: str) -> Optional[str]:
    """sha256 of the statistics the numeric features are transformed with (mean, std, boundaries)."""
    data = _read(fs.join(data_dir, layout.STATS))
    if data is None:
        return None
    try:
        stats = json.loads(data)
    except ValueError:
        return None
    used = {f.name: {k: stats.get(f.name, {}).get(k) for k in ("mean", "std", "boundaries")}
            for f in dataset.features if f.kind == "numeric"}
    return _sha(json.dumps(used, sort_keys=True).encode())


def _features(dataset: DatasetConfig) -> list[dict]:
    out = []
    for f in dataset.features:
        d = {k: getattr(f, k) for k in _FEATURE_KEYS}
        out.append(d)
    return out


def _model(config: Config) -> dict:
    # Dropout rates change no weight: resuming with another one is fine.
    return {k: v for k, v in config.to_dict()["model"].items() if "dropout" not in k}


def fingerprint(config: Config, data_dir: str) -> dict[str, Any]:
    """The fingerprint of training `config` on `data_dir` (what `fingerprint.json` holds)."""
    ds = config.dataset
    return {
        "version": VERSION,
        "features": _features(ds),
        "vocabularies": vocabulary_hashes(ds, data_dir),
        "stats": stats_hash(ds, data_dir),
        "image": {"size": ds.image_size, "format": ds.image_format},
        "model": _model(config),
        "data_dir": data_dir if fs.is_remote(data_dir) else os.path.abspath(data_dir),
    }


def read_fingerprint(model_dir: str) -> Optional[dict]:
    data = _read(fs.join(model_dir, layout.FINGERPRINT))
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise DataError(f"{fs.join(model_dir, layout.FINGERPRINT)}: not valid JSON (a damaged model dir?)") from None


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def differences(old: dict, new: dict, keys: tuple[str, ...] = ("features", "vocabularies", "stats", "image", "model")
                ) -> list[str]:
    """Readable differences between two fingerprints ("model.deep_layers: [8] → [16]")."""
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "features":
            named_a = {f["name"]: f for f in a or []}
            named_b = {f["name"]: f for f in b or []}
            for name in named_a.keys() - named_b.keys():
                out.append(f"feature {name!r} removed")
            for name in named_b.keys() - named_a.keys():
                out.append(f"feature {name!r} added")
            for name in sorted(named_a.keys() & named_b.keys()):
                for k in _FEATURE_KEYS:
                    if named_a[name].get(k) != named_b[name].get(k):
                        out.append(f"feature {name!r} {k}: {_show(named_a[name].get(k))} → {_show(named_b[name].get(k))}")
        elif key == "vocabularies":
            changed = sorted(n for n in set(a or {}) | set(b or {}) if (a or {}).get(n) != (b or {}).get(n))
            out.append("vocabularies differ: " + ", ".join(changed))
        elif key == "stats":
            out.append("numeric statistics (stats.json) differ")
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{'image' if key == 'image' else key}.{k}: {_show(a.get(k))} → {_show(b.get(k))}")
        else:
            out.append(f"{key}: {_show(a)} → {_show(b)}")
    return out


def _summary(diffs: list[str], limit: int = 3) -> str:
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


# --------------------------------------------------------------------------- checkpoints


def last_checkpoint_step(model_dir: str) -> Optional[int]:
    """The step of the latest model checkpoint (from `checkpoints/checkpoint`), or None."""
    data = _read(fs.join(model_dir, layout.CHECKPOINTS_DIR, "checkpoint"))
    if data is None:
        return None
    match = re.search(rb'model_checkpoint_path:\s*"[^"]*?(\d+)"', data)
    return int(match.group(1)) if match else None


def check_checkpoint_readable(model_dir: str) -> None:
    """Refuses (one line) a latest checkpoint that cannot be read whole: a truncated or
    corrupt file would otherwise fail deep inside TensorFlow's restore."""
    import tensorflow as tf

    folder = fs.join(model_dir, layout.CHECKPOINTS_DIR)
    path = tf.train.latest_checkpoint(folder)
    if path is None:
        return
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # DataLossError, OutOfRangeError, NotFoundError...: all mean "unreadable"
        from tfvctr.errors import readable

        raise DataError(f"{path}: checkpoint unreadable ({readable(str(e))[:120]}); delete ckpt-{path.rsplit('-', 1)[-1]}.* "
                        f"to resume from the one before, or train into a new --model-dir") from None


# --------------------------------------------------------------------------- the checks


def check_training_dir(config: Config, data_dir: str, model_dir: str, write: bool = True) -> dict:
    """Before training: refuses a model dir trained on something incompatible; records the
    fingerprint if the dir has none (`write`: the chief only). Returns the fingerprint."""
    fs.check_writable(model_dir, "model dir")
    new = fingerprint(config, data_dir)
    old = read_fingerprint(model_dir)
    trained = last_checkpoint_step(model_dir) is not None or fs.exists(fs.join(model_dir, layout.MODEL))
    if old is not None and not trained:
        old = None  # recorded, but no weights came of it: nothing to be incompatible with
    if old is not None:
        diffs = differences(old, new)
        if diffs:
            raise TfvctrError(f"{model_dir}: was trained on something else: {_summary(diffs)}; train into a new "
                              f"--model-dir (or delete this one)")
    if last_checkpoint_step(model_dir) is not None:
        check_checkpoint_readable(model_dir)
    if old is None and write:
        fs.makedirs(model_dir)
        fs.write_atomic(fs.join(model_dir, layout.FINGERPRINT), json.dumps(new, indent=1, sort_keys=True) + "\n")
    return new


def trained_data_dir(model_dir: str, default: Optional[str] = None) -> Optional[str]:
    """The data dir `MODEL/data_dir.txt` names (the data the model was trained on, whose
    vocabularies give the ids the model knows), else `default`."""
    data = _read(fs.join(model_dir, layout.DATA_DIR_POINTER))
    if data is not None and data.strip():
        return data.decode().strip()
    return default


def _trained_on(model_dir: str, fp: Optional[dict]) -> Optional[str]:
    return trained_data_dir(model_dir, fp.get("data_dir") if fp else None)


def _data_config(data_dir: str) -> Optional[DatasetConfig]:
    """The dataset config a data dir was written with (its manifest), or None."""
    from tfvctr.config import config_from_dict

    data = _read(fs.join(data_dir, layout.MANIFEST))
    if data is None:
        return None
    try:
        return config_from_dict(json.loads(data)["config"], fs.join(data_dir, layout.MANIFEST)).dataset
    except (ValueError, KeyError, TfvctrError):
        return None


def check_model_data(model_dir: str, data_dir: Optional[str], stage: str, warn: Any = None) -> Optional[dict]:
    """Refuses (one line) a model dir `stage` cannot use, or a data dir that does not fit it.

    Args:
        model_dir: a `tfvctr train` model dir.
        data_dir: the data the stage reads (None: check the model dir only).
        stage: "evaluate", "embed", "export" or "saliency".
        warn: called with each `WARNING:` line (default: print to stderr).

    Returns:
        The model's fingerprint (None for a model dir trained before fingerprints existed).
    """
    if stage not in STAGES:
        raise ValueError(f"Invalid value received for argument `stage`. Expected one of {STAGES}. Received: stage={stage!r}")
    warn = warn or (lambda line: print(line, file=sys.stderr))
    if not fs.exists(model_dir):
        raise DataError(f"{model_dir}: no such model dir; expected the --model-dir of `tfvctr train`")
    needed = layout.VISUAL_TOWER if stage == "embed" else layout.MODEL
    if not fs.exists(fs.join(model_dir, needed)):
        if stage == "embed" and fs.exists(fs.join(model_dir, layout.MODEL)):
            raise DataError(f"{model_dir}: no {layout.VISUAL_TOWER}: the model has no visual tower to embed with "
                            f"(model.architecture without a CNN?)")
        step = last_checkpoint_step(model_dir)
        if step is not None:
            raise DataError(f"{model_dir}: training never finished: last checkpoint at step {step}; "
                            f"run `tfvctr train` again to resume")
        raise DataError(f"{fs.join(model_dir, needed)}: no trained model; run `tfvctr train --model-dir {model_dir}` first")
    fp = read_fingerprint(model_dir)
    if fp is None:
        return None
    trained_on = _trained_on(model_dir, fp)
    if trained_on and fs.exists(trained_on):
        # The model's ids are line numbers of *these* vocabularies: they must not have changed.
        now = {"vocabularies": vocabulary_hashes(_dataset_of(fp), trained_on)}
        diffs = differences({"vocabularies": fp["vocabularies"]}, now, keys=("vocabularies",))
        if diffs:
            raise DataError(f"{trained_on}: the vocabularies the model was trained with changed since "
                            f"({_summary(diffs)}); its ids no longer match the model; preprocess again and retrain")
    if data_dir is None:
        return fp
    data_ds = _data_config(data_dir)
    if data_ds is not None:
        diffs = _data_differences(fp, data_ds)
        if diffs:
            raise DataError(f"{data_dir}: does not fit model {model_dir}: {_summary(diffs)}")
    if trained_on and fs.exists(fs.join(data_dir, layout.VOCAB_DIR)):
        mine = vocabulary_hashes(_dataset_of(fp), data_dir)
        changed = sorted(n for n, h in mine.items() if h is not None and h != fp["vocabularies"].get(n))
        if changed:
            warn(f"WARNING: {data_dir}'s vocabularies differ from the model's ({', '.join(changed)}); {stage} uses the "
                 f"model's own (from {trained_on}): values new to them count as unknown")
    return fp


def _dataset_of(fp: dict) -> DatasetConfig:
    from tfvctr.config import config_from_dict

    features = [{k: v for k, v in f.items() if v is not None} for f in fp["features"]]
    return config_from_dict({"dataset": {"features": features}}, "fingerprint.json").dataset


def _data_differences(fp: dict, data: DatasetConfig) -> list[str]:
    """What in a data dir (as its manifest's config says) does not fit the model's fingerprint."""
    diffs = []
    have = {f.name: f for f in data.features}
    for f in fp["features"]:
        mine = have.get(f["name"])
        if mine is None:
            diffs.append(f"it lacks feature {f['name']!r} the model was trained on")
        elif mine.kind != f["kind"] or mine.source != f["source"]:
            diffs.append(f"feature {f['name']!r} is {mine.source} {mine.kind}, the model's is {f['source']} {f['kind']}")
    image = fp["image"]
    if data.image_size != image["size"]:
        diffs.append(f"its images are {data.image_size} px, the model's {image['size']} px")
    if data.image_format != image["format"]:
        diffs.append(f"its images are {data.image_format}, the model's {image['format']}")
    return diffs


__all__ = [
    "check_checkpoint_readable",
    "check_model_data",
    "check_training_dir",
    "differences",
    "fingerprint",
    "last_checkpoint_step",
    "read_fingerprint",
    "stats_hash",
    "vocabulary_hashes",
]
