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


class _MergeOnly(beam.CombineFn):
    """`fn` over inputs that are already `fn`'s accumulators (the per-bundle partial results of `_PreCombine`)."""

    def __init__(self, fn: beam.CombineFn):
        self._fn = fn

    def create_accumulator(self):
        return self._fn.create_accumulator()

    def add_input(self, acc, partial):
        return self._fn.merge_accumulators([acc, partial])

    def merge_accumulators(self, accs):
        return self._fn.merge_accumulators(accs)

    def extract_output(self, acc):
        return self._fn.extract_output(acc)


class _Sum(beam.CombineFn):
    """Element-wise sums of ints or of tuples of ints."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, x):
        if acc is None:
            return x
        if isinstance(x, tuple):
            return tuple(t + y for t, y in zip(acc, x, strict=True))
        return acc + x

    def merge_accumulators(self, accs):
        total = None
        for a in accs:
            if a is None:
                continue
            if total is None:
                total = a
            elif isinstance(a, tuple):
                total = tuple(t + x for t, x in zip(total, a, strict=True))
            else:
                total += a
        return total

    def extract_output(self, acc):
        return acc


class _PreCombine(beam.DoFn):
    """Combines `items(element)` `(key, value)` pairs per key within a bundle, emitted at its end.

    Combiner lifting by hand: each train impression used to leave as ~11 tiny elements
    (one per feature value, presence and number), and every one crossed the runner's data
    plane at the `Flatten` before Beam's own lifted combine could see it (most of the job's
    per-element overhead, docs/beam_jobs.md). Now a bundle of thousands of impressions
    leaves as one partial result per key (per distinct vocabulary value, per feature); the
    `CombinePerKey(_MergeOnly(fn))` after it merges them exactly as `fn` would have. With
    `collect=True` the values are gathered into lists instead (for the batched quantiles).
    """

    def __init__(self, items, fn: beam.CombineFn = None, collect: bool = False):
        self._items, self._fn, self._collect = items, fn, collect

    def start_bundle(self) -> None:
        self._partial: dict = {}

    def process(self, element) -> None:
        partial = self._partial
        if self._collect:
            for key, value in self._items(element):
                partial.setdefault(key, []).append(value)
            return
        fn = self._fn
        for key, value in self._items(element):
            acc = partial[key] if key in partial else fn.create_accumulator()
            partial[key] = fn.add_input(acc, value)

    def finish_bundle(self) -> Iterable:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        window = GlobalWindow()
        for kv in self._partial.items():
            yield WindowedValue(kv, window.max_timestamp(), [window])
        self._partial = {}


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

        def pre(name: str, items, fn=None, collect=False):
            # Ads and impressions are pre-combined apart, so only the partial results meet at the Flatten.
            return ((ads | f"Ad{name}" >> beam.ParDo(_PreCombine(items("ad"), fn, collect)),
                     imps | f"Imp{name}" >> beam.ParDo(_PreCombine(items("impression"), fn, collect)))
                    | f"Flatten{name}" >> beam.Flatten())

        vocab_counts = (
            pre("Vocab", lambda source: _vocab_items(ds, source, category), _Sum())
            | "CountValues" >> beam.CombinePerKey(_MergeOnly(_Sum()))
            | "MinFrequency" >> beam.Filter(lambda kv: kv[1] >= min_freq[kv[0][0]])
            | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
            | "GroupVocab" >> beam.GroupByKey()
            | "Order" >> beam.Map(_vocab_lines)
        )
        written_vocab = vocab_counts | "WriteVocab" >> beam.Map(self._write_vocab)

        presence = (
            pre("Presence", lambda source: _presence(ds, source), _Sum())
            | "SumPresence" >> beam.CombinePerKey(_MergeOnly(_Sum()))
            | "PresenceStats" >> beam.Map(lambda kv: (kv[0], {"count": kv[1][0], "missing": kv[1][1]}))
        )
        moments = (pre("Moments", lambda source: _numeric_items(ds, source), MomentsFn())
                   | "Moments" >> beam.CombinePerKey(_MergeOnly(MomentsFn())))
        numeric_lists = pre("Numeric", lambda source: _numeric_items(ds, source), collect=True)
        boundaries = []
        for f in ds.features:
            if f.kind != "numeric":
                continue
            # One sketch per feature: features may ask for different numbers of buckets.
            boundaries.append(
                numeric_lists
                | f"Only_{f.name}" >> beam.Filter(lambda kv, name=f.name: kv[0] == name)
                | f"Values_{f.name}" >> beam.Map(lambda kv: kv[1])
                | f"Quantiles_{f.name}" >> beam.ApproximateQuantiles.Globally(f.num_buckets + 1, input_batched=True)
                | f"Boundaries_{f.name}" >> beam.Map(lambda q, name=f.name: (name, {"boundaries": list(q[1:-1])}))
            )
        vocab_sizes = vocab_counts | "VocabSize" >> beam.Map(lambda kv: (kv[0], {"vocab_size": len(kv[1])}))
        labels = (imps | "Labels" >> beam.ParDo(_PreCombine(lambda imp: [("label", (1, imp[records.LABEL]))], _Sum()))
                  | "SumLabels" >> beam.CombinePerKey(_MergeOnly(_Sum()))
                  | "LabelStats" >> beam.Map(lambda kv: ("label", {"count": kv[1][0], "positives": kv[1][1]})))
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
