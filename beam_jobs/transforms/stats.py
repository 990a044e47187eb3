"""`VocabAndStats`: vocabularies and feature statistics of the train split (docs/formats.md §2).

Ad features (and the category) are counted once per ad that has train impressions;
impression features once per train impression. Only the train split: the valid split
(held-out ads, the last train day) stays unseen, as the eval split does, so a value
found only there is out of vocabulary, as it would be for a new ad in production.
Vocabularies keep values seen at least `min_frequency` times, most frequent first, ties
broken by value. Numeric features get count, missing, mean, std (population), min, max
and `num_buckets - 1` quantile boundaries from Beam's `ApproximateQuantiles`, which is
exact while a feature's values fit its buffers (any demo-sized data) and a bounded-error
sketch beyond, so the job scales without sorting a column on one worker.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

import apache_beam as beam

from beam_jobs import records
from beam_jobs.common import join_path, write_text_file
from tfvctr import layout
from tfvctr.config import DatasetConfig, FeatureConfig


def _category_vocab_feature(ds: DatasetConfig) -> FeatureConfig:
    """`vocab/category.txt` is always written; with the config's settings if `category` is a feature."""
    for f in ds.ad_features:
        if f.name == "category" and f.vocabulary == "auto":
            return f
    return FeatureConfig(name="category", source="ad", kind="categorical", vocabulary="auto")


def _feature_values(ds: DatasetConfig, source: str, element: tuple) -> Iterable[tuple]:
    """(feature config, value) for each feature of an ad or impression tuple."""
    if source == "ad":
        yield from zip(ds.ad_features, element[records.AD_VALUES], strict=True)
    else:
        yield from zip(ds.impression_features, element[records.IMP_VALUES], strict=True)


class MomentsFn(beam.CombineFn):
    """count, mean, population std, min, max; Chan et al.'s parallel update keeps it stable."""

    def create_accumulator(self):
        return (0, 0.0, 0.0, math.inf, -math.inf)

    def add_input(self, acc, x):
        return self.merge_accumulators([acc, (1, float(x), 0.0, float(x), float(x))])

    def merge_accumulators(self, accs):
        n, mean, m2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
        for nb, mb, m2b, lob, hib in accs:
            if nb == 0:
                continue
            delta = mb - mean
            total = n + nb
            mean += delta * nb / total
            m2 += m2b + delta * delta * n * nb / total
            n, lo, hi = total, min(lo, lob), max(hi, hib)
        return (n, mean, m2, lo, hi)

    def extract_output(self, acc):
        n, mean, m2, lo, hi = acc
        if n == 0:
            return {}
        return {"mean": mean, "std": math.sqrt(m2 / n), "min": lo, "max": hi}


def _sum_pairs(pairs: Iterable[tuple]) -> tuple:
    a = b = 0
    for x, y in pairs:
        a, b = a + x, b + y
    return (a, b)


def _vocab_lines(kv: tuple) -> tuple:
    feature, value_counts = kv
    ordered = sorted(value_counts, key=lambda vc: (-vc[1], vc[0]))
    return feature, [v for v, _ in ordered]


def _presence(ds: DatasetConfig, source: str):
    def fn(element: tuple) -> Iterable[tuple]:
        for f, v in _feature_values(ds, source, element):
            missing = v is None or (f.kind == "multi" and len(v) == 0)
            yield f.name, (0 if missing else 1, 1 if missing else 0)
        if source == "ad" and "category" not in [f.name for f in ds.ad_features]:
            yield "category", (1, 0)

    return fn


def _vocab_items(ds: DatasetConfig, source: str, category: FeatureConfig):
    def fn(element: tuple) -> Iterable[tuple]:
        for f, v in _feature_values(ds, source, element):
            if f.vocabulary != "auto" or f.name == "category":
                continue
            for value in (v if f.kind == "multi" else ([] if v is None else [v])):
                yield (f.name, value), 1
        if source == "ad":
            yield ("category", element[records.CATEGORY]), 1

    return fn


def _numeric_items(ds: DatasetConfig, source: str):
    def fn(element: tuple) -> Iterable[tuple]:
        for f, v in _feature_values(ds, source, element):
            if f.kind == "numeric" and v is not None and not math.isnan(v):
                yield f.name, v

    return fn


