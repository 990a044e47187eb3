"""Raw-table readers (tfvctr.io.tables): formats agree, values coerce, errors name the cause."""

from __future__ import annotations

import datetime
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfvctr.config import config_from_dict
from tfvctr.errors import DataError
from tfvctr.io import tables

DATASET = {
    "passthrough": ["true_ctr"],
    "features": [
        {"name": "user_id", "source": "impression", "kind": "categorical", "hash_buckets": 100},
        {"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto", "default": "unknown"},
        {"name": "position", "source": "impression", "kind": "numeric"},
        {"name": "interests", "source": "impression", "kind": "multi", "vocabulary": "auto"},
        {"name": "category", "source": "ad", "kind": "categorical", "vocabulary": "auto"},
        {"name": "brand", "source": "ad", "kind": "categorical", "vocabulary": "auto"},
        {"name": "price", "source": "ad", "kind": "numeric", "transform": "normalize"},
        {"name": "keywords", "source": "ad", "kind": "multi", "vocabulary": "auto"},
    ],
}


_EPOCH = datetime.date(1970, 1, 1)


@pytest.fixture
def ds():
    return config_from_dict({"dataset": DATASET}).dataset


# The same impressions in every format; CSV has strings and `|`-joined lists.
IMPRESSIONS_CSV = (
    "ad_id,label,day,user_id,device,position,interests,true_ctr\n"
    "a1,1,3,u1,ios,2,shoes|bags,0.25\n"
    'a2,0,5,"u,2",,,,0.5\n'
    "a1,0,0,u3,android,1.5,bags,0.125\n"
)
IMPRESSIONS_JSON = [
    {
        "ad_id": "a1",
        "label": 1,
        "day": 3,
        "user_id": "u1",
        "device": "ios",
        "position": 2,
        "interests": ["shoes", "bags"],
        "true_ctr": 0.25,
    },
    {
        "ad_id": "a2",
        "label": 0,
        "day": 5,
        "user_id": "u,2",
        "device": None,
        "position": None,
        "interests": [],
        "true_ctr": 0.5,
    },
    {
        "ad_id": "a1",
        "label": 0,
        "day": 0,
        "user_id": "u3",
        "device": "android",
        "position": 1.5,
        "interests": ["bags"],
        "true_ctr": 0.125,
    },
]
# Hand-written: a missing device takes its default, a missing numeric is None and a
# missing multi is [] (ISO dates: test_coerce_row_converts_days_and_iso_dates_to_day_numbers).
EXPECTED_IMPRESSIONS = [
    {
        "ad_id": "a1",
        "label": 1,
        "day": 3,
        "user_id": "u1",
        "device": "ios",
        "position": 2.0,
        "interests": ["shoes", "bags"],
        "true_ctr": 0.25,
    },
    {
        "ad_id": "a2",
        "label": 0,
        "day": 5,
        "user_id": "u,2",
        "device": "unknown",
        "position": None,
        "interests": [],
        "true_ctr": 0.5,
    },
    {
        "ad_id": "a1",
        "label": 0,
        "day": 0,
        "user_id": "u3",
        "device": "android",
        "position": 1.5,
        "interests": ["bags"],
        "true_ctr": 0.125,
    },
]


def _write(path, fmt: str, csv_text: str, json_rows: list[dict]) -> str:
    path = f"{path}.{fmt}"
    if fmt == "csv":
        with open(path, "w") as f:
            f.write(csv_text)
    elif fmt == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in json_rows)
    else:
        rows = [dict(r) for r in json_rows]
        days = [r.get("day") for r in rows]
        if any(isinstance(d, str) for d in days) and any(isinstance(d, int) for d in days):
            # A Parquet column has one type: write the days as a date32 column instead.
            for r in rows:
                r["day"] = (
                    _EPOCH + datetime.timedelta(days=r["day"])
                    if isinstance(r["day"], int)
                    else datetime.date.fromisoformat(r["day"])
                )
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_read_table_coerces_impressions_identically_in_every_format(tmp_path, ds, fmt):
    path = _write(tmp_path / "impressions", fmt, IMPRESSIONS_CSV, IMPRESSIONS_JSON)
    assert tables.read_table(path, "impressions", ds) == EXPECTED_IMPRESSIONS


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_read_table_coerces_ads_identically_in_every_format(tmp_path, ds, fmt):
    csv_text = 'ad_id,category,image,brand,price,keywords\nx1,shoes,images/x1.jpg,"acme, inc",19.5,red|sale\nx2,bags,/abs/x2.png,zeta,7,\n'
    json_rows = [
        {
            "ad_id": "x1",
            "category": "shoes",
            "image": "images/x1.jpg",
            "brand": "acme, inc",
            "price": 19.5,
            "keywords": ["red", "sale"],
        },
        {"ad_id": "x2", "category": "bags", "image": "/abs/x2.png", "brand": "zeta", "price": 7, "keywords": []},
    ]
    path = _write(tmp_path / "ads", fmt, csv_text, json_rows)
    assert tables.read_table(path, "ads", ds) == [
        {
            "ad_id": "x1",
            "category": "shoes",
            "image": "images/x1.jpg",
            "brand": "acme, inc",
            "price": 19.5,
            "keywords": ["red", "sale"],
        },
        {"ad_id": "x2", "category": "bags", "image": "/abs/x2.png", "brand": "zeta", "price": 7.0, "keywords": []},
    ]


