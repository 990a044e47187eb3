"""Readers for the raw input tables (docs/formats.md §1): ads and impressions.

Both tables come as CSV, JSON Lines or Parquet, chosen by extension. Every stage that
reads them (the Beam job, the embedding job, `tfvctr demo-data`'s own checks) goes
through this module, so a value means the same thing everywhere:

* `iter_rows` yields *raw* rows (CSV values are strings; JSONL/Parquet keep their types).
* `parse_csv_line` / `parse_json_line` parse one line, so a Beam job can read lines with
  `ReadFromText` and parse them itself.
* `coerce_row` turns one raw row into typed values (`label` int 0/1, `day` int,
  categorical str, multi list[str], numeric float) or raises `ValueError` with a reason
  a person can act on; the Beam job dead-letters the row with that reason.
* `read_table` does all of it for a small local table and raises `DataError` naming the
  file, the line and the reason.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
from typing import Any, Iterator, Literal, Sequence

from tfvctr.config import DatasetConfig, FeatureConfig
from tfvctr.errors import DataError
from tfvctr.io import fs

TableFormat = Literal["csv", "jsonl", "parquet"]
TableName = Literal["ads", "impressions"]

ADS_REQUIRED = ("ad_id", "category", "image")
IMPRESSIONS_REQUIRED = ("ad_id", "label", "day", "user_id")

MULTI_SEPARATOR = "|"  # multi-valued features in CSV cells: "a|b|c"

_EXTENSIONS: dict[str, TableFormat] = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_EPOCH = datetime.date(1970, 1, 1)
# JSONL has no header: the columns are the keys seen in the first rows (a key missing
# from every one of them is reported missing).
_JSONL_HEADER_ROWS = 1000


def table_format(path: str) -> TableFormat:
    """The table's format from its extension: `.csv`, `.jsonl`/`.json` or `.parquet`."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(
            f"{path}: unknown table format {ext or '(no extension)'!r}; expected one of .csv, .jsonl, .json, .parquet"
        )
    return _EXTENSIONS[ext]


# --------------------------------------------------------------------------- parsing lines


def parse_csv_line(line: str, header: Sequence[str]) -> dict[str, str]:
    """Parses one CSV record (one physical line; fields may be quoted) into a raw row.

    Args:
        line: the record, with or without its trailing newline.
        header: the column names, in file order.

    Returns:
        `{column: string value}`.

    Raises:
        ValueError: the line is not valid CSV or has the wrong number of fields.
    """
    try:
        records = list(csv.reader([line.rstrip("\r\n")], strict=True))
    except csv.Error as e:
        raise ValueError(f"malformed CSV: {e}") from None
    fields = records[0] if records else []
    if len(fields) != len(header):
        raise ValueError(f"malformed CSV: expected {len(header)} fields, got {len(fields)}")
    return dict(zip(header, fields, strict=True))


def parse_csv_header(line: str) -> list[str]:
    """The column names of a CSV header line (a UTF-8 byte-order mark is dropped).

    Raises:
        ValueError: the line is not valid CSV.
    """
    try:
        records = list(csv.reader([line.lstrip("\ufeff").rstrip("\r\n")], strict=True))
    except csv.Error as e:
        raise ValueError(f"malformed CSV header: {e}") from None
    return records[0] if records else []


