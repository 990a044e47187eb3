"""Job-level tests of `beam_jobs.build_tfrecords` (run(argv) on files, as wordcount_test does)."""

from __future__ import annotations

import csv
import glob
import json
import os

import pytest

from tests.beam_jobs.conftest import parse, read_records


def _dead_letters(out: str) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(out, "dead_letter", "*.jsonl")):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def _csv(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _feature_list_len(example, key: str) -> int:
    return len(example.feature_lists.feature_list[key].feature)


def _held_out(manifest: dict, ad_ids) -> set[str]:
    """The ads the run held out whole (demo.yaml: validation mode `ads`), by the job's own draw."""
    from beam_jobs.transforms.join import held_out_ad

    v = manifest["validation"]
    assert v["mode"] == "ads"
    return {a for a in ad_ids if held_out_ad(v["seed"], a, v["ads_share"])}


@pytest.mark.slow
def test_demo_counts_match_input_exactly_with_two_processes(demo_raw, demo_runs):
    impressions = _csv(demo_raw["impressions"])
    days = sorted({int(r["day"]) for r in impressions})
    m = demo_runs["manifest"]["two_processes"]
    held = _held_out(m, {r["ad_id"] for r in impressions})
    expected_eval = sum(1 for r in impressions if int(r["day"]) == days[-1])
    expected_valid = sum(1 for r in impressions if int(r["day"]) < days[-1] and r["ad_id"] in held)
    assert m["input"] == {"ads": 40, "impressions": 1500}
    assert m["dead_letter"]["impressions"] == 0
    assert m["splits"]["eval"]["impressions"] == expected_eval
    assert expected_valid and m["splits"]["valid"]["impressions"] == expected_valid
    assert m["splits"]["train"]["impressions"] == 1500 - expected_eval - expected_valid
    assert m["splits"]["train"]["positives"] == sum(int(r["label"]) for r in impressions
                                                    if int(r["day"]) < days[-1] and r["ad_id"] not in held)
    out = demo_runs["out"]["two_processes"]
    for split in ("train", "valid", "eval"):
        records = read_records(out, split)
        assert len(records) == m["splits"][split]["chunks"]
        assert sum(_feature_list_len(parse(r), "label") for r in records) == m["splits"][split]["impressions"]


@pytest.mark.slow
def test_demo_chunks_hold_at_most_k_impressions_of_one_ad_and_splits_by_day(demo_raw, demo_runs):
    impressions = _csv(demo_raw["impressions"])
    per_ad = {}
    for r in impressions:
        per_ad.setdefault(r["ad_id"], []).append(int(r["day"]))
    out = demo_runs["out"]["in_memory"]
    held = _held_out(demo_runs["manifest"]["in_memory"], per_ad)
    seen = {"train": {}, "valid": {}, "eval": {}}
    for split in ("train", "valid", "eval"):
        for record in read_records(out, split):
            ex = parse(record)
            ctx = ex.context.feature
            ad_id = ctx["ad_id"].bytes_list.value[0].decode()
            days = [f.int64_list.value[0] for f in ex.feature_lists.feature_list["day"].feature]
            assert 1 <= len(days) <= 25
            assert all(_feature_list_len(ex, key) == len(days) for key in ex.feature_lists.feature_list)
            assert all(d == 6 for d in days) if split == "eval" else all(d < 6 for d in days)
            count = ctx["impression_count"].int64_list.value[0]
            assert count == sum(1 for d in per_ad[ad_id] if (d == 6) == (split == "eval"))
            if split != "eval":
                assert (ad_id in held) == (split == "valid"), (ad_id, split)
            seen[split].setdefault(ad_id, []).append(ctx["chunk_index"].int64_list.value[0])
    for split in seen:
        for ad_id, indexes in seen[split].items():
            assert sorted(indexes) == list(range(len(indexes))), ad_id
    cold = {ad for ad, days in per_ad.items() if set(days) == {6}}
    assert cold and cold.isdisjoint(seen["train"]) and cold <= set(seen["eval"])
    # Cold in eval: never in train, so the held-out ads with an eval day too.
    assert demo_runs["manifest"]["in_memory"]["cold_ads"] == len(cold | (held & set(seen["eval"])))


@pytest.mark.slow
def test_demo_vocabularies_exclude_eval_only_values(demo_raw, demo_runs):
    impressions = _csv(demo_raw["impressions"])
    ads = {r["ad_id"]: r for r in _csv(demo_raw["ads"])}
    held = _held_out(demo_runs["manifest"]["in_memory"], ads)
    train_hours = {r["hour"] for r in impressions if int(r["day"]) < 6 and r["ad_id"] not in held}
    out = demo_runs["out"]["in_memory"]
    with open(os.path.join(out, "vocab", "hour.txt")) as f:
        assert set(f.read().split()) == train_hours
    train_ads = {r["ad_id"] for r in impressions if int(r["day"]) < 6} - held
    eval_only_categories = {ads[a]["category"] for a in ads if a not in train_ads} - {ads[a]["category"] for a in train_ads}
    with open(os.path.join(out, "vocab", "category.txt")) as f:
        categories = f.read().split()
    assert set(categories) == {ads[a]["category"] for a in train_ads}
    assert eval_only_categories.isdisjoint(categories)
    # brand has min_frequency 2 in demo.yaml: brands of a single train ad are left out.
    brand_ads = {}
    for a in train_ads:
        brand_ads[ads[a]["brand"]] = brand_ads.get(ads[a]["brand"], 0) + 1
    with open(os.path.join(out, "vocab", "brand.txt")) as f:
        brands = f.read().split()
    assert brands == sorted((b for b, n in brand_ads.items() if n >= 2), key=lambda b: (-brand_ads[b], b))


@pytest.mark.slow
def test_two_runs_same_seed_give_byte_identical_records(demo_runs):
    a, b = demo_runs["out"]["in_memory"], demo_runs["out"]["two_processes"]
    for split in ("train", "valid", "eval"):
        assert read_records(a, split) == read_records(b, split)
    # Float moments are summed in another order by 2 processes: equal up to rounding.
    with open(os.path.join(a, "stats.json")) as f1, open(os.path.join(b, "stats.json")) as f2:
        stats_a, stats_b = json.load(f1), json.load(f2)
    assert stats_a.keys() == stats_b.keys()
    for feature, entry in stats_a.items():
        for key, value in entry.items():
            expected = pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
            assert stats_b[feature][key] == expected, (feature, key)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_tables_give_the_same_records_as_csv(demo_raw, demo_runs, fmt, tmp_path):
    from beam_jobs import build_tfrecords

    root = demo_raw["root"]
    build_tfrecords.run(["--config", demo_raw["config"], "--ads", os.path.join(root, f"ads.{fmt}"),
                         "--impressions", os.path.join(root, f"impressions.{fmt}"), "--out", str(tmp_path)],
                        verbose=False)
    for split in ("train", "valid", "eval"):
        assert read_records(str(tmp_path), split) == read_records(demo_runs["out"]["in_memory"], split)


def test_each_fault_is_dead_lettered_with_a_readable_reason_and_the_job_succeeds(faulty_run):
    dead = _dead_letters(faulty_run["out"])
    by_ad = {}
    for d in dead:
        ad_id = d["row"]["ad_id"] if isinstance(d["row"], dict) else None
        by_ad.setdefault((d["table"], ad_id), []).append(d["reason"])
    assert "cannot be decoded" in by_ad[("ads", "ad05")][0]
    assert "cannot be read" in by_ad[("ads", "ad06")][0]
    assert "80x80 = 6400 pixels exceeds dataset.max_image_pixels = 4096" in by_ad[("ads", "big")][0]
    assert by_ad[("impressions", "big")][0].startswith("ad big rejected: ")
    assert by_ad[("impressions", "no_such_ad")] == ["unknown ad_id 'no_such_ad': not in the ads table"]
    bad_line = 2 + next(i for i, r in enumerate(faulty_run["impressions"]) if r["label"] == "yes")  # header is line 1
    assert [r for r in by_ad[("impressions", faulty_run["impressions"][0]["ad_id"])] if "label" in r] == [
        f"impressions: label: expected 0 or 1, got 'yes' (impressions.csv line {bad_line})"]
    n_ad05 = sum(1 for r in faulty_run["impressions"] if r["ad_id"] == "ad05")
    assert len(by_ad[("impressions", "ad05")]) == n_ad05
    assert all(r.startswith("ad ad05 rejected: ") for r in by_ad[("impressions", "ad05")])
    m = faulty_run["manifest"]
    assert m["dead_letter"]["reasons"] == {
        "ad_rejected": m["dead_letter"]["impressions"] - 2,
        "bad_field": 1, "image_too_large": 1, "image_undecodable": 1, "image_unreadable": 1, "unknown_ad": 1,
    }
    assert m["dead_letter"]["ads"] == 3 and len(dead) == m["dead_letter"]["ads"] + m["dead_letter"]["impressions"]


def test_fault_run_counts_add_up_and_no_good_row_is_lost(faulty_run):
    m = faulty_run["manifest"]
    bad_ads = {"ad05", "ad06", "big"}
    good = [r for r in faulty_run["impressions"] if r["ad_id"] not in bad_ads | {"no_such_ad"} and r["label"] != "yes"]
    assert m["input"] == {"ads": 9, "impressions": len(faulty_run["impressions"])}
    assert sum(m["splits"][split]["impressions"] for split in ("train", "valid", "eval")) == len(good)
    assert m["splits"]["eval"]["impressions"] == sum(1 for r in good if r["day"] == 2)
    assert m["ads_written"] == 6
    with open(os.path.join(faulty_run["out"], "manifest.json")) as f:
        assert json.load(f)["input"] == m["input"]
    with open(os.path.join(faulty_run["out"], "ad_counts.jsonl")) as f:
        counts = {r["ad_id"]: r for r in map(json.loads, f)}
    assert set(counts) == {"ad00", "ad01", "ad02", "ad03", "ad04", "ad07"}
    assert counts["ad07"]["train_impressions"] == 0 and counts["ad07"]["eval_impressions"] > 0
    assert os.path.isabs(counts["ad00"]["image"]) and os.path.exists(counts["ad00"]["image"])


def test_stats_match_a_hand_computation_on_the_train_split(faulty_run):
    import numpy as np

    bad = {"ad05", "ad06", "big", "no_such_ad"}
    train = [r for r in faulty_run["impressions"] if r["ad_id"] not in bad and r["label"] != "yes" and r["day"] < 2]
    with open(os.path.join(faulty_run["out"], "stats.json")) as f:
        stats = json.load(f)
    positions = np.array([r["position"] for r in train])
    assert stats["position"]["count"] == len(train)
    assert stats["position"]["mean"] == pytest.approx(positions.mean())
    assert stats["position"]["std"] == pytest.approx(positions.std())
    assert stats["position"]["boundaries"] == [2.0, 3.0, 4.0]  # positions 1..5, 4 buckets
    assert stats["label"] == {"count": len(train), "positives": sum(r["label"] for r in train)}
    assert stats["interests"]["missing"] == sum(1 for r in train if r["interests"] == "")
    assert stats["user_id"]["hash_buckets"] == 50 and "vocab_size" not in stats["user_id"]
    # fixtures.config: validation mode `ads` by default; the valid split draws from the train days.
    assert stats["day"] == {"train": [0, 1], "valid": [0, 1], "eval": [2], "eval_from": 2, "valid_from": None}
    with open(os.path.join(faulty_run["out"], "vocab", "device.txt")) as f:
        devices = f.read().split()
    assert "eval_only_device" not in devices and set(devices) == {r["device"] for r in train}
    # brand min_frequency 2 counts train ads: rare_brand (one ad) is out.
    with open(os.path.join(faulty_run["out"], "vocab", "brand.txt")) as f:
        assert "rare_brand" not in f.read().split()


def test_eval_from_day_flag_overrides_the_computed_split(faulty_run, tmp_path):
    from beam_jobs import build_tfrecords

    argv = list(faulty_run["argv"])
    argv[argv.index("--out") + 1] = str(tmp_path)
    stale = tmp_path / "train" / "part-00000-of-00009.tfrecord"  # an earlier run's shard
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    m = build_tfrecords.run([*argv, "--eval-from-day", "1", "--overwrite"], verbose=False)
    assert not stale.exists()
    assert m["splits"]["eval"]["days"] == [1, 2] and m["splits"]["train"]["days"] == [0]
    total = lambda splits: sum(splits[s]["impressions"] for s in ("train", "valid", "eval"))  # noqa: E731
    assert total(m["splits"]) == total(faulty_run["manifest"]["splits"])


def test_missing_column_is_one_line_error_naming_file_and_column(faulty_run, tmp_path, cli_main, capsys):
    bad = tmp_path / "ads.csv"
    bad.write_text("ad_id,image\nad00,x.png\n")
    argv = list(faulty_run["argv"])
    argv[argv.index("--ads") + 1] = str(bad)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    assert cli_main(["preprocess", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tfvctr preprocess: error: {bad}: missing columns 'category', 'brand', 'price' (required for the "
                   f"ads table); found: ad_id, image"]


def test_preprocess_help_lists_flags_and_beam_passthrough(cli_main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["preprocess", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--impressions" in out and "--direct_num_workers" in out


def test_unknown_flag_of_a_non_beam_command_is_still_an_error(cli_main, capsys):
    with pytest.raises(SystemExit):
        cli_main(["validate-config", "x.yaml", "--direct_num_workers", "2"])
    assert "unrecognized arguments: --direct_num_workers 2" in capsys.readouterr().err


def test_multi_threading_mode_is_refused():
    from beam_jobs.common import pipeline_options
    from tfvctr.errors import TfvctrError

    with pytest.raises(TfvctrError, match="multi_threading loses data"):
        pipeline_options(["--direct_running_mode", "multi_threading"])
    opts = pipeline_options(["--direct_num_workers", "2"]).get_all_options()
    assert opts["runner"] == "DirectRunner" and opts["direct_running_mode"] == "multi_processing"


def test_trainer_parser_reads_every_record_including_missing_values(faulty_run):
    """The contract with `tfvctr.data`: every record parses with the trainer's own specs."""
    import numpy as np

    from tests.beam_jobs import fixtures
    from tfvctr.data import parse_chunk

    ds = fixtures.config().dataset
    steps = 0
    for split in ("train", "valid", "eval"):
        for record in read_records(faulty_run["out"], split):
            chunk = parse_chunk(record, ds)
            n = int(chunk["seq/label"].shape[0])
            assert n == int(chunk["seq/device"].shape[0]) == int(chunk["seq/position"].shape[0]) and 1 <= n <= 4
            assert np.all(np.isfinite(chunk["seq/position"].numpy()))
            steps += n
    m = faulty_run["manifest"]["splits"]
    assert steps == m["train"]["impressions"] + m["valid"]["impressions"] + m["eval"]["impressions"]


def test_non_empty_output_folder_is_refused_without_overwrite(faulty_run):
    from beam_jobs import build_tfrecords
    from tfvctr.errors import TfvctrError

    with pytest.raises(TfvctrError, match=r"not empty \(an earlier run's output\?\); choose another --out or pass "
                                          r"--overwrite"):
        build_tfrecords.run(faulty_run["argv"], verbose=False)
