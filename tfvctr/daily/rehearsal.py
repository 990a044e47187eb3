"""Days arriving one at a time, from a `tfvctr demo-data` folder (benchmarks/daily.py, tests/test_daily.py).

The simulator writes every day at once; the rehearsal hands `tfvctr daily` day D's
impressions and the catalogue as it stood on day D: the ads first shown by day D + 1 (an
ad enters the catalogue, and the embedding table, the day before its first impression:
its first requests are cold-start requests the image is for), so new ads arrive every day.
"""

from __future__ import annotations

import json
import os

from tfvctr.io import tables
from tfvctr.io.schema import parse_day


def first_days(impressions: str) -> dict[str, int]:
    """{ad_id: the first day it was shown}."""
    first: dict[str, int] = {}
    for row in tables.iter_rows(impressions):
        day, _ = parse_day(row["day"])
        ad = str(row["ad_id"])
        first[ad] = min(first.get(ad, day), day)
    return first


def write_catalog(ads: str, first: dict[str, int], day: int, out: str, ahead: int = 1) -> int:
    """The ads table of day `day` (ads first shown by day `day + ahead`) → `out` (JSON Lines, absolute image paths)."""
    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        for row in tables.iter_rows(ads):
            if first.get(str(row["ad_id"]), 1 << 30) <= day + ahead:
                row = {**row, "image": tables.resolve_image_path(str(row["image"]), ads)}
                f.write(json.dumps(row, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)) + "\n")
                n += 1
    return n
