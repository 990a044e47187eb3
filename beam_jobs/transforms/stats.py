"""`VocabAndStats`: vocabularies and feature statistics of the train split (docs/formats.md §2).

Ad features (and the category) are counted once per ad that has train impressions;
impression features once per train impression. Only the train split: the valid split
(held-out ads, the last train day) stays unseen, as the eval split does, so a value
found only there is out of vocabulary, as it would be for a new ad in production.
Vocabularies keep values seen at least `min_frequency` times, most frequent first, ties
broken by value. Numeric features get count, missing, mean, std (population), min, max
(from exact sums: the same digits however the work was split) and `num_buckets - 1`
quantile boundaries from Beam's `ApproximateQuantiles`, which is exact while a feature's
values fit its buffers (any demo-sized data) and a bounded-error sketch beyond, so the
job scales without sorting a column on one worker.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
from fractions import Fraction
from typing import Iterable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from beam_jobs import records
from beam_jobs.common import join_path, write_text_file
from tfvctr import layout
from tfvctr.config import DatasetConfig, FeatureConfig

VOCAB, PRESENCE, MOMENTS, NUMBERS, LABELS = "vocab", "presence", "moments", "numbers", "labels"


def _category_vocab_feature(ds: DatasetConfig) -> FeatureConfig:
    """`vocab/category.txt` is always written; with the config's settings if `category` is a feature."""
    for f in ds.ad_features:
        if f.name == "category" and f.vocabulary == "auto":
            return f
    return FeatureConfig(name="category", source="ad", kind="categorical", vocabulary="auto")


# x² is summed exactly in floats for 2⁻⁴⁰⁰ ≤ |x| ≤ 2⁴⁸⁰ (or x = 0): far from overflow and from
# underflow of the product's error; a bundle with any other value is summed in fractions.
SQUARE_LIMIT, SQUARE_FLOOR = 2.0**480, 2.0**-400


def exact_parts(values) -> list[float]:
    """A few floats whose exact sum is exactly the sum of `values` (finite floats).

    `math.fsum` rounds the exact sum once; the remainder (exact sum minus the parts so far)
    is summed again until nothing is left: usually two or three passes in C. The parts
    carry the exact sum across bundles, so the total does not depend on how the runner
    split the values (a float sum does, in its last digits).
    """
    parts: list[float] = []
    while True:
        rest = math.fsum(itertools.chain(values, (-p for p in parts)))
        if rest == 0.0:  # an exact sum of floats is a multiple of 2⁻¹⁰⁷⁴: never rounded to 0
            return parts
        parts.append(rest)


def exact_moments(values: list) -> tuple:
    """`values` (finite floats) → `(n, Σx, Σx², min, max)`, the sums exact (`Fraction`s)."""
    import numpy as np

    total = sum(map(Fraction, exact_parts(values)), Fraction(0))
    a = np.asarray(values, dtype=np.float64)
    size = np.abs(a)
    if size.max() <= SQUARE_LIMIT and not np.any((size < SQUARE_FLOOR) & (a != 0)):
        # x² exactly as square + error (Dekker's product with Veltkamp's split), summed exactly.
        square = a * a
        c = a * 134217729.0  # 2²⁷ + 1
        a_hi = c - (c - a)
        a_lo = a - a_hi
        error = ((a_hi * a_hi - square) + 2.0 * a_hi * a_lo) + a_lo * a_lo
        terms = square.tolist() + error.tolist() if error.any() else square.tolist()  # small integers: no error
        squares = sum(map(Fraction, exact_parts(terms)), Fraction(0))
    else:  # x² would overflow or its error underflow: exact fractions (slow, and never met in practice)
        squares = sum(Fraction(x) ** 2 for x in values)
    return (len(values), total, squares, min(values), max(values))


class MomentsFn(beam.CombineFn):
    """count, mean, population std, min, max, from exact sums of x and x² (`Fraction`s).

    Exact sums merge in any order to the same result, so the statistics are the same bytes
    whichever bundles the runner made (a float accumulator's last digits followed the
    merge order); the mean and variance are rounded once, at the end. An accumulator is
    `(n, Σx, Σx², min, max)`; `exact_moments` makes one from a bundle's values.
    """

    def create_accumulator(self):
        return (0, Fraction(0), Fraction(0), math.inf, -math.inf)

    def add_input(self, acc, x):
        x = float(x)
        return self.merge_accumulators([acc, (1, Fraction(x), Fraction(x) ** 2, x, x)])

    def merge_accumulators(self, accs):
        n, total, squares, lo, hi = 0, Fraction(0), Fraction(0), math.inf, -math.inf
        for nb, tb, sb, lob, hib in accs:
            if nb == 0:
                continue
            n, total, squares, lo, hi = n + nb, total + tb, squares + sb, min(lo, lob), max(hi, hib)
        return (n, total, squares, lo, hi)

    def extract_output(self, acc):
        n, total, squares, lo, hi = acc
        if n == 0:
            return {}
        variance = max((squares - total * total / n) / n, Fraction(0))
        return {"mean": float(total / n), "std": _sqrt(variance), "min": lo, "max": hi}


