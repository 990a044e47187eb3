"""`WriteRecords`: records written where they are produced, cut into shards at record boundaries."""

from __future__ import annotations

import glob
import gzip
import json
import os
import struct

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected by pytest

from beam_jobs.transforms.write import WriteRecords, plan_shards, tfrecord_frame


def _read(path: str) -> list[bytes]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        out.append(data[pos + 12: pos + 12 + length])
        pos += 16 + length
    return out


@pytest.mark.parametrize("num_shards, compression", [(4, "none"), (3, "gzip"), (0, "none")])
def test_every_record_once_in_the_named_shards(tmp_path, num_shards, compression):
    records = [f"record {i} ".encode() * (i % 7 + 1) for i in range(203)]
    chunks = [(i % 5 + 1, i % 2, r) for i, r in enumerate(records)]
    with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
        _ = p | beam.Create(chunks) | WriteRecords(str(tmp_path), "train", num_shards, compression)
    paths = sorted(glob.glob(str(tmp_path / "train" / "*")))
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    if num_shards:
        assert [os.path.basename(p) for p in paths] == [f"part-{i:05d}-of-{num_shards:05d}{suffix}"
                                                         for i in range(num_shards)]
        assert all(_read(path) for path in paths)  # 203 records over 4 shards: none empty
    written = [r for path in paths for r in _read(path)]
    assert sorted(written) == sorted(records)
    assert sorted(os.listdir(tmp_path)) == ["train"]  # the temp files are gone


def test_framing_is_tensorflows(tmp_path):
    import tensorflow as tf

    path = tmp_path / "x.tfrecord"
    path.write_bytes(tfrecord_frame(b"abc") + tfrecord_frame(b""))
    assert list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()) == [b"abc", b""]


def test_plan_cuts_the_stream_at_record_starts_into_balanced_shards():
    files = [("b", 1000, [100 * i for i in range(1, 10)]), ("a", 50, [])]
    shards = plan_shards(files, 4)
    assert [s[:2] for s in shards] == [(i, 4) for i in range(4)]
    ranges = [r for _, _, rs in shards for r in rs]
    assert ranges[0] == ("a", 0, 50)  # path order
    covered = {}
    for path, start, end in ranges:
        covered.setdefault(path, []).append((start, end))
    assert covered["a"] == [(0, 50)]
    b = covered["b"]
    assert b[0][0] == 0 and b[-1][1] == 1000 and all(x[1] == y[0] for x, y in zip(b, b[1:], strict=False))
    assert all(start in (0, *files[0][2]) for start, _ in b)  # only at record starts
    sizes = [sum(e - s for _, s, e in rs) for _, _, rs in shards]
    assert max(sizes) - min(sizes) <= 200


def test_plan_without_files_or_shards():
    assert plan_shards([], 2) == [(0, 2, []), (1, 2, [])]  # empty split: every shard file, empty
    assert plan_shards([], 0) == [(0, 1, [])]
    assert plan_shards([("x", 5, []), ("w", 7, [3])], 0) == [(0, 2, [("w", 0, 7)]), (1, 2, [("x", 0, 5)])]


def test_several_splits_share_one_writer_and_keep_their_own_folders(tmp_path):
    train = [(1, 0, f"train {i}".encode()) for i in range(30)]
    valid = [(2, 1, f"valid {i}".encode()) for i in range(7)]
    with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
        inputs = {"train": p | "T" >> beam.Create(train), "valid": p | "V" >> beam.Create(valid),
                  "eval": p | "E" >> beam.Create([])}
        _ = inputs | WriteRecords(str(tmp_path), ["train", "valid", "eval"], 2)
    for split, chunks in (("train", train), ("valid", valid), ("eval", [])):
        paths = sorted(glob.glob(str(tmp_path / split / "*")))
        assert [os.path.basename(p) for p in paths] == ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
        assert sorted(r for path in paths for r in _read(path)) == sorted(c[2] for c in chunks)
    assert sorted(os.listdir(tmp_path)) == ["eval", "train", "valid"]  # the temp files are gone


@pytest.mark.parametrize("lines", [[f'{{"n": {i}, "text": "caf\\u00e9 {i}"}}' for i in range(57)], []])
def test_text_outputs_beside_the_records_have_writetotexts_names_and_bytes(tmp_path, lines):
    """`ad_counts` as one file, `dead_letter` as `part-SSSSS-of-NNNNN.jsonl` (an empty one when
    there is nothing), each line UTF-8 and newline-terminated, as `WriteToText` wrote them."""
    from beam_jobs.transforms.write import AD_COUNTS_TEXT, DEAD_LETTER_TEXT

    counts = [f"ad {i} é" for i in range(9)]
    with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
        inputs = {"train": p | "T" >> beam.Create([(1, 0, b"r")]), DEAD_LETTER_TEXT: p | "D" >> beam.Create(lines),
                  AD_COUNTS_TEXT: p | "A" >> beam.Create(counts)}
        _ = inputs | WriteRecords(str(tmp_path), ["train"], 1, text=(AD_COUNTS_TEXT, DEAD_LETTER_TEXT))
    assert sorted(os.listdir(tmp_path)) == ["ad_counts.jsonl", "dead_letter", "train"]  # no temp folders left
    with open(tmp_path / "ad_counts.jsonl", "rb") as f:
        assert sorted(f.read().decode("utf-8").splitlines(keepends=True)) == sorted(c + "\n" for c in counts)
    names = sorted(os.listdir(tmp_path / "dead_letter"))
    assert names == [f"part-{i:05d}-of-{len(names):05d}.jsonl" for i in range(len(names))]
    written = []
    for name in names:
        data = (tmp_path / "dead_letter" / name).read_bytes()
        assert not data or data.endswith(b"\n")
        written.extend(data.decode("utf-8").splitlines())
    assert sorted(written) == sorted(lines)
    if not lines:
        assert names == ["part-00000-of-00001.jsonl"]


def test_dead_letter_and_ad_counts_writers_alone(tmp_path):
    from beam_jobs.transforms.write import WriteAdCounts, WriteDeadLetter

    row = {"ad_id": "a1", "category": "c", "image": "i.png", "train_impressions": 2, "valid_impressions": 0,
           "eval_impressions": 1, "held_out": False, "downsampled_negatives": 0}
    with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
        _ = p | "D" >> beam.Create([("impressions", {"x": 1}, "bad_field", "why")]) | WriteDeadLetter(str(tmp_path))
        _ = p | "A" >> beam.Create([(row, {"train": 1}, 10)]) | WriteAdCounts(str(tmp_path))
    assert (tmp_path / "ad_counts.jsonl").read_text() == json.dumps(row, sort_keys=True) + "\n"
    [name] = os.listdir(tmp_path / "dead_letter")
    assert name == "part-00000-of-00001.jsonl"
    assert json.loads((tmp_path / "dead_letter" / name).read_text()) == {"table": "impressions", "row": {"x": 1},
                                                                        "reason": "why"}
