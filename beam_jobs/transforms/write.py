"""`WriteRecords`, `WriteAdCounts`, `WriteDeadLetter`: the job's outputs, counted as they are written.

Counting at the sinks (not where rows are produced) counts every row exactly once, even
when `with_exception_handling` discards the partial outputs of a failed element.

The files' bytes do not depend on how the runner cut the work into bundles (with 2
processes it cuts it differently each run): with `num_shards` N > 0 a record's shard and
its place in the shard come from a hash of its own bytes, and text lines are sorted
(docs/beam_jobs.md, determinism with 2 processes). Each shard is planned where its own
pointers are grouped: no worker holds more than one shard's (docs/beam_jobs.md, a plan
per shard).
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from typing import Iterable

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.common import FormatDeadLetter, counter, join_path
from tfvctr import layout

MAX_CUTS = 256  # record starts kept per temp file where a shard may begin (evenly spaced in records)
COPY_BYTES = 8 << 20  # read/write size when temp files are copied into the shards
# A record's pointer into its temp file: the key's 16 bytes (big-endian, so bytes order is
# key order), start, end. 32 bytes packed, where a tuple with a 128-bit int was ~150 and
# Beam's coder pickled each such int on its own.
POINTER = struct.Struct(">16sQQ")
WHOLE = -1  # the "shard" of an output keyed as a whole: `num_shards` 0, its files cut by the runner's bundles


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, _masked_crc(length), data, _masked_crc(data)))


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def record_key(record: bytes) -> int:
    """A record's place in the output: a 128-bit hash of its bytes (the same in every process
    and run, unlike `hash()`). Its shard is `key % num_shards`, and a shard holds its
    records in key order, so the files depend only on which records there are, not on
    which bundle wrote them; two records with one key are (but for a 2⁻¹²⁸ chance) the
    same bytes, whose order does not matter."""
    return int.from_bytes(_digest(record), "big")


def _digest(record: bytes) -> bytes:
    """`record_key` as 16 big-endian bytes (sorted as the keys are)."""
    return hashlib.blake2b(record, digest_size=16).digest()


class _WriteTemp(beam.DoFn):
    """`(impressions, positives, record)` → the bundle's records in one temp TFRecord file.

    Runs fused with the records' producer: the record bytes never cross a shuffle (Beam's
    `WriteToTFRecord` with a fixed `num_shards` groups every record by shard key, so the
    whole split went through the runner). At the end of a bundle it emits, keyed for the
    writer's `GroupByKey`:

    * with `num_shards` N > 0, one element per shard the bundle touched:
      `((split, shard), (path, pointers))`, the pointers saying where each of the shard's
      records is in the temp file: `POINTER`s `(key, start, end)` packed, 32 bytes a
      record (not the record);
    * with 0 (one shard per temp file): `((split, WHOLE), (path, size, cut points))`, the
      cut points fewer than 2 × `MAX_CUTS` record starts, evenly spaced in records, where a
      shard may begin.

    Counts the split's chunks, impressions and positives once per bundle.
    """

    def __init__(self, temp_dir: str, split: str, num_shards: int = 0):
        self._temp_dir, self._split = temp_dir, split  # the split goes with each temp file (one plan for all splits)
        self._num_shards = num_shards

    def setup(self) -> None:
        self._counters = [counter(f"{self._split}_{what}") for what in ("chunks", "impressions", "positives")]

    def start_bundle(self) -> None:
        self._file = None

    def process(self, element: tuple) -> None:
        impressions, positives, record = element
        if self._file is None:
            self._path = join_path(self._temp_dir, f"{uuid.uuid4().hex}.tfrecord")
            self._file = FileSystems.create(self._path)
            self._size, self._cuts, self._stride, self._counts = 0, [], 1, [0, 0, 0]
            self._pointers: dict = {}
        framed = tfrecord_frame(record)
        if self._num_shards > 0:
            digest = _digest(record)
            shard = int.from_bytes(digest, "big") % self._num_shards
            pointers = self._pointers.get(shard)
            if pointers is None:
                pointers = self._pointers[shard] = bytearray()
            pointers += POINTER.pack(digest, self._size, self._size + len(framed))
        elif self._counts[0] and self._counts[0] % self._stride == 0:
            self._cuts.append(self._size)
            if len(self._cuts) == 2 * MAX_CUTS:  # keep every other one: the starts of records 2s, 4s, ...
                self._cuts, self._stride = self._cuts[1::2], 2 * self._stride
        self._file.write(framed)
        self._size += len(framed)
        counts = self._counts
        counts[0] += 1
        counts[1] += impressions
        counts[2] += positives

    def finish_bundle(self) -> Iterable:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._file is None:
            return
        self._file.close()
        self._file = None
        for c, n in zip(self._counters, self._counts, strict=True):
            c.inc(n)
        timestamp, windows = GlobalWindow().max_timestamp(), [GlobalWindow()]
        if self._num_shards <= 0:
            yield WindowedValue(((self._split, WHOLE), (self._path, self._size, self._cuts)), timestamp, windows)
            return
        for shard, pointers in sorted(self._pointers.items()):
            yield WindowedValue(((self._split, shard), (self._path, bytes(pointers))), timestamp, windows)


def plan_shards(temp_files: list, num_shards: int) -> list[tuple[int, int, list]]:
    """Temp files `(path, size, cut points)` → `(shard, num_shards, [(path, start, end)])`.

    With `num_shards` N > 0 the files, in path order, are one byte stream cut into N
    shards of about equal size at the cut points (record starts); a shard may be empty
    when there are fewer cut points than shards (every shard file is still written). With
    0 each temp file is one shard: the runner's bundles decide, as Beam's own sinks do.
    """
    files = sorted(temp_files)
    if num_shards <= 0:
        n = max(len(files), 1)
        return [(i, n, [(path, 0, size)]) for i, (path, size, _) in enumerate(files)] or [(0, 1, [])]
    total = sum(size for _, size, _ in files)
    pieces: list[tuple[str, int, int, int]] = []  # (path, start, end, offset of start in the stream)
    offset = 0
    for path, size, cuts in files:
        bounds = [0, *cuts, size]
        for a, b in zip(bounds, bounds[1:], strict=False):
            if b > a:
                pieces.append((path, a, b, offset + a))
        offset += size
    shards: list[list] = [[] for _ in range(num_shards)]
    for path, a, b, start in pieces:
        # A piece goes to the shard its first byte falls in.
        index = min(start * num_shards // total, num_shards - 1) if total else 0
        ranges = shards[index]
        if ranges and ranges[-1][0] == path and ranges[-1][2] == a:
            ranges[-1] = (path, ranges[-1][1], b)  # contiguous in the same file: one range
        else:
            ranges.append((path, a, b))
    return [(i, num_shards, ranges) for i, ranges in enumerate(shards)]


def plan_shard(temp_files: Iterable[tuple]) -> list[tuple[str, int, int]]:
    """One shard's temp files `(path, pointers)` → its byte ranges `[(path, start, end)]`,
    the records in key order wherever they are (`_WriteTemp`, N > 0, and `_WriteTempText`).

    `pointers` are packed `POINTER`s (records) or a list of `(key, start, end)` (text
    lines, keyed by the line or `TEXT_KEYS`). Ranges that follow each other in one temp
    file are one range; no temp files, no ranges (the shard's file is still written).
    """
    entries: list = []
    for path, pointers in temp_files:
        if isinstance(pointers, bytes):
            entries.extend((key, path, start, end) for key, start, end in POINTER.iter_unpack(pointers))
        else:
            entries.extend((key, path, start, end) for key, start, end in pointers)
    entries.sort()
    ranges: list = []
    for _, path, start, end in entries:
        if ranges and ranges[-1][0] == path and ranges[-1][2] == start:
            ranges[-1] = (path, ranges[-1][1], end)
        else:
            ranges.append((path, start, end))
    return ranges


def plan_files(element: tuple, outputs: dict) -> Iterable[tuple]:
    """`((name, shard), temp files)` of the writer's `GroupByKey` → `(file path, gzip, ranges)`.

    `outputs`: name → `(prefix, suffix, num_shards, gzip, single)`. A shard's temp files are
    `(path, pointers)`, planned by `plan_shard` into one file; an output keyed `WHOLE`
    (`num_shards` 0) has `(path, size, cut points)`, planned by `plan_shards` into one
    file per temp file. `None`s are the keys' seeds, there so that every shard has a file,
    an empty one too. Files are named `{prefix}-SSSSS-of-NNNNN{suffix}` (Beam's default
    shard template) or, with `single` (and one shard), `{prefix}{suffix}`.
    """
    (name, shard), temp_files = element
    prefix, suffix, num_shards, gzip, single = outputs[name]
    temp_files = [t for t in temp_files if t is not None]
    if shard == WHOLE:
        plan = plan_shards(temp_files, 0)
    else:
        plan = [(shard, num_shards, plan_shard(temp_files))]
    for index, count, ranges in plan:
        path = f"{prefix}{suffix}" if single else f"{prefix}-{index:05d}-of-{count:05d}{suffix}"
        yield path, gzip, ranges


def shard_keys(outputs: dict) -> list[tuple[str, int]]:
    """Every `(name, shard)` key `plan_files` must see for `outputs` (as it takes them): each
    shard of an output with `num_shards` N > 0, one `WHOLE` for an output with 0."""
    return [(name, shard) for name, (_, _, n, _, _) in outputs.items() for shard in (range(n) if n > 0 else [WHOLE])]


def _dead_letter_key(line: bytes) -> tuple:
    """The dead letter's order: by table (`ads` first: a rejected ad explains its impressions'
    rejections, and the job's summary prints the first lines), then reason, then the line."""
    letter = json.loads(line)
    return (str(letter.get("table")), str(letter.get("reason")), line)


class _WriteTempText(beam.DoFn):
    """Text lines → the bundle's lines (UTF-8, `\\n` after each, as `WriteToText` writes
    them) in one temp file; emits `((name, 0), (path, [(key, start, end), ...]))` at the end
    of the bundle, the shape of `_WriteTemp`'s, so one plan copies both into place: one
    file per text output (its one shard), its lines in key order (the line itself, or
    `TEXT_KEYS[name]` of it)."""

    def __init__(self, temp_dir: str, name: str):
        self._temp_dir, self._name = temp_dir, name

    def setup(self) -> None:
        self._key = TEXT_KEYS.get(self._name)

    def start_bundle(self) -> None:
        self._file = None

    def process(self, line: str) -> None:
        if self._file is None:
            self._path = join_path(self._temp_dir, f"{uuid.uuid4().hex}.txt")
            self._file = FileSystems.create(self._path)
            self._size, self._lines = 0, []
        data = line.encode("utf-8") + b"\n"
        self._file.write(data)
        self._lines.append((data if self._key is None else self._key(data), self._size, self._size + len(data)))
        self._size += len(data)

    def finish_bundle(self) -> Iterable:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        if self._file is None:
            return
        self._file.close()
        self._file = None
        yield WindowedValue(((self._name, 0), (self._path, self._lines)), GlobalWindow().max_timestamp(),
                            [GlobalWindow()])


class _WriteShard(beam.DoFn):
    """`(file path, gzip, [(temp path, start, end)])` → the file, the byte ranges copied in
    order (gzipped here when `gzip`: `dataset.compression`). Emits the path written.

    A sorted shard has one range per record, from any temp file: the sources stay open and
    the output is written in blocks of `COPY_BYTES`."""

    def process(self, shard: tuple) -> Iterable[str]:
        path, gzip, ranges = shard
        compression = CompressionTypes.GZIP if gzip else CompressionTypes.UNCOMPRESSED
        sources: dict = {}
        try:
            with FileSystems.create(path, compression_type=compression) as out:
                pending, pending_size = [], 0
                for source, start, end in ranges:
                    f = sources.get(source)
                    if f is None:
                        f = sources[source] = FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED)
                    f.seek(start)
                    left = end - start
                    while left:
                        data = f.read(min(left, COPY_BYTES))
                        if not data:
                            raise OSError(f"{source}: ends before byte {end}")
                        pending.append(data)
                        pending_size += len(data)
                        left -= len(data)
                        if pending_size >= COPY_BYTES:
                            out.write(b"".join(pending))
                            pending, pending_size = [], 0
                if pending:
                    out.write(b"".join(pending))
        finally:
            for f in sources.values():
                f.close()
        yield path


