"""`ReadTable(batch_rows=N)` reads byte ranges (`split_ranges`): the same records, lines and
dead letters as reading the whole file, wherever the cuts fall (docs/beam_jobs.md, speed)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected by pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.transforms import read
from beam_jobs.transforms.read import ReadTable, rows_of_batch, split_ranges
from tfvctr.io import readers

HEADER = b"ad_id,label,day\n"
# Quoted fields over two lines, an escaped quote, a stray quote in an unquoted field, a line
# that is not UTF-8 (alone and inside a quoted field), blank lines, CRLF, too few fields, an
# unterminated quote, a lone CR: each case where a careless cut would change a record.
CSV_BODY = (b'a1,0,1\n"a\n2",1,2\n\na3,"x""y",3\r\n\xff\xfe,1,1\na"4,0,4\n"q",r"s,5\n'
            b'"b\n\xff\nc",1,6\na5,1\n"open,1,7\nx\ry,1,8\na6,1,9\n' * 3 + b"a7,0,9")
JSONL_BODY = (b'\xef\xbb\xbf{"ad_id": "a0"}\n{"ad_id": "a1"}\n\n{bad\n\xff\n{"a": 1, "a": 2}\n[1]\n'
              b'\xef\xbb\xbf{"ad_id": "bom"}\n' * 3 + b'{"ad_id": "last"}')


def _whole(path: str, fmt: str) -> list:
    with open(path, "rb") as f:
        return [(r.line, r.row, r.error, r.text) for r in readers.iter_records(f, fmt, path)]


@pytest.mark.parametrize("fmt, data", [("csv", HEADER + CSV_BODY), ("csv", HEADER + CSV_BODY.replace(b'"', b"'")),
                                       ("jsonl", JSONL_BODY)], ids=["csv_quoted", "csv_unquoted", "jsonl"])
@pytest.mark.parametrize("target", [1, 5, 13, 40, 1 << 20])
def test_ranges_cover_the_file_and_give_the_same_records_with_the_same_lines(tmp_path, fmt, data, target):
    path = str(tmp_path / f"t.{fmt}")
    with open(path, "wb") as f:
        f.write(data)
    with open(path, "rb") as f:
        ranges = list(split_ranges(f, fmt, target))
    first = len(HEADER) if fmt == "csv" else 0
    assert [r[0] for r in ranges] == [first] + [r[1] for r in ranges[:-1]]  # contiguous
    assert ranges[-1][1] == len(data)
    if target == 1 and fmt == "jsonl":
        assert len(ranges) == data.count(b"\n") + 1  # one line each
    got = [(line, r.row, r.error, r.text) for start, end, n in ranges
           for line, r in read._range_records(path, fmt, start, end, n)]
    assert got == _whole(path, fmt)


def test_quoted_csv_is_cut_only_where_a_record_starts(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(HEADER + b'"a\n\n\n",0,1\nb,1,2\n')  # one record over 4 lines, then one more
    with open(path, "rb") as f:
        ranges = list(split_ranges(f, "csv", 1))
    assert [(n, end - start) for start, end, n in ranges] == [(2, 11), (6, 6)]


def test_read_table_in_ranges_batches_rows_and_dead_letters_as_the_whole_file_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(read, "RANGE_BYTES", 16)  # several ranges for a few lines
    path = tmp_path / "imps.csv"
    path.write_bytes(HEADER + b'a1,0,1\na2,1\n"a\n3",1,2\na4,0,3\n\xff,0,4\na5,1,5\n')
    with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
        out = p | ReadTable(str(path), "impressions", with_source=True, batch_rows=2)
        assert_that(out["rows"] | beam.FlatMap(lambda b: [(b[0], line, row["ad_id"]) for line, row in rows_of_batch(b)]),
                    equal_to([("imps.csv", 2, "a1"), ("imps.csv", 4, "a\n3"), ("imps.csv", 6, "a4"),
                              ("imps.csv", 8, "a5")]), label="rows")
        assert_that(out["dead"] | beam.Map(lambda d: d[3]),
                    equal_to(["impressions: unparseable line: malformed CSV: expected 3 fields, got 2 (imps.csv line 3)",
                              "impressions: unparseable line: not UTF-8: byte 0xff at column 1 (save the table as "
                              "UTF-8) (imps.csv line 7)"]), label="dead")
