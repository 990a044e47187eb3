"""`WriteRecords`, `WriteAdCounts`, `WriteDeadLetter`: the job's outputs, counted as they are written.

Counting at the sinks (not where rows are produced) counts every row exactly once, even
when `with_exception_handling` discards the partial outputs of a failed element.
"""

from __future__ import annotations

import json
from typing import Iterable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from beam_jobs.common import FormatDeadLetter, counter, join_path
from tfvctr import layout


class _CountRecord(beam.DoFn):
    def __init__(self, split: str):
        self._split = split

    def process(self, element: tuple) -> Iterable[bytes]:
        impressions, positives, record = element
        counter(f"{self._split}_chunks").inc()
        counter(f"{self._split}_impressions").inc(impressions)
        counter(f"{self._split}_positives").inc(positives)
        yield record


class WriteRecords(beam.PTransform):
    """`(impressions, positives, record)` → `OUT/<split>/part-SSSSS-of-NNNNN.tfrecord[.gz]`."""

    def __init__(self, out: str, split: str, num_shards: int = 0, compression: str = "none"):
        super().__init__()
        self._out, self._split, self._num_shards, self._compression = out, split, num_shards, compression

    def expand(self, chunks):
        gzip = self._compression == "gzip"
        return (chunks
                | "Count" >> beam.ParDo(_CountRecord(self._split))
                | "Write" >> beam.io.WriteToTFRecord(
                    join_path(self._out, self._split, "part"),
                    file_name_suffix=".tfrecord.gz" if gzip else ".tfrecord",
                    num_shards=self._num_shards,
                    compression_type=CompressionTypes.GZIP if gzip else CompressionTypes.UNCOMPRESSED))


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


class WriteAdCounts(beam.PTransform):
    """Per-ad rows → `OUT/ad_counts.jsonl` (one file: one short line per ad)."""

    def __init__(self, out: str):
        super().__init__()
        self._out = out

    def expand(self, rows):
        return (rows | "Format" >> beam.ParDo(_FormatAdCount())
                | "Write" >> beam.io.WriteToText(join_path(self._out, layout.AD_COUNTS.removesuffix(".jsonl")), file_name_suffix=".jsonl",
                                                 shard_name_template=""))


class WriteDeadLetter(beam.PTransform):
    """Dead-letter tuples → `OUT/dead_letter/part-*.jsonl` of `{"table", "row", "reason"}`."""

    def __init__(self, out: str):
        super().__init__()
        self._out = out

    def expand(self, dead):
        return (dead | "Format" >> beam.ParDo(FormatDeadLetter())
                | "Write" >> beam.io.WriteToText(join_path(self._out, layout.DEAD_LETTER_DIR, "part"), file_name_suffix=".jsonl"))