def _delete_temp(written: list, temp_dirs: list[str]) -> int:
    """Deletes the temp files once every shard is written; returns the number of shards."""
    for temp_dir in temp_dirs:
        files = [m.path for m in FileSystems.match([join_path(temp_dir, "*")])[0].metadata_list]
        if files:
            FileSystems.delete(files)
        if FileSystems.exists(temp_dir):  # a local folder (object stores have none)
            FileSystems.delete([temp_dir])
    return len(written)


# Text outputs `WriteRecords(text=...)` writes beside the records: name → (path under OUT, suffix, single file).
AD_COUNTS_TEXT = "ad_counts"
DEAD_LETTER_TEXT = "dead_letter"
TEXT_OUTPUTS = {
    AD_COUNTS_TEXT: (layout.AD_COUNTS.removesuffix(".jsonl"), ".jsonl", True),  # OUT/ad_counts.jsonl
    DEAD_LETTER_TEXT: (f"{layout.DEAD_LETTER_DIR}/part", ".jsonl", False),  # OUT/dead_letter/part-00000-of-00001.jsonl
}
TEXT_KEYS = {DEAD_LETTER_TEXT: _dead_letter_key}  # a text output's line order, when not the lines' own


class WriteRecords(beam.PTransform):
    """`(impressions, positives, record)` → `OUT/<split>/part-SSSSS-of-NNNNN.tfrecord[.gz]`.

    Each bundle writes its records to a temp file where they are produced (`_WriteTemp`)
    and emits, for each shard `record_key % num_shards` it touched, the pointers (key,
    start, end: 32 bytes a record) of that shard's records. A `GroupByKey` by (output,
    shard) brings each shard's pointers together, and each shard, on its own, is planned
    in key order (`plan_shard`: the same bytes however the runner bundled the work) and
    copied (and gzipped) by one task; the temp files are then deleted. Only file names,
    sizes and each record's key and place cross a shuffle, never the records, and no
    worker holds more than one shard's pointers (docs/beam_jobs.md, speed, determinism,
    a plan per shard). What goes through one worker is small: the list of files written,
    for the clean-up. With `num_shards` 0 each temp file is one shard (`plan_shards` of
    the split's temp files, a few hundred cut points each, grouped in one worker): the
    runner's bundles decide the files, as Beam's own sinks do, and the bytes are not the
    same run to run with several processes. Every shard has its file, an empty one too
    (each (output, shard) key is seeded). Counts `<split>_chunks`, `_impressions` and
    `_positives` of the records written.

    `split` is one split's name (the input is its PCollection) or a list of names (the
    input is a dict split → PCollection): the splits then share one plan, one copy step
    and one clean-up, a third of the transforms and stages of one `WriteRecords` per split
    (each costs every worker a little, whatever the data: docs/beam_jobs.md).

    `text`: names of `TEXT_OUTPUTS` whose lines (str) are in the input dict under the same
    name, written the same way in the same plan (one shard each): `ad_counts` as one file
    `OUT/ad_counts.jsonl`, `dead_letter` as `OUT/dead_letter/part-00000-of-00001.jsonl`
    (empty when there is nothing; ads first, then by reason), each with its lines sorted
    (UTF-8, `\\n`-terminated, as `WriteToText` wrote them; its 12 transforms and 4 stages
    per output saved: docs/beam_jobs.md, fifth round).
    """

    def __init__(self, out: str, split, num_shards: int = 0, compression: str = "none", text: tuple = ()):
        super().__init__()
        self._out, self._split, self._num_shards, self._compression = out, split, num_shards, compression
        self._text = tuple(text)

    def expand(self, chunks):
        single = isinstance(self._split, str)
        splits = [self._split] if single else list(self._split)
        inputs = {self._split: chunks} if single else chunks
        temp_dirs = {s: join_path(self._out, f"beam-temp-records-{s}") for s in splits}
        suffix = ".tfrecord.gz" if self._compression == "gzip" else ".tfrecord"
        gzip = self._compression == "gzip"
        outputs = {s: (join_path(self._out, s, "part"), suffix, self._num_shards, gzip, False) for s in splits}
        temp = [inputs[s] | f"WriteTemp_{s}" >> beam.ParDo(_WriteTemp(temp_dirs[s], s, self._num_shards))
                for s in splits]
        for name in self._text:
            where, text_suffix, one_file = TEXT_OUTPUTS[name]
            temp_dirs[name] = join_path(self._out, f"beam-temp-text-{name}")
            # One file each, its lines sorted: the dead letter was one file per bundle with lines.
            outputs[name] = (join_path(self._out, *where.split("/")), text_suffix, 1, False, one_file)
            temp.append(inputs[name] | f"WriteTemp_{name}" >> beam.ParDo(_WriteTempText(temp_dirs[name], name)))
        # One seed per key, so that an empty shard (or split) has its file too.
        seeds = [(key, None) for key in shard_keys(outputs)]
        pipeline = next(iter(inputs.values())).pipeline
        files = ((*temp, pipeline | "Seeds" >> beam.Create(seeds, reshuffle=False))
                 | "AllTempFiles" >> beam.Flatten()
                 | "ByShard" >> beam.GroupByKey()
                 | "Plan" >> beam.FlatMap(plan_files, outputs))
        if any(n <= 0 for _, _, n, _, _ in outputs.values()):
            # With num_shards 0 one key plans all of a split's files: spread their copies. A
            # fixed number of shards is spread by the GroupByKey already.
            files = files | "SpreadShards" >> beam.Reshuffle()
        return (files
                | "WriteShard" >> beam.ParDo(_WriteShard())
                | "Written" >> beam.combiners.ToList()
                | "DeleteTemp" >> beam.Map(_delete_temp, list(temp_dirs.values())))


