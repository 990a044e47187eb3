"""Writes the demo dataset: ads and impressions tables, images, and simulator.json.

Layout (docs/formats.md §1, docs/demo_data.md)::

    OUT/ads.{csv,jsonl}           ad_id, category, image, brand, price, keywords
    OUT/impressions.{csv,jsonl}   ad_id, label, day, user_id, user_age, device, hour,
                                  position, user_interests, true_ctr
    OUT/images/<ad_id>.jpg        one JPEG per ad
    OUT/ad_effects.csv            ad_id, category, cold, visual_rule, visual_score,
                                  true_visual_logit: the true per-ad visual effect, for
                                  benchmarks only (never a model feature)
    OUT/simulator.json            every simulator parameter, the visual rules in words,
                                  and the AUC ceilings (with and without the image)

The same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from tfvctr.demo_data import images as images_lib
from tfvctr.demo_data import scenarios as scenarios_lib
from tfvctr.demo_data import simulator as sim
from tfvctr.errors import TfvctrError
from tfvctr.io import fs

FORMATS = ("csv", "jsonl", "parquet")
ADS_COLUMNS = ("ad_id", "category", "image", "brand", "price", "keywords")
IMPRESSIONS_COLUMNS = (
    "ad_id", "label", "day", "user_id", "user_age", "device", "hour", "position", "user_interests", "true_ctr",
)  # fmt: skip
AD_EFFECTS_COLUMNS = ("ad_id", "category", "cold", "visual_rule", "visual_score", "true_visual_logit")
AD_EFFECTS_FILE = "ad_effects.csv"
MULTI_COLUMNS = ("keywords", "user_interests")
MAX_IMAGE_SIZE = 1024

Progress = Callable[[Iterable[Any], int], Iterable[Any]]


def check_arguments(
    num_ads: int,
    num_impressions: int,
    days: int,
    seed: int,
    image_size: int,
    formats: Sequence[str],
    num_categories: int,
    names: Optional[dict[str, str]] = None,
    scenario: str = scenarios_lib.DEFAULT_SCENARIO,
) -> None:
    """Raises `TfvctrError` (one line) for an impossible request; `names` maps argument
    names to what the user typed (the CLI passes its flags)."""
    names = names or {}

    def fail(arg: str, expected: str, value: Any) -> None:
        raise TfvctrError(f"{names.get(arg, arg)}: expected {expected}, received {value!r}")

    if num_ads < 1:
        fail("num_ads", "a positive integer", num_ads)
    if num_impressions < num_ads:
        fail(
            "num_impressions", f"at least the number of ads ({num_ads}), so every ad has an impression", num_impressions
        )
    if days < 2:
        fail("days", "an integer >= 2 (the last day is the eval day)", days)
    if seed < 0:
        fail("seed", "a non-negative integer", seed)
    if not 8 <= image_size <= MAX_IMAGE_SIZE:
        fail("image_size", f"an integer in [8, {MAX_IMAGE_SIZE}]", image_size)
    if not formats or any(f not in FORMATS for f in formats):
        fail("formats", f"a non-empty selection of {', '.join(FORMATS)}", list(formats))
    if scenario not in scenarios_lib.SCENARIOS:
        fail("scenario", f"one of {', '.join(scenarios_lib.SCENARIOS)}", scenario)
    most = scenarios_lib.SCENARIOS[scenario].num_categories
    if not 1 <= num_categories <= most:
        fail("num_categories", f"an integer in [1, {most}]", num_categories)


def _id_width(n: int) -> int:
    return max(5, len(str(max(n - 1, 0))))


def build_tables(world: sim.World) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The ads and impressions tables as columns of plain Python values (multi = lists)."""
    A = world.num_ads
    ad_ids = [f"ad{i:0{_id_width(A)}d}" for i in range(A)]
    ads = {
        "ad_id": ad_ids,
        "category": [world.categories[c] for c in world.ad_category.tolist()],
        "image": [f"images/{a}.jpg" for a in ad_ids],
        "brand": list(world.ad_brand),
        "price": [round(float(x), 2) for x in world.ad_price],
        "keywords": [list(k) for k in world.ad_keywords],
    }
    U = len(world.user_bias)
    user_ids = [f"u{u:0{_id_width(U)}d}" for u in range(U)]
    user_interest_names = [[world.categories[c] for c in cats] for cats in world.user_interests]
    imp_user = world.imp_user.tolist()
    impressions = {
        "ad_id": [ad_ids[a] for a in world.imp_ad.tolist()],
        "label": world.label.tolist(),
        "day": world.imp_day.tolist(),
        "user_id": [user_ids[u] for u in imp_user],
        "user_age": [sim.AGE_BUCKETS[world.user_age[u]] for u in imp_user],
        "device": [sim.DEVICES[d] for d in world.imp_device.tolist()],
        "hour": [str(h) for h in world.imp_hour.tolist()],
        "position": world.imp_position.tolist(),
        "user_interests": [user_interest_names[u] for u in imp_user],
        # Clamped so the printed value is never exactly 0 or 1.
        "true_ctr": [min(max(round(float(p), 6), 1e-6), 1 - 1e-6) for p in world.true_ctr],
    }
    return ads, impressions