class VocabAndStats(beam.PTransform):
    """Train ads + train impressions → `vocab/<feature>.txt` files and `stats.json` under `out`.

    Also takes `days` (a singleton `{"train": [...], "valid": [...], "eval": [...],
    "eval_from", "valid_from"}`, `join.split_days`), stored under `stats.json["day"]` so
    the manifest can list each split's days. Returns the
    PCollection of written paths.
    """

    def __init__(self, ds: DatasetConfig, out: str):
        super().__init__()
        self._ds = ds
        self._out = out

    def expand(self, inputs: dict):
        ds = self._ds
        ads, imps = inputs["train_ads"], inputs["train_impressions"]
        category = _category_vocab_feature(ds)
        min_freq = {f.name: f.min_frequency for f in ds.features if f.vocabulary == "auto"}
        min_freq["category"] = category.min_frequency

        vocab_counts = (
            (ads | "AdVocab" >> beam.FlatMap(_vocab_items(ds, "ad", category)),
             imps | "ImpVocab" >> beam.FlatMap(_vocab_items(ds, "impression", category)))
            | "FlattenVocab" >> beam.Flatten()
            | "CountValues" >> beam.CombinePerKey(sum)
            | "MinFrequency" >> beam.Filter(lambda kv: kv[1] >= min_freq[kv[0][0]])
            | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
            | "GroupVocab" >> beam.GroupByKey()
            | "Order" >> beam.Map(_vocab_lines)
        )
        written_vocab = vocab_counts | "WriteVocab" >> beam.Map(self._write_vocab)

        presence = (
            (ads | "AdPresence" >> beam.FlatMap(_presence(ds, "ad")),
             imps | "ImpPresence" >> beam.FlatMap(_presence(ds, "impression")))
            | "FlattenPresence" >> beam.Flatten()
            | "SumPresence" >> beam.CombinePerKey(_sum_pairs)
            | "PresenceStats" >> beam.Map(lambda kv: (kv[0], {"count": kv[1][0], "missing": kv[1][1]}))
        )
        numeric_values = (
            (ads | "AdNumeric" >> beam.FlatMap(_numeric_items(ds, "ad")),
             imps | "ImpNumeric" >> beam.FlatMap(_numeric_items(ds, "impression")))
            | "FlattenNumeric" >> beam.Flatten()
        )
        moments = numeric_values | "Moments" >> beam.CombinePerKey(MomentsFn())
        boundaries = []
        for f in ds.features:
            if f.kind != "numeric":
                continue
            # One sketch per feature: features may ask for different numbers of buckets.
            boundaries.append(
                numeric_values
                | f"Only_{f.name}" >> beam.Filter(lambda kv, name=f.name: kv[0] == name)
                | f"Values_{f.name}" >> beam.Map(lambda kv: kv[1])
                | f"Quantiles_{f.name}" >> beam.ApproximateQuantiles.Globally(f.num_buckets + 1)
                | f"Boundaries_{f.name}" >> beam.Map(lambda q, name=f.name: (name, {"boundaries": list(q[1:-1])}))
            )
        vocab_sizes = vocab_counts | "VocabSize" >> beam.Map(lambda kv: (kv[0], {"vocab_size": len(kv[1])}))
        labels = (imps | "Labels" >> beam.Map(lambda imp: (1, imp[records.LABEL]))
                  | "SumLabels" >> beam.CombineGlobally(_sum_pairs)
                  | "LabelStats" >> beam.Map(lambda c: ("label", {"count": c[0], "positives": c[1]})))
        written_stats = (
            [presence, moments, vocab_sizes, labels, *boundaries]
            | "FlattenStats" >> beam.Flatten()
            | "AllStats" >> beam.combiners.ToList()
            | "WriteStats" >> beam.Map(self._write_stats, beam.pvalue.AsSingleton(inputs["days"]))
        )
        return (written_vocab, written_stats) | "Written" >> beam.Flatten()

    def _write_vocab(self, kv: tuple) -> str:
        feature, values = kv
        path = join_path(self._out, layout.vocab_file(feature))
        write_text_file(path, "".join(f"{v}\n" for v in values))
        return path

    def _write_stats(self, entries: list, days: dict) -> str:
        ds = self._ds
        stats: dict = {}
        for name, part in entries:
            stats.setdefault(name, {}).update(part)
        for f in [*ds.features, _category_vocab_feature(ds)]:
            entry = stats.setdefault(f.name, {})
            entry.setdefault("count", 0)
            entry.setdefault("missing", 0)
            if f.kind == "numeric":
                for key in ("mean", "std", "min", "max"):
                    entry.setdefault(key, 0.0)
                entry.setdefault("boundaries", [])
            elif f.vocabulary == "auto":
                if "vocab_size" not in entry:  # every value was below min_frequency: the file is still written
                    entry["vocab_size"] = 0
                    write_text_file(join_path(self._out, layout.vocab_file(f.name)), "")
            else:
                entry["hash_buckets"] = f.hash_buckets
        stats.setdefault("label", {"count": 0, "positives": 0})
        stats["day"] = days
        path = join_path(self._out, layout.STATS)
        write_text_file(path, json.dumps(stats, indent=1, sort_keys=True) + "\n")
        return path