class _FormatAdCount(beam.DoFn):
    def process(self, element: tuple) -> Iterable[str]:
        row, chunks, image_bytes = element
        counter("ads_written").inc()
        counter("unique_image_bytes").inc(image_bytes)
        counter("image_bytes").inc(image_bytes * sum(chunks.values()))
        for split in layout.SPLITS:
            if row[f"{split}_impressions"]:
                counter(f"{split}_ads").inc()
        # Cold: in the split but never in train, so the model cannot have learnt the ad's id.
        if row["eval_impressions"] and not row["train_impressions"]:
            counter("cold_ads").inc()
        if row["valid_impressions"] and not row["train_impressions"]:
            counter("valid_cold_ads").inc()
        if row["held_out"]:
            counter("held_out_ads").inc()
        counter("downsampled_negatives").inc(row.get("downsampled_negatives", 0))
        yield json.dumps(row, sort_keys=True)


class FormatAdCounts(beam.PTransform):
    """Per-ad rows → the lines of `ad_counts.jsonl`, counted (`ads_written`, `<split>_ads`, ...)."""

    def expand(self, rows):
        return rows | "Format" >> beam.ParDo(_FormatAdCount())


class WriteAdCounts(beam.PTransform):
    """Per-ad rows → `OUT/ad_counts.jsonl` (one file: one short line per ad). The preprocess job
    writes it inside its `WriteRecords(text=...)` instead (one plan for every output)."""

    def __init__(self, out: str):
        super().__init__()
        self._out = out

    def expand(self, rows):
        lines = rows | "Format" >> FormatAdCounts()
        return {AD_COUNTS_TEXT: lines} | "Write" >> WriteRecords(self._out, [], text=(AD_COUNTS_TEXT,))


class WriteDeadLetter(beam.PTransform):
    """Dead-letter tuples → `OUT/dead_letter/part-*.jsonl` of `{"table", "row", "reason"}`."""

    def __init__(self, out: str):
        super().__init__()
        self._out = out

    def expand(self, dead):
        lines = dead | "Format" >> beam.ParDo(FormatDeadLetter())
        return {DEAD_LETTER_TEXT: lines} | "Write" >> WriteRecords(self._out, [], text=(DEAD_LETTER_TEXT,))