def build_ad_effects(world: sim.World) -> dict[str, list[Any]]:
    """ad_effects.csv: each ad's true visual effect (the logit term its image adds)."""
    A = world.num_ads
    categories = [world.categories[c] for c in world.ad_category.tolist()]
    return {
        "ad_id": [f"ad{i:0{_id_width(A)}d}" for i in range(A)],
        "category": categories,
        "cold": world.ad_cold.astype(int).tolist(),
        "visual_rule": [world.rules[c] for c in categories],
        "visual_score": [round(float(x), 6) for x in world.ad_visual_score],
        "true_visual_logit": [round(float(x), 6) for x in world.ad_visual_logit],
    }


def _rows(columns: dict[str, list[Any]], names: Sequence[str]) -> Iterable[list[Any]]:
    return zip(*(columns[n] for n in names), strict=True)


def write_csv(path: str, columns: dict[str, list[Any]], names: Sequence[str]) -> None:
    """CSV with a header; multi values `|`-separated."""
    multi = [n in MULTI_COLUMNS for n in names]
    with fs.open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(names)
        for row in _rows(columns, names):
            writer.writerow(["|".join(v) if m else v for v, m in zip(row, multi, strict=True)])


def write_jsonl(path: str, columns: dict[str, list[Any]], names: Sequence[str]) -> None:
    """One JSON object per line; multi values are lists."""
    with fs.open(path, "w") as f:
        for row in _rows(columns, names):
            f.write(json.dumps(dict(zip(names, row, strict=True)), separators=(",", ":")) + "\n")


