"""`ReadTable`: one raw table (CSV, JSON Lines or Parquet; local or gs://) → row dicts.

Text tables are read file by file (a glob of N files reads in N parallel tasks, then a
`Reshuffle` spreads the rows), so every record keeps its line number: a bad one is
dead-lettered as `unparseable` naming its file and line (docs/bad_input.md). With
`with_source=True` each row also carries where it came from under `SOURCE_KEY`
("impressions.csv line 17"); the validation composites take it out and name it in their
dead-letter reasons.

`check_table` runs on the driver before the pipeline starts and refuses, in one line,
what would make the whole job wrong: a missing file or column, a column named twice,
shards with different headers, a table without rows, or a day written `20240301`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam import pvalue

from beam_jobs import records
from beam_jobs.common import counter, dead_letter

DEAD = "dead"
SOURCE_KEY = "__source__"  # "<file name> line N" of a text-table row; popped by the validation composites


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


class _ReadFile(beam.DoFn):
    """A text file → row dicts (each with `SOURCE_KEY`); a record that does not parse goes
    to the dead letter as `unparseable`, with its file and line, never away."""

    def __init__(self, table: str, fmt: str, with_source: bool, batch_rows: int = 0):
        self._table = table
        self._fmt = fmt
        self._with_source = with_source
        self._batch_rows = batch_rows

    def setup(self) -> None:
        self._count = counter(f"input_{self._table}")

    def process(self, path: str) -> Iterable:
        from tfvctr.io import fs, readers

        name = fs.basename(path)
        batch: list = []
        columns = None
        csv = self._fmt == "csv"
        count = 0  # one counter update per batch and file: a Beam counter costs more than a row
        with _open(path) as f:
            for record in readers.iter_records(f, self._fmt, path):
                count += 1
                if record.row is None:
                    where = f"{name} line {record.line}"
                    yield pvalue.TaggedOutput(DEAD, dead_letter(self._table, record.text, "unparseable",
                                                                f"{self._table}: unparseable line: {record.error} ({where})"))
                    continue
                if self._batch_rows:
                    # A CSV row is a dict in header order: its values travel as a tuple, the
                    # column names once per batch (a third of the bytes to encode and decode).
                    if csv and columns is None:
                        columns = tuple(record.row)
                    batch.append((record.line, tuple(record.row.values()) if csv else record.row))
                    if len(batch) == self._batch_rows:
                        self._count.inc(count)
                        count = 0
                        yield (name, columns, batch)
                        batch = []
                    continue
                if self._with_source:
                    record.row[SOURCE_KEY] = f"{name} line {record.line}"
                yield record.row
        self._count.inc(count)
        if batch:
            yield (name, columns, batch)


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
    With `batch_rows=N` a text table's `"rows"` are row batches of up to N rows (for
    `ValidateImpressions`, `rows_of_batch` turns one back into rows): the shuffle that
    spreads them then moves N rows per element instead of one, the cost of a Beam element
    paid once per batch (docs/beam_jobs.md); a Parquet table stays one row per element.
    A batch is a plain tuple `(file name, columns, [(line, values)])`: for CSV `columns`
    is the header and `values` a tuple in its order; for JSON Lines `columns` is None and
    `values` the row dict.
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
        parsed = files | "ReadFiles" >> beam.ParDo(_ReadFile(self._table, fmt, self._with_source, self._batch_rows)
                                                   ).with_outputs(DEAD, main="rows")
        # One file is read by one task: spread its rows before the (costly) validation.
        if self._batch_rows:  # a batch crosses the shuffle as one bytes value (records.pack)
            rows = (parsed.rows | "Pack" >> beam.Map(records.pack) | "Spread" >> beam.Reshuffle()
                    | "Unpack" >> beam.Map(records.unpack))
        else:
            rows = parsed.rows | "Spread" >> beam.Reshuffle()
        return {"rows": rows, DEAD: parsed[DEAD]}