def _sqrt(x: Fraction) -> float:
    """√x for an exact x ≥ 0, also when x itself is beyond a float (values near 1e200)."""
    try:
        return math.sqrt(float(x))
    except OverflowError:
        half = (x.numerator.bit_length() - x.denominator.bit_length()) // 2
        return math.ldexp(math.sqrt(float(x / 4**half)), half)


class _MergeOnly(beam.CombineFn):
    """`fn` over inputs that are already `fn`'s accumulators (the per-bundle partial results of `_TrainSummary`)."""

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


class _PerFeature(beam.CombineFn):
    """`(feature, values)` → `fns[feature]` over that feature's values: one `CombinePerKey`
    for CombineFns that differ per key (the accumulator carries its feature's name)."""

    def __init__(self, fns: dict):
        self._fns = fns

    def create_accumulator(self):
        return None

    def add_input(self, acc, element):
        name, values = element
        fn = self._fns[name]
        return (name, fn.add_input(fn.create_accumulator() if acc is None else acc[1], values))

    def merge_accumulators(self, accs):
        accs = [a for a in accs if a is not None]
        if not accs:
            return None
        name = accs[0][0]
        return (name, self._fns[name].merge_accumulators([a[1] for a in accs]))

    def compact(self, acc):
        return acc if acc is None else (acc[0], self._fns[acc[0]].compact(acc[1]))

    def extract_output(self, acc):
        return [] if acc is None else self._fns[acc[0]].extract_output(acc[1])


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


class _TrainSummary(beam.DoFn):
    """Train ads or impressions → per-bundle partial statistics, emitted at the bundle's end.

    Combiner lifting by hand, in one pass over each element: every train impression used
    to leave as ~11 tiny elements (one per vocabulary value, presence and number), and
    each crossed the runner's data plane at a `Flatten` before Beam's lifted combine could
    see it (the largest per-element cost of the job, docs/beam_jobs.md). Now a bundle
    leaves as one partial result per key: `(feature, value)` counts (main output),
    `PRESENCE` `(feature, (count, missing))`, `MOMENTS` `(feature, MomentsFn accumulator)`,
    `NUMBERS` `(feature, [values])` for the quantile sketches and `LABELS` `("label",
    (count, positives))`; the `CombinePerKey(_MergeOnly(fn))`s after it merge them.
    """

    def __init__(self, ds: DatasetConfig, source: str):
        self._ds, self._source = ds, source

    def setup(self) -> None:
        ds = self._ds
        features = ds.ad_features if self._source == "ad" else ds.impression_features
        # (name, kind, counted in a vocabulary) once, not per element.
        self._plan = [(f.name, f.kind, f.vocabulary == "auto" and f.name != "category") for f in features]
        self._values = records.AD_VALUES if self._source == "ad" else records.IMP_VALUES
        self._category_presence = self._source == "ad" and "category" not in [f.name for f in ds.ad_features]

    def start_bundle(self) -> None:
        self._vocab: dict = {}  # feature → Counter of its values
        self._presence: dict = {}
        self._numbers: dict = {}
        self._labels = [0, 0]

    def process(self, element) -> None:
        if isinstance(element, list):  # an ad's train impressions (JoinAndChunk's "train_impressions")
            self._add_columns(element)
        else:
            self._add(element)

    def _counter(self, name: str) -> collections.Counter:
        c = self._vocab.get(name)
        if c is None:
            c = self._vocab[name] = collections.Counter()
        return c

    def _add_columns(self, imps: list) -> None:
        """An ad's train impressions, a column at a time: the counts `_add` would make for each
        of them (Counter updates and list methods run in C; this ran once per impression
        and feature)."""
        n = len(imps)
        if not n:
            return
        columns = zip(*[imp[self._values] for imp in imps], strict=True) if self._plan else ()
        for (name, kind, counted), col in zip(self._plan, columns, strict=True):
            if kind == "multi":
                present = [v for v in col if v]
                if counted:
                    self._counter(name).update(itertools.chain.from_iterable(present))
                missing = n - len(present)
            else:
                missing = col.count(None)
                present = [v for v in col if v is not None] if missing else col
                if kind == "numeric":
                    numbers = [v for v in present if v == v]  # NaN != NaN: not a number for the statistics
                    if numbers:
                        self._numbers.setdefault(name, []).extend(numbers)
                elif counted:
                    self._counter(name).update(present)
            p = self._presence.get(name)
            if p is None:
                p = self._presence[name] = [0, 0]
            p[0] += n - missing
            p[1] += missing
        self._labels[0] += n
        self._labels[1] += sum([imp[records.LABEL] for imp in imps])

    def _add(self, element: tuple) -> None:
        presence, numbers = self._presence, self._numbers
        for (name, kind, counted), v in zip(self._plan, element[self._values], strict=True):
            missing = v is None or (kind == "multi" and len(v) == 0)
            p = presence.get(name)
            if p is None:
                p = presence[name] = [0, 0]
            p[1 if missing else 0] += 1
            if missing:
                continue
            if kind == "numeric":
                if not math.isnan(v):
                    numbers.setdefault(name, []).append(v)
            elif counted:
                self._counter(name).update(v if kind == "multi" else (v,))
        if self._source == "ad":
            self._counter("category")[element[records.CATEGORY]] += 1
            if self._category_presence:
                p = presence.setdefault("category", [0, 0])
                p[0] += 1
        else:
            self._labels[0] += 1
            self._labels[1] += element[records.LABEL]

    def finish_bundle(self) -> Iterable:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        window = GlobalWindow()

        def out(tag, value):
            wv = WindowedValue(value, window.max_timestamp(), [window])
            return wv if tag is None else pvalue.TaggedOutput(tag, wv)

        for name, counts in self._vocab.items():
            for value, n in counts.items():
                yield out(None, ((name, value), n))
        for name, (count, missing) in self._presence.items():
            yield out(PRESENCE, (name, (count, missing)))
        for name, values in self._numbers.items():
            yield out(MOMENTS, (name, exact_moments(values)))
            # Sorted: the quantile sketch is approximate and depends on the order of its input,
            # which follows the order ads reach the bundle (a Reshuffle's random keys decide).
            yield out(NUMBERS, (name, sorted(values)))
        if self._labels[0]:
            yield out(LABELS, ("label", tuple(self._labels)))
        self.start_bundle()


