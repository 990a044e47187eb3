"""`ReadTable`: one raw table (CSV, JSON Lines or Parquet; local or gs://) → row dicts."""

from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam import pvalue

from beam_jobs.common import counter, dead_letter

DEAD = "dead"


def read_csv_header(path: str) -> list[str]:
    """The header of the first file matching `path` (every shard of a table shares it)."""
    from apache_beam.io.filesystems import FileSystems

    from tfvctr.errors import DataError
    from tfvctr.io import tables

    matches = FileSystems.match([path])[0].metadata_list
    if not matches:
        raise DataError(f"{path}: no such file")
    first_file = sorted(m.path for m in matches)[0]
    with FileSystems.open(first_file) as f:
        first = f.readline().decode("utf-8")
    try:
        header = tables.parse_csv_header(first)
    except ValueError as e:
        raise DataError(f"{first_file}: line 1: {e}") from None
    if not header:
        raise DataError(f"{first_file}: empty CSV file (no header line)")
    return header


class _ParseLine(beam.DoFn):
    """A text line → row dict; an unparseable line goes to the dead letter, never away."""

    def __init__(self, table: str, fmt: str, header: list[str] | None):
        self._table = table
        self._fmt = fmt
        self._header = header

    def process(self, line: str) -> Iterable:
        if not line.strip():
            # Blank lines are not rows (trailing newline, spacing).
            return
        counter(f"input_{self._table}").inc()
        from tfvctr.io import tables

        try:
            if self._fmt == "csv":
                row = tables.parse_csv_line(line, self._header)
            else:
                row = tables.parse_json_line(line)
        except ValueError as e:
            row = pvalue.TaggedOutput(DEAD, dead_letter(self._table, line, "unparseable",
                                                        f"{self._table}: unparseable line: {e}"))
        yield row


class _CountRow(beam.DoFn):
    def __init__(self, table: str):
        self._table = table

    def process(self, row: dict) -> Iterable[dict]:
        counter(f"input_{self._table}").inc()
        yield row


class ReadTable(beam.PTransform):
    """Reads `path` (a file or a glob) as row dicts; counts every row as `input_<table>`.

    Returns a `DoOutputsTuple` with the rows as the main output and unparseable lines
    (`dead_letter` tuples) under `"dead"`.
    """

    def __init__(self, path: str, table: str):
        super().__init__()
        self._path = path
        self._table = table

    def expand(self, pbegin: beam.pvalue.PBegin):
        from tfvctr.io import tables

        fmt = tables.table_format(self._path)
        if fmt == "parquet":
            rows = (pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self._path)
                    | "Count" >> beam.ParDo(_CountRow(self._table)))
            dead = pbegin.pipeline | "NoDead" >> beam.Create([])
            return {"rows": rows, DEAD: dead}
        header = read_csv_header(self._path) if fmt == "csv" else None
        lines = pbegin | "ReadText" >> beam.io.ReadFromText(self._path, skip_header_lines=1 if fmt == "csv" else 0)
        parsed = lines | "Parse" >> beam.ParDo(_ParseLine(self._table, fmt, header)).with_outputs(DEAD, main="rows")
        return {"rows": parsed.rows, DEAD: parsed[DEAD]}
