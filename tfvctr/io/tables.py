"""The raw input tables (docs/formats.md §1) as files: read, check and coerce a whole table.

Two layers below this one: `tfvctr.io.readers` (bytes → raw rows, no config) and
`tfvctr.io.schema` (raw rows → typed values, per the config). This module puts them
together for a table on disk (local or remote) and re-exports their public names, so
`from tfvctr.io import tables` is the one import a stage needs:

* `iter_rows` yields *raw* rows; `table_columns` the column names;
* `first_row` the first good row (the table's day format is read from it);
* `read_table` reads a whole (small) table and raises `DataError` naming the file, the
  line and the reason of the first bad row (the Beam job dead-letters such rows instead);
* `resolve_image_path` where an `image` value points.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional

from tfvctr.config import DatasetConfig
from tfvctr.errors import DataError
from tfvctr.io import fs
from tfvctr.io.readers import (
    Record,
    TableFormat,
    iter_parquet_rows,
    iter_records,
    jsonl_columns,
    parquet_columns,
    parse_csv_header,
    parse_csv_line,
    parse_json_line,
    read_csv_header,
    table_format,
)
from tfvctr.io.schema import (
    ADS_REQUIRED,
    IMPRESSIONS_REQUIRED,
    MULTI_SEPARATOR,
    RowCoercer,
    TableName,
    check_columns,
    coerce_row,
    format_day,
    format_days,
    parse_day,
    required_columns,
)


def _require_file(path: str) -> None:
    if not fs.exists(path):
        raise DataError(f"{path}: file not found")


def iter_numbered(path: str) -> Iterator[tuple[str, Record]]:
    """Yields ("line N" or "row N", record) for every record of the table at `path`."""
    fmt = table_format(path)
    _require_file(path)
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            for n, row in enumerate(iter_parquet_rows(f, path), start=1):
                yield f"row {n}", Record(n, row)
            return
        for record in iter_records(f, fmt, path):
            yield f"line {record.line}", record


def iter_rows(path: str) -> Iterator[dict[str, Any]]:
    """Yields the raw rows of a CSV, JSON Lines or Parquet table (local or remote).

    CSV values are strings; JSONL and Parquet values keep their types (lists stay lists).

    Raises:
        DataError: the file is missing, has an unknown extension, a bad header or a
            malformed line (naming the file and the line).
    """
    for where, record in iter_numbered(path):
        if record.row is None:
            raise DataError(f"{path}: {where}: {record.error}")
        yield record.row


def table_columns(path: str) -> list[str]:
    """The table's column names: the CSV header, the Parquet schema, or the keys of the
    first JSON Lines rows that parse (in order of first appearance).

    Raises:
        DataError: missing file, empty CSV, or a column named twice.
    """
    fmt = table_format(path)
    _require_file(path)
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            return parquet_columns(f, path)
        if fmt == "csv":
            return read_csv_header(f, path)
        return jsonl_columns(iter_records(f, fmt, path))


def first_row(path: str) -> Optional[tuple[str, dict[str, Any]]]:
    """("line N", raw row) of the first record that parses, or None when there is none."""
    for where, record in iter_numbered(path):
        if record.row is not None:
            return where, record.row
    return None


def has_records(path: str) -> bool:
    """Whether the table holds at least one record (good or bad) after its header."""
    for _ in iter_numbered(path):
        return True
    return False


def resolve_image_path(image: str, table_path: str) -> str:
    """The image's location: relative paths resolve against the table's folder; absolute
    paths and URIs (gs://..., http://...) are returned as they are."""
    if fs.is_remote(image) or os.path.isabs(image):
        return image
    folder = fs.dirname(table_path)
    return fs.join(folder, image) if fs.is_remote(folder) else os.path.normpath(fs.join(folder, image))


def read_table(path: str, table: TableName, dataset_config: DatasetConfig) -> list[dict[str, Any]]:
    """Reads a whole (small) table: checks its columns and coerces every row.

    Raises:
        DataError: missing file, unknown format, missing or repeated column, no rows, or
            a bad row (naming the file, the line or row number and the reason).
    """
    records = list(iter_numbered(path))
    for where, record in records:
        if record.row is None:
            raise DataError(f"{path}: {where}: {record.error}")
    columns = table_columns(path) if table_format(path) != "jsonl" else jsonl_columns(r for _, r in records)
    check_columns(path, columns, table, dataset_config)
    if not records:
        raise DataError(f"{path}: no rows (only a header?); expected at least one {table} row")
    coerce = RowCoercer(table, dataset_config)
    out = []
    first_format: Optional[tuple[str, str]] = None
    for where, record in records:
        try:
            out.append(coerce(record.row))
        except ValueError as e:
            raise DataError(f"{path}: {where}: {e}") from None
        if coerce.day_format is not None:
            if first_format is None:
                first_format = (coerce.day_format, where)
            elif coerce.day_format != first_format[0]:
                raise DataError(mixed_day_formats_message(path, first_format[0], first_format[1], coerce.day_format,
                                                          where, record.row.get("day")))
    return out


def mixed_day_formats_message(path: str, first_format: str, first_where: str, other_format: str, where: str,
                              value: Any, count: Optional[int] = None) -> str:
    """The one line that refuses a table mixing day numbers and ISO dates."""
    names = {"integer": "day numbers", "iso": "ISO dates"}
    rows = f"; {count} rows like it" if count else ""
    return (f"{path}: {where}: day {value!r} is {'an ISO date' if other_format == 'iso' else 'a day number'}, but "
            f"the table starts with {names[first_format]} ({first_where}){rows}; use one day format per table")


__all__ = [
    "ADS_REQUIRED",
    "IMPRESSIONS_REQUIRED",
    "MULTI_SEPARATOR",
    "Record",
    "RowCoercer",
    "TableFormat",
    "TableName",
    "check_columns",
    "coerce_row",
    "first_row",
    "format_day",
    "format_days",
    "has_records",
    "iter_numbered",
    "iter_rows",
    "mixed_day_formats_message",
    "parse_csv_header",
    "parse_csv_line",
    "parse_day",
    "parse_json_line",
    "read_table",
    "required_columns",
    "resolve_image_path",
    "table_columns",
    "table_format",
]
