"""`tfvctr preprocess` with 2 processes writes the same bytes run to run, and the in-memory run's.

The job runs three times on one small demo dataset (with bad rows, so the dead letter has
lines): in memory, then twice with `--direct_num_workers 2 --direct_running_mode
multi_processing`. The impressions table is read in ranges of a few kilobytes (not the
job's 1 MB), so this small input is read, validated, joined and written in many bundles
spread over both workers, as a large one is. Every output file (the records' shards,
`stats.json`, the vocabularies, `ad_counts.jsonl`, the dead letter, `manifest.json`) must
be byte-identical between the three runs (docs/beam_jobs.md, determinism with 2 processes).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import load_benchmark

RANGE_BYTES = 8 << 10  # the impressions table (~200 KB) in ~25 ranges: many bundles, both workers
BAD_ROWS = 30


def _files(out: str) -> dict[str, bytes]:
    """Every file under `out`, relative path → bytes."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, out)] = f.read()
    return files


def _benchmark():
    return load_benchmark("beam_preprocess")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from beam_jobs import build_tfrecords
    from beam_jobs.transforms import read
    from tfvctr.demo_data.generate import generate

    raw = str(tmp_path_factory.mktemp("determinism_raw"))
    generate(raw, num_ads=60, num_impressions=3000, image_size=16, formats=("csv",))
    impressions = os.path.join(raw, "impressions.csv")
    # The benchmark's bad rows, three kinds in turn: a bad label, an unknown ad, too few fields.
    assert _benchmark().add_bad_rows(impressions, BAD_ROWS / 3000) == BAD_ROWS
    config = os.path.join(raw, "demo16.yaml")
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.yaml")) as f:
        text = f.read().replace("image_size: 64", "image_size: 16")
    with open(config, "w") as f:
        f.write(text)
    with open(impressions, "rb") as f:
        ranges = len(list(read.split_ranges(f, "csv", RANGE_BYTES)))

    two = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    outs, manifests = {}, {}
    mp = pytest.MonkeyPatch()
    mp.setattr(read, "RANGE_BYTES", RANGE_BYTES)  # read when the pipeline is built, in this process
    try:
        for name, extra in (("in_memory", []), ("two_a", two), ("two_b", two)):
            out = str(tmp_path_factory.mktemp(f"determinism_{name}"))
            manifests[name] = build_tfrecords.run(["--config", config, "--ads", os.path.join(raw, "ads.csv"),
                                                   "--impressions", impressions, "--out", out, *extra], verbose=False)
            outs[name] = _files(out)
    finally:
        mp.undo()
    return {"files": outs, "manifests": manifests, "ranges": ranges}


@pytest.mark.slow
def test_the_input_is_read_in_many_bundles_and_every_output_is_there(runs):
    assert runs["ranges"] >= 16
    m = runs["manifests"]["two_a"]
    assert m["input"]["impressions"] == 3000 + BAD_ROWS
    assert m["dead_letter"]["impressions"] == BAD_ROWS
    files = runs["files"]["two_a"]
    for split in ("train", "valid", "eval"):
        shards = sorted(p for p in files if p.startswith(split + os.sep))
        assert shards == [os.path.join(split, f"part-{i:05d}-of-00004.tfrecord") for i in range(4)]
        assert all(files[p] for p in shards)
    for name in ("stats.json", "manifest.json", "ad_counts.jsonl", os.path.join("vocab", "brand.txt")):
        assert files[name]
    dead = b"".join(files[p] for p in sorted(files) if p.startswith("dead_letter" + os.sep))
    assert dead.count(b"\n") == BAD_ROWS


@pytest.mark.slow
def test_two_process_runs_write_the_same_bytes_as_each_other_and_as_in_memory(runs):
    a, b, one = runs["files"]["two_a"], runs["files"]["two_b"], runs["files"]["in_memory"]
    assert sorted(a) == sorted(b) == sorted(one)  # the same file names
    for name in sorted(a):
        assert a[name] == b[name], f"{name}: two runs with 2 processes wrote other bytes"
        assert a[name] == one[name], f"{name}: 2 processes and in_memory wrote other bytes"