def test_iter_rows_keeps_raw_types_per_format(tmp_path):
    csv_path = _write(tmp_path / "i", "csv", IMPRESSIONS_CSV, IMPRESSIONS_JSON)
    json_path = _write(tmp_path / "i", "jsonl", IMPRESSIONS_CSV, IMPRESSIONS_JSON)
    assert next(tables.iter_rows(csv_path))["interests"] == "shoes|bags"
    assert next(tables.iter_rows(csv_path))["label"] == "1"
    assert next(tables.iter_rows(json_path))["interests"] == ["shoes", "bags"]
    assert [r["user_id"] for r in tables.iter_rows(csv_path)] == ["u1", "u,2", "u3"]


def test_iter_rows_reads_a_quoted_csv_field_spanning_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n"x\ny",2\n')
    assert list(tables.iter_rows(str(path))) == [{"a": "x\ny", "b": "2"}]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a|b", ["a", "b"]),
        (["a", "b"], ["a", "b"]),
        ("", []),
        ("a||b", ["a", "b"]),
        ([], []),
        (None, []),
        ("solo", ["solo"]),
    ],
    ids=["pipe_string", "list", "empty_string", "empty_item_dropped", "empty_list", "null", "single"],
)
def test_coerce_row_reads_multi_values_from_pipes_and_lists(ds, value, expected):
    row = {
        "ad_id": "a",
        "label": "0",
        "day": "1",
        "user_id": "u",
        "device": "d",
        "position": "1",
        "interests": value,
        "true_ctr": "0.1",
    }
    assert tables.coerce_row(row, "impressions", ds)["interests"] == expected


@pytest.mark.parametrize(
    "value, expected", [("1970-01-01", 0), ("1970-02-01", 31), ("2024-01-02", 19724), ("-3", -3), (6, 6), (6.0, 6)]
)
def test_coerce_row_converts_days_and_iso_dates_to_day_numbers(ds, value, expected):
    row = {
        "ad_id": "a",
        "label": 1,
        "day": value,
        "user_id": "u",
        "device": "d",
        "position": 1,
        "interests": [],
        "true_ctr": 0.1,
    }
    assert tables.coerce_row(row, "impressions", ds)["day"] == expected


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("label", "yes", "label: expected 0 or 1, got 'yes'"),
        ("label", 2, "label: expected 0 or 1, got 2"),
        ("label", "", "label: missing value"),
        ("day", "2024-13-01", "day: expected an integer or an ISO date (YYYY-MM-DD), got '2024-13-01'"),
        ("position", "abc", "position: expected a number, got 'abc'"),
        ("position", "inf", "position: expected a finite number, got 'inf'"),
        ("true_ctr", "high", "true_ctr: expected a number, got 'high'"),
        ("device", ["a", "b"], "device: expected a single value, got a list"),
        ("ad_id", "", "ad_id: missing value"),
    ],
    ids=[
        "label_word",
        "label_two",
        "label_empty",
        "day_bad_date",
        "numeric_word",
        "numeric_inf",
        "passthrough_word",
        "categorical_list",
        "ad_id_empty",
    ],
)
def test_coerce_row_rejects_wrong_values_with_a_reason(ds, column, value, message):
    row = {
        "ad_id": "a",
        "label": "1",
        "day": "1",
        "user_id": "u",
        "device": "d",
        "position": "1",
        "interests": "",
        "true_ctr": "0.1",
    }
    row[column] = value
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tables.coerce_row(row, "impressions", ds)


