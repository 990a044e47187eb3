"""`VocabAndStats` summarises an ad's train impressions a column at a time: the files must be
those of the impressions one by one (docs/beam_jobs.md, speed)."""

from __future__ import annotations

import os
import random

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected by pytest

from beam_jobs.transforms.stats import VocabAndStats
from tests.beam_jobs import fixtures


def _impressions(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        device = rng.choice(["ios", "web", "android", None])
        interests = tuple(rng.choice(["s", "m", "f"]) for _ in range(rng.randint(0, 3)))  # () = missing, repeats count
        position = rng.choice([1.0, 2.0, 7.5, None, float("nan")])
        out.append((int(rng.random() < 0.3), i % 3, f"u{i % 5}", (f"u{i % 5}", device, interests, position), (0.5,)))
    return out


def _files(out: str) -> dict:
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), out)] = f.read()
    return files


def test_stats_of_impression_lists_equal_the_stats_of_single_impressions(tmp_path):
    ds = fixtures.config().dataset
    ads = [("a1", "shoes", "/i/a1.png", b"", ("shoes", "x", 3.0)), ("a2", "bags", "/i/a2.png", b"", ("bags", "x", None))]
    per_ad = [_impressions(40, seed=1), _impressions(1, seed=2), _impressions(25, seed=3)]
    days = {"train": [0, 1, 2], "valid": [], "eval": [], "eval_from": None, "valid_from": None}
    for name, elements in (("single", [imp for imps in per_ad for imp in imps]), ("lists", per_ad)):
        with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
            _ = {"train_ads": p | "A" >> beam.Create(ads), "train_impressions": p | "I" >> beam.Create(elements),
                 "days": p | "D" >> beam.Create([days])} | VocabAndStats(ds, str(tmp_path / name))
    single, lists = _files(str(tmp_path / "single")), _files(str(tmp_path / "lists"))
    assert sorted(single) == ["stats.json", "vocab/brand.txt", "vocab/category.txt", "vocab/device.txt",
                              "vocab/interests.txt"]
    assert lists == single  # vocabularies, counts, missing, moments, quantiles: byte for byte
