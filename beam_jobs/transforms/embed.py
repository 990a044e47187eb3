"""The embedding job's composites (beam_jobs/embed_ads.py): catalog ads → coverage cut → tower → table.

Record layouts (NamedTuples, pickled when they cross a stage boundary; at `coverage: 1` an
`AdToEmbed` crosses none, from the join to the tower it stays in one fused stage):

    AdToEmbed      (ad_id, category, image_bytes, impressions, new)
    EmbeddedBatch  (ad_ids, categories, impressions [n], vectors [n, dim]): one tower batch

The tower's output stays one element per batch up to the files: the table's shuffle and
the category means then cost one Beam element per batch, not per ad. With a tower this
cheap (0.2 ms an image for the demo's), the per-ad elements that crossed shuffles cost, together,
about as much as the tower (docs/beam_jobs.md, fourth round).

`impressions` is the ad's count in the most recent split of the data (`ad_counts.jsonl`),
`new` says the ad is not in the data at all (newer than it): such ads are always kept.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zlib
from typing import Any, Iterable, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from beam_jobs import records
from beam_jobs.common import counter, dead_letter, join_path, read_text_file
from tfvctr import layout
from tfvctr.errors import readable_failure

DEAD = "dead"


class AdToEmbed(NamedTuple):
    """A valid catalog ad, its image prepared exactly as in docs/formats.md §2."""

    ad_id: str
    category: str
    image_bytes: bytes
    impressions: int  # in the most recent split of the data (0: none, or a new ad)
    new: bool  # not in ad_counts.jsonl: newer than the data


class EmbeddedBatch(NamedTuple):
    """Rows of the table, as the tower produced them (one batch, or the part of one in a shard)."""

    ad_ids: tuple  # str each
    categories: tuple  # str each
    impressions: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, dim]

    def take(self, index: list[int]) -> "EmbeddedBatch":
        return EmbeddedBatch(tuple(self.ad_ids[i] for i in index), tuple(self.categories[i] for i in index),
                             self.impressions[index], self.vectors[index])


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
    """`AdToEmbed` of the data (not new) → a singleton: the threshold of `coverage_threshold`.

    A histogram of counts (a small global aggregate), never a sort of the catalogue.
    """

    def __init__(self, coverage: float):
        super().__init__()
        self._coverage = coverage

    def expand(self, ads):
        return (ads
                | "Count" >> beam.Map(lambda ad: (ad.impressions, 1))
                | "Histogram" >> beam.CombinePerKey(sum)
                | "All" >> beam.combiners.ToDict()
                | "Threshold" >> beam.Map(coverage_threshold, self._coverage))


class _Keep(beam.DoFn):
    # Counters add up per bundle and are reported once: a Beam counter update costs more
    # than the comparison it counts.
    def start_bundle(self) -> None:
        self._counts = {"total_impressions": 0, "new_ads": 0, "ads_below_coverage": 0}

    def process(self, ad: AdToEmbed, threshold: int) -> Iterable[AdToEmbed]:
        counts = self._counts
        counts["total_impressions"] += ad.impressions
        if ad.new:
            counts["new_ads"] += 1
            yield ad
        elif ad.impressions >= threshold:
            yield ad
        else:
            counts["ads_below_coverage"] += 1

    def finish_bundle(self) -> None:
        for name, value in self._counts.items():
            if value:
                counter(name).inc(value)


class KeepCovered(beam.PTransform):
    """Keeps the ads carrying `coverage` of the recent impressions, plus every new ad."""

    def __init__(self, coverage: float):
        super().__init__()
        self._coverage = coverage

    def expand(self, ads):
        if self._coverage >= 1.0:
            # Every ad is kept (`coverage_threshold` is 0): no histogram, and no side input,
            # which would make the runner hold every ad (its image included) until it is known.
            return ads | "Keep" >> beam.ParDo(_Keep(), 0)
        threshold = (ads | "Known" >> beam.Filter(lambda ad: not ad.new)
                     | "Threshold" >> CoverageThreshold(self._coverage))
        return ads | "Keep" >> beam.ParDo(_Keep(), pvalue.AsSingleton(threshold))


# ----------------------------------------------------------------------------- catalog + counts


def parse_ad_count(line: str, field: str) -> tuple[str, int]:
    """An `ad_counts.jsonl` line → `(ad_id, row[field])`."""
    row = json.loads(line)
    return str(row["ad_id"]), int(row.get(field) or 0)


class _ToEmbed(beam.DoFn):
    """`(ad_id, {"ads": [ad tuple], "counts": [n]})` → one `AdToEmbed`; a duplicated ad_id → dead letter."""

    def __init__(self, ds: Any):
        self._ds = ds

    def process(self, element: tuple) -> Iterable:
        # (No bare `return` among the yields: Beam warns about mixing them, beam#22969.)
        ad_id, groups = element
        ads, counts = list(groups["ads"]), list(groups["counts"])
        if len(ads) > 1:
            reason = f"ad_id {ad_id!r} appears {len(ads)} times in the ads table"
            for ad in ads:
                yield pvalue.TaggedOutput(DEAD, dead_letter("ads", records.ad_to_row(ad, self._ds), "duplicate_ad",
                                                            reason))
        elif ads:  # none: in the data but no longer in the catalog, nothing to embed
            ad = ads[0]
            yield AdToEmbed(ad_id, ad[records.CATEGORY], ad[records.IMAGE_BYTES], counts[0] if counts else 0,
                            new=not counts)


class JoinRecentCounts(beam.PTransform):
    """Validated catalog ads `(ad_id, ad tuple)` + `ad_counts.jsonl` → `AdToEmbed` (and `"dead"`).

    `field` is the count column of the most recent split (`eval_impressions` or
    `train_impressions`, see `embed_ads.recent_field`).
    """

    def __init__(self, counts_path: str, field: str, ds: Any):
        super().__init__()
        self._counts_path, self._field, self._ds = counts_path, field, ds

    def expand(self, ads):
        field = self._field
        counts = (ads.pipeline | "ReadCounts" >> beam.io.ReadFromText(self._counts_path)
                  | "ParseCounts" >> beam.Map(parse_ad_count, field))
        joined = ({"ads": ads, "counts": counts} | "Join" >> beam.CoGroupByKey()
                  | "ToEmbed" >> beam.ParDo(_ToEmbed(self._ds)).with_outputs(DEAD, main="ads"))
        return {"ads": joined.ads, DEAD: joined[DEAD]}


class _FromAdCounts(beam.DoFn):
    """An `ad_counts.jsonl` line → `AdToEmbed` with its image prepared (`--data`-only mode), or a dead letter."""

    def __init__(self, field: str, ds: Any):
        self._field, self._ds = field, ds

    def process(self, line: str) -> Iterable:
        from beam_jobs import images

        counter("input_ads").inc()
        row = json.loads(line)
        ad_id = str(row["ad_id"])
        try:
            encoded = images.load_image(row["image"], self._ds.image_size, self._ds.image_format,
                                        self._ds.max_image_pixels)
        except images.ImageError as e:
            yield pvalue.TaggedOutput(DEAD, dead_letter("ads", row, e.code, f"ad {ad_id}: {e}"))
        else:
            yield AdToEmbed(ad_id, str(row["category"]), encoded, int(row.get(self._field) or 0), new=False)


class ReadDataAds(beam.PTransform):
    """Without a catalog (`--data` only): the ads of `ad_counts.jsonl` (every ad preprocess wrote), as
    `AdToEmbed` with their images prepared again from the URIs it records; `"ads"` and `"dead"`."""

    def __init__(self, counts_path: str, field: str, ds: Any):
        super().__init__()
        self._counts_path, self._field, self._ds = counts_path, field, ds

    def expand(self, pbegin):
        out = (pbegin | "ReadCounts" >> beam.io.ReadFromText(self._counts_path)
               | "Prepare" >> beam.ParDo(_FromAdCounts(self._field, self._ds)).with_outputs(DEAD, main="ads"))
        return {"ads": out.ads, DEAD: out[DEAD]}


# ----------------------------------------------------------------------------- embedding


def decode_batch(encoded: Any, size: int, image_format: str) -> Any:
    """Prepared images (docs/formats.md §2, all `size`² in `image_format`) → float32 [n, size, size, 3].

    The very pixels of the trainer's `tfvctr.data.decode_image` (tested equal), for less:
    `decode_jpeg`/`decode_png` instead of `decode_image`'s format dispatch, no crop-or-pad
    (a prepared image is `size`² by construction: `ensure_shape` fails the batch otherwise,
    so it goes to the dead letter rather than being padded), and the conversion to floats
    once for the batch instead of once per image. 0.055 ms an image instead of 0.117 (64 px
    JPEG, docs/beam_jobs.md fourth round). Runs inside a `tf.function`.
    """
    import tensorflow as tf

    decode = {"jpeg": tf.io.decode_jpeg, "png": tf.io.decode_png}[image_format]
    pixels = tf.map_fn(lambda b: tf.ensure_shape(decode(b, channels=3), [size, size, 3]), encoded,
                       fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
    return tf.image.convert_image_dtype(pixels, tf.float32)


class _EmbedBatch(beam.DoFn):
    """Runs the visual tower on a batch of `AdToEmbed`; the model loads once per worker (`setup`)."""

    def __init__(self, model_path: str, category_vocab_path: str, image_format: str):
        self._model_path = model_path
        self._vocab_path = category_vocab_path
        self._image_format = image_format
        self._model = None
        self._category_ids: dict[str, int] = {}

    def setup(self) -> None:
        # TensorFlow is imported by the workers of this job only (the CNN runs here).
        import keras
        from apache_beam.io.filesystems import FileSystems

        import tfvctr.layers  # noqa: F401  (registers the custom layers the model file names)

        # Keras reads .keras files from local paths only: copy a remote model down once.
        path = self._model_path
        if "://" in path:
            local = os.path.join(tempfile.mkdtemp(), layout.VISUAL_TOWER)
            with FileSystems.open(path) as src, open(local, "wb") as dst:
                dst.write(src.read())
            path = local
        import tensorflow as tf

        self._model = model = keras.saving.load_model(path, compile=False)
        size, image_format = int(model.input["image"].shape[1]), self._image_format

        # Decoding and the tower in one graph call per batch (one trace: any batch size), not
        # one eager op chain per image and an eager Keras call, and no round trip of the
        # pixels through NumPy.
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)])
        def embed(encoded, categories):
            pixels = decode_batch(encoded, size, image_format)
            return model({"image": pixels, "category": categories}, training=False)

        self._embed = embed
        lines = read_text_file(self._vocab_path).splitlines()
        # docs/formats.md §2 "Indexing": 0 = unknown category, 1 + line number otherwise.
        self._category_ids = {value: i + 1 for i, value in enumerate(line for line in lines if line)}

    def process(self, batch: list[AdToEmbed]) -> Iterable[EmbeddedBatch]:
        # The same pixels as the trainer's decoder (`decode_batch`), so the tower sees the very
        # pixels it was trained on (JPEG decoders may differ by a level here and there).
        categories = np.array([self._category_ids.get(ad.category, 0) for ad in batch], dtype=np.int32)
        vectors = np.asarray(self._embed(np.array([ad.image_bytes for ad in batch], dtype=object), categories),
                             dtype=np.float32)
        counter("embedded_batches").inc()
        yield EmbeddedBatch(tuple(ad.ad_id for ad in batch), tuple(ad.category for ad in batch),
                            np.array([ad.impressions for ad in batch], dtype=np.int64), vectors)


def _failed_batch(failure: tuple) -> Iterable[tuple]:
    batch, (exc_type, exc_repr, _) = failure
    reason = f"the visual tower failed on this ad's batch: {readable_failure(exc_type, exc_repr)}"
    for ad in batch:
        yield dead_letter("ads", {"ad_id": ad.ad_id, "category": ad.category}, "unexpected_error",
                          f"ad {ad.ad_id}: {reason}")


class EmbedAds(beam.PTransform):
    """`AdToEmbed` → `EmbeddedBatch` of at most `batch_size` ads; a failed batch's ads → `"dead"`.

    `image_format` is `dataset.image_format`: the format every prepared image is in.
    """

    def __init__(self, model_path: str, category_vocab_path: str, batch_size: int, image_format: str = "jpeg"):
        super().__init__()
        self._model_path, self._vocab_path, self._batch_size = model_path, category_vocab_path, batch_size
        self._image_format = image_format

    def expand(self, ads):
        out = (ads
               # Full batches (BatchElements would start at 1 and grow): the tower's cost per image is
               # lowest at the batch size it was measured with (benchmarks/beam_embed.py).
               | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
               | "Tower" >> beam.ParDo(_EmbedBatch(self._model_path, self._vocab_path, self._image_format))
               .with_exception_handling(dead_letter_tag="failed"))
        return {"rows": out.good, DEAD: out.failed | "FailedToDead" >> beam.FlatMap(_failed_batch)}


# ----------------------------------------------------------------------------- writing


def shard_of(ad_id: str, num_shards: int) -> int:
    """A stable shard for an ad (crc32, not Python's salted `hash`)."""
    return zlib.crc32(ad_id.encode()) % num_shards


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def split_by_shard(batch: EmbeddedBatch, num_shards: int) -> Iterable[tuple[int, EmbeddedBatch]]:
    """A batch → `(shard, the batch's rows of that shard)` for each shard it touches."""
    rows: dict[int, list[int]] = {}
    for i, ad_id in enumerate(batch.ad_ids):
        rows.setdefault(shard_of(ad_id, num_shards), []).append(i)
    for shard, index in rows.items():
        yield shard, batch.take(index)


def category_sums(batch: EmbeddedBatch) -> Iterable[tuple[str, tuple[np.ndarray, int]]]:
    """A batch → `(category, (sum of its vectors in float64, count))` for each category in it."""
    rows: dict[str, list[int]] = {}
    for i, category in enumerate(batch.categories):
        rows.setdefault(category, []).append(i)
    for category, index in rows.items():
        yield category, (batch.vectors[index].astype(np.float64).sum(axis=0), len(index))


class _WriteShard(beam.DoFn):
    def __init__(self, out: str, dtype: str):
        self._out, self._dtype = out, dtype

    def process(self, element: tuple) -> Iterable[str]:
        shard, parts = element
        parts = list(parts)
        ad_ids = [ad_id for part in parts for ad_id in part.ad_ids]
        order = sorted(range(len(ad_ids)), key=ad_ids.__getitem__)  # ad_ids are unique (duplicates are dead)
        categories = [category for part in parts for category in part.categories]
        impressions = np.concatenate([part.impressions for part in parts])[order]
        data = _npz_bytes(
            ad_id=np.array([ad_ids[i] for i in order], dtype=str),
            category=np.array([categories[i] for i in order], dtype=str),
            impressions=impressions.astype(np.int64),
            vectors=np.concatenate([part.vectors for part in parts])[order].astype(self._dtype),
        )
        _write_bytes(join_path(self._out, layout.table_shard(shard)), data)
        counter("rows").inc(len(ad_ids))
        counter("covered_impressions").inc(int(impressions.sum()))
        counter("table_bytes").inc(len(data))
        yield layout.table_shard(shard)


class _MeanFn(beam.CombineFn):
    """Mean vector from `(sum, count)` parts, in float64 (sums of many float32 vectors lose digits)."""

    def create_accumulator(self):
        return (None, 0)

    def add_input(self, acc, part):
        return self.merge_accumulators([acc, part])

    def merge_accumulators(self, accs):
        total, n = None, 0
        for t, m in accs:
            if t is not None:
                total = np.array(t, dtype=np.float64) if total is None else total + t
            n += m
        return (total, n)

    def extract_output(self, acc):
        total, n = acc
        return total / n


class WriteTable(beam.PTransform):
    """`EmbeddedBatch` → `part-SSSSS.npz` shards + `category_means.npz` (docs/formats.md §4).

    Shards hold about `rows_per_shard` rows each, ads assigned by a stable hash of ad_id
    and sorted by ad_id inside a shard, so the table is the same for the same inputs
    (however the ads were batched). Returns the written shard names.
    """

    def __init__(self, out: str, dtype: str, rows_per_shard: int):
        super().__init__()
        self._out, self._dtype, self._rows_per_shard = out, dtype, rows_per_shard

    def expand(self, batches):
        per_shard = self._rows_per_shard
        num_shards = (batches | "CountRows" >> beam.Map(lambda b: len(b.ad_ids))
                      | "SumRows" >> beam.CombineGlobally(sum)
                      | "NumShards" >> beam.Map(lambda n: max(1, math.ceil(n / per_shard))))
        shards = (batches
                  | "Shard" >> beam.FlatMap(split_by_shard, pvalue.AsSingleton(num_shards))
                  | "GroupShard" >> beam.GroupByKey()
                  | "WriteShard" >> beam.ParDo(_WriteShard(self._out, self._dtype)))
        _ = (batches
             | "ByCategory" >> beam.FlatMap(category_sums)
             | "Mean" >> beam.CombinePerKey(_MeanFn())
             | "AllMeans" >> beam.combiners.ToList()
             | "WriteMeans" >> beam.Map(self._write_means))
        return shards

    def _write_means(self, means: list[tuple]) -> Optional[str]:
        means = sorted(means, key=lambda m: m[0])
        dim = len(means[0][1]) if means else 0
        data = _npz_bytes(category=np.array([m[0] for m in means], dtype=str),
                          vectors=np.array([m[1] for m in means], dtype=np.float64).reshape(len(means), dim)
                          .astype(self._dtype))
        path = join_path(self._out, layout.CATEGORY_MEANS)
        _write_bytes(path, data)
        return path