def test_coerce_row_drops_unknown_columns_and_stringifies_ids(ds):
    row = {
        "ad_id": 7,
        "category": "shoes",
        "image": "i.jpg",
        "brand": 3.0,
        "price": "1e2",
        "keywords": "k",
        "extra": "x",
    }
    assert tables.coerce_row(row, "ads", ds) == {
        "ad_id": "7", "category": "shoes", "image": "i.jpg", "brand": "3", "price": 100.0, "keywords": ["k"],
    }  # fmt: skip


def test_required_columns_lists_reserved_then_features_then_passthrough_once(ds):
    assert tables.required_columns("ads", ds) == ["ad_id", "category", "image", "brand", "price", "keywords"]
    assert tables.required_columns("impressions", ds) == [
        "ad_id", "label", "day", "user_id", "device", "position", "interests", "true_ctr",
    ]  # fmt: skip


def test_check_columns_names_the_file_the_missing_column_and_what_was_found(ds):
    with pytest.raises(DataError) as e:
        tables.check_columns("data/ads.csv", ["category", "image", "brand", "price", "keywords"], "ads", ds)
    assert str(e.value) == (
        "data/ads.csv: missing column 'ad_id' (required for the ads table); found: category, image, brand, price, keywords"
    )


def test_read_table_reports_every_missing_column_of_the_file(tmp_path, ds):
    path = tmp_path / "impressions.csv"
    path.write_text("ad_id,label,day,user_id\na,1,0,u\n")
    with pytest.raises(DataError) as e:
        tables.read_table(str(path), "impressions", ds)
    assert str(e.value) == (
        f"{path}: missing columns 'device', 'position', 'interests', 'true_ctr' (required for the impressions table); "
        "found: ad_id, label, day, user_id"
    )


def test_read_table_names_file_line_and_reason_for_a_bad_row(tmp_path, ds):
    path = _write(tmp_path / "impressions", "csv", IMPRESSIONS_CSV.replace("a1,0,0,u3", "a1,yes,0,u3"), [])
    with pytest.raises(DataError, match=f"^{re.escape(path)}: line 4: label: expected 0 or 1, got 'yes'$"):
        tables.read_table(path, "impressions", ds)


def test_read_table_names_the_parquet_row_for_a_bad_value(tmp_path, ds):
    rows = [dict(r) for r in IMPRESSIONS_JSON]
    for r, day in zip(rows, ["3", "4", "someday"], strict=True):
        r["day"] = day
    path = _write(tmp_path / "impressions", "parquet", "", rows)
    with pytest.raises(DataError, match=re.escape(f"{path}: row 3: day: expected an integer or an ISO date")):
        tables.read_table(path, "impressions", ds)


def test_read_table_rejects_a_csv_line_with_the_wrong_number_of_fields(tmp_path, ds):
    path = tmp_path / "impressions.csv"
    path.write_text(IMPRESSIONS_CSV + "a9,1\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: line 5: malformed CSV: expected 8 fields, got 2$"):
        tables.read_table(str(path), "impressions", ds)


