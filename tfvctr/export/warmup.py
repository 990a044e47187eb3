"""Real eval rows in the signature's raw layout, and TF Serving's warmup file built from them.

`sample_rows` reads the first impressions of a split of grouped TFRecords (docs/formats.md
§2) and flattens them to one row per impression, the layout a serving client sends
(docs/export.md): ad-level values repeated on each of the ad's impressions, multi-valued
features padded with `""`, numbers as float32 (NaN = missing), plus the prepared image.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
import tensorflow as tf

from tfvctr import data as data_lib
from tfvctr import layout
from tfvctr.config import Config
from tfvctr.export import protos
from tfvctr.export.signature import AD_ID, DEFAULT_SIGNATURE, IMAGE_BYTES, IMAGE_SIGNATURE, input_specs
from tfvctr.features import CATEGORY
from tfvctr.io import fs

MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many
UNKNOWN_SUFFIX = "#not-in-table"  # warmup also exercises the fallback path


def _strings(values: Iterable[Any]) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values]


def sample_rows(config: Config, data_dir: str, n: int, split: str = "eval") -> dict[str, np.ndarray]:
    """The first `n` impressions of `DATA_DIR/split` as signature inputs (with `image_bytes`) and `label`."""
    files = data_lib.list_shards(data_dir, split)
    ds = config.dataset
    columns: dict[str, list] = {name: [] for name in input_specs(config, with_image=True)}
    columns["label"] = []
    compression = "GZIP" if files[0].endswith(".gz") else ""
    with data_lib.data_errors(files):
        for record in tf.data.TFRecordDataset(files, compression_type=compression):
            chunk = data_lib.parse_chunk(record, ds)
            labels = chunk["seq/label"].numpy()
            for i in range(len(labels)):
                if len(columns["label"]) == n:
                    break
                columns["label"].append(float(labels[i]))
                columns[AD_ID].append(chunk["ad_id"].numpy())
                columns[CATEGORY].append(chunk["category"].numpy())
                columns[IMAGE_BYTES].append(chunk["image"].numpy())
                for f in ds.features:
                    if f.name == CATEGORY:
                        continue
                    value = chunk[f.name] if f.source == "ad" else chunk[f"seq/{f.name}"][i]
                    value = value.numpy() if hasattr(value, "numpy") else value
                    if f.kind == "multi":
                        columns[f.name].append(list(np.asarray(value).reshape(-1))[: f.max_length])
                    else:
                        columns[f.name].append(np.asarray(value).reshape(-1)[0])
            if len(columns["label"]) == n:
                break
    out: dict[str, np.ndarray] = {}
    for f in ds.features:
        if f.kind == "multi":
            width = max([len(v) for v in columns[f.name]] + [1])
            padded = [_strings(v) + [b""] * (width - len(v)) for v in columns[f.name]]
            out[f.name] = np.array(padded, dtype=object).reshape(len(padded), width)
        elif f.kind == "numeric":
            out[f.name] = np.array(columns[f.name], np.float32)
    for name, values in columns.items():
        if name not in out:
            out[name] = (np.array(values, np.float32) if name == "label"
                         else np.array(_strings(values), dtype=object))
    return out


def take(rows: dict[str, np.ndarray], index: Any) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in rows.items()}


def warmup_requests(config: Config, rows: dict[str, np.ndarray], batch_sizes: tuple[int, ...] = (1, 10, 100),
                    ) -> list[tuple[str, dict[str, np.ndarray]]]:
    """`(signature, inputs)` requests from real rows: one per batch size for `serving_default`
    (the last with every other ad_id made unknown, to warm up the fallback), and one of up
    to 10 rows for `score_with_image`."""
    n = len(rows[AD_ID])
    plain = input_specs(config)
    with_image = input_specs(config, with_image=True)
    requests = []
    for size in batch_sizes:
        part = take(rows, slice(0, min(size, n)))
        requests.append((DEFAULT_SIGNATURE, {k: part[k] for k in plain}))
    unknown = {k: v.copy() for k, v in requests[-1][1].items()}
    unknown[AD_ID] = np.array([a + UNKNOWN_SUFFIX.encode() if i % 2 else a for i, a in enumerate(unknown[AD_ID])],
                              dtype=object)
    requests.append((DEFAULT_SIGNATURE, unknown))
    part = take(rows, slice(0, min(10, n)))
    requests.append((IMAGE_SIGNATURE, {k: part[k] for k in with_image}))
    return requests[:MAX_WARMUP_RECORDS]


def warmup_path(export_dir: str) -> str:
    return fs.join(export_dir, layout.WARMUP_DIR, layout.WARMUP_FILE)


def write_warmup(export_dir: str, model_name: str, requests: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    """Writes `assets.extra/tf_serving_warmup_requests` (a TFRecord of `PredictionLog`)."""
    path = warmup_path(export_dir)
    fs.makedirs(fs.join(export_dir, layout.WARMUP_DIR))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            writer.write(protos.predict_log_record(model_name, signature, inputs))
    return path


def read_warmup(export_dir: str, limit: Optional[int] = None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The `(signature, inputs)` requests of an export's warmup file."""
    out = []
    for record in tf.data.TFRecordDataset(warmup_path(export_dir)):
        out.append(protos.parse_prediction_log(bytes(record.numpy())))
        if limit is not None and len(out) == limit:
            break
    return out
