"""`EvalFromDay`, `JoinAndChunk`: the ad ↔ impression join, the splits and the chunks of ≤ K.

The join is a `CoGroupByKey` on ad_id, never an `AsDict` side input of all ads (one
worker would have to hold the whole catalogue, docs/design.md scale notes). Each
impression goes to one split: `eval` (the last eval days), `valid` (carved out of the
train days as `dataset.validation.mode` says: the last train day, and/or every train-day
impression of a seeded share of ads held out whole) or `train`. Within an ad the
impressions of each split are shuffled deterministically (sorted by a hash of seed and
content) and cut into chunks of at most K: one `SequenceExample` per chunk. With
`dataset.negative_sampling_rate` w < 1 the train split keeps every click and a seeded share
w of the non-clicks (`keep_negative`); the rest are counted as `downsampled_negatives`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam import pvalue

from beam_jobs import records
from beam_jobs.common import dead_letter
from tfvctr import layout
from tfvctr.config import DatasetConfig
from tfvctr.errors import readable_failure

DEAD = "dead"
TRAIN, VALID, EVAL = layout.TRAIN, layout.VALID, layout.EVAL
AD_COUNTS = "ad_counts"
DAYS = "days"
TRAIN_ADS, TRAIN_IMPRESSIONS = "train_ads", "train_impressions"
TEMPORAL_MODES = ("temporal", "ads_and_temporal")
ADS_MODES = ("ads", "ads_and_temporal")


def held_out_ad(seed: int, ad_id: str, share: float) -> bool:
    """Whether `ad_id` falls in the held-out `share` of ads for `seed` (validation modes `ads*`).

    A stable hash of `(seed, ad_id)`, the same in every process, run and runner (Python's
    `hash()` is salted per process), compared with `share`: each ad decides alone, so no
    worker needs the list of all ads, and the held-out set of a share contains that of
    any smaller share.
    """
    digest = hashlib.blake2b(repr((seed, str(ad_id))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def keep_negative(seed: int, imp: tuple, rate: float) -> bool:
    """Whether a non-click is kept at `dataset.negative_sampling_rate` `rate` (He et al. 2014).

    A stable hash of `(seed, impression)`, as `held_out_ad`: the same draw in every run and
    on every runner, with no state shared between workers.
    """
    digest = hashlib.blake2b(repr(("negative", seed, imp)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def split_days(days: list[int], eval_from: Optional[int], mode: str = "none") -> dict[str, Any]:
    """The days each split draws from (`stats.json["day"]`) and the first eval and valid days.

    `valid_from` is the last train day in the temporal modes, when there are at least two
    train days (with one, train would be empty: it stays train). In the `ads*` modes valid
    draws from every train day (the held-out ads' impressions).
    """
    days = sorted(set(days))
    train = [d for d in days if eval_from is None or d < eval_from]
    evals = [d for d in days if eval_from is not None and d >= eval_from]
    valid_from = train[-1] if mode in TEMPORAL_MODES and len(train) >= 2 else None
    valid = list(train) if mode in ADS_MODES else ([valid_from] if valid_from is not None else [])
    if valid_from is not None:
        train = train[:-1]
    return {TRAIN: train, VALID: valid, EVAL: evals, "eval_from": eval_from, "valid_from": valid_from}


def eval_from_day(days: list[int], eval_days: int) -> Optional[int]:
    """The first eval day: the last `eval_days` distinct days are eval (None: no impressions)."""
    distinct = sorted(set(days))
    if not distinct:
        return None
    return distinct[-min(eval_days, len(distinct))]


class _BundleDays(beam.DoFn):
    """`(ad_id, impression)` → the distinct days of the bundle, emitted at its end: a few
    elements per bundle for the aggregate after it, not one per impression."""

    def start_bundle(self) -> None:
        self._days: set = set()

    def process(self, kv: tuple) -> None:
        value = kv[1]
        if isinstance(value, list):  # (ad_id, [impression, ...]): ValidateImpressions(grouped=True)
            self._days.update(imp[records.DAY] for imp in value)
        else:
            self._days.add(value[records.DAY])

    def finish_bundle(self) -> Iterable:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for day in sorted(self._days):
            yield WindowedValue(day, GlobalWindow().max_timestamp(), [GlobalWindow()])
        self._days = set()


class DistinctDays(beam.PTransform):
    """`(ad_id, impression)` (or `(ad_id, [impression, ...])`) → a singleton: the days seen,
    unordered, each once per bundle (so a few times in all; `eval_from_day` and `split_days`
    take each day once). A tiny global aggregate, however many impressions there are; the
    job computes it once for `EvalFromDay` and `JoinAndChunk`."""

    def expand(self, impressions):
        return (impressions
                | "Day" >> beam.ParDo(_BundleDays())
                | "All" >> beam.combiners.ToList())


class EvalFromDay(beam.PTransform):
    """`(ad_id, impression)` → a singleton: the first eval day, from the distinct days.

    With `from_distinct_days=True` the input is already `DistinctDays`' singleton.
    """

    def __init__(self, eval_days: int, from_distinct_days: bool = False):
        super().__init__()
        self._eval_days = eval_days
        self._from_distinct_days = from_distinct_days

    def expand(self, pcoll):
        days = pcoll if self._from_distinct_days else pcoll | "DistinctDays" >> DistinctDays()
        return days | "First" >> beam.Map(eval_from_day, self._eval_days)


class _Chunk(beam.DoFn):
    def __init__(self, ds: DatasetConfig, seed: int):
        self._ds = ds
        self._seed = seed
        v = ds.validation
        self._held_out_seed = seed if v.seed is None else v.seed
        self._held_out_share = v.ads_share if v.mode in ADS_MODES else 0.0
        self._negative_rate = ds.negative_sampling_rate

    def setup(self) -> None:
        records.relax_collector()

    def process(self, element: tuple, days: dict) -> Iterable:
        with records.no_cycle_collection():  # an ad's impression tuples make no cycles
            yield from self._process(element, days)

    def _process(self, element: tuple, days: dict) -> Iterable:
        ad_id, groups = element
        ads = list(groups["ads"])
        impressions = _flat(groups["impressions"])
        rejected = sorted(groups["rejected"])
        if rejected or len(ads) != 1:
            yield from self._reject(ad_id, ads, impressions, rejected)
            return
        ad = ads[0]
        eval_from, valid_from = days["eval_from"], days["valid_from"]
        held_out = self._held_out_share > 0 and held_out_ad(self._held_out_seed, ad_id, self._held_out_share)
        splits = {TRAIN: [], VALID: [], EVAL: []}
        for imp in impressions:
            day = imp[records.DAY]
            if eval_from is not None and day >= eval_from:
                splits[EVAL].append(imp)  # a held-out ad's eval impressions stay in eval
            elif held_out or (valid_from is not None and day >= valid_from):
                splits[VALID].append(imp)
            else:
                splits[TRAIN].append(imp)
        downsampled = 0
        if self._negative_rate < 1.0:  # train only: eval and valid measure the real traffic
            kept = [imp for imp in splits[TRAIN]
                    if imp[records.LABEL] or keep_negative(self._seed, imp, self._negative_rate)]
            downsampled, splits[TRAIN] = len(splits[TRAIN]) - len(kept), kept
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
               "train_impressions": len(splits[TRAIN]), "valid_impressions": len(splits[VALID]),
               "eval_impressions": len(splits[EVAL]), "held_out": held_out, "downsampled_negatives": downsampled}
        yield pvalue.TaggedOutput(AD_COUNTS, (row, num_chunks, len(ad[records.IMAGE_BYTES])))
        if splits[TRAIN]:
            yield pvalue.TaggedOutput(TRAIN_ADS, ad)
            yield pvalue.TaggedOutput(TRAIN_IMPRESSIONS, splits[TRAIN])  # one list per ad, not one element each

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


def _flat(values: Iterable) -> list:
    """The join's impressions of one ad: single impression tuples and lists of them (grouped)."""
    out: list = []
    for value in values:
        if isinstance(value, bytes):  # packed before the shuffle (_pack_group)
            out.extend(records.unpack(value))
        elif isinstance(value, list):
            out.extend(value)
        else:
            out.append(value)
    return out


def _pack_group(kv: tuple) -> tuple:
    """`(ad_id, [impression, ...])` → `(ad_id, packed bytes)` for the join's shuffle (records.pack)."""
    ad_id, value = kv
    return (ad_id, records.pack(value)) if isinstance(value, list) else kv


def _unexpected(ds: DatasetConfig):
    """A group whose records could not be built: the ad and every impression go to the dead letter."""

    def fn(failure: tuple) -> Iterable[tuple]:
        (ad_id, groups), (exc_type, exc_repr, _) = failure
        reason = f"ad {ad_id} rejected: unexpected error building records: {readable_failure(exc_type, exc_repr)}"
        for ad in groups["ads"]:
            yield dead_letter("ads", records.ad_to_row(ad, ds), "unexpected_error", reason)
        for imp in _flat(groups["impressions"]):
            yield dead_letter("impressions", records.impression_to_row(ad_id, imp, ds), "unexpected_error", reason)

    return fn


class JoinAndChunk(beam.PTransform):
    """Joins `(ad_id, ad)`, `(ad_id, impression)` and `(ad_id, rejection reason)` and chunks per ad.

    An impressions element may also be `(ad_id, [impression, ...])`, several of the ad's
    impressions at once (`ValidateImpressions(grouped=True)`): fewer elements cross the
    shuffle; the output is the same.

    Also takes `"eval_from"`, a singleton (the first eval day, None: no eval split), and
    optionally `"distinct_days"` (`DistinctDays` of the same impressions, when the job has
    it already; else it is computed here). The
    valid split follows `ds.validation`; the held-out ads are drawn with
    `ds.validation.seed`, or `seed` when that is None.

    Outputs a dict: `"train"` / `"valid"` / `"eval"` (`(impressions, positives, serialized
    record)`), `"ad_counts"` (`(row, {split: chunks}, image bytes)`), `"train_ads"` (ad
    tuples) and `"train_impressions"` (per ad, the list of its train impression tuples), of
    the train split only, for vocabularies and statistics, `"days"` (a singleton, `split_days`) and `"dead"` (impressions of unknown
    or rejected ads, duplicate ads).
    """

    def __init__(self, ds: DatasetConfig, seed: int):
        super().__init__()
        self._ds = ds
        self._seed = seed

    def expand(self, inputs: dict):
        distinct = inputs.get("distinct_days")
        if distinct is None:
            distinct = inputs["impressions"] | "DistinctDays" >> DistinctDays()
        days = distinct | "SplitDays" >> beam.Map(split_days, pvalue.AsSingleton(inputs["eval_from"]),
                                                  self._ds.validation.mode)
        impressions = inputs["impressions"] | "PackGroups" >> beam.Map(_pack_group)
        grouped = ({"ads": inputs["ads"], "impressions": impressions, "rejected": inputs["rejected"]}
                   | "CoGroupByAdId" >> beam.CoGroupByKey())
        out = grouped | "Chunk" >> beam.ParDo(
            _Chunk(self._ds, self._seed), pvalue.AsSingleton(days)
        ).with_outputs(TRAIN, VALID, EVAL, AD_COUNTS, TRAIN_ADS, TRAIN_IMPRESSIONS, DEAD,
                       main="unused").with_exception_handling(dead_letter_tag="failed")
        failed = out.failed | "FailedToDead" >> beam.FlatMap(_unexpected(self._ds))
        return {
            TRAIN: out[TRAIN], VALID: out[VALID], EVAL: out[EVAL], AD_COUNTS: out[AD_COUNTS], TRAIN_ADS: out[TRAIN_ADS],
            TRAIN_IMPRESSIONS: out[TRAIN_IMPRESSIONS], DAYS: days, DEAD: (out[DEAD], failed) | "Dead" >> beam.Flatten(),
        }
