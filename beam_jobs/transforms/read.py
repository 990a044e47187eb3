"""`ReadTable`: one raw table (CSV, JSON Lines or Parquet; local or gs://) → row dicts.

Text tables are read file by file (a glob of N files reads in N parallel tasks, then a
`Reshuffle` spreads the rows), or, with `batch_rows`, in byte ranges that start at a
record (`split_ranges`: one cheap pass finds the cuts and their line numbers, the ranges
are spread, each is parsed where its rows are validated), so every record keeps its line
number: a bad one is dead-lettered as `unparseable` naming its file and line
(docs/bad_input.md). With
`with_source=True` each row also carries where it came from under `SOURCE_KEY`
("impressions.csv line 17"); the validation composites take it out and name it in their
dead-letter reasons.

`check_table` runs on the driver before the pipeline starts and refuses, in one line,
what would make the whole job wrong: a missing file or column, a column named twice,
shards with different headers, a table without rows, or a day written `20240301`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam import pvalue

from beam_jobs.common import counter, dead_letter

DEAD = "dead"
SOURCE_KEY = "__source__"  # "<file name> line N" of a text-table row; popped by the validation composites
RANGE_BYTES = 1 << 20  # bytes of a text table per range (`ReadTable(batch_rows=N)`): ~17,000 impression rows


def _files(path: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    from tfvctr.errors import DataError

    matches = FileSystems.match([path])[0].metadata_list
    if not matches:
        raise DataError(f"{path}: file not found")
    return sorted(m.path for m in matches)


def _open(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)


def read_csv_header(path: str) -> list[str]:
    """The header of the first file matching `path` (every shard of a table shares it)."""
    from tfvctr.io import readers

    first_file = _files(path)[0]
    with _open(first_file) as f:
        return readers.read_csv_header(f, first_file)


@dataclass(frozen=True)
class TableInfo:
    """What the driver learnt about a table: its files, columns and day format."""

    files: list[str]
    columns: list[str]
    day_format: Optional[str]  # "integer" / "iso" from the first good row (impressions), else None


def check_table(path: str, table: str, dataset_config) -> TableInfo:
    """Refuses (DataError, one line) a table the job cannot read correctly; see the module docstring.

    Reads the header (or schema) of every file and the records up to the first good one,
    never the whole table.
    """
    from tfvctr.errors import DataError
    from tfvctr.io import readers, tables

    fmt = tables.table_format(path)
    files = _files(path)
    columns: Optional[list[str]] = None
    first: Optional[tuple[str, str, dict]] = None
    any_record = False
    for file in files:
        with _open(file) as f:
            if fmt == "parquet":
                names = readers.parquet_columns(f, file)
            elif fmt == "csv":
                names = readers.read_csv_header(f, file)
            else:
                names = None
            if columns is not None and names is not None and names != columns:
                raise DataError(f"{file}: header differs from {files[0]}'s ({', '.join(names)} vs "
                                f"{', '.join(columns)}); every file of a table needs the same columns")
            if columns is None:
                columns = names
            if first is None:
                records = _records(f, fmt, file)
                for line, row in records:
                    any_record = True
                    if row is not None:
                        first = (file, line, row)
                        break
    if fmt == "jsonl":
        with _open(files[0]) as f:
            columns = readers.jsonl_columns(readers.iter_records(f, "jsonl", files[0]))
    if not any_record:
        what = "only a header" if fmt == "csv" else "no records"
        raise DataError(f"{path}: no rows ({what}); expected at least one {table} row")
    tables.check_columns(files[0], columns or [], table, dataset_config)
    day_format = None
    if table == "impressions" and first is not None:
        file, line, row = first
        try:
            _, day_format = tables.parse_day(row.get("day"))
        except ValueError as e:
            if "without dashes" in str(e):  # the whole table is written that way: refuse, not dead-letter every row
                raise DataError(f"{file}: {line}: {e}") from None
    return TableInfo(files, columns or [], day_format)


def _records(f, fmt: str, file: str) -> Iterable[tuple[str, Optional[dict]]]:
    from tfvctr.io import readers

    if fmt == "parquet":
        for n, row in enumerate(readers.iter_parquet_rows(f, file), start=1):
            yield f"row {n}", row
        return
    f.seek(0)
    for record in readers.iter_records(f, fmt, file):
        yield f"line {record.line}", record.row


def split_ranges(f: IO[bytes], fmt: str, target: int = RANGE_BYTES) -> Iterator[tuple[int, int, int]]:
    """Cuts a CSV or JSON Lines file (binary, seekable) into `(start, end, first line)` byte
    ranges of about `target` bytes, each starting where a record starts.

    Reading the range (with the CSV header in front) gives the same records, with the same
    line numbers, as reading the whole file. A JSON Lines record is one line; so is a CSV
    record while the file holds no `"`, and then the cuts are found at C speed (blocks and
    `bytes.count`). From the first block with a `"` on (a quoted field may span lines) the
    cuts are the record starts that the CSV reader itself finds (`_csv_record_starts`).
    """
    f.seek(0)
    start, line = (len(f.readline()), 2) if fmt == "csv" else (0, 1)
    while True:
        block = f.read(target)
        if not block:
            return
        if not block.endswith(b"\n"):
            block += f.readline()  # up to the end of the line (or of the file)
        if fmt == "csv" and b'"' in block:
            f.seek(start)  # every line before `start` was a whole record: the reader starts afresh here
            yield from _record_ranges(f, start, line, target)
            return
        yield (start, start + len(block), line)
        start += len(block)
        line += block.count(b"\n")


def _record_ranges(f: IO[bytes], start: int, line: int, target: int) -> Iterator[tuple[int, int, int]]:
    state = {"offset": start, "line": line - 1, "first": None}
    range_start, range_line = start, line
    for offset, n in _csv_record_starts(f, state):
        if offset - range_start >= target:
            yield (range_start, offset, range_line)
            range_start, range_line = offset, n
    if state["offset"] > range_start:
        yield (range_start, state["offset"], range_line)


def _csv_record_starts(f: IO[bytes], state: dict) -> Iterator[tuple[int, int]]:
    """`(byte offset, line)` of each record's first line, as `readers.iter_records` parses the
    file from `state["offset"]` (a record start): undecodable lines never reach the CSV
    reader there, so they do not here; a CSV error ends its record with its line."""

    def text_lines() -> Iterator[str]:
        while True:
            raw = f.readline()
            if not raw:
                return
            offset = state["offset"]
            state["offset"] += len(raw)
            state["line"] += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if state["first"] is None:
                state["first"] = (offset, state["line"])
            yield text

    reader = csv.reader(text_lines(), strict=True)
    while True:
        state["first"] = None
        try:
            next(reader)
        except StopIteration:
            return
        except csv.Error:
            pass
        if state["first"] is not None:
            yield state["first"]


def _range_records(path: str, fmt: str, start: int, end: int, first_line: int) -> Iterator:
    """The records of one `split_ranges` range, numbered as in the whole file."""
    from tfvctr.io import readers

    with _open(path) as f:
        head = f.readline() if fmt == "csv" else b""
        f.seek(start)
        data = f.read(end - start)
    if fmt == "csv":  # the header, then the range's first line as line 2
        data, shift = head + data, first_line - 2
    elif start:  # a blank line 1 (skipped): the range's first line is not the file's first (BOM)
        data, shift = b"\n" + data, first_line - 2
    else:
        shift = 0
    for record in readers.iter_records(io.BytesIO(data), fmt, path):
        yield record.line + shift, record


class _SplitFile(beam.DoFn):
    """A text file → its `split_ranges` as `(path, start, end, first line)`."""

    def __init__(self, fmt: str, target: int):
        self._fmt = fmt
        self._target = target

    def process(self, path: str) -> Iterable[tuple]:
        with _open(path) as f:
            for start, end, line in split_ranges(f, self._fmt, self._target):
                yield (path, start, end, line)


class _ReadFile(beam.DoFn):
    """A text file (or a `_SplitFile` range of one) → row dicts (each with `SOURCE_KEY`), or
    row batches with `batch_rows`; a record that does not parse goes to the dead letter as
    `unparseable`, with its file and line, never away."""

    def __init__(self, table: str, fmt: str, with_source: bool, batch_rows: int = 0):
        self._table = table
        self._fmt = fmt
        self._with_source = with_source
        self._batch_rows = batch_rows

    def setup(self) -> None:
        self._count = counter(f"input_{self._table}")

    def process(self, element) -> Iterable:
        from tfvctr.io import fs

        path = element if isinstance(element, str) else element[0]
        name = fs.basename(path)
        batch: list = []
        count = 0  # one counter update per batch and file: a Beam counter costs more than a row
        for line, record in self._records(element):
            count += 1
            if record.row is None:
                where = f"{name} line {line}"
                yield pvalue.TaggedOutput(DEAD, dead_letter(self._table, record.text, "unparseable",
                                                            f"{self._table}: unparseable line: {record.error} ({where})"))
                continue
            if self._batch_rows:
                # The batch goes straight to its validation in the same fused stage (no shuffle
                # between them since the ranges are spread): the row dict as it is.
                batch.append((line, record.row))
                if len(batch) == self._batch_rows:
                    self._count.inc(count)
                    count = 0
                    yield (name, None, batch)
                    batch = []
                continue
            if self._with_source:
                record.row[SOURCE_KEY] = f"{name} line {line}"
            yield record.row
        self._count.inc(count)
        if batch:
            yield (name, None, batch)

    def _records(self, element) -> Iterator:
        from tfvctr.io import readers

        if not isinstance(element, str):
            yield from _range_records(*element[:1], self._fmt, *element[1:])
            return
        with _open(element) as f:
            for record in readers.iter_records(f, self._fmt, element):
                yield record.line, record


def is_row_batch(element) -> bool:
    """Whether `element` is a row batch of `ReadTable(batch_rows=N)` (a row is a dict)."""
    return isinstance(element, tuple)


def rows_of_batch(batch: tuple) -> Iterable[tuple[int, dict]]:
    """A row batch → `(line, row dict)` for each of its rows (the batch's first item names the file)."""
    _, columns, rows = batch
    if columns is None:
        return rows
    return ((line, dict(zip(columns, values, strict=True))) for line, values in rows)


class _CountRow(beam.DoFn):
    def __init__(self, table: str):
        self._table = table

    def process(self, row: dict) -> Iterable[dict]:
        counter(f"input_{self._table}").inc()
        yield row


class ReadTable(beam.PTransform):
    """Reads `path` (a file or a glob) as row dicts; counts every record as `input_<table>`.

    Returns a dict with the rows under `"rows"` and unparseable records (`dead_letter`
    tuples, their reason naming file and line) under `"dead"`. With `with_source=True`,
    text-table rows carry `SOURCE_KEY` ("t.csv line 7") for the validation composites.
    With `batch_rows=N` a text table is cut into byte ranges (`split_ranges`), the ranges
    (not the rows) are spread, and its `"rows"` are row batches of up to N rows parsed
    from a range (for `ValidateImpressions`, which runs fused with the read: no row crosses
    a shuffle before it is validated; `rows_of_batch` turns a batch back into rows); a
    Parquet table stays one row per element. A batch is a plain tuple `(file name,
    columns, [(line, values)])`: `columns` is None and `values` the row dict (a `columns`
    tuple with `values` tuples in its order is also understood).
    """

    def __init__(self, path: str, table: str, with_source: bool = False, batch_rows: int = 0):
        super().__init__()
        self._path = path
        self._table = table
        self._with_source = with_source
        self._batch_rows = batch_rows

    def expand(self, pbegin: beam.pvalue.PBegin):
        from tfvctr.io import tables

        fmt = tables.table_format(self._path)
        if fmt == "parquet":
            rows = (pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self._path)
                    | "Count" >> beam.ParDo(_CountRow(self._table)))
            dead = pbegin.pipeline | "NoDead" >> beam.Create([])
            return {"rows": rows, DEAD: dead}
        files = pbegin | "Files" >> beam.Create(_files(self._path))
        read = _ReadFile(self._table, fmt, self._with_source, self._batch_rows)
        if self._batch_rows:
            # Byte ranges are spread, not rows: the rows are parsed where they are validated
            # (fused), so none of them is encoded, shuffled and decoded on the way (docs/beam_jobs.md).
            ranges = (files | "Split" >> beam.ParDo(_SplitFile(fmt, RANGE_BYTES))
                      | "SpreadRanges" >> beam.Reshuffle())
            parsed = ranges | "ReadRanges" >> beam.ParDo(read).with_outputs(DEAD, main="rows")
            return {"rows": parsed.rows, DEAD: parsed[DEAD]}
        parsed = files | "ReadFiles" >> beam.ParDo(read).with_outputs(DEAD, main="rows")
        # One file is read by one task: spread its rows before the (costly) validation.
        rows = parsed.rows | "Spread" >> beam.Reshuffle()
        return {"rows": rows, DEAD: parsed[DEAD]}
