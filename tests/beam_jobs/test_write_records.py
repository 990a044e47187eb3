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


def _bundles(tmp_path, records: list[bytes], bundles: list[list[int]], num_shards: int) -> list:
    """`_WriteTemp` run by hand on the given bundles (lists of indices): every element it emits."""
    from beam_jobs.transforms.write import _WriteTemp

    emitted = []
    for bundle in bundles:
        fn = _WriteTemp(str(tmp_path / "temp"), "train", num_shards)
        fn.setup()
        fn.start_bundle()
        for i in bundle:
            fn.process((1, 0, records[i]))
        emitted += [wv.value for wv in fn.finish_bundle()]
    return emitted


def test_each_bundle_emits_one_element_per_shard_it_touched_with_only_that_shards_pointers(tmp_path):
    """What the plan's `GroupByKey` receives: no element carries more than one shard's pointers
    (the old writer emitted every shard's in one element, gathered in one list for one plan)."""
    from beam_jobs.transforms.write import POINTER, record_key

    records = [f"record {i} ".encode() * (i % 5 + 1) for i in range(60)]
    emitted = _bundles(tmp_path, records, [list(range(0, 25)), list(range(25, 60))], 4)
    seen = {}
    for element in emitted:
        (split, shard), (path, pointers) = element
        assert split == "train" and 0 <= shard < 4 and isinstance(pointers, bytes)
        data = open(path, "rb").read()
        for digest, start, end in POINTER.iter_unpack(pointers):
            record = data[start + 12:end - 4]  # the TFRecord frame's payload
            assert record_key(record) == int.from_bytes(digest, "big")
            assert record_key(record) % 4 == shard  # this element's shard only
            seen[record] = seen.get(record, 0) + 1
    assert seen == {r: 1 for r in records}
    # Per bundle (temp file), one element per shard: 2 bundles x 4 shards.
    keys = sorted((key, path) for key, (path, _) in emitted)
    assert len(set(keys)) == len(keys) == 8
    assert sorted(key for key, _ in keys) == sorted([("train", s) for s in range(4)] * 2)


def _upstream(node) -> list:
    """Every applied transform (leaves and their enclosing composites) upstream of `node`."""
    seen, stack, out = set(), [node], []
    while stack:
        leaf = stack.pop()
        if id(leaf) in seen:
            continue
        seen.add(id(leaf))
        parent = leaf
        while parent is not None:
            out.append(parent)
            parent = parent.parent
        stack.extend(pcoll.producer for pcoll in leaf.inputs if pcoll.producer is not None)
    return out


def _writer_graph(num_shards: int) -> dict:
    from apache_beam.pipeline import PipelineVisitor

    from beam_jobs.transforms.write import AD_COUNTS_TEXT

    nodes = {}

    class Collect(PipelineVisitor):
        def visit_transform(self, node):
            nodes[node.full_label] = node

        def enter_composite_transform(self, node):
            nodes[node.full_label] = node

    p = beam.Pipeline(runner="DirectRunner")
    inputs = {"train": p | "T" >> beam.Create([(1, 0, b"r")]), AD_COUNTS_TEXT: p | "A" >> beam.Create(["a"])}
    _ = inputs | "Write" >> WriteRecords("/nonexistent", ["train"], num_shards, text=(AD_COUNTS_TEXT,))
    p.visit(Collect())
    return nodes


@pytest.mark.parametrize("num_shards", [4, 0])
def test_the_plan_is_fed_by_a_group_by_shard_and_no_global_list_precedes_it(num_shards):
    """The pointers meet per (output, shard) in a `GroupByKey`, never in one `ToList` (the old
    writer's `TempFiles`: every record's pointer in one worker, gigabytes at 10⁹ impressions)."""
    nodes = _writer_graph(num_shards)
    plan = nodes["Write/Plan"]
    [grouped] = plan.inputs
    assert isinstance(grouped.producer.transform, beam.GroupByKey)
    assert grouped.producer.full_label == "Write/ByShard"
    upstream = _upstream(plan)
    assert not [n.full_label for n in upstream if isinstance(n.transform, beam.CombineGlobally)]
    # The one global list left is of the files written (for the clean-up), after the copies.
    lists = [label for label, n in nodes.items() if isinstance(n.transform, beam.CombineGlobally)]
    assert [label.split("/")[1] for label in lists] == ["Written"]  # ToList's CombineGlobally, inside "Written"
    assert ("Write/SpreadShards" in nodes) == (num_shards == 0)  # a fixed N is spread by the GroupByKey