def parse_json_line(line: str) -> dict[str, Any]:
    """Parses one JSON Lines record into a raw row.

    Raises:
        ValueError: the line is not valid JSON or not a JSON object.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(row, dict):
        raise ValueError(f"malformed JSON: expected an object, got {type(row).__name__}")
    return row


# --------------------------------------------------------------------------- reading files


def _require_file(path: str) -> None:
    if not fs.exists(path):
        raise DataError(f"{path}: file not found")


def _numbered_rows(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (where, raw row); `where` is "line N" (CSV/JSONL) or "row N" (Parquet)."""
    fmt = table_format(path)
    _require_file(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    n += 1
                    yield f"row {n}", row
        return
    with fs.open(path, "r") as f:
        if fmt == "csv":
            # csv.reader (not line-by-line parsing) so quoted fields may span lines.
            reader = csv.reader(f, strict=True)
            try:
                header = next(reader, None)
                if header is None:
                    return
                if header:
                    header[0] = header[0].lstrip("\ufeff")
                for fields in reader:
                    if not fields:
                        continue  # blank line
                    if len(fields) != len(header):
                        raise DataError(
                            f"{path}: line {reader.line_num}: malformed CSV: expected {len(header)} fields, got {len(fields)}"
                        )
                    yield f"line {reader.line_num}", dict(zip(header, fields, strict=True))
            except csv.Error as e:
                raise DataError(f"{path}: line {reader.line_num}: malformed CSV: {e}") from None
        else:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = parse_json_line(line)
                except ValueError as e:
                    raise DataError(f"{path}: line {n}: {e}") from None
                yield f"line {n}", row


def iter_rows(path: str) -> Iterator[dict[str, Any]]:
    """Yields the raw rows of a CSV, JSON Lines or Parquet table (local or remote).

    CSV values are strings; JSONL and Parquet values keep their types (lists stay lists).

    Raises:
        DataError: the file is missing, has an unknown extension or a malformed line.
    """
    for _, row in _numbered_rows(path):
        yield row


def table_columns(path: str) -> list[str]:
    """The table's column names: the CSV header, the Parquet schema, or the keys of the
    first JSON Lines rows (in order of first appearance)."""
    fmt = table_format(path)
    _require_file(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            return list(pq.ParquetFile(f).schema_arrow.names)
    if fmt == "csv":
        with fs.open(path, "r") as f:
            first = f.readline()
        if not first.strip():
            return []
        try:
            return parse_csv_header(first)
        except ValueError as e:
            raise DataError(f"{path}: line 1: {e}") from None
    seen: dict[str, None] = {}
    for i, (_, row) in enumerate(_numbered_rows(path)):
        if i >= _JSONL_HEADER_ROWS:
            break
        seen.update(dict.fromkeys(row))
    return list(seen)


# --------------------------------------------------------------------------- columns


def required_columns(table: TableName, dataset_config: DatasetConfig) -> list[str]:
    """The columns a table must have: its reserved columns, the config's features of
    that source, and (impressions only) the passthrough columns; no name twice."""
    if table == "ads":
        columns = list(ADS_REQUIRED)
        features = dataset_config.ad_features
    elif table == "impressions":
        columns = list(IMPRESSIONS_REQUIRED)
        features = dataset_config.impression_features
    else:
        raise ValueError(
            f"Invalid value received for argument `table`. Expected 'ads' or 'impressions'. Received: table={table!r}"
        )
    for name in [f.name for f in features] + (list(dataset_config.passthrough) if table == "impressions" else []):
        if name not in columns:
            columns.append(name)
    return columns


def check_columns(path: str, columns: Sequence[str], table: TableName, dataset_config: DatasetConfig) -> None:
    """Raises `DataError` naming the file and the first missing columns, if any."""
    present = set(columns)
    missing = [c for c in required_columns(table, dataset_config) if c not in present]
    if not missing:
        return
    found = ", ".join(columns) if columns else "(no columns)"
    if len(missing) == 1:
        what = f"missing column {missing[0]!r}"
    else:
        what = "missing columns " + ", ".join(repr(c) for c in missing)
    raise DataError(f"{path}: {what} (required for the {table} table); found: {found}")


# --------------------------------------------------------------------------- coercion


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, float):
        return math.isnan(value)  # pandas/Parquet write missing numbers as NaN
    return False


def _as_string(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # 3.0 from a JSON writer that turned an integer id into a float is still "3".
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple, dict)):
        raise ValueError(f"{name}: expected a single value, got a {type(value).__name__}")
    return str(value)


def _as_label(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(value))
    raise ValueError(f"label: expected 0 or 1, got {value!r}")


