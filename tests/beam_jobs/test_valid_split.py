"""The `valid` split of `tfvctr preprocess` (docs/formats.md §2, `dataset.validation`).

Composites with `TestPipeline`; the job itself, once per mode, on tiny files where a test
can count every impression by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import apache_beam as beam
import pytest
import yaml
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected by pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.transforms.join import JoinAndChunk, held_out_ad, split_days
from tests.beam_jobs import fixtures
from tests.beam_jobs.conftest import parse, read_records
from tfvctr import layout
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError

OPTIONS = ["--runner", "DirectRunner"]
DAYS = 4  # days 0..3: train 0, 1, 2; eval 3
SHARE = 0.3


# --------------------------------------------------------------------------- the draw and the days


def test_held_out_draw_is_stable_across_processes_with_salted_hashes():
    ids = [f"ad{i:03d}" for i in range(200)]
    here = [a for a in ids if held_out_ad(7, a, SHARE)]
    code = ("from beam_jobs.transforms.join import held_out_ad; "
            f"print(','.join(a for a in {ids!r} if held_out_ad(7, a, {SHARE})))")
    env = {**os.environ, "PYTHONHASHSEED": "1"}  # this process: a random hash seed
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == here


def test_held_out_share_is_close_to_the_configured_share_and_nested():
    ids = [f"ad{i:05d}" for i in range(20_000)]
    small = {a for a in ids if held_out_ad(0, a, 0.05)}
    large = {a for a in ids if held_out_ad(0, a, 0.1)}
    assert abs(len(large) / len(ids) - 0.1) < 0.01  # binomial std at n=20000: 0.002
    assert small < large
    assert {a for a in ids if held_out_ad(1, a, 0.1)} != large  # the seed matters


@pytest.mark.parametrize("mode, expected", [
    ("none", {"train": [0, 1, 2], "valid": [], "eval": [3], "eval_from": 3, "valid_from": None}),
    ("temporal", {"train": [0, 1], "valid": [2], "eval": [3], "eval_from": 3, "valid_from": 2}),
    ("ads", {"train": [0, 1, 2], "valid": [0, 1, 2], "eval": [3], "eval_from": 3, "valid_from": None}),
    ("ads_and_temporal", {"train": [0, 1], "valid": [0, 1, 2], "eval": [3], "eval_from": 3, "valid_from": 2}),
])
def test_split_days_per_mode(mode, expected):
    assert split_days([3, 0, 2, 1, 2], 3, mode) == expected


def test_temporal_split_keeps_a_single_train_day_in_train():
    assert split_days([0, 1], 1, "temporal") == {"train": [0], "valid": [], "eval": [1], "eval_from": 1,
                                                  "valid_from": None}


# --------------------------------------------------------------------------- config


def _config_dict(mode: str, **validation) -> dict:
    data = fixtures.config_dict(k=4)
    data["dataset"]["validation"] = {"mode": mode, **validation}
    return data


def test_validation_defaults_to_ads_and_temporal_with_a_tenth_and_the_dataset_seed():
    v = fixtures.config(validation={}).dataset.validation
    assert (v.mode, v.ads_share, v.seed) == ("ads_and_temporal", 0.1, None)


@pytest.mark.parametrize("validation, message", [
    ({"mode": "ads", "ads_share": 1.5},
     "beam-test: dataset.validation.ads_share: expected a value in (0, 1), received 1.5"),
    ({"mode": "ads", "ads_share": 0},
     "beam-test: dataset.validation.ads_share: expected a value in (0, 1), received 0.0"),
    ({"mode": "last_day"}, "beam-test: dataset.validation.mode: expected one of 'none', 'temporal', 'ads', "
                           "'ads_and_temporal', received 'last_day'"),
    ({"mode": "ads", "share": 0.1}, "beam-test: dataset.validation.share: unknown key; allowed keys: mode, "
                                    "ads_share, seed"),
])
def test_validation_config_errors_name_key_expected_and_received(validation, message):
    data = fixtures.config_dict()
    data["dataset"]["validation"] = validation
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "beam-test")
    assert str(info.value) == message


# --------------------------------------------------------------------------- JoinAndChunk


def _imp(day: int, user: str = "u0") -> tuple:
    return (0, day, user, (user, "ios", ("sport",), 1.0), (0.5,))


def _ad(ad_id: str) -> tuple:
    return (ad_id, "shoes", f"/img/{ad_id}.png", b"IMG" + ad_id.encode(), ("shoes", "b0", 10.0))


def _pick_ads(seed: int, share: float) -> tuple[str, str]:
    """One ad id the draw holds out and one it keeps (searched, not hard-coded)."""
    ids = [f"ad{i}" for i in range(100)]
    return (next(a for a in ids if held_out_ad(seed, a, share)), next(a for a in ids if not held_out_ad(seed, a, share)))


def _join(mode: str, ads: list, imps: list, eval_from: int, job_seed: int = 0, **validation):
    ds = config_from_dict(_config_dict(mode, **validation), "beam-test").dataset
    p = BeamTestPipeline(argv=OPTIONS)
    out = {"ads": p | "Ads" >> beam.Create([(a, _ad(a)) for a in ads]),
           "impressions": p | "Imps" >> beam.Create(imps), "rejected": p | "R" >> beam.Create([]),
           "eval_from": p | "E" >> beam.Create([eval_from])} | JoinAndChunk(ds, seed=job_seed)

    def days_of(element):
        ex = parse(element[2])
        return (ex.context.feature["ad_id"].bytes_list.value[0].decode(),
                tuple(sorted(f.int64_list.value[0] for f in ex.feature_lists.feature_list["day"].feature)))

    return p, out, days_of


def test_join_holds_out_whole_ads_train_days_to_valid_and_keeps_their_eval_days_in_eval():
    held, kept = _pick_ads(5, SHARE)
    imps = [(ad, _imp(day, f"{ad}-{day}")) for ad in (held, kept) for day in (0, 1, 2)]
    # validation.seed (5) draws the ads, not the job's shuffle seed (99).
    p, out, days_of = _join("ads", [held, kept], imps, eval_from=2, job_seed=99, ads_share=SHARE, seed=5)
    with p:
        assert_that(out["train"] | "TrainDays" >> beam.Map(days_of), equal_to([(kept, (0, 1))]), label="train")
        assert_that(out["valid"] | "ValidDays" >> beam.Map(days_of), equal_to([(held, (0, 1))]), label="valid")
        assert_that(out["eval"] | "EvalDays" >> beam.Map(days_of), equal_to([(held, (2,)), (kept, (2,))]),
                    label="eval")
        assert_that(out["train_ads"] | beam.Map(lambda ad: ad[0]), equal_to([kept]), label="train_ads")
        assert_that(out["train_impressions"] | beam.FlatMap(lambda imps: [imp[2] for imp in imps]), equal_to([f"{kept}-0", f"{kept}-1"]),
                    label="train_imps")
        assert_that(out["ad_counts"] | beam.Map(lambda r: (r[0]["ad_id"], r[0]["train_impressions"],
                                                            r[0]["valid_impressions"], r[0]["eval_impressions"],
                                                            r[0]["held_out"], r[1])),
                    equal_to([(held, 0, 2, 1, True, {"train": 0, "valid": 1, "eval": 1}),
                              (kept, 2, 0, 1, False, {"train": 1, "valid": 0, "eval": 1})]), label="counts")


def test_join_held_out_draw_defaults_to_the_job_seed():
    held, kept = _pick_ads(3, SHARE)
    imps = [(held, _imp(0)), (kept, _imp(0))]
    p, out, days_of = _join("ads", [held, kept], imps, eval_from=9, job_seed=3, ads_share=SHARE)
    with p:
        assert_that(out["valid"] | beam.Map(days_of), equal_to([(held, (0,))]))


def test_join_temporal_valid_is_the_last_train_day_only():
    imps = [("a", _imp(day, f"u{day}")) for day in (0, 1, 2, 2, 3)]
    p, out, days_of = _join("temporal", ["a"], imps, eval_from=3)
    with p:
        assert_that(out["train"] | "TrainDays" >> beam.Map(days_of), equal_to([("a", (0, 1))]), label="train")
        assert_that(out["valid"] | "ValidDays" >> beam.Map(days_of), equal_to([("a", (2, 2))]), label="valid")
        assert_that(out["eval"] | "EvalDays" >> beam.Map(days_of), equal_to([("a", (3,))]), label="eval")
        assert_that(out["days"], equal_to([split_days([0, 1, 2, 3], 3, "temporal")]), label="days")


def test_join_ads_and_temporal_sends_last_train_day_and_held_out_ads_to_valid():
    held, kept = _pick_ads(0, SHARE)
    imps = [(ad, _imp(day, f"{ad}-{day}")) for ad in (held, kept) for day in (0, 1, 2, 3)]
    p, out, days_of = _join("ads_and_temporal", [held, kept], imps, eval_from=3, ads_share=SHARE)
    with p:
        assert_that(out["train"] | "TrainDays" >> beam.Map(days_of), equal_to([(kept, (0, 1))]), label="train")
        assert_that(out["valid"] | "ValidDays" >> beam.Map(days_of), equal_to([(held, (0, 1, 2)), (kept, (2,))]),
                    label="valid")


def test_join_mode_none_writes_nothing_to_valid():
    held, kept = _pick_ads(0, 0.1)
    imps = [(ad, _imp(day)) for ad in (held, kept) for day in (0, 1, 2)]
    p, out, days_of = _join("none", [held, kept], imps, eval_from=2)
    with p:
        assert_that(out["valid"], equal_to([]), label="valid")
        assert_that(out["train"] | beam.Map(days_of), equal_to([(held, (0, 1)), (kept, (0, 1))]), label="train")


# --------------------------------------------------------------------------- the job, once per mode


def _rows(seed: int) -> tuple[list[dict], list[dict], set[str]]:
    """20 ads over 4 days; values planted where only valid (or eval) can see them."""
    ads, imps = fixtures.make_rows(num_ads=20, num_impressions=240, days=DAYS, cold_ads=2)
    warm = [a["ad_id"] for a in ads[:-2]]
    held = {a for a in warm if held_out_ad(seed, a, SHARE)}
    assert 2 <= len(held) < len(warm) - 2, "pick another seed: the draw must hold out some ads, not all"
    first, second = sorted(held)[:2]
    for ad in ads:
        if ad["ad_id"] in (first, second):
            ad["brand"] = "held_brand"  # 2 ads: min_frequency 2 would keep it if valid ads were counted
            ad["category"] = "held_category"
    imps.append({**imps[0], "ad_id": first, "day": 0, "device": "held_only_device"})
    imps.append({**imps[0], "ad_id": warm[0] if warm[0] not in held else sorted(set(warm) - held)[0],
                 "day": DAYS - 2, "device": "last_train_day_device"})
    return ads, imps, held


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same tiny tables preprocessed in three modes (ads_and_temporal: the composite tests above;
    two processes: test_build_tfrecords.py's demo runs, whose config holds ads out)."""
    from beam_jobs import build_tfrecords

    seed = next(s for s in range(50) if 2 <= sum(held_out_ad(s, f"ad{a:02d}", SHARE) for a in range(18)) <= 8)
    root = str(tmp_path_factory.mktemp("valid_raw"))
    ads, imps, held = _rows(seed)
    paths = fixtures.write_raw(root, ads, imps)
    result = {"ads": ads, "impressions": imps, "held": held, "out": {}, "manifest": {}}
    for name, mode in (("none", "none"), ("temporal", "temporal"), ("ads", "ads")):
        config = os.path.join(root, f"{name}.yaml")
        data = _config_dict(mode, ads_share=SHARE)
        data["dataset"]["seed"] = seed
        with open(config, "w") as f:
            yaml.safe_dump(data, f)
        out = str(tmp_path_factory.mktemp(f"valid_{name}"))
        result["manifest"][name] = build_tfrecords.run(
            ["--config", config, "--ads", paths["ads"], "--impressions", paths["impressions"], "--out", out],
            verbose=False)
        result["out"][name] = out
    return result


