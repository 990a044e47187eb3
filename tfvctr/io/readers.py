"""Format readers for the raw tables (docs/formats.md §1): bytes → raw rows, no config.

CSV, JSON Lines and Parquet, chosen by extension. Nothing here knows the dataset config:
`tfvctr.io.schema` turns raw rows into typed values. The local reader (`iter_records`)
and the Beam job (`beam_jobs.transforms.read`) parse with the same functions, so a line
is good or bad, and for the same reason, wherever it is read.

Every record carries the 1-based line its text starts on, so a bad one can be named
("impressions.csv line 17"). The input contract (docs/bad_input.md):

* a header that repeats a column name is refused (`DataError`): which copy would win?
* a line that is not UTF-8, not valid CSV/JSON, has the wrong number of fields, or (JSON)
  repeats a key, is a *record error*: the Beam job dead-letters it as `unparseable`,
  `read_table` refuses it naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import IO, Any, Iterable, Iterator, Literal, Optional, Sequence

from tfvctr.errors import DataError

TableFormat = Literal["csv", "jsonl", "parquet"]

_EXTENSIONS: dict[str, TableFormat] = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# JSONL has no header: the columns are the keys seen in the first rows (a key missing
# from every one of them is reported missing).
JSONL_HEADER_ROWS = 1000
_BOM = "\ufeff"


def table_format(path: str) -> TableFormat:
    """The table's format from its extension: `.csv`, `.jsonl`/`.json` or `.parquet`."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(
            f"{path}: unknown table format {ext or '(no extension)'!r}; expected one of .csv, .jsonl, .json, .parquet"
        )
    return _EXTENSIONS[ext]


@dataclass(frozen=True)
class Record:
    """One record of a text table: its row, or why it could not be parsed."""

    line: int  # 1-based line where the record starts
    row: Optional[dict[str, Any]]  # None when the record did not parse
    error: Optional[str] = None  # a readable reason, e.g. "not UTF-8: byte 0xff at column 12"
    text: str = ""  # the raw text (undecodable bytes replaced), for the dead letter


# --------------------------------------------------------------------------- one line


def check_unique_columns(names: Sequence[str]) -> None:
    """Raises ValueError naming the first column that appears twice (1-based positions)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise ValueError(f"column {name!r} appears twice (columns {seen[name]} and {i}); which one is meant?")
        seen[name] = i


def decode_line(raw: bytes) -> str:
    """UTF-8 text of one raw line; ValueError naming the first bad byte and its column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1} (save the table as UTF-8)") from None


def parse_csv_header(line: str) -> list[str]:
    """The column names of a CSV header line (a UTF-8 byte-order mark is dropped).

    Raises:
        ValueError: the line is not valid CSV, or names a column twice.
    """
    try:
        records = list(csv.reader([line.lstrip(_BOM).rstrip("\r\n")], strict=True))
    except csv.Error as e:
        raise ValueError(f"malformed CSV header: {e}") from None
    header = records[0] if records else []
    check_unique_columns(header)
    return header