def write_parquet(path: str, columns: dict[str, list[Any]], names: Sequence[str]) -> None:
    """Parquet; multi values are list<string> columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({n: columns[n] for n in names})
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


_WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


def _round(x: float) -> Optional[float]:
    # NaN (an AUC with no positives, on tiny datasets) is not JSON: write null.
    return None if np.isnan(x) else round(float(x), 6)


def simulator_record(
    world: sim.World, seed: int, days: int, image_size: int, scenario: str = scenarios_lib.DEFAULT_SCENARIO
) -> dict[str, Any]:
    """simulator.json: what was simulated, in numbers and words, and how hard it is."""
    last = world.imp_day == days - 1
    cold = world.ad_cold[world.imp_ad]
    counts = np.bincount(world.imp_ad, minlength=world.num_ads)
    return {
        "generator": "tfvctr demo-data",
        "scenario": scenario,
        "seed": seed,
        "num_ads": world.num_ads,
        "num_impressions": len(world.label),
        "num_users": len(world.user_bias),
        "days": days,
        "eval_day": days - 1,
        "image_size": image_size,
        "image_format": "jpeg",
        "jpeg_quality": images_lib.JPEG_QUALITY,
        "categories": list(world.categories),
        "logit": (
            "bias + user_bias[user] + age[user_age] + device[device] + hour_amplitude*cos(2*pi*(hour - peak_hour)/24)"
            " + position_slope*(position - 1) + category[category] + interest_match*[category in user_interests]"
            " + brand[brand] + price_slope*z(log price within category) + visual_strength*visual_score(image, category)"
        ),
        "bias": _round(world.bias),
        "params": world.params.to_dict(),
        "age_buckets": list(sim.AGE_BUCKETS),
        "devices": list(sim.DEVICES),
        "category_effects": {c: _round(e) for c, e in zip(world.categories, world.category_effects, strict=True)},
        "brand_effects": {b: _round(e) for b, e in world.brand_effects.items()},
        "visual_rules": {c: sim.RULES[world.rules[c]].words for c in world.categories},
        "visual_rule_names": dict(world.rules),
        "shapes": {c: images_lib.SHAPE_DESCRIPTIONS[c] for c in world.categories},
        "visual_parameters": {
            "hue": "object colour hue in [0, 1) (HSV)",
            "sat": f"object colour saturation in {list(sim.SAT_RANGE)}",
            "val": f"object colour value in {list(sim.VAL_RANGE)}",
            "texture": f"one of {list(sim.TEXTURES)}",
            "scale": f"object box side / image side in {list(sim.SCALE_RANGE)}",
            "cx, cy": f"object centre / image side in {list(sim.CENTER_RANGE)}",
            "bg_val": f"background brightness in {list(sim.BG_VAL_RANGE)}",
            "noise": "pixel noise std in [0, 6] grey levels",
        },
        "summary": {
            "ctr": _round(world.label.mean()),
            "mean_true_ctr": _round(world.true_ctr.mean()),
            "cold_ads": int(world.ad_cold.sum()),
            "eval_impressions": int(last.sum()),
            "cold_impressions": int(cold.sum()),
            "max_impressions_per_ad": int(counts.max()),
            "median_impressions_per_ad": float(np.median(counts)),
            # The quality yardstick (docs/design.md): AUC of the true probability (the ceiling)
            # and of the true logit less its visual term, on the eval day and on the cold
            # ads. On cold ads the latter is the best an image-blind model can do (they
            # have no click history); on warm ads an image-blind model can beat it by
            # memorising each ad's clicks through ad-identifying features (brand, price...).
            "eval_auc_true_ctr": _round(sim.auc(world.label[last], world.true_ctr[last])),
            "eval_auc_without_visual_term": _round(sim.auc(world.label[last], world.imp_nonvisual_logit[last])),
            "cold_auc_true_ctr": _round(sim.auc(world.label[cold], world.true_ctr[cold])),
            "cold_auc_without_visual_term": _round(sim.auc(world.label[cold], world.imp_nonvisual_logit[cold])),
        },
    }


def render_images(
    world: sim.World,
    ad_ids: Sequence[str],
    out_dir: str,
    image_size: int,
    seed: int,
    progress: Optional[Progress] = None,
) -> int:
    """Renders and writes every ad's JPEG; returns the total bytes written."""
    images_dir = fs.join(out_dir, "images")
    fs.makedirs(images_dir)
    indices: Iterable[int] = range(world.num_ads)
    if progress is not None:
        indices = progress(indices, world.num_ads)
    total = 0
    for i in indices:
        visual = {k: v[i].item() for k, v in world.visuals.items()}
        # Each ad's own noise stream, so an image does not depend on the others.
        rng = np.random.default_rng([seed, i])
        data = images_lib.encode_jpeg(
            images_lib.render_ad(world.categories[world.ad_category[i]], visual, image_size, rng)
        )
        with fs.open(fs.join(images_dir, f"{ad_ids[i]}.jpg"), "wb") as f:
            f.write(data)
        total += len(data)
    return total


