"""`tfvctr init-config`: a commented starter config inferred from a sample of the raw tables.

Reads the first `sample_rows` rows of each table (`tfvctr.io.tables`: CSV, JSON Lines or
Parquet) and a few images, and decides, column by column (the thresholds are the module
constants below, and the written config repeats them in its comments):

* **multi-valued**: JSON/Parquet lists, or CSV strings with `|` in at least
  `MULTI_SHARE` of the non-empty values; `max_length` = the 95th percentile of the list
  lengths (at most `MAX_LIST_LENGTH`);
* **numeric**: every non-empty value a number, unless they are all integers with at most
  `SMALL_INTEGER_CARDINALITY` distinct values (an hour, a slot, a code: categorical) or the
  table typed them as strings (JSON `"7"`); constant columns are left out;
* **categorical** otherwise; a `vocabulary: auto` when the sample holds at most
  `VOCAB_MAX` distinct values, else `hash_buckets` = the power of two >= `HASH_FACTOR` x
  the sample's distinct values (a sample underestimates the cardinality);
* **embedding size** 6 x cardinality^(1/4) (the rule of thumb of Google's feature-column
  guide), at most the cardinality, clipped to [`MIN_EMBEDDING`, `MAX_EMBEDDING`];
* columns whose name says they hold a click probability (`ctr`, `prob`, `pred`, `score`)
  are `passthrough` (kept for evaluation), never features: a model fed a predicted CTR
  learns nothing from the ad;
* `user_id` is carried (per-user AUC) but not embedded, as in the demo (a commented line
  shows how to embed it);
* the day column's format (day numbers or ISO dates), the eval split (the last day), K (the
  median impressions per ad, within [4, 25]) and the image size (the sample images' side,
  at most `MAX_IMAGE_SIZE`, a multiple of 8).

The config it writes is loaded and validated before it is written, so `tfvctr preprocess`
and `tfvctr train` accept it as it is.
"""

from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from tfvctr.config import RESERVED_COLUMNS, config_from_dict
from tfvctr.errors import DataError
from tfvctr.io import fs, tables
from tfvctr.io.schema import ADS_REQUIRED, IMPRESSIONS_REQUIRED, MULTI_SEPARATOR, parse_day

SAMPLE_ROWS = 20_000  # rows read from each table
MULTI_SHARE = 0.05  # CSV: a column is multi-valued when this share of its values hold "|"
MAX_LIST_LENGTH = 16
SMALL_INTEGER_CARDINALITY = 24  # integer columns with <= this many values are categorical
VOCAB_MAX = 1_000  # distinct values in the sample up to which a vocabulary is built
HASH_FACTOR = 4
MIN_EMBEDDING, MAX_EMBEDDING = 4, 16
MAX_IMAGE_SIZE = 128
SAMPLE_IMAGES = 16
PROBABILITY_WORDS = ("ctr", "prob", "pred", "score")


@dataclass
class Column:
    """What the sample says about one column."""

    name: str
    source: str
    kind: Optional[str] = None  # categorical, multi, numeric; None: not a feature
    distinct: int = 0
    max_length: int = 1
    note: str = ""
    values: set = field(default_factory=set)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _as_list(value: Any) -> Optional[list]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # Parquet lists as arrays
        listed = value.tolist()
        return listed if isinstance(listed, list) else None
    return None


def embedding_dim(cardinality: int) -> int:
    """6 x cardinality^(1/4), clipped to [MIN_EMBEDDING, MAX_EMBEDDING].

    Example:
        >>> embedding_dim(3), embedding_dim(10), embedding_dim(10_000)
        (4, 10, 16)
    """
    # Never wider than the number of values (a 3-value column needs no 8 dimensions).
    return int(min(MAX_EMBEDDING, max(MIN_EMBEDDING, min(cardinality, round(6 * cardinality ** 0.25)))))


def hash_buckets(distinct: int) -> int:
    """The power of two >= HASH_FACTOR x `distinct` (the sample's distinct values).

    Example:
        >>> hash_buckets(1500)
        8192
    """
    return 1 << max(1, math.ceil(math.log2(HASH_FACTOR * max(distinct, 1))))