def parse_csv_line(line: str, header: Sequence[str]) -> dict[str, str]:
    """Parses one CSV record (one physical line; fields may be quoted) into a raw row.

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


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"malformed JSON: key {key!r} appears twice")
        out[key] = value
    return out


def parse_json_line(line: str) -> dict[str, Any]:
    """Parses one JSON Lines record into a raw row.

    Raises:
        ValueError: the line is not valid JSON, not a JSON object, or repeats a key
            (`json.loads` would silently keep the last one).
    """
    try:
        row = json.loads(line, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(row, dict):
        raise ValueError(f"malformed JSON: expected an object, got {type(row).__name__}")
    return row


# --------------------------------------------------------------------------- one file


def _raw_lines(f: IO[bytes]) -> Iterator[bytes]:
    # readline, not iteration: Beam's compressed and remote file objects only promise it.
    while True:
        raw = f.readline()
        if not raw:
            return
        yield raw


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def read_csv_header(f: IO[bytes], path: str) -> list[str]:
    """Reads and checks the header line of a CSV file opened in binary mode.

    Raises:
        DataError: empty file, undecodable or malformed header, or a column named twice.
    """
    first = f.readline()
    if not first.strip():
        raise DataError(f"{path}: empty file; expected a header line naming the columns")
    try:
        return parse_csv_header(decode_line(first))
    except ValueError as e:
        raise DataError(f"{path}: line 1: {e}") from None


def iter_records(f: IO[bytes], fmt: TableFormat, path: str) -> Iterator[Record]:
    """The records of a CSV or JSON Lines file opened in binary mode; blank lines are skipped.

    A CSV record may span lines (a quoted field with a newline): its `line` is where it
    starts. A record that cannot be parsed comes back with `row=None` and its `error`.

    Raises:
        DataError: the CSV header is missing, malformed or names a column twice.
    """
    if fmt == "csv":
        yield from _csv_records(f, path)
    elif fmt == "jsonl":
        yield from _jsonl_records(f)
    else:
        raise ValueError(f"Invalid value received for argument `fmt`. Expected 'csv' or 'jsonl'. Received: fmt={fmt!r}")


def _jsonl_records(f: IO[bytes]) -> Iterator[Record]:
    for n, raw in enumerate(_raw_lines(f), start=1):
        if not raw.strip():
            continue
        try:
            text = decode_line(raw)
            if n == 1:
                text = text.lstrip(_BOM)
            yield Record(n, parse_json_line(text), text=text.rstrip("\r\n"))
        except ValueError as e:
            yield Record(n, None, str(e), _text(raw))


def _csv_records(f: IO[bytes], path: str) -> Iterator[Record]:
    header = read_csv_header(f, path)
    state = {"n": 1, "first": 0, "lines": []}
    pending: list[Record] = []

    def text_lines() -> Iterator[str]:
        for raw in _raw_lines(f):
            state["n"] += 1
            try:
                text = decode_line(raw)
            except ValueError as e:
                pending.append(Record(state["n"], None, str(e), _text(raw)))
                continue
            if not state["first"]:
                state["first"] = state["n"]
            state["lines"].append(text)
            yield text

    # csv.reader over the decoded lines (not line-by-line parsing) so a quoted field may
    # span lines; a line that does not decode never reaches it.
    reader = csv.reader(text_lines(), strict=True)
    while True:
        state["first"], state["lines"] = 0, []
        error = None
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            fields, error = None, f"malformed CSV: {e}"
        yield from pending
        pending.clear()
        text = "".join(state["lines"]).rstrip("\r\n")
        if error is not None:
            yield Record(state["first"] or state["n"], None, error, text)
        elif not fields:
            continue  # blank line
        elif len(fields) != len(header):
            yield Record(state["first"], None, f"malformed CSV: expected {len(header)} fields, got {len(fields)}", text)
        else:
            yield Record(state["first"], dict(zip(header, fields, strict=True)), text=text)
    yield from pending


def _parquet_file(f: IO[bytes], path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).strip().splitlines()[0][:200]})") from None


def iter_parquet_rows(f: IO[bytes], path: str = "table.parquet") -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file (values keep their Arrow types as Python objects)."""
    for batch in _parquet_file(f, path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def parquet_columns(f: IO[bytes], path: str) -> list[str]:
    """The column names of a Parquet file; DataError if it is not Parquet or a column appears twice."""
    names = list(_parquet_file(f, path).schema_arrow.names)
    try:
        check_unique_columns(names)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    return names


def jsonl_columns(records: Iterable[Record]) -> list[str]:
    """Keys of the first `JSONL_HEADER_ROWS` parsed rows, in order of first appearance
    (lines that do not parse are skipped: they are dead letters, not the schema)."""
    seen: dict[str, None] = {}
    n = 0
    for record in records:
        if record.row is None:
            continue
        seen.update(dict.fromkeys(record.row))
        n += 1
        if n >= JSONL_HEADER_ROWS:
            break
    return list(seen)


__all__ = [
    "JSONL_HEADER_ROWS",
    "Record",
    "TableFormat",
    "check_unique_columns",
    "decode_line",
    "iter_parquet_rows",
    "iter_records",
    "jsonl_columns",
    "parquet_columns",
    "parse_csv_header",
    "parse_csv_line",
    "parse_json_line",
    "read_csv_header",
    "table_format",
]
