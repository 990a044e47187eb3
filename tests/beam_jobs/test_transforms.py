"""Each composite transform of the Beam jobs on its own: TestPipeline + assert_that(equal_to)."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected by pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import images, records
from beam_jobs.transforms.embed import AdToEmbed, CoverageThreshold, coverage_threshold
from beam_jobs.transforms.join import EvalFromDay, JoinAndChunk, eval_from_day
from beam_jobs.transforms.read import ReadTable, rows_of_batch
from beam_jobs.transforms.stats import VocabAndStats
from beam_jobs.transforms.validate import ValidateAds, ValidateImpressions
from tests.beam_jobs import fixtures
from tests.beam_jobs.conftest import parse

OPTIONS = ["--runner", "DirectRunner"]


def _imp(day: int, label: int = 0, user: str = "u0", device: str = "ios", interests: tuple = ("sport",),
         position: float = 1.0) -> tuple:
    return (label, day, user, (user, device, interests, position), (0.5,))


def _ad(ad_id: str, category: str = "shoes", brand: str = "b0", price: float = 10.0) -> tuple:
    return (ad_id, category, f"/img/{ad_id}.png", b"IMG" + ad_id.encode(), (category, brand, price))


def test_read_table_parses_csv_rows_and_dead_letters_a_malformed_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('ad_id,category,image\nad1,shoes,a.png\n\nad2,"bags\n')
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = p | ReadTable(str(path), "ads")
        assert_that(out["rows"], equal_to([{"ad_id": "ad1", "category": "shoes", "image": "a.png"}]), label="rows")
        assert_that(out["dead"] | beam.Map(lambda d: (d[0], d[1], d[2])),
                    equal_to([("ads", 'ad2,"bags', "unparseable")]), label="dead")


def test_validate_impressions_types_rows_and_rejects_a_bad_label():
    ds = fixtures.config().dataset
    good = {"ad_id": "ad1", "label": "1", "day": "2024-01-02", "user_id": "u1", "device": "ios",
            "interests": "sport|music", "position": "3", "true_ctr": "0.25"}
    bad = {**good, "label": "clicked"}
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = p | beam.Create([good, bad]) | ValidateImpressions(ds)
        day = 19724  # 2024-01-02 in days since 1970-01-01
        assert_that(out["impressions"], equal_to([("ad1", (1, day, "u1", ("u1", "ios", ("sport", "music"), 3.0),
                                                           (0.25,)))]), label="good")
        assert_that(out["dead"], equal_to([("impressions", bad, "bad_field",
                                            "impressions: label: expected 0 or 1, got 'clicked'")]), label="dead")


def test_validate_ads_prepares_the_image_once_and_rejects_a_missing_one(tmp_path):
    ds = fixtures.config(image_size=8).dataset
    (tmp_path / "a.png").write_bytes(fixtures.png_bytes(20, 40))
    table = str(tmp_path / "ads.csv")
    good = {"ad_id": "ad1", "category": "shoes", "image": "a.png", "brand": "b0", "price": "2.5"}
    missing = {**good, "ad_id": "ad2", "image": "nope.png"}
    expected_image = images.load_image(str(tmp_path / "a.png"), 8, "png")
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = p | beam.Create([good, missing]) | ValidateAds(ds, table)
        assert_that(out["ads"], equal_to([("ad1", ("ad1", "shoes", str(tmp_path / "a.png"), expected_image,
                                                   ("shoes", "b0", 2.5)))]), label="ads")
        assert_that(out["rejected"] | beam.Map(lambda kv: (kv[0], kv[1].split(":")[0])),
                    equal_to([("ad2", "ad ad2 rejected")]), label="rejected")
        assert_that(out["dead"] | beam.Map(lambda d: d[2]), equal_to(["image_unreadable"]), label="dead")


@pytest.mark.parametrize("eval_days, expected", [(1, 5), (2, 3), (9, 1)])
def test_eval_from_day_is_the_first_of_the_last_eval_days_distinct_days(eval_days, expected):
    assert eval_from_day([3, 1, 5, 5, 3, 1], eval_days) == expected


def test_eval_from_day_transform_aggregates_distinct_days():
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = p | beam.Create([("a", _imp(d)) for d in [3, 1, 5, 5, 3, 1]]) | EvalFromDay(2)
        assert_that(out, equal_to([3]))


def test_join_and_chunk_splits_by_day_chunks_by_k_and_dead_letters_orphans():
    ds = fixtures.config(k=2).dataset
    imps = [("ad1", _imp(0, label=i % 2, user=f"u{i}")) for i in range(5)] + [("ad1", _imp(1, user="e"))]
    inputs_ads = [("ad1", _ad("ad1")), ("ad2", _ad("ad2"))]
    orphans = [("ghost", _imp(0)), ("bad", _imp(1))]
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = {"ads": p | "Ads" >> beam.Create(inputs_ads),
               "impressions": p | "Imps" >> beam.Create(imps + orphans),
               "rejected": p | "Rejected" >> beam.Create([("bad", "ad bad rejected: broken image")]),
               "eval_from": p | "EvalFrom" >> beam.Create([1])} | JoinAndChunk(ds, seed=0)

        def chunk_summary(element):
            n, positives, record = element
            ex = parse(record)
            users = [f.bytes_list.value[0].decode() for f in ex.feature_lists.feature_list["user_id"].feature]
            ctx = ex.context.feature
            return (ctx["ad_id"].bytes_list.value[0].decode(), ctx["chunk_index"].int64_list.value[0],
                    ctx["impression_count"].int64_list.value[0], n, len(users))

        assert_that(out["train"] | "SumTrain" >> beam.Map(chunk_summary),
                    equal_to([("ad1", 0, 5, 2, 2), ("ad1", 1, 5, 2, 2), ("ad1", 2, 5, 1, 1)]), label="train")
        assert_that(out["eval"] | "SumEval" >> beam.Map(chunk_summary), equal_to([("ad1", 0, 1, 1, 1)]), label="eval")
        assert_that(out["ad_counts"] | beam.Map(lambda r: (r[0]["ad_id"], r[0]["train_impressions"],
                                                            r[0]["eval_impressions"], r[1]["train"], r[1]["eval"])),
                    equal_to([("ad1", 5, 1, 3, 1), ("ad2", 0, 0, 0, 0)]), label="counts")
        assert_that(out["dead"] | beam.Map(lambda d: (d[0], d[1]["ad_id"], d[2], d[3])),
                    equal_to([("impressions", "ghost", "unknown_ad", "unknown ad_id 'ghost': not in the ads table"),
                              ("impressions", "bad", "ad_rejected", "ad bad rejected: broken image")]), label="dead")
        # One list per ad: the ad's train impressions.
        assert_that(out["train_impressions"] | beam.Map(lambda imps: sorted(imp[records.USER_ID] for imp in imps)),
                    equal_to([[f"u{i}" for i in range(5)]]), label="train_imps")


def test_join_and_chunk_dead_letters_duplicates_and_unexpected_errors_with_their_impressions():
    ds = fixtures.config().dataset
    broken = ("ad2", "shoes", "/img/ad2.png", None, ("shoes", "b0", 1.0))  # no image bytes: building fails
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = {"ads": p | "Ads" >> beam.Create([("dup", _ad("dup")), ("dup", _ad("dup", brand="b1")), ("ad2", broken)]),
               "impressions": p | "Imps" >> beam.Create([("dup", _imp(0)), ("ad2", _imp(0)), ("ad2", _imp(1))]),
               "rejected": p | "Rejected" >> beam.Create([]),
               "eval_from": p | "EvalFrom" >> beam.Create([1])} | JoinAndChunk(ds, seed=0)
        assert_that(out["dead"] | beam.Map(lambda d: (d[0], d[1]["ad_id"], d[2], d[3].split(":")[0])), equal_to([
            ("ads", "dup", "duplicate_ad", "ad_id 'dup' appears 2 times in the ads table"),
            ("ads", "dup", "duplicate_ad", "ad_id 'dup' appears 2 times in the ads table"),
            ("impressions", "dup", "duplicate_ad", "ad_id 'dup' appears 2 times in the ads table"),
            ("ads", "ad2", "unexpected_error", "ad ad2 rejected"),
            ("impressions", "ad2", "unexpected_error", "ad ad2 rejected"),
            ("impressions", "ad2", "unexpected_error", "ad ad2 rejected")]), label="dead")
        # Nothing of the failed ad leaks out half-built.
        assert_that(out["train"], equal_to([]), label="train")
        assert_that(out["ad_counts"], equal_to([]), label="counts")


def test_join_and_chunk_shuffle_depends_on_the_seed_only():
    ds = fixtures.config(k=25).dataset
    imps = [("ad1", _imp(0, user=f"u{i:02d}")) for i in range(20)]

    def order(seed, data):
        with BeamTestPipeline(argv=OPTIONS) as p:
            out = {"ads": p | "Ads" >> beam.Create([("ad1", _ad("ad1"))]),
                   "impressions": p | "Imps" >> beam.Create(data), "rejected": p | "R" >> beam.Create([]),
                   "eval_from": p | "E" >> beam.Create([9])} | JoinAndChunk(ds, seed=seed)
            users = out["train"] | beam.Map(lambda e: [f.bytes_list.value[0].decode() for f in
                                                       parse(e[2]).feature_lists.feature_list["user_id"].feature])
            expected = sorted((imp for _, imp in data), key=lambda imp: records.shuffle_key(seed, imp))
            assert_that(users, equal_to([[imp[records.USER_ID] for imp in expected]]))
        return [imp[records.USER_ID] for imp in expected]

    a = order(0, imps)
    assert order(0, list(reversed(imps))) == a  # input order does not matter
    assert order(1, imps) != a and sorted(order(1, imps)) == sorted(a)


def test_vocab_and_stats_write_files_matching_a_hand_count(tmp_path):
    ds = fixtures.config().dataset
    out = str(tmp_path)
    ads = [_ad("a1", brand="x", price=1.0), _ad("a2", brand="y", price=3.0), _ad("a3", "bags", brand="x", price=8.0)]
    imps = [_imp(0, 1, device="ios", interests=("m", "s"), position=1.0),
            _imp(0, 0, device="web", interests=(), position=2.0),
            _imp(0, 1, device="web", interests=("s",), position=6.0)]
    days = {"train": [0], "valid": [0], "eval": [1], "eval_from": 1, "valid_from": None}
    with BeamTestPipeline(argv=OPTIONS) as p:
        written = {"train_ads": p | "A" >> beam.Create(ads), "train_impressions": p | "I" >> beam.Create(imps),
                   "days": p | "D" >> beam.Create([days])} | VocabAndStats(ds, out)
        assert_that(written | beam.Map(os.path.basename),
                    equal_to(["device.txt", "interests.txt", "brand.txt", "category.txt", "stats.json"]))

    def vocab(name):
        with open(os.path.join(out, "vocab", f"{name}.txt")) as f:
            return f.read().splitlines()

    assert vocab("device") == ["web", "ios"]  # most frequent first
    assert vocab("interests") == ["s", "m"]
    assert vocab("brand") == ["x"]  # min_frequency 2: y (one ad) is out
    assert vocab("category") == ["shoes", "bags"]
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    boundaries = stats["price"].pop("boundaries")
    assert stats["price"] == {"count": 3, "missing": 0, "mean": 4.0, "std": pytest.approx((26 / 3) ** 0.5),
                              "min": 1.0, "max": 8.0}
    # Exact quantiles at this size: 9 boundaries (10 buckets) over 1, 3, 8; 3 (4 buckets) over 1, 2, 6.
    assert boundaries == [1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 8.0, 8.0]
    assert stats["position"]["boundaries"] == [1.0, 2.0, 6.0]
    assert stats["interests"] == {"count": 2, "missing": 1, "vocab_size": 2}
    assert stats["position"]["mean"] == 3.0 and stats["position"]["max"] == 6.0
    assert stats["label"] == {"count": 3, "positives": 2}
    assert stats["category"]["vocab_size"] == 2 and stats["day"] == days


@pytest.mark.parametrize("coverage, expected", [(0.4, 10), (0.5, 5), (0.9, 1), (1.0, 0)])
def test_coverage_threshold_keeps_most_impressed_ads_until_coverage(coverage, expected):
    # 1 ad x 10 impressions, 2 ads x 5, 3 ads x 1, 1 ad x 0: 23 impressions; 0.5 x 23 = 11.5 needs the 5s.
    assert coverage_threshold({10: 1, 5: 2, 1: 3, 0: 1}, coverage) == expected


def test_coverage_threshold_transform_builds_the_histogram():
    ads = [AdToEmbed(f"a{i}", "c", b"x", n, False) for i, n in enumerate([10, 5, 5, 1, 1, 1, 0])]
    with BeamTestPipeline(argv=OPTIONS) as p:
        assert_that(p | beam.Create(ads) | CoverageThreshold(0.5), equal_to([5]))


def test_read_table_batches_csv_rows_with_their_lines_and_validation_groups_them_by_ad(tmp_path):
    ds = fixtures.config().dataset
    path = tmp_path / "imps.csv"
    header = "ad_id,label,day,user_id,device,interests,position,true_ctr\n"
    lines = ["ad1,1,0,u1,ios,sport,1,0.5", "ad2,0,0,u2,web,,2,0.5", "ad1,maybe,0,u3,ios,,1,0.5",
             "ad1,0,1,u4,web,music|sport,3,0.5", "ad2,1,1"]
    path.write_text(header + "".join(line + "\n" for line in lines))
    with BeamTestPipeline(argv=OPTIONS) as p:
        read = p | ReadTable(str(path), "impressions", with_source=True, batch_rows=2)
        # Rows 2-5 of the file in batches of 2 (the 3-field line is dead-lettered by the reader).
        assert_that(read["rows"] | "Lines" >> beam.FlatMap(lambda b: [(b[0], line, row["user_id"])
                                                                       for line, row in rows_of_batch(b)]),
                    equal_to([("imps.csv", 2, "u1"), ("imps.csv", 3, "u2"), ("imps.csv", 4, "u3"),
                              ("imps.csv", 5, "u4")]), label="rows")
        out = read["rows"] | ValidateImpressions(ds, grouped=True)
        # One element per ad and bundle, its impressions in a list.
        assert_that(out["impressions"] | beam.Map(lambda kv: (kv[0], sorted(imp[records.USER_ID] for imp in kv[1]))),
                    equal_to([("ad1", ["u1", "u4"]), ("ad2", ["u2"])]), label="grouped")
        assert_that(out["dead"] | beam.Map(lambda d: (d[1]["user_id"], d[2], d[3])),
                    equal_to([("u3", "bad_field", "impressions: label: expected 0 or 1, got 'maybe' (imps.csv line 4)")]),
                    label="dead")
        assert_that(read["dead"] | "ReadDead" >> beam.Map(lambda d: d[3].endswith("(imps.csv line 6)")),
                    equal_to([True]), label="read_dead")


def test_join_and_chunk_gives_the_same_records_for_grouped_and_single_impressions():
    ds = fixtures.config(k=2).dataset
    imps = [("ad1", _imp(i % 2, label=int(i % 3 == 0), user=f"u{i}")) for i in range(7)] + [("ghost", _imp(0))]
    grouped = [("ad1", [imp for _, imp in imps[:3]]), ("ad1", [imp for _, imp in imps[3:7]]), ("ghost", [imps[7][1]])]
    with BeamTestPipeline(argv=OPTIONS) as p:
        ads = p | "Ads" >> beam.Create([("ad1", _ad("ad1"))])
        rejected = p | "R" >> beam.Create([])
        eval_from = p | "E" >> beam.Create([1])
        outs = {}
        for name, data in (("single", imps), ("grouped", grouped)):
            out = {"ads": ads, "impressions": p | f"Imps_{name}" >> beam.Create(data), "rejected": rejected,
                   "eval_from": eval_from} | f"Join_{name}" >> JoinAndChunk(ds, seed=3)
            outs[name] = ((out["train"], out["valid"], out["eval"]) | f"Splits_{name}" >> beam.Flatten()
                          | f"Bytes_{name}" >> beam.Map(lambda e: e[2])
                          | f"All_{name}" >> beam.combiners.ToList() | f"Sort_{name}" >> beam.Map(sorted))
            assert_that(out["dead"] | f"Dead_{name}" >> beam.Map(lambda d: (d[1]["ad_id"], d[2])),
                        equal_to([("ghost", "unknown_ad")]), label=f"dead_{name}")
        # Day 0 (4 impressions) and day 1 (eval, 3) in chunks of K = 2: 4 records, byte for byte the same.
        same = outs["single"] | beam.Map(lambda a, b: (len(a), a == b), beam.pvalue.AsSingleton(outs["grouped"]))
        assert_that(same, equal_to([(4, True)]), label="same")
