"""Schema coercion for the raw tables (docs/formats.md §1): raw rows → typed values, per the config.

`tfvctr.io.readers` turns bytes into raw rows (CSV values are strings; JSONL and Parquet
keep their types); this module knows the dataset config and decides what each value
means: `label` int 0/1, `day` int, categorical str, multi list[str], numeric float. A
value that cannot be used raises `ValueError` with a reason a person can act on ("label:
expected 0 or 1, got 'yes'"); the Beam job dead-letters the row with it.

**Days** come in one of two formats per table (docs/bad_input.md): day numbers
(integers, |day| <= 99,999) or ISO dates (`YYYY-MM-DD`, stored as days since 1970-01-01
and printed back as dates). `20240301` is refused as a day number: it is a date written
without dashes, and as day 20,240,301 it would put every row 55,000 years in the future.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Iterable, Literal, Optional

from tfvctr.config import DatasetConfig, FeatureConfig
from tfvctr.errors import DataError

TableName = Literal["ads", "impressions"]
DayFormat = Literal["integer", "iso"]

ADS_REQUIRED = ("ad_id", "category", "image")
IMPRESSIONS_REQUIRED = ("ad_id", "label", "day", "user_id")

MULTI_SEPARATOR = "|"  # multi-valued features in CSV cells: "a|b|c"
MAX_DAY_NUMBER = 99_999  # larger integers are dates without dashes (20240301) or timestamps

_EPOCH = datetime.date(1970, 1, 1)
_RESERVED_STRINGS = frozenset(ADS_REQUIRED + IMPRESSIONS_REQUIRED) - {"label", "day"}
_DAY_EXPECTED = "expected an integer or an ISO date (YYYY-MM-DD)"


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


def check_columns(path: str, columns: Iterable[str], table: TableName, dataset_config: DatasetConfig) -> None:
    """Raises `DataError` naming the file and the first missing columns, if any."""
    columns = list(columns)
    present = set(columns)
    missing = [c for c in required_columns(table, dataset_config) if c not in present]
    if not missing:
        return
    found = ", ".join(columns) if columns else "(no columns)"
    if len(missing) == 1:
        what = f"missing column {missing[0]!r}"
    else:
        what = "missing columns " + ", ".join(repr(c) for c in missing)
    hint = ""
    if len(columns) == 1:
        separator = next((sep for sep in (";", "\t", "|") if sep in columns[0]), None)
        if separator is not None:
            hint = f"; is the file separated by {separator!r}? CSV tables are comma-separated"
    raise DataError(f"{path}: {what} (required for the {table} table); found: {found}{hint}")


# --------------------------------------------------------------------------- days


def parse_day(value: Any) -> tuple[int, DayFormat]:
    """A day value → (day number, its format). ISO dates become days since 1970-01-01.

    Raises:
        ValueError: neither a day number (|day| <= 99,999) nor an ISO date.
    """
    if isinstance(value, datetime.datetime):
        return (value.date() - _EPOCH).days, "iso"
    if isinstance(value, datetime.date):
        return (value - _EPOCH).days, "iso"
    number: Optional[int] = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                return (datetime.date.fromisoformat(text) - _EPOCH).days, "iso"
            except ValueError:
                pass
    if number is None:
        raise ValueError(f"day: {_DAY_EXPECTED}, got {value!r}")
    if abs(number) > MAX_DAY_NUMBER:
        try:
            date = datetime.datetime.strptime(str(number), "%Y%m%d").date()
        except ValueError:
            raise ValueError(f"day: {_DAY_EXPECTED}, got {value!r} (day numbers go up to {MAX_DAY_NUMBER})") from None
        raise ValueError(f"day: {value!r} looks like a date without dashes; write it {date.isoformat()} "
                         f"(or use day numbers up to {MAX_DAY_NUMBER})")
    return number, "integer"


def format_day(day: int, day_format: Optional[str]) -> str:
    """A day number as the user wrote it: an ISO date for an `iso` table, else the number."""
    if day_format == "iso":
        return (_EPOCH + datetime.timedelta(days=int(day))).isoformat()
    return str(int(day))


def format_days(days: Iterable[int], day_format: Optional[str]) -> str:
    """`[0, 1, 2]` or `[2024-01-01, 2024-01-02]`: a split's days for a summary line."""
    return "[" + ", ".join(format_day(d, day_format) for d in days) + "]"


# --------------------------------------------------------------------------- values


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
    `DoFn.setup`) and call it on every row.

    `day_format` is the format of the last row's `day` (`"integer"` or `"iso"`), so a
    caller can check that a table keeps to one format.
    """

    def __init__(self, table: TableName, dataset_config: DatasetConfig) -> None:
        self.table = table
        self.columns = required_columns(table, dataset_config)
        features = dataset_config.ad_features if table == "ads" else dataset_config.impression_features
        self.features = {f.name: f for f in features}
        self.day_format: Optional[DayFormat] = None
        # Values that end up as lines of a vocabulary file (vocab/<name>.txt): a line break
        # inside one would split it in two and shift every id after it.
        self._one_line = {f.name for f in features if f.vocabulary == "auto"} | ({"category"} if table == "ads" else set())

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.columns:
            value = row.get(name)
            if name in ("label", "day"):
                if _is_missing(value):
                    raise ValueError(f"{name}: missing value")
                if name == "label":
                    out[name] = _as_label(value)
                else:
                    out[name], self.day_format = parse_day(value)
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
            if name in self._one_line:
                _check_one_line(name, out[name])
        return out


def _check_one_line(name: str, value: Any) -> None:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and ("\n" in v or "\r" in v):
            raise ValueError(f"{name}: {v!r} contains a line break (vocabulary files hold one value per line)")


def coerce_row(row: dict[str, Any], table: TableName, dataset_config: DatasetConfig) -> dict[str, Any]:
    """Converts one raw row into typed values, keeping the table's required columns.

    `label` → int 0/1; `day` → int (an ISO date `YYYY-MM-DD` becomes days since
    1970-01-01); `ad_id`, `category`, `image`, `user_id` → str (a missing one is an error
    unless a feature of that name has a `default`); categorical → str; multi → list[str]
    (from a list, or a `|`-separated string; "" → []); numeric and passthrough → float.
    A missing or empty feature takes the feature's `default` if it has one, else None
    (categorical, numeric, passthrough) or [] (multi). Other columns are dropped.
    Build a `RowCoercer` once instead when coercing many rows.

    Raises:
        ValueError: a value has the wrong type or a required value is missing; the
            message names the column, e.g. "label: expected 0 or 1, got 'yes'".
    """
    return RowCoercer(table, dataset_config)(row)


__all__ = [
    "ADS_REQUIRED",
    "IMPRESSIONS_REQUIRED",
    "MAX_DAY_NUMBER",
    "MULTI_SEPARATOR",
    "DayFormat",
    "RowCoercer",
    "TableName",
    "check_columns",
    "coerce_row",
    "format_day",
    "format_days",
    "parse_day",
    "required_columns",
]
