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


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from beam_jobs import build_tfrecords
    from beam_jobs.transforms import read
    from tfvctr.demo_data.generate import generate

    raw = str(tmp_path_factory.mktemp("determinism_raw"))
    generate(raw, num_ads=60, num_impressions=3000, image_size=16, formats=("csv",))
    impressions = os.path.join(raw, "impressions.csv")
    with open(impressions) as f:
        header = f.readline().rstrip("\n").split(",")
        good = f.readline().rstrip("\n").split(",")
    bad = []
    for i in range(BAD_ROWS):  # three kinds in turn: a bad label, an unknown ad, too few fields
        row = list(good)
        if i % 3 == 0:
            row[header.index("label")] = "yes"
        elif i % 3 == 1:
            row[header.index("ad_id")] = f"no_such_ad{i}"
        else:
            row = row[:3]
        bad.append(",".join(row) + "\n")
    with open(impressions, "a") as f:
        f.writelines(bad)
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
