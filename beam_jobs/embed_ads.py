"""The visual-embedding table: the trained visual tower over every ad (docs/formats.md §4).

    python -m beam_jobs.embed_ads --model M --data D --out T [--ads ADS] [--coverage 0.9] [--dtype float16]

(or `tfvctr embed`). Serving never runs the CNN: CSCNN §3.4.2 precomputes x_v for the
ads that matter offline. **Coverage control**: the ads are ranked by train impressions
and the most-impressed kept until `coverage` of all train impressions is covered
(`--coverage 1` keeps every ad, zero-impression ones included). The cut is a threshold
on the impression count, found from a histogram of counts (a small global aggregate,
never a sort of the catalogue); ads tied at the threshold are all kept, so the achieved
coverage is >= the requested one and does not depend on the order of the input.

Inputs: `D/ad_counts.jsonl` (from `build_tfrecords`; it holds each valid ad's category,
resolved image URI and impression counts) and `D/vocab/category.txt`. With `--ads`, the
ads come from that table instead (e.g. a new catalogue with cold ads), their impression
counts joined from `ad_counts.jsonl` on ad_id (0 when absent). Images are prepared by the
same function as in `build_tfrecords` (decode, resize, re-encode) and decoded by the
trainer's decoder, so the tower sees the pixels it was trained on.

    ReadAds ─ CoverageThreshold ─ KeepCovered ─ PrepareImages ─ BatchElements ─ Embed ─ WriteShards
                                                                                  └──── CategoryMeans
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
import zlib
from typing import Any, Iterable, Optional

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from beam_jobs import images
from beam_jobs.common import (
    counter,
    dead_letter,
    join_path,
    pipeline_options,
    prepare_output,
    read_counters,
    read_text_file,
    write_text_file,
)
from beam_jobs.flags import TOWER_FILE, add_embed_arguments, add_runner_help
from beam_jobs.transforms.write import WriteDeadLetter
from tfvctr.config import Config, DatasetConfig

DEAD = "dead"


# ----------------------------------------------------------------------------- coverage


def coverage_threshold(histogram: dict[int, int], coverage: float) -> int:
    """The smallest impression count an ad needs to be kept.

    `histogram` maps an impression count to the number of ads with it. Ads are taken from
    the most impressed down; the threshold is the count at which `coverage` of all
    impressions is first reached (all ads with that count are kept). `coverage >= 1`, or
    no impressions at all, keeps every ad (threshold 0).
    """
    total = sum(count * ads for count, ads in histogram.items())
    if coverage >= 1.0 or total == 0:
        return 0
    covered = 0
    for count in sorted(histogram, reverse=True):
        covered += count * histogram[count]
        if covered >= coverage * total:
            return count
    return 0


class CoverageThreshold(beam.PTransform):
    """`(ad_id, category, image, impressions)` → a singleton: the threshold of `coverage_threshold`."""

    def __init__(self, coverage: float):
        super().__init__()
        self._coverage = coverage

    def expand(self, ads):
        return (ads
                | "Count" >> beam.Map(lambda ad: (ad[3], 1))
                | "Histogram" >> beam.CombinePerKey(sum)
                | "All" >> beam.combiners.ToDict()
                | "Threshold" >> beam.Map(coverage_threshold, self._coverage))


class _Keep(beam.DoFn):
    def process(self, ad: tuple, threshold: int) -> Iterable[tuple]:
        counter("ads_input").inc()
        counter("total_impressions").inc(ad[3])
        if ad[3] >= threshold:
            yield ad
        else:
            counter("ads_below_coverage").inc()


# ----------------------------------------------------------------------------- reading


def _from_counts(line: str) -> tuple:
    row = json.loads(line)
    return (str(row["ad_id"]), str(row["category"]), str(row["image"]), int(row["train_impressions"]))


class _AdFromTable(beam.DoFn):
    def __init__(self, ds: DatasetConfig, table_path: str):
        self._ds, self._table_path = ds, table_path

    def process(self, row: dict) -> Iterable:
        from tfvctr.io import tables

        try:
            typed = tables.coerce_row(row, "ads", self._ds)
        except ValueError as e:
            yield pvalue.TaggedOutput(DEAD, dead_letter("ads", row, "bad_field", f"ads: {e}"))
            return
        uri = tables.resolve_image_path(typed["image"], self._table_path)
        yield (str(typed["ad_id"]), (str(typed["category"]), uri))


def _join_counts(element: tuple) -> Iterable:
    ad_id, groups = element
    counts = list(groups["counts"])
    impressions = counts[0][3] if counts else 0
    for category, uri in groups["ads"]:
        yield (ad_id, category, uri, impressions)


class ReadAds(beam.PTransform):
    """`(ad_id, category, image_uri, train_impressions)` from ad_counts.jsonl, or from an ads table
    joined with it (CoGroupByKey on ad_id). Outputs `"ads"` and `"dead"`."""

    def __init__(self, counts_path: str, ds: DatasetConfig, ads_path: Optional[str] = None):
        super().__init__()
        self._counts_path, self._ds, self._ads_path = counts_path, ds, ads_path

    def expand(self, pbegin):
        counts = (pbegin | "ReadCounts" >> beam.io.ReadFromText(self._counts_path)
                  | "ParseCounts" >> beam.Map(_from_counts))
        if self._ads_path is None:
            return {"ads": counts, DEAD: pbegin.pipeline | "NoDead" >> beam.Create([])}
        from beam_jobs.transforms.read import ReadTable

        table = pbegin | "ReadTable" >> ReadTable(self._ads_path, "ads")
        parsed = table["rows"] | "Coerce" >> beam.ParDo(_AdFromTable(self._ds, self._ads_path)).with_outputs(
            DEAD, main="ads")
        joined = ({"ads": parsed.ads, "counts": counts | "Key" >> beam.Map(lambda c: (c[0], c))}
                  | "JoinCounts" >> beam.CoGroupByKey() | "Flatten" >> beam.FlatMap(_join_counts))
        return {"ads": joined, DEAD: (table[DEAD], parsed[DEAD]) | "Dead" >> beam.Flatten()}


# ----------------------------------------------------------------------------- embedding


class _PrepareImage(beam.DoFn):
    """Exactly `build_tfrecords`' image preparation: the encoded bytes the records would hold."""

    def __init__(self, ds: DatasetConfig):
        self._ds = ds

    def process(self, ad: tuple) -> Iterable:
        ad_id, category, uri, impressions = ad
        try:
            encoded = images.load_image(uri, self._ds.image_size, self._ds.image_format, self._ds.max_image_pixels)
        except images.ImageError as e:
            row = {"ad_id": ad_id, "category": category, "image": uri}
            yield pvalue.TaggedOutput(DEAD, dead_letter("ads", row, e.code, f"ad {ad_id}: {e}"))
            return
        yield (ad_id, category, impressions, encoded)