def infer_column(name: str, source: str, values: list[Any], typed: bool = False) -> Column:
    """The kind of one column from its sampled values (see the module docstring).

    `typed`: the table keeps value types (JSON Lines, Parquet), so strings that look like
    numbers (`"hour": "7"`) were written as strings on purpose: categorical.
    """
    col = Column(name, source)
    present = [v for v in values if not _is_missing(v)]
    if not present:
        col.note = "empty in the sample: left out"
        return col
    lists = [_as_list(v) for v in present]
    piped = sum(1 for v in present if isinstance(v, str) and MULTI_SEPARATOR in v)
    if all(x is not None for x in lists) or piped >= MULTI_SHARE * len(present):
        items = [x if x is not None else (v.split(MULTI_SEPARATOR) if isinstance(v, str) else [v])
                 for x, v in zip(lists, present, strict=True)]
        lengths = sorted(len(i) for i in items)
        col.kind = "multi"
        col.values = {str(x) for i in items for x in i if not _is_missing(x)}
        col.max_length = max(1, min(MAX_LIST_LENGTH, lengths[int(0.95 * (len(lengths) - 1))]))
        how = "lists" if all(x is not None for x in lists) else "'|'-separated"
        col.note = f"{how}; max_length = 95th percentile of the lengths"
        col.distinct = len(col.values)
        return col
    numbers = [_number(v) for v in present]
    col.values = {str(v) for v in present}
    col.distinct = len(col.values)
    strings_on_purpose = typed and all(isinstance(v, str) for v in present)
    if all(n is not None for n in numbers) and not strings_on_purpose:
        distinct = len(set(numbers))
        if distinct < 2:
            col.note = "constant in the sample: left out"
            return col
        if all(float(n).is_integer() for n in numbers) and distinct <= SMALL_INTEGER_CARDINALITY:
            col.kind = "categorical"
            col.note = f"{distinct} integer values (<= {SMALL_INTEGER_CARDINALITY}): categorical"
        else:
            col.kind = "numeric"
            col.note = f"numbers, {distinct} distinct in the sample"
            col.values = set()
        return col
    col.kind = "categorical"
    return col


