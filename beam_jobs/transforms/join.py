"""`EvalFromDay`, `JoinAndChunk`: the ad ↔ impression join, the day split and the chunks of ≤ K.

The join is a `CoGroupByKey` on ad_id, never an `AsDict` side input of all ads (one
worker would have to hold the whole catalogue, docs/design.md scale notes). Within an ad the
impressions of each split are shuffled deterministically (sorted by a hash of seed and
content) and cut into chunks of at most K: one `SequenceExample` per chunk.
"""

from __future__ import annotations

from typing import Iterable, Optional

import apache_beam as beam
from apache_beam import pvalue

from beam_jobs import records
from beam_jobs.common import dead_letter
from tfvctr.config import DatasetConfig

DEAD = "dead"
TRAIN, EVAL = "train", "eval"
AD_COUNTS = "ad_counts"
TRAIN_ADS, TRAIN_IMPRESSIONS = "train_ads", "train_impressions"


def eval_from_day(days: list[int], eval_days: int) -> Optional[int]:
    """The first eval day: the last `eval_days` distinct days are eval (None: no impressions)."""
    distinct = sorted(set(days))
    if not distinct:
        return None
    return distinct[-min(eval_days, len(distinct))]


class EvalFromDay(beam.PTransform):
    """`(ad_id, impression)` → a singleton: the first eval day, from the distinct days.

    The distinct days are a tiny global aggregate (one value per day), so this costs one
    small combine, however many impressions there are.
    """

    def __init__(self, eval_days: int):
        super().__init__()
        self._eval_days = eval_days

    def expand(self, impressions):
        return (impressions
                | "Day" >> beam.Map(lambda kv: kv[1][records.DAY])
                | "Distinct" >> beam.Distinct()
                | "All" >> beam.combiners.ToList()
                | "First" >> beam.Map(eval_from_day, self._eval_days))


class _Chunk(beam.DoFn):
    def __init__(self, ds: DatasetConfig, seed: int):
        self._ds = ds
        self._seed = seed

    def process(self, element: tuple, eval_from: Optional[int]) -> Iterable:
        ad_id, groups = element
        ads = list(groups["ads"])
        impressions = list(groups["impressions"])
        rejected = sorted(groups["rejected"])
        if rejected or len(ads) != 1:
            yield from self._reject(ad_id, ads, impressions, rejected)
            return
        ad = ads[0]
        splits = {TRAIN: [], EVAL: []}
        for imp in impressions:
            splits[EVAL if eval_from is not None and imp[records.DAY] >= eval_from else TRAIN].append(imp)
        num_chunks = {}
        for split, imps in splits.items():
            imps.sort(key=lambda imp: records.shuffle_key(self._seed, imp))
            num_chunks[split] = 0
            for index, chunk in enumerate(records.chunks(imps, self._ds.impressions_per_chunk)):
                record = records.make_sequence_example(ad, chunk, index, len(imps), self._ds)
                positives = sum(imp[records.LABEL] for imp in chunk)
                yield pvalue.TaggedOutput(split, (len(chunk), positives, record))
                num_chunks[split] += 1
        row = {"ad_id": ad_id, "category": ad[records.CATEGORY], "image": ad[records.IMAGE_URI],
               "train_impressions": len(splits[TRAIN]), "eval_impressions": len(splits[EVAL])}
        yield pvalue.TaggedOutput(AD_COUNTS, (row, num_chunks[TRAIN], num_chunks[EVAL], len(ad[records.IMAGE_BYTES])))
        if splits[TRAIN]:
            yield pvalue.TaggedOutput(TRAIN_ADS, ad)
            for imp in splits[TRAIN]:
                yield pvalue.TaggedOutput(TRAIN_IMPRESSIONS, imp)

    def _reject(self, ad_id: str, ads: list, impressions: list, rejected: list) -> Iterable:
        """No single valid ad for this key: its valid ad copies and all its impressions go to the dead letter."""
        duplicate = f"ad_id {ad_id!r} appears {len(ads) + len(rejected)} times in the ads table"
        if rejected:  # the rejected row itself was dead-lettered by ValidateAds
            code, reason = "ad_rejected", rejected[0]
        elif not ads:
            code, reason = "unknown_ad", f"unknown ad_id {ad_id!r}: not in the ads table"
        else:
            code, reason = "duplicate_ad", duplicate
        for ad in ads:
            yield pvalue.TaggedOutput(DEAD, dead_letter("ads", records.ad_to_row(ad, self._ds), "duplicate_ad",
                                                        duplicate))
        for imp in impressions:
            yield pvalue.TaggedOutput(DEAD, dead_letter("impressions", records.impression_to_row(ad_id, imp, self._ds),
                                                        code, reason))


def _unexpected(ds: DatasetConfig):
    """A group whose records could not be built: the ad and every impression go to the dead letter."""

    def fn(failure: tuple) -> Iterable[tuple]:
        (ad_id, groups), (exc_type, exc_repr, _) = failure
        reason = f"ad {ad_id} rejected: unexpected {getattr(exc_type, '__name__', exc_type)} building records: {exc_repr}"
        for ad in groups["ads"]:
            yield dead_letter("ads", records.ad_to_row(ad, ds), "unexpected_error", reason)
        for imp in groups["impressions"]:
            yield dead_letter("impressions", records.impression_to_row(ad_id, imp, ds), "unexpected_error", reason)

    return fn


class JoinAndChunk(beam.PTransform):
    """Joins `(ad_id, ad)`, `(ad_id, impression)` and `(ad_id, rejection reason)` and chunks per ad.

    Outputs a dict: `"train"` / `"eval"` (`(impressions, positives, serialized record)`),
    `"ad_counts"` (`(row, train chunks, eval chunks, image bytes)`), `"train_ads"` and
    `"train_impressions"` (tuples of the train split, for vocabularies and statistics)
    and `"dead"` (impressions of unknown or rejected ads, duplicate ads).
    """

    def __init__(self, ds: DatasetConfig, seed: int):
        super().__init__()
        self._ds = ds
        self._seed = seed

    def expand(self, inputs: dict):
        grouped = ({"ads": inputs["ads"], "impressions": inputs["impressions"], "rejected": inputs["rejected"]}
                   | "CoGroupByAdId" >> beam.CoGroupByKey())
        out = grouped | "Chunk" >> beam.ParDo(
            _Chunk(self._ds, self._seed), pvalue.AsSingleton(inputs["eval_from"])
        ).with_outputs(TRAIN, EVAL, AD_COUNTS, TRAIN_ADS, TRAIN_IMPRESSIONS, DEAD, main="unused").with_exception_handling(
            dead_letter_tag="failed")
        failed = out.failed | "FailedToDead" >> beam.FlatMap(_unexpected(self._ds))
        return {
            TRAIN: out[TRAIN], EVAL: out[EVAL], AD_COUNTS: out[AD_COUNTS], TRAIN_ADS: out[TRAIN_ADS],
            TRAIN_IMPRESSIONS: out[TRAIN_IMPRESSIONS], DEAD: (out[DEAD], failed) | "Dead" >> beam.Flatten(),
        }