class EmbedBatch(beam.DoFn):
    """Runs the visual tower on batches of prepared ads; the model loads once per worker (`setup`)."""

    def __init__(self, model_path: str, category_vocab_path: str):
        self._model_path = model_path
        self._vocab_path = category_vocab_path
        self._model = None
        self._category_ids: dict[str, int] = {}

    def setup(self) -> None:
        import keras
        from apache_beam.io.filesystems import FileSystems

        import tfvctr.layers  # noqa: F401  (registers the custom layers the model file names)

        # Keras reads .keras files from local paths only: copy a remote model down once.
        path = self._model_path
        if "://" in path:
            import tempfile

            local = os.path.join(tempfile.mkdtemp(), TOWER_FILE)
            with FileSystems.open(path) as src, open(local, "wb") as dst:
                dst.write(src.read())
            path = local
        self._model = keras.saving.load_model(path, compile=False)
        from tfvctr.data import decode_image

        self._decode = decode_image
        self._size = int(self._model.input["image"].shape[1])
        lines = read_text_file(self._vocab_path).splitlines()
        # docs/formats.md §2 "Indexing": 0 = unknown category, 1 + line number otherwise.
        self._category_ids = {value: i + 1 for i, value in enumerate(lines)}

    def process(self, batch: list[tuple]) -> Iterable[tuple]:
        # The trainer's own decoder (tf.io.decode_image), so the tower sees the very pixels
        # it was trained on (JPEG decoders may differ by a level here and there).
        pixels = np.stack([self._decode(ad[3], self._size).numpy() for ad in batch])
        categories = np.array([self._category_ids.get(ad[1], 0) for ad in batch], dtype=np.int32)
        vectors = np.asarray(self._model({"image": pixels, "category": categories}, training=False), dtype=np.float32)
        counter("embedded_batches").inc()
        for ad, vector in zip(batch, vectors, strict=True):
            yield (ad[0], ad[1], ad[2], vector)


# ----------------------------------------------------------------------------- writing