def generate(
    out_dir: str,
    num_ads: Optional[int] = None,
    num_impressions: Optional[int] = None,
    days: Optional[int] = None,
    seed: int = 0,
    image_size: int = 64,
    formats: Sequence[str] = ("csv", "jsonl"),
    num_categories: Optional[int] = None,
    progress: Optional[Progress] = None,
    scenario: str = scenarios_lib.DEFAULT_SCENARIO,
) -> dict[str, Any]:
    """Simulates and writes the demo dataset (or another scenario's) under `out_dir` (local or gs://).

    Args:
        out_dir: output folder (created if needed; files in it are overwritten).
        num_ads: ads; about 10% are cold (only on the last day). None: the scenario's
            (2000 for the demo).
        num_impressions: impressions, >= num_ads (every ad gets at least one). None: the
            scenario's (200,000 for the demo).
        days: days 0..days-1; the last one is the eval day. None: the scenario's (7).
        seed: everything (tables and pixels) is a function of it.
        image_size: JPEG side in pixels.
        formats: table formats to write, from "csv", "jsonl", "parquet".
        num_categories: the first n of `simulator.CATEGORIES`. None: the scenario's (10
            for the demo).
        progress: optional wrapper `progress(iterable, total)` around the image loop
            (the CLI passes a tqdm bar).
        scenario: a name in `scenarios.SCENARIOS`: which visual rules, CTR level, user
            effects and default sizes (docs/demo_data.md#scenarios).

    Returns:
        A summary: the paths written, counts, CTR, cold ads, AUC ceilings, seconds.

    Example:
        >>> summary = generate("/tmp/demo", num_ads=50, num_impressions=2000, image_size=16)
        >>> summary["num_ads"]
        50
    """
    if scenario not in scenarios_lib.SCENARIOS:
        raise TfvctrError(f"scenario: expected one of {', '.join(scenarios_lib.SCENARIOS)}, received {scenario!r}")
    sc = scenarios_lib.SCENARIOS[scenario]
    num_ads = sc.num_ads if num_ads is None else num_ads
    num_impressions = sc.num_impressions if num_impressions is None else num_impressions
    days = sc.days if days is None else days
    num_categories = sc.num_categories if num_categories is None else num_categories
    formats = tuple(dict.fromkeys(formats))
    check_arguments(num_ads, num_impressions, days, seed, image_size, formats, num_categories, scenario=scenario)
    start = time.perf_counter()
    world = sim.simulate(
        num_ads,
        num_impressions,
        days,
        seed,
        num_categories=num_categories,
        params=sc.simulator_params(),
        rules=sc.rules,
    )
    ads, impressions = build_tables(world)
    fs.makedirs(out_dir)
    paths: dict[str, str] = {}
    for fmt in formats:
        for name, columns, names in (("ads", ads, ADS_COLUMNS), ("impressions", impressions, IMPRESSIONS_COLUMNS)):
            path = fs.join(out_dir, f"{name}.{fmt}")
            _WRITERS[fmt](path, columns, names)
            paths[f"{name}_{fmt}"] = path
    paths["ad_effects"] = fs.join(out_dir, AD_EFFECTS_FILE)
    write_csv(paths["ad_effects"], build_ad_effects(world), AD_EFFECTS_COLUMNS)
    record = simulator_record(world, seed, days, image_size, scenario)
    paths["simulator"] = fs.join(out_dir, "simulator.json")
    with fs.open(paths["simulator"], "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    image_bytes = render_images(world, ads["ad_id"], out_dir, image_size, seed, progress)
    paths["images"] = fs.join(out_dir, "images")
    last = world.imp_day == days - 1
    return {
        "out_dir": out_dir,
        "scenario": scenario,
        "paths": paths,
        "num_ads": num_ads,
        "num_impressions": num_impressions,
        "num_users": record["num_users"],
        "train_impressions": int((~last).sum()),
        "eval_impressions": int(last.sum()),
        "image_bytes": image_bytes,
        "seconds": round(time.perf_counter() - start, 2),
        **record["summary"],
    }
