"""The preprocess job's input contract around the pipeline (docs/bad_input.md).

`check_inputs` runs on the driver before any worker starts; `check_output` after the run,
on the counters and the manifest, before the output is moved into place (so a refused
run leaves the previous output untouched). Both raise `DataError` (one line: the file,
line or column, and what was expected); `check_output` also returns the `WARNING:` lines
the summary prints.
"""

from __future__ import annotations

from typing import Any, Optional

from beam_jobs.transforms.read import TableInfo, check_table
from tfvctr.errors import DataError


def check_inputs(ads_path: str, impressions_path: str, dataset_config: Any,
                 eval_from_text: Optional[str] = None) -> dict[str, TableInfo]:
    """Refuses unreadable tables up front, and an `--eval-from-day` written in another day
    format than the impressions table's; returns what was learnt of each (`TableInfo`)."""
    info = {"ads": check_table(ads_path, "ads", dataset_config),
            "impressions": check_table(impressions_path, "impressions", dataset_config)}
    _check_eval_from_format(eval_from_text, info["impressions"])
    return info


def _check_eval_from_format(eval_from_text: Optional[str], info: TableInfo) -> None:
    from tfvctr.io import tables

    if eval_from_text is None:
        return
    try:
        _, given = tables.parse_day(eval_from_text)
    except ValueError as e:
        if "without dashes" in str(e):  # 20240301 would be day 20,240,301: after every day of any data
            raise DataError(f"--eval-from-day {str(e)[len('day: '):]}") from None
        return  # the job's own flag parsing says what is wrong with it
    if info.day_format is None:
        return
    if given != info.day_format:
        kind = "an ISO date" if given == "iso" else "a day number"
        written = "ISO dates" if info.day_format == "iso" else "day numbers"
        raise DataError(f"--eval-from-day {eval_from_text} is {kind}, but {info.files[0]} writes days as {written}")


def day_format(counters: dict[str, int]) -> Optional[str]:
    """The impressions table's day format from the validation counters ("integer", "iso" or None)."""
    iso, integer = counters.get("day_format_iso", 0), counters.get("day_format_integer", 0)
    if iso and not integer:
        return "iso"
    if integer and not iso:
        return "integer"
    return None


def _first_of_format(files: list[str], wanted: str) -> Optional[tuple[str, str, Any]]:
    """(file, "line N", value) of the first row whose day has format `wanted` (a driver-side scan,
    only ever run to name the line of a refusal)."""
    from tfvctr.io import tables

    for file in files:
        for where, record in tables.iter_numbered(file):
            if record.row is None:
                continue
            try:
                _, fmt = tables.parse_day(record.row.get("day"))
            except ValueError:
                continue
            if fmt == wanted:
                return file, where, record.row.get("day")
    return None


def check_output(manifest: dict, counters: dict[str, int], info: TableInfo, eval_from_given: Optional[int],
                 eval_from_text: Optional[str] = None) -> list[str]:
    """Refuses a run whose output would be wrong; returns its warnings. Adds `day_format` to `manifest`.

    Refused: day numbers mixed with ISO dates in one table; `--eval-from-day` outside the
    data (no train or no eval impressions); every impression (or every ad) dead-lettered.
    Warned: dead letters; an empty train or eval split from `dataset.eval_days`.
    """
    from tfvctr.io import tables

    first_format = info.day_format
    iso, integer = counters.get("day_format_iso", 0), counters.get("day_format_integer", 0)
    if iso and integer:
        other = "iso" if first_format == "integer" else "integer"
        found = _first_of_format(info.files, other)
        count = iso if other == "iso" else integer
        if found is not None:
            file, where, value = found
            first = _first_of_format(info.files, first_format or "integer")
            raise DataError(tables.mixed_day_formats_message(file, first_format or "integer",
                                                             first[1] if first else "the first row", other, where,
                                                             value, count))
        raise DataError(f"{info.files[0]}: column 'day' mixes {integer} day numbers and {iso} ISO dates; "
                        f"use one day format per table")
    fmt = day_format(counters) or first_format
    manifest["day_format"] = fmt

    s, d, i = manifest["splits"], manifest["dead_letter"], manifest["input"]
    if i["impressions"] and d["impressions"] == i["impressions"]:
        raise DataError(f"every one of the {i['impressions']} impressions was dead-lettered "
                        f"({_reasons(d['reasons'])}); nothing to write")
    if i["ads"] and d["ads"] == i["ads"]:
        raise DataError(f"every one of the {i['ads']} ads was dead-lettered ({_reasons(d['reasons'])}); nothing to write")
    days = sorted({day for split in s.values() for day in split.get("days", [])})
    if eval_from_given is not None and days:
        given = eval_from_text if eval_from_text is not None else tables.format_day(eval_from_given, fmt)
        span = f"the data's days are {tables.format_day(days[0], fmt)}..{tables.format_day(days[-1], fmt)}"
        if eval_from_given > days[-1]:
            raise DataError(f"--eval-from-day {given} is after the last day of the data: no eval impressions ({span})")
        if eval_from_given <= days[0]:
            raise DataError(f"--eval-from-day {given} is not after the first day of the data: no train impressions "
                            f"({span})")
    warnings = []
    if d["ads"] or d["impressions"]:
        warnings.append(f"WARNING: {d['ads']} of {i['ads']} ads and {d['impressions']} of {i['impressions']} "
                        f"impressions dead-lettered ({_reasons(d['reasons'])})")
    for split in ("train", "eval"):
        if not s[split]["impressions"]:
            warnings.append(f"WARNING: the {split} split is empty (days {tables.format_days(days, fmt)}, "
                            f"dataset.eval_days); pass --eval-from-day to choose the split")
    return warnings


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in reasons.items()) or "no reason recorded"