def shard_of(ad_id: str, num_shards: int) -> int:
    """A stable shard for an ad (crc32, not Python's salted `hash`)."""
    return zlib.crc32(ad_id.encode()) % num_shards


def shard_name(index: int) -> str:
    return f"part-{index:05d}.npz"


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _WriteShard(beam.DoFn):
    def __init__(self, out: str, dtype: str):
        self._out, self._dtype = out, dtype

    def process(self, element: tuple) -> Iterable[tuple]:
        shard, rows = element
        rows = sorted(rows, key=lambda r: r[0])
        data = _npz_bytes(
            ad_id=np.array([r[0] for r in rows], dtype=str),
            category=np.array([r[1] for r in rows], dtype=str),
            impressions=np.array([r[2] for r in rows], dtype=np.int64),
            vectors=np.stack([r[3] for r in rows]).astype(self._dtype),
        )
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(join_path(self._out, shard_name(shard))) as f:
            f.write(data)
        counter("rows").inc(len(rows))
        counter("covered_impressions").inc(sum(r[2] for r in rows))
        counter("table_bytes").inc(len(data))
        yield shard_name(shard)


class _MeanFn(beam.CombineFn):
    """Mean vector in float64 (sums of many float32 vectors lose digits)."""

    def create_accumulator(self):
        return (None, 0)

    def add_input(self, acc, vector):
        total, n = acc
        v = np.asarray(vector, dtype=np.float64)
        return (v if total is None else total + v, n + 1)

    def merge_accumulators(self, accs):
        total, n = None, 0
        for t, m in accs:
            if t is not None:
                total = t if total is None else total + t
            n += m
        return (total, n)

    def extract_output(self, acc):
        total, n = acc
        return total / n


class WriteTable(beam.PTransform):
    """`(ad_id, category, impressions, vector)` → `part-SSSSS.npz` shards + `category_means.npz`.

    Shards hold about `rows_per_shard` rows each, ads assigned by a stable hash of ad_id
    and sorted by ad_id inside a shard, so the table is the same for the same inputs.
    Returns the written shard names.
    """

    def __init__(self, out: str, dtype: str, rows_per_shard: int):
        super().__init__()
        self._out, self._dtype, self._rows_per_shard = out, dtype, rows_per_shard

    def expand(self, rows):
        per_shard = self._rows_per_shard
        num_shards = (rows | "CountRows" >> beam.combiners.Count.Globally()
                      | "NumShards" >> beam.Map(lambda n: max(1, math.ceil(n / per_shard))))
        shards = (rows
                  | "Shard" >> beam.Map(lambda r, n: (shard_of(r[0], n), r), pvalue.AsSingleton(num_shards))
                  | "GroupShard" >> beam.GroupByKey()
                  | "WriteShard" >> beam.ParDo(_WriteShard(self._out, self._dtype)))
        _ = (rows
             | "ByCategory" >> beam.Map(lambda r: (r[1], r[3]))
             | "Mean" >> beam.CombinePerKey(_MeanFn())
             | "AllMeans" >> beam.combiners.ToList()
             | "WriteMeans" >> beam.Map(self._write_means))
        return shards

    def _write_means(self, means: list[tuple]) -> str:
        means = sorted(means, key=lambda m: m[0])
        dim = len(means[0][1]) if means else 0
        data = _npz_bytes(category=np.array([m[0] for m in means], dtype=str),
                          vectors=np.array([m[1] for m in means], dtype=np.float64).reshape(len(means), dim)
                          .astype(self._dtype))
        path = join_path(self._out, "category_means.npz")
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(data)
        return path


# ----------------------------------------------------------------------------- the job


def build_pipeline(p: beam.Pipeline, config: Config, model_dir: str, data: str, out: str, coverage: float,
                   dtype: str, batch_size: int, rows_per_shard: int, ads_path: Optional[str] = None) -> None:
    ds = config.dataset
    read = p | "ReadAds" >> ReadAds(join_path(data, "ad_counts.jsonl"), ds, ads_path)
    threshold = read["ads"] | "CoverageThreshold" >> CoverageThreshold(coverage)
    kept = read["ads"] | "KeepCovered" >> beam.ParDo(_Keep(), pvalue.AsSingleton(threshold))
    prepared = kept | "PrepareImages" >> beam.ParDo(_PrepareImage(ds)).with_outputs(DEAD, main="ads")
    vectors = (prepared.ads
               | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
               | "Embed" >> beam.ParDo(EmbedBatch(join_path(model_dir, TOWER_FILE),
                                                  join_path(data, "vocab", "category.txt"))))
    _ = vectors | "WriteTable" >> WriteTable(out, dtype, rows_per_shard)
    _ = (read[DEAD], prepared[DEAD]) | "AllDead" >> beam.Flatten() | "WriteDeadLetter" >> WriteDeadLetter(out)