def _vocab_lines(kv: tuple) -> tuple:
    feature, value_counts = kv
    ordered = sorted(value_counts, key=lambda vc: (-vc[1], vc[0]))
    return feature, [v for v, _ in ordered]


class VocabAndStats(beam.PTransform):
    """Train ads + train impressions → `vocab/<feature>.txt` files and `stats.json` under `out`.

    `"train_impressions"` elements are impression tuples or lists of them (JoinAndChunk
    emits one list per ad).

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

        # Ads and impressions are summarised apart, so only per-bundle partial results meet at the Flattens.
        parts = {source: pcoll | f"Summary_{source}" >> beam.ParDo(_TrainSummary(ds, source)).with_outputs(
                     PRESENCE, MOMENTS, NUMBERS, LABELS, main=VOCAB)
                 for source, pcoll in (("ad", ads), ("impression", imps))}

        def both(tag: str):
            return (parts["ad"][tag], parts["impression"][tag]) | f"Flatten_{tag}" >> beam.Flatten()

        vocab_counts = (
            both(VOCAB)
            | "CountValues" >> beam.CombinePerKey(_MergeOnly(_Sum()))
            | "MinFrequency" >> beam.Filter(lambda kv: kv[1] >= min_freq[kv[0][0]])
            | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
            | "GroupVocab" >> beam.GroupByKey()
            | "Order" >> beam.Map(_vocab_lines)
        )
        written_vocab = vocab_counts | "WriteVocab" >> beam.Map(self._write_vocab)

        presence = (
            both(PRESENCE)
            | "SumPresence" >> beam.CombinePerKey(_MergeOnly(_Sum()))
            | "PresenceStats" >> beam.Map(lambda kv: (kv[0], {"count": kv[1][0], "missing": kv[1][1]}))
        )
        moments = both(MOMENTS) | "Moments" >> beam.CombinePerKey(_MergeOnly(MomentsFn()))
        # One sketch per feature (features may ask for different numbers of buckets), all in one
        # CombinePerKey: a CombineGlobally chain per feature cost 14 transforms and a side input each.
        sketches = {f.name: ApproximateQuantilesCombineFn.create(num_quantiles=f.num_buckets + 1, input_batched=True)
                    for f in ds.features if f.kind == "numeric"}
        boundaries = [
            both(NUMBERS)
            | "WithFeature" >> beam.Map(lambda kv: (kv[0], kv))
            | "Quantiles" >> beam.CombinePerKey(_PerFeature(sketches))
            | "Boundaries" >> beam.Map(lambda kv: (kv[0], {"boundaries": list(kv[1][1:-1])}))
        ]
        vocab_sizes = vocab_counts | "VocabSize" >> beam.Map(lambda kv: (kv[0], {"vocab_size": len(kv[1])}))
        labels = (parts["impression"][LABELS]
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
