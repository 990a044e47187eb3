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

import importlib.util
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


def _benchmark():
    """benchmarks/beam_preprocess.py (not a package: loaded from its path)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "beam_preprocess.py")
    spec = importlib.util.spec_from_file_location("beam_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _write_in_bundles(temp_dir: str, out: str, records: list[bytes], bundles: list[list[int]]) -> dict[str, bytes]:
    """The writer's steps by hand, the records cut into the given bundles (lists of indices)."""
    from beam_jobs.transforms import write

    temp = []
    for bundle in bundles:
        fn = write._WriteTemp(temp_dir, "train", 3)
        fn.setup()
        fn.start_bundle()
        for i in bundle:
            fn.process((1, 0, records[i]))
        temp += [wv.value for wv in fn.finish_bundle()]
    for shard in write.plan_outputs(temp, [("train", os.path.join(out, "part"), ".tfrecord", 3, False, False)]):
        list(write._WriteShard().process(shard))
    return _files(out)


def test_the_shards_do_not_depend_on_the_bundles(tmp_path):
    import random

    records = [f"record {i} ".encode() * (i % 7 + 1) for i in range(200)] + [b"twice", b"twice"]
    order = list(range(len(records)))
    one = _write_in_bundles(str(tmp_path / "t1"), str(tmp_path / "o1"), records, [order])
    random.Random(1).shuffle(order)
    many = _write_in_bundles(str(tmp_path / "t2"), str(tmp_path / "o2"), records,
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