def _load_config(args: argparse.Namespace) -> Config:
    from tfvctr.config import load_config
    from tfvctr.errors import DataError
    from tfvctr.io import fs

    path = args.config or fs.join(args.model, "config.yaml")
    if args.config is None and not fs.exists(path):
        raise DataError(f"{path}: not found; pass --config (the config the model was trained with)")
    return load_config(path)


def run(argv: Optional[list[str]] = None, verbose: bool = True) -> dict[str, Any]:
    """Runs the job; returns the table's index (docs/formats.md §4)."""
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.embed_ads", description=__doc__.splitlines()[0])
    add_embed_arguments(parser)
    add_runner_help(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_args(args, beam_args, verbose)


def run_args(args: argparse.Namespace, beam_args: list[str], verbose: bool = True) -> dict[str, Any]:
    from tfvctr.errors import ConfigError, DataError
    from tfvctr.io import fs

    config = _load_config(args)
    coverage = config.embed.coverage if args.coverage is None else args.coverage
    if not 0.0 < coverage <= 1.0:
        raise ConfigError(f"--coverage: expected a value in (0, 1], received {coverage}")
    dtype = args.dtype or config.embed.dtype
    batch_size = args.batch_size or config.embed.batch_size
    for path in (fs.join(args.model, TOWER_FILE), fs.join(args.data, "ad_counts.jsonl"),
                 fs.join(args.data, "vocab", "category.txt")):
        if not fs.exists(path):
            raise DataError(f"{path}: not found")
    prepare_output(args.out, args.overwrite)
    ads_path = args.ads if args.ads is None or fs.is_remote(args.ads) else os.path.abspath(args.ads)
    options = pipeline_options(beam_args)
    if verbose:
        from beam_jobs.build_tfrecords import _runner

        print(f"embed: {fs.join(args.model, TOWER_FILE)} over {ads_path or fs.join(args.data, 'ad_counts.jsonl')} -> "
              f"{args.out} on {_runner(options)} ...", flush=True)
    start = time.time()
    p = beam.Pipeline(options=options)
    build_pipeline(p, config, args.model, args.data, args.out, coverage, dtype, batch_size, args.rows_per_shard,
                   ads_path)
    result = p.run()
    result.wait_until_finish()
    c = read_counters(result)
    shards = sorted(os.path.basename(path) for path in fs.glob(fs.join(args.out, "part-*.npz")))
    dim = 0
    if shards:
        with fs.open(fs.join(args.out, shards[0]), "rb") as f:
            dim = int(np.load(io.BytesIO(f.read()))["vectors"].shape[1])
    total = c.get("total_impressions", 0)
    index = {
        "dim": dim, "dtype": dtype, "rows": c.get("rows", 0), "shards": shards,
        "coverage": c.get("covered_impressions", 0) / total if total else 1.0,
        "requested_coverage": coverage,
        "covered_impressions": c.get("covered_impressions", 0), "total_impressions": total,
        "size_bytes": c.get("table_bytes", 0),
        "ads_input": c.get("ads_input", 0), "ads_below_coverage": c.get("ads_below_coverage", 0),
        "dead_letter_ads": c.get("dead_letter_ads", 0),
        "model_dir": args.model,
    }
    write_text_file(join_path(args.out, "index.json"), json.dumps(index, indent=1) + "\n")
    if verbose:
        seconds = time.time() - start
        print(f"embed: {args.out} in {seconds:.1f} s\n"
              f"  {index['rows']} ads x {dim} ({dtype}) in {len(shards)} shards, {index['size_bytes'] / 1e6:.2f} MB\n"
              f"  coverage {index['coverage']:.4f} of {total} train impressions (requested {coverage}); "
              f"{index['ads_below_coverage']} ads below the cut, {index['dead_letter_ads']} in the dead letter",
              flush=True)
    return index


if __name__ == "__main__":
    try:
        run()
    except Exception as e:
        from tfvctr.errors import TfvctrError

        if not isinstance(e, TfvctrError):
            raise
        print(f"embed_ads: error: {e}", file=sys.stderr)
        sys.exit(2)