def test_read_table_rejects_a_malformed_json_line(tmp_path, ds):
    path = tmp_path / "impressions.jsonl"
    path.write_text(json.dumps(IMPRESSIONS_JSON[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: line 2: malformed JSON: "):
        tables.read_table(str(path), "impressions", ds)


def test_missing_file_is_reported_by_path(tmp_path, ds):
    path = str(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=f"^{re.escape(path)}: file not found$"):
        tables.read_table(path, "ads", ds)
    with pytest.raises(DataError, match=f"^{re.escape(path)}: file not found$"):
        list(tables.iter_rows(path))


@pytest.mark.parametrize("name", ["ads.txt", "ads"], ids=["txt", "no_extension"])
def test_unknown_extension_is_reported_by_path(name):
    with pytest.raises(DataError, match=rf"^{name}: unknown table format '(\.txt|\(no extension\))'; expected one of"):
        tables.table_format(name)


@pytest.mark.parametrize(
    "name, fmt",
    [("a.csv", "csv"), ("a.CSV", "csv"), ("a.jsonl", "jsonl"), ("a.json", "jsonl"), ("gs://b/a.parquet", "parquet")],
)
def test_table_format_follows_the_extension(name, fmt):
    assert tables.table_format(name) == fmt


def test_parse_csv_line_handles_quotes_and_rejects_malformed_lines():
    header = ["a", "b", "c"]
    assert tables.parse_csv_line('1,"x, ""y""",3\n', header) == {"a": "1", "b": 'x, "y"', "c": "3"}
    with pytest.raises(ValueError, match="^malformed CSV: expected 3 fields, got 2$"):
        tables.parse_csv_line("1,2", header)
    with pytest.raises(ValueError, match="^malformed CSV: "):
        tables.parse_csv_line('1,"2,3', header)
    assert tables.parse_csv_header("\ufeffa,b,c\r\n") == header


def test_parse_json_line_returns_an_object_or_says_why_not():
    assert tables.parse_json_line('{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(ValueError, match="^malformed JSON: expected an object, got list$"):
        tables.parse_json_line("[1, 2]")
    with pytest.raises(ValueError, match="^malformed JSON: Expecting value at column 7$"):
        tables.parse_json_line('{"a": }')


def test_table_columns_reads_header_schema_and_jsonl_keys(tmp_path):
    csv_path = _write(tmp_path / "i", "csv", IMPRESSIONS_CSV, IMPRESSIONS_JSON)
    parquet_path = _write(tmp_path / "i", "parquet", "", IMPRESSIONS_JSON)
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text('{"a": 1}\n\n{"b": 2, "a": 3}\n')
    assert tables.table_columns(csv_path) == list(IMPRESSIONS_JSON[0])
    assert tables.table_columns(parquet_path) == list(IMPRESSIONS_JSON[0])
    assert tables.table_columns(str(jsonl)) == ["a", "b"]


@pytest.mark.parametrize(
    "image, table_path, expected",
    [
        ("images/a.jpg", "/data/demo/ads.csv", "/data/demo/images/a.jpg"),
        ("../img/a.jpg", "/data/demo/ads.csv", "/data/img/a.jpg"),
        ("images/a.jpg", "ads.csv", "images/a.jpg"),
        ("/abs/a.jpg", "/data/ads.csv", "/abs/a.jpg"),
        ("gs://other/a.jpg", "/data/ads.csv", "gs://other/a.jpg"),
        ("images/a.jpg", "gs://bucket/demo/ads.jsonl", "gs://bucket/demo/images/a.jpg"),
    ],
    ids=["relative", "parent", "table_in_cwd", "absolute", "uri_image", "uri_table"],
)
def test_resolve_image_path_is_relative_to_the_table_folder(image, table_path, expected):
    assert tables.resolve_image_path(image, table_path) == expected


# --------------------------------------------------------------------------- input contract (docs/bad_input.md)


@pytest.mark.parametrize(
    "value, message",
    [
        ("20240301", "day: '20240301' looks like a date without dashes; write it 2024-03-01 (or use day numbers up to 99999)"),
        (20240301, "day: 20240301 looks like a date without dashes; write it 2024-03-01 (or use day numbers up to 99999)"),
        ("1700000000", "day: expected an integer or an ISO date (YYYY-MM-DD), got '1700000000' (day numbers go up to 99999)"),
        (True, "day: expected an integer or an ISO date (YYYY-MM-DD), got True"),
    ],
    ids=["compact_date_text", "compact_date_int", "timestamp", "bool"],
)
def test_parse_day_refuses_compact_dates_and_huge_numbers(value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tables.parse_day(value)


def test_parse_day_reports_the_format_and_format_day_prints_it_back():
    assert tables.parse_day("2024-03-01") == (19783, "iso")
    assert tables.parse_day(datetime.date(2024, 3, 1)) == (19783, "iso")
    assert tables.parse_day(" 12 ") == (12, "integer")
    assert tables.format_day(19783, "iso") == "2024-03-01"
    assert tables.format_day(19783, "integer") == "19783"
    assert tables.format_days([19782, 19783], "iso") == "[2024-02-29, 2024-03-01]"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_read_table_refuses_day_numbers_mixed_with_iso_dates(tmp_path, ds, fmt):
    rows = [dict(r) for r in IMPRESSIONS_JSON]
    rows[2]["day"] = "2024-01-02"
    text = IMPRESSIONS_CSV.replace("a1,0,0,u3", "a1,0,2024-01-02,u3")
    path = _write(tmp_path / "impressions", fmt, text, rows)
    first, line = (2, 4) if fmt == "csv" else (1, 3)  # JSONL has no header line
    message = (f"{path}: line {line}: day '2024-01-02' is an ISO date, but the table starts with day numbers "
               f"(line {first}); use one day format per table")
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        tables.read_table(path, "impressions", ds)


def test_csv_header_naming_a_column_twice_is_refused(tmp_path, ds):
    path = tmp_path / "impressions.csv"
    path.write_text("ad_id,label,day,user_id,label\na,1,0,u,0\n")
    message = f"{path}: line 1: column 'label' appears twice (columns 2 and 5); which one is meant?"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        tables.table_columns(str(path))
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        tables.read_table(str(path), "impressions", ds)


def test_parquet_schema_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "ads.parquet"
    pq.write_table(pa.table([pa.array(["a"]), pa.array([1]), pa.array([2])], names=["ad_id", "label", "label"]), path)
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'label' appears twice (columns 2 and 3)")):
        tables.table_columns(str(path))


def test_json_line_repeating_a_key_is_malformed():
    with pytest.raises(ValueError, match="^malformed JSON: key 'label' appears twice$"):
        tables.parse_json_line('{"label": 0, "label": 1}')


def test_a_line_that_is_not_utf8_names_its_byte_and_line(tmp_path, ds):
    path = tmp_path / "impressions.csv"
    path.write_bytes(IMPRESSIONS_CSV.encode().replace(b"android", b"andr\xefid"))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: line 4: not UTF-8: byte 0xef at column 15 "):
        tables.read_table(str(path), "impressions", ds)
    records = [r for _, r in tables.iter_numbered(str(path))]
    assert [(r.line, r.row is None) for r in records] == [(2, False), (3, False), (4, True)]
    assert records[2].text == "a1,0,0,u3,andr\ufffdid,1.5,bags,0.125"


def test_csv_records_keep_their_start_line_across_quoted_newlines_and_bad_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'a,b\n1,"x\ny"\n\xff,2\n\n3,4\n5\n')
    records = [r for _, r in tables.iter_numbered(str(path))]
    assert [(r.line, r.row, r.error) for r in records] == [
        (2, {"a": "1", "b": "x\ny"}, None),
        (4, None, "not UTF-8: byte 0xff at column 1 (save the table as UTF-8)"),
        (6, {"a": "3", "b": "4"}, None),
        (7, None, "malformed CSV: expected 2 fields, got 1"),
    ]


def test_jsonl_columns_skip_a_broken_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1,\n{"a": 2, "b": 3}\n')
    assert tables.table_columns(str(path)) == ["a", "b"]
    assert tables.first_row(str(path)) == ("line 2", {"a": 2, "b": 3})


@pytest.mark.parametrize("text, fmt", [("ad_id,label,day,user_id\n", "csv"), ("", "jsonl"), ("\n\n", "jsonl")],
                         ids=["csv_header_only", "jsonl_empty", "jsonl_blank_lines"])
def test_a_table_without_rows_is_refused(tmp_path, text, fmt):
    ds = config_from_dict({"dataset": {"features": []}}).dataset
    path = tmp_path / f"impressions.{fmt}"
    path.write_text(text)
    with pytest.raises(DataError, match=r"no rows \(only a header\?\); expected at least one impressions row$|missing"):
        tables.read_table(str(path), "impressions", ds)
    assert not tables.has_records(str(path))


def test_an_empty_csv_file_is_refused_as_empty(tmp_path, ds):
    path = tmp_path / "ads.csv"
    path.write_text("")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: empty file; expected a header line naming the columns$"):
        tables.table_columns(str(path))


@pytest.mark.parametrize("column, value", [("device", "io\ns"), ("interests", ["sport", "mu\r\nsic"])],
                         ids=["categorical", "multi"])
def test_a_vocabulary_value_with_a_line_break_is_refused(ds, column, value):
    row = {"ad_id": "a", "label": 1, "day": 0, "user_id": "u\nv", "device": "d", "position": 1, "interests": [],
           "true_ctr": 0.1}  # user_id is hashed: no vocabulary file, a line break is harmless there
    assert tables.coerce_row(row, "impressions", ds)["user_id"] == "u\nv"
    row[column] = value
    with pytest.raises(ValueError, match=rf"^{column}: '.*' contains a line break \(vocabulary files hold one value per line\)$"):
        tables.coerce_row(row, "impressions", ds)
