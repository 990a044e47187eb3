"""Tiny raw tables (docs/formats.md §1) for the Beam job tests, with known answers.

`write_raw(root, ...)` writes `ads.csv`, `impressions.csv` (or `.jsonl`), `images/*.png`
and returns the rows it wrote, so tests can compute the expected counts by hand.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Optional

import numpy as np
from PIL import Image

from tfvctr.config import config_from_dict

CATEGORIES = ["shoes", "bags", "hats"]
DEVICES = ["ios", "android", "web"]
INTERESTS = ["sport", "music", "food"]


def config_dict(k: int = 4, image_size: int = 16, eval_days: int = 1, max_image_pixels: int = 40_000_000,
                validation: Optional[dict] = None) -> dict:
    """A small job config. Validation is `ads` unless given: the split tests count by its rules
    (`validation={}` leaves the key out, i.e. the code default)."""
    validation = {"mode": "ads"} if validation is None else validation
    return {
        "name": "beam-test",
        "dataset": {
            "image_size": image_size,
            "image_format": "png",
            "impressions_per_chunk": k,
            "eval_days": eval_days,
            "max_image_pixels": max_image_pixels,
            "passthrough": ["true_ctr"],
            "seed": 0,
            **({"validation": validation} if validation else {}),
            "features": [
                {"name": "user_id", "source": "impression", "kind": "categorical", "hash_buckets": 50},
                {"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto"},
                {"name": "interests", "source": "impression", "kind": "multi", "vocabulary": "auto"},
                {"name": "position", "source": "impression", "kind": "numeric", "transform": "bucketize",
                 "num_buckets": 4},
                {"name": "category", "source": "ad", "kind": "categorical", "vocabulary": "auto"},
                {"name": "brand", "source": "ad", "kind": "categorical", "vocabulary": "auto", "min_frequency": 2},
                {"name": "price", "source": "ad", "kind": "numeric", "transform": "normalize"},
            ],
        },
        "model": {"architecture": "dcn", "backbone": "cnnf", "backbone_width": 0.0625, "attention": "none",
                  "visual_dim": 4, "deep_layers": [8], "cross_layers": 1},
    }


def config(**kwargs: Any):
    return config_from_dict(config_dict(**kwargs), "beam-test")


def write_config(path: str, **kwargs: Any) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(config_dict(**kwargs), f)
    return path


def png_bytes(size: int, value: int, width: int | None = None) -> bytes:
    pixels = np.full((size, width or size, 3), value, np.uint8)
    pixels[: size // 2, :, 0] = 255 - value  # not uniform, so a resize has something to do
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_rows(num_ads: int = 8, num_impressions: int = 60, days: int = 3, seed: int = 0,
              cold_ads: int = 2) -> tuple[list[dict], list[dict]]:
    """Ads and impressions; the last `cold_ads` ads appear only on the last day (cold)."""
    rng = np.random.default_rng(seed)
    ads = [{"ad_id": f"ad{a:02d}", "category": CATEGORIES[a % 3], "image": f"images/ad{a:02d}.png",
            "brand": f"brand{a % 3}" if a < num_ads - 1 else "rare_brand",
            "price": float(10 + a)} for a in range(num_ads)]
    imps = []
    for i in range(num_impressions):
        a = int(rng.integers(0, num_ads))
        day = days - 1 if a >= num_ads - cold_ads else int(rng.integers(0, days))
        imps.append({"ad_id": ads[a]["ad_id"], "label": int(rng.random() < 0.3), "day": day,
                     "user_id": f"u{int(rng.integers(0, 5))}", "device": DEVICES[i % 3],
                     "interests": "|".join(INTERESTS[: i % 3]), "position": float(1 + i % 5),
                     "true_ctr": 0.3})
    # An eval-only device value: it must not reach the vocabulary.
    imps.append({"ad_id": ads[0]["ad_id"], "label": 0, "day": days - 1, "user_id": "u0", "device": "eval_only_device",
                 "interests": "", "position": 1.0, "true_ctr": 0.3})
    return ads, imps


def write_table(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".jsonl"):
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        return path
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    return path


def write_raw(root: str, ads: list[dict], imps: list[dict], image_size: int = 20, fmt: str = "csv") -> dict:
    """Writes the tables and one PNG per ad (unless the ad's image is already there)."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for a, ad in enumerate(ads):
        path = os.path.join(root, ad["image"])
        if not os.path.exists(path) and not ad.get("_no_image"):
            with open(path, "wb") as f:
                f.write(png_bytes(image_size, 20 + 20 * (a % 10)))
    clean = [{k: v for k, v in ad.items() if not k.startswith("_")} for ad in ads]
    return {"ads": write_table(os.path.join(root, f"ads.{fmt}"), clean),
            "impressions": write_table(os.path.join(root, f"impressions.{fmt}"), imps)}