def _as_day(value: Any) -> int:
    if isinstance(value, datetime.datetime):
        return (value.date() - _EPOCH).days
    if isinstance(value, datetime.date):
        return (value - _EPOCH).days
    if isinstance(value, bool):
        raise ValueError(f"day: expected an integer or an ISO date (YYYY-MM-DD), got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return (datetime.date.fromisoformat(text) - _EPOCH).days
        except ValueError:
            pass
    raise ValueError(f"day: expected an integer or an ISO date (YYYY-MM-DD), got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return number


def _as_multi(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        items: list[Any] = value.split(MULTI_SEPARATOR)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif hasattr(value, "tolist"):  # numpy arrays from Parquet readers
        items = list(value.tolist())
    else:
        items = [value]
    return [_as_string(name, v) for v in items if not _is_missing(v)]


def _coerce_feature(feature: FeatureConfig, value: Any) -> Any:
    if _is_missing(value):
        if feature.default is None:
            return [] if feature.kind == "multi" else None
        value = feature.default
    if feature.kind == "categorical":
        return _as_string(feature.name, value)
    if feature.kind == "multi":
        return _as_multi(feature.name, value)
    return _as_float(feature.name, value)


class RowCoercer:
    """`coerce_row` with the column plan computed once: build it per table (e.g. in a Beam
    `DoFn.setup`) and call it on every row."""

    def __init__(self, table: TableName, dataset_config: DatasetConfig) -> None:
        self.table = table
        self.columns = required_columns(table, dataset_config)
        features = dataset_config.ad_features if table == "ads" else dataset_config.impression_features
        self.features = {f.name: f for f in features}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.columns:
            value = row.get(name)
            if name in ("label", "day"):
                if _is_missing(value):
                    raise ValueError(f"{name}: missing value")
                out[name] = _as_label(value) if name == "label" else _as_day(value)
            elif name in _RESERVED_STRINGS:
                feature = self.features.get(name)
                if _is_missing(value):
                    if feature is None or feature.default is None:
                        raise ValueError(f"{name}: missing value")
                    value = feature.default
                out[name] = _as_string(name, value)
            elif name in self.features:
                out[name] = _coerce_feature(self.features[name], value)
            else:  # passthrough
                out[name] = None if _is_missing(value) else _as_float(name, value)
        return out


_RESERVED_STRINGS = frozenset(ADS_REQUIRED + IMPRESSIONS_REQUIRED) - {"label", "day"}


def coerce_row(row: dict[str, Any], table: TableName, dataset_config: DatasetConfig) -> dict[str, Any]:
    """Converts one raw row into typed values, keeping the table's required columns.

    `label` → int 0/1; `day` → int (an ISO date `YYYY-MM-DD` becomes days since
    1970-01-01); `ad_id`, `category`, `image`, `user_id` → str (a missing one is an error
    unless a feature of that name has a `default`); categorical → str; multi → list[str]
    (from a list, or a `|`-separated string; "" → []); numeric and passthrough → float.
    A missing or empty feature takes the feature's `default` if it has one, else None
    (categorical, numeric, passthrough) or [] (multi). Other columns are dropped.

    Raises:
        ValueError: a value has the wrong type or a required value is missing; the
            message names the column, e.g. "label: expected 0 or 1, got 'yes'".
    """
    return RowCoercer(table, dataset_config)(row)


def resolve_image_path(image: str, table_path: str) -> str:
    """The image's location: relative paths resolve against the table's folder; absolute
    paths and URIs (gs://..., http://...) are returned as they are."""
    if fs.is_remote(image) or os.path.isabs(image):
        return image
    if fs.is_remote(table_path):
        folder = table_path.rsplit("/", 1)[0]
        return f"{folder}/{image}"
    return os.path.normpath(os.path.join(os.path.dirname(table_path), image))


def read_table(path: str, table: TableName, dataset_config: DatasetConfig) -> list[dict[str, Any]]:
    """Reads a whole (small) table: checks its columns and coerces every row.

    Raises:
        DataError: missing file, unknown format, missing column, or a bad row (naming the
            file, the line or row number and the reason).
    """
    rows = list(_numbered_rows(path))
    if table_format(path) == "jsonl":
        columns: list[str] = list({k: None for _, row in rows for k in row})
    else:
        columns = table_columns(path)
    check_columns(path, columns, table, dataset_config)
    coerce = RowCoercer(table, dataset_config)
    out = []
    for where, row in rows:
        try:
            out.append(coerce(row))
        except ValueError as e:
            raise DataError(f"{path}: {where}: {e}") from None
    return out


__all__ = [
    "ADS_REQUIRED",
    "IMPRESSIONS_REQUIRED",
    "MULTI_SEPARATOR",
    "RowCoercer",
    "check_columns",
    "coerce_row",
    "iter_rows",
    "parse_csv_header",
    "parse_csv_line",
    "parse_json_line",
    "read_table",
    "required_columns",
    "resolve_image_path",
    "table_columns",
    "table_format",
]