def _write_in_bundles(temp_root, out: str, records: list[bytes], bundles: list[list[int]]) -> dict[str, bytes]:
    """The writer's steps by hand, the records cut into the given bundles (lists of indices)."""
    from beam_jobs.transforms import write
    from tests.beam_jobs.test_write_records import _bundles

    outputs = {"train": (os.path.join(out, "part"), ".tfrecord", 3, False, False)}
    grouped: dict = {key: [None] for key in write.shard_keys(outputs)}  # the GroupByKey, seeds included
    for key, value in _bundles(temp_root, records, bundles, 3):
        grouped[key].append(value)
    for key, values in grouped.items():
        for shard in write.plan_files((key, values), outputs):
            list(write._WriteShard().process(shard))
    return _files(out)


def test_the_shards_do_not_depend_on_the_bundles(tmp_path):
    import random

    records = [f"record {i} ".encode() * (i % 7 + 1) for i in range(200)] + [b"twice", b"twice"]
    order = list(range(len(records)))
    one = _write_in_bundles(tmp_path / "t1", str(tmp_path / "o1"), records, [order])
    random.Random(1).shuffle(order)
    many = _write_in_bundles(tmp_path / "t2", str(tmp_path / "o2"), records,
                             [order[i:i + 17] for i in range(0, len(order), 17)])
    assert sorted(one) == [f"part-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert one == many
    assert all(len(data) > 1000 for data in one.values())  # ~200 records spread over the 3 shards


def test_moments_are_the_same_digits_whichever_way_the_values_are_split_and_merged():
    import math
    import random
    from fractions import Fraction

    from beam_jobs.transforms.stats import MomentsFn, exact_moments

    rng = random.Random(0)
    values = [rng.lognormvariate(2, 2) * rng.choice((1, -1)) for _ in range(3000)] + [1e150, -1e150, 1e-300]
    fn = MomentsFn()
    outputs = []
    for size in (1, 7, 250, len(values)):
        parts = [exact_moments(values[i:i + size]) for i in range(0, len(values), size)]
        rng.shuffle(parts)
        outputs.append(fn.extract_output(fn.merge_accumulators(parts)))
    assert all(out == outputs[0] for out in outputs)
    exact_mean = sum(map(Fraction, values)) / len(values)
    assert outputs[0]["mean"] == float(exact_mean)  # rounded once, from the exact sum
    variance = sum((Fraction(x) - exact_mean) ** 2 for x in values) / len(values)
    assert outputs[0]["std"] == math.sqrt(float(variance))
    assert (outputs[0]["min"], outputs[0]["max"]) == (-1e150, 1e150)
    huge = fn.extract_output(exact_moments([1e200, -1e200]))  # the variance is beyond a float, the std is not
    assert huge["mean"] == 0.0 and huge["std"] == pytest.approx(1e200, rel=1e-15)


def test_benchmark_rounds_rotate_and_ratios_are_paired_round_by_round():
    bench = _benchmark()
    assert [bench.rotated(["plain", "beam1", "beam2"], r) for r in range(4)] == [
        ["plain", "beam1", "beam2"], ["beam1", "beam2", "plain"], ["beam2", "plain", "beam1"],
        ["plain", "beam1", "beam2"]]
    rows = []
    # The machine twice as slow in round 2: each run over its own round's floor stays 1.2x.
    for round_index, (floor, beam, same) in enumerate(((40.0, 48.0, True), (80.0, 96.0, True), (50.0, 70.0, False))):
        rows.append({"run": "plain", "round": round_index + 1, "seconds": floor / 2, "cpu_seconds": floor,
                     "peak_rss_mb": 700, "impressions": 10, "same_output": True})
        rows.append({"run": "beam2", "round": round_index + 1, "seconds": beam / 4, "cpu_seconds": beam,
                     "peak_rss_mb": 1200 + round_index, "impressions": 10, "same_output": same})
    plain, beam2 = bench.summarise(rows, ["plain", "beam2", "beam1"])  # no beam1 rows: no row for it
    assert (plain["median_cpu_ratio_to_floor"], plain["min_cpu_ratio_to_floor"]) == (1.0, 1.0)
    assert beam2["rounds"] == 3
    assert beam2["median_cpu_seconds"] == 70.0 and beam2["min_cpu_seconds"] == 48.0
    assert beam2["median_seconds"] == 17.5 and beam2["min_seconds"] == 12.0
    assert (beam2["median_cpu_ratio_to_floor"], beam2["min_cpu_ratio_to_floor"],
            beam2["max_cpu_ratio_to_floor"]) == (1.2, 1.2, 1.4)
    assert beam2["median_ratio_to_floor"] == 0.6  # wall: (beam / 4) / (floor / 2)
    assert beam2["median_peak_rss_mb"] == 1201
    assert beam2["same_output"] is False and plain["same_output"] is True