def _sample(path: str, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    columns = tables.table_columns(path)
    rows = []
    for row in tables.iter_rows(path):
        rows.append(row)
        if len(rows) == limit:
            break
    if not rows:
        raise DataError(f"{path}: no rows to infer a config from")
    return columns, rows


def _require(path: str, table: str, columns: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        what = ", ".join(repr(c) for c in missing)
        raise DataError(f"{path}: missing required column{'s' if len(missing) > 1 else ''} {what}: the {table} table "
                        f"needs {', '.join(required)} (docs/formats.md §1); found: {', '.join(columns) or '(none)'}")


def _image_size(ads_path: str, rows: list[dict[str, Any]]) -> tuple[int, str, str]:
    """(image_size, image_format, note) from the first SAMPLE_IMAGES images that open."""
    from PIL import Image

    sides, formats, failed = [], [], 0
    for row in rows[: SAMPLE_IMAGES * 2]:
        if len(sides) == SAMPLE_IMAGES:
            break
        try:
            with fs.open(tables.resolve_image_path(str(row["image"]), ads_path), "rb") as f:
                image = Image.open(io.BytesIO(f.read()))
                sides.append(min(image.size))
                formats.append((image.format or "").lower())
        except Exception:  # noqa: BLE001 - an unreadable image is the preprocess job's to dead-letter
            failed += 1
    if not sides:
        raise DataError(f"{ads_path}: none of the first {failed} images could be read (column 'image' points at "
                        f"them, relative to the table's folder)")
    side = int(statistics.median(sides))
    size = max(16, min(MAX_IMAGE_SIZE, side) // 8 * 8)
    fmt = "png" if formats.count("png") > len(formats) / 2 else "jpeg"
    return size, fmt, f"median side of {len(sides)} sample images {side} px (at most {MAX_IMAGE_SIZE}, a multiple of 8)"


def _feature_line(col: Column) -> str:
    parts = [f"name: {col.name}", f"source: {col.source}", f"kind: {col.kind}"]
    if col.kind == "numeric":
        parts += ["transform: bucketize", "num_buckets: 10", f"embedding_dim: {MIN_EMBEDDING}"]
        comment = col.note
    else:
        if col.distinct <= VOCAB_MAX:
            parts.append("vocabulary: auto")
            comment = f"{col.distinct} values in the sample (<= {VOCAB_MAX}): a vocabulary"
            card = col.distinct
        else:
            buckets = hash_buckets(col.distinct)
            parts.append(f"hash_buckets: {buckets}")
            comment = f"{col.distinct} values in the sample (> {VOCAB_MAX}): hashed into {HASH_FACTOR}x as many buckets"
            card = buckets
        if col.kind == "multi":
            parts += [f"max_length: {col.max_length}", "combiner: mean"]
        parts.append(f"embedding_dim: {embedding_dim(card)}")
        if col.note:
            comment += f"; {col.note}"
    return "    - {" + ", ".join(parts) + "}" + f"  # {comment}"


def infer(ads_path: str, impressions_path: str, sample_rows: int = SAMPLE_ROWS, name: str = "tfvctr") -> str:
    """The text of a commented starter config for these tables (validated before it is returned)."""
    ad_columns, ad_rows = _sample(ads_path, sample_rows)
    _require(ads_path, "ads", ad_columns, ADS_REQUIRED)
    imp_columns, imp_rows = _sample(impressions_path, sample_rows)
    _require(impressions_path, "impressions", imp_columns, IMPRESSIONS_REQUIRED)

    cols: list[Column] = []
    passthrough: list[str] = []
    for source, columns, rows in (("impression", imp_columns, imp_rows), ("ad", ad_columns, ad_rows)):
        for column in columns:
            if column in RESERVED_COLUMNS and column != "category":
                continue
            if source == "impression" and column in ad_columns:
                continue  # a column of both tables is the ad's (declared once)
            typed = tables.table_format(ads_path if source == "ad" else impressions_path) != "csv"
            col = infer_column(column, source, [r.get(column) for r in rows], typed)
            if col.kind == "numeric" and source == "impression" and any(w in column.lower() for w in PROBABILITY_WORDS):
                passthrough.append(column)
                continue
            if column == "category":
                col.kind, col.note = "categorical", "the category (CSCNN's attention is per category)"
            cols.append(col)

    days, formats = [], set()
    for row in imp_rows:
        try:
            day, fmt = parse_day(row.get("day"))
        except ValueError as e:
            raise DataError(f"{impressions_path}: column 'day': {e}") from None
        days.append(day)
        formats.add(fmt)
    if len(formats) > 1:
        raise DataError(f"{impressions_path}: column 'day' mixes day numbers and ISO dates; use one day format")
    day_format = formats.pop()
    distinct_days = sorted(set(days))
    per_ad: dict[str, int] = {}
    for row in imp_rows:
        per_ad[str(row["ad_id"])] = per_ad.get(str(row["ad_id"]), 0) + 1
    k = int(min(25, max(4, statistics.median(per_ad.values()))))
    image_size, image_format, image_note = _image_size(ads_path, ad_rows)
    categories = len({str(r["category"]) for r in ad_rows})

    def day_text(d: int) -> str:
        return tables.format_day(d, day_format)

    lines = [
        f"# Starter config written by `tfvctr init-config` from {ads_path} ({len(ad_rows)} ads read)",
        f"# and {impressions_path} ({len(imp_rows)} impressions read). Check it, then:",
        "#   tfvctr validate-config THIS.yaml; tfvctr preprocess --config THIS.yaml --ads ... --impressions ... --out D",
        "# Column kinds (tfvctr/init_config.py): lists or values with '|' in >= "
        f"{MULTI_SHARE:.0%} of the rows are multi-valued;",
        f"# all-number columns numeric, unless integers with <= {SMALL_INTEGER_CARDINALITY} values (categorical);",
        f"# categorical with <= {VOCAB_MAX} values in the sample get a vocabulary, more are hashed into the power",
        f"# of two >= {HASH_FACTOR}x the values seen; embedding_dim = 6 x cardinality^(1/4) within "
        f"[{MIN_EMBEDDING}, {MAX_EMBEDDING}] (at most the cardinality).",
        f"name: {name}",
        "dataset:",
        f"  image_size: {image_size}              # {image_note}",
        f"  image_format: {image_format}",
        f"  impressions_per_chunk: {k}    # K: median impressions per ad in the sample, within [4, 25]",
        f"  eval_days: 1                 # day column: {'ISO dates' if day_format == 'iso' else 'day numbers'}, "
        f"{day_text(distinct_days[0])}..{day_text(distinct_days[-1])} in the sample; the last day is the eval split",
    ]
    if len(distinct_days) < 3:
        lines.append(f"  # WARNING: {len(distinct_days)} day(s) in the sample: train needs days before the eval day")
    if passthrough:
        lines.append(f"  passthrough: [{', '.join(passthrough)}]   # click probabilities: kept for evaluation, "
                     f"never features")
    lines += [
        "  seed: 0",
        "  validation: {mode: ads_and_temporal, ads_share: 0.1}   # model selection: the last train day + 10% of "
        "the ads held out whole",
        "  features:",
        "    # user_id is carried for per-user AUC but not embedded; to embed it:",
        f"    # - {{name: user_id, source: impression, kind: categorical, hash_buckets: "
        f"{hash_buckets(len({str(r['user_id']) for r in imp_rows}))}, embedding_dim: 8}}",
    ]
    for col in cols:
        if col.kind is None:
            lines.append(f"    # {col.name} ({col.source}): {col.note}")
        else:
            lines.append(_feature_line(col))
    lines += [
        "model:",
        "  architecture: cscnn_dcn",
        "  backbone: cnnf",
        "  backbone_width: 0.25          # the demo's size; 1.0 and resnet18 for real data (configs/jd_cscnn_dcn.yaml)",
        "  attention: cscnn",
        f"  visual_dim: 32                # {categories} categories in the sample",
        "  deep_layers: [128, 64, 32]",
        "  cross_layers: 3",
        "training:",
        "  steps: 2000",
        "  ads_per_batch: 32",
        "  optimizer: sgd                # with momentum, for the embeddings and the head (docs/training.md)",
        "  learning_rate: 1.0",
        "  cnn_optimizer: adam",
        "  cnn_learning_rate: 0.001",
        "  lr_schedule: cosine",
        "  clip_norm: 1.0                # the global gradient norm: SGD at 1.0 can diverge early without it",
        "  eval_every: 250               # model selection on the valid split (docs/training.md)",
        "  patience: 4",
        "  checkpoint_every: 500",
        "  log_every: 250",
        "",
    ]
    text = "\n".join(lines)
    import yaml

    config_from_dict(yaml.safe_load(text), "init-config")  # what it writes, preprocess and train accept
    return text