def _ads_days(out: str, split: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for record in read_records(out, split):
        ex = parse(record)
        ad_id = ex.context.feature["ad_id"].bytes_list.value[0].decode()
        found.setdefault(ad_id, []).extend(f.int64_list.value[0] for f in ex.feature_lists.feature_list["day"].feature)
    return found


def _vocab(out: str, feature: str) -> list[str]:
    with open(os.path.join(out, layout.vocab_file(feature))) as f:
        return f.read().split()


def _ad_counts(out: str) -> dict[str, dict]:
    with open(os.path.join(out, layout.AD_COUNTS)) as f:
        return {row["ad_id"]: row for row in map(json.loads, f)}


def test_held_out_ads_share_no_ad_with_train_and_keep_their_eval_days(runs):
    out = runs["out"]["ads"]
    train, valid, evals = (_ads_days(out, s) for s in layout.SPLITS)
    assert set(valid) == runs["held"] and set(train).isdisjoint(valid)
    assert all(d < DAYS - 1 for days in valid.values() for d in days)
    expected = {a: sorted(i["day"] for i in runs["impressions"] if i["ad_id"] == a and i["day"] < DAYS - 1)
                for a in runs["held"]}
    assert {a: sorted(d) for a, d in valid.items()} == expected
    assert runs["held"] & set(evals)  # their eval-day impressions stayed in eval
    counts = _ad_counts(out)
    assert {a for a, r in counts.items() if r["held_out"]} == runs["held"]
    assert all(counts[a]["train_impressions"] == 0 and counts[a]["valid_impressions"] == len(expected[a])
               for a in runs["held"])
    m = runs["manifest"]["ads"]
    drawn = {a["ad_id"] for a in runs["ads"] if held_out_ad(m["validation"]["seed"], a["ad_id"], SHARE)}
    assert m["validation"]["held_out_ads"] == len(drawn)  # cold eval-only ads may be drawn too: nothing to hold
    assert m["splits"]["valid"]["cold_ads"] == len(runs["held"])
    assert m["splits"]["valid"]["ads"] == len(valid)


def test_temporal_valid_is_the_last_train_day_only(runs):
    out = runs["out"]["temporal"]
    train, valid, evals = (_ads_days(out, s) for s in layout.SPLITS)
    assert {d for days in valid.values() for d in days} == {DAYS - 2}
    assert {d for days in train.values() for d in days} == set(range(DAYS - 2))
    m = runs["manifest"]["temporal"]
    assert m["splits"]["valid"]["impressions"] == sum(1 for i in runs["impressions"] if i["day"] == DAYS - 2)
    assert m["splits"]["valid"]["days"] == [DAYS - 2] and m["validation"]["valid_from_day"] == DAYS - 2
    first_seen = {a: min(i["day"] for i in runs["impressions"] if i["ad_id"] == a) for a in valid}
    assert m["splits"]["valid"]["cold_ads"] == sum(1 for d in first_seen.values() if d == DAYS - 2)
    assert "last_train_day_device" not in _vocab(out, "device")
    assert "last_train_day_device" in _vocab(runs["out"]["ads"], "device")


@pytest.mark.parametrize("name", ["none", "temporal", "ads"])
def test_manifest_counts_add_up_and_match_the_records(runs, name):
    m = runs["manifest"][name]
    s = m["splits"]
    assert m["input"]["impressions"] == len(runs["impressions"]) == (
        s["train"]["impressions"] + s["valid"]["impressions"] + s["eval"]["impressions"]
        + m["dead_letter"]["impressions"])
    assert s["eval"]["impressions"] == sum(1 for i in runs["impressions"] if i["day"] == DAYS - 1)
    for split in layout.SPLITS:
        days = _ads_days(runs["out"][name], split)
        assert sum(len(d) for d in days.values()) == s[split]["impressions"], split
        assert len(days) == s[split]["ads"], split
    counts = _ad_counts(runs["out"][name])
    assert sum(r["valid_impressions"] for r in counts.values()) == s["valid"]["impressions"]
    with open(os.path.join(runs["out"][name], layout.STATS)) as f:
        assert json.load(f)["day"] == {"train": s["train"]["days"], "valid": s["valid"]["days"],
                                       "eval": s["eval"]["days"], "eval_from": DAYS - 1,
                                       "valid_from": m["validation"]["valid_from_day"]}


def test_vocabularies_and_stats_never_see_held_out_ads_values(runs):
    name = "ads"
    out = runs["out"][name]
    assert "held_brand" not in _vocab(out, "brand") and "held_category" not in _vocab(out, "category")
    assert "held_only_device" not in _vocab(out, "device")
    assert set(_vocab(runs["out"]["none"], "brand")) >= {"held_brand"}  # counted when nothing is held out
    assert "held_only_device" in _vocab(runs["out"]["none"], "device")
    with open(os.path.join(out, layout.STATS)) as f:
        stats = json.load(f)
    s = runs["manifest"][name]["splits"]
    assert stats["label"] == {"count": s["train"]["impressions"], "positives": s["train"]["positives"]}
    assert stats["price"]["count"] == s["train"]["ads"]  # ad features: once per train ad


def test_mode_none_writes_no_valid_folder_and_the_records_are_the_same_bytes_in_other_splits(runs):
    none, ads = runs["out"]["none"], runs["out"]["ads"]
    assert not os.path.exists(os.path.join(none, layout.VALID))
    assert runs["manifest"]["none"]["splits"]["valid"] == {"impressions": 0, "chunks": 0, "ads": 0, "positives": 0,
                                                           "days": [], "cold_ads": 0}
    assert read_records(none, "eval") == read_records(ads, "eval")
    kept = [r for r in read_records(none, "train")
            if parse(r).context.feature["ad_id"].bytes_list.value[0].decode() not in runs["held"]]
    assert kept == read_records(ads, "train")
    # A held-out ad's record is byte for byte the one it has in train without holding out.
    assert sorted(read_records(none, "train")) == sorted(kept + read_records(ads, "valid"))


def test_make_dataset_reads_the_valid_split(runs):
    from tfvctr.data import list_shards

    shards = list_shards(runs["out"]["ads"], layout.VALID)
    assert shards and all(f"/{layout.VALID}/part-" in path for path in shards)