def test_plan_shard_orders_one_shards_records_by_key_across_temp_files_and_merges_neighbours():
    from beam_jobs.transforms.write import POINTER, plan_shard

    def packed(*pointers):
        return b"".join(POINTER.pack(key.to_bytes(16, "big"), start, end) for key, start, end in pointers)

    # Keys above 2⁶⁴ too: the order is the 128-bit key's, whichever temp file holds the record.
    a = ("a", packed((2**100, 0, 10), (5, 10, 30), (6, 30, 35)))
    b = ("b", packed((7, 0, 4), (2**64, 4, 9), (1, 9, 12)))
    ranges = plan_shard([b, a])
    assert ranges == [("b", 9, 12), ("a", 10, 35), ("b", 0, 9), ("a", 0, 10)]
    assert plan_shard([a, b]) == ranges  # the grouping's order does not matter
    assert plan_shard([]) == []  # an empty shard: no ranges, its file still written
    text = [("t", [(b"b\n", 0, 2), (b"a\n", 2, 4)]), ("u", [(b"a\n", 0, 2)])]  # text lines, keyed by themselves
    assert plan_shard(text) == [("t", 2, 4), ("u", 0, 2), ("t", 0, 2)]


def test_plan_files_names_every_shard_an_empty_one_too_and_plans_num_shards_0_by_temp_file():
    from beam_jobs.transforms.write import POINTER, WHOLE, plan_files, shard_keys

    outputs = {"train": ("o/train/part", ".tfrecord", 3, False, False),
               "eval": ("o/eval/part", ".tfrecord.gz", 0, True, False),
               "ad_counts": ("o/ad_counts", ".jsonl", 1, False, True)}
    assert shard_keys(outputs) == [("train", 0), ("train", 1), ("train", 2), ("eval", WHOLE), ("ad_counts", 0)]
    pointers = POINTER.pack(bytes(16), 0, 8)
    assert list(plan_files((("train", 1), [None, ("t1", pointers)]), outputs)) == [
        ("o/train/part-00001-of-00003.tfrecord", False, [("t1", 0, 8)])]
    assert list(plan_files((("train", 2), [None]), outputs)) == [("o/train/part-00002-of-00003.tfrecord", False, [])]
    assert list(plan_files((("eval", WHOLE), [None, ("y", 5, []), ("x", 7, [3])]), outputs)) == [
        ("o/eval/part-00000-of-00002.tfrecord.gz", True, [("x", 0, 7)]),
        ("o/eval/part-00001-of-00002.tfrecord.gz", True, [("y", 0, 5)])]
    assert list(plan_files((("eval", WHOLE), [None]), outputs)) == [("o/eval/part-00000-of-00001.tfrecord.gz", True, [])]
    assert list(plan_files((("ad_counts", 0), [None, ("z", [(b"x\n", 0, 2)])]), outputs)) == [
        ("o/ad_counts.jsonl", False, [("z", 0, 2)])]


def test_a_split_with_fewer_records_than_shards_still_writes_every_shard(tmp_path):
    records = [b"only one", b"and two"]
    with BeamTestPipeline(argv=["--runner", "DirectRunner"]) as p:
        _ = p | beam.Create([(1, 0, r) for r in records]) | WriteRecords(str(tmp_path), "train", 5)
    paths = sorted(glob.glob(str(tmp_path / "train" / "*")))
    assert [os.path.basename(p) for p in paths] == [f"part-{i:05d}-of-00005.tfrecord" for i in range(5)]
    assert sorted(r for path in paths for r in _read(path)) == sorted(records)
    assert sum(1 for path in paths if not _read(path)) >= 3  # empty shards written, empty
