"""The plain tuples that cross the Beam shuffles, and the SequenceExample built from them.

Ads and impressions travel as plain tuples, not NamedTuples or dicts: Beam pickles a
NamedTuple at every shuffle, which made the whole job 10-20% slower (docs/design.md).

    ad         = (ad_id, category, image_uri, image_bytes, ad_values)
    impression = (label, day, user_id, impression_values, passthrough_values)

`ad_values` follows `dataset.ad_features`, `impression_values` follows
`dataset.impression_features` and `passthrough_values` follows `dataset.passthrough`.
A categorical value is a str (None when missing), a multi value a tuple of str, a numeric
value a float (None when missing). In the records a missing string is written as "" and
a missing number as NaN, so every step of a feature list has exactly one value.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import marshal
import pickle
import struct
import threading
from typing import Any, Iterable, Iterator, Sequence

import zstandard  # Beam's own dependency (its zstd file compression)

from tfvctr.config import DatasetConfig

MISSING_NUMBER = float("nan")

AD_ID, CATEGORY, IMAGE_URI, IMAGE_BYTES, AD_VALUES = range(5)
LABEL, DAY, USER_ID, IMP_VALUES, PASSTHROUGH = range(5)


def _value(kind: str, v: Any) -> Any:
    if kind == "multi":
        if v is None:
            return ()
        return tuple(str(x) for x in v)
    if kind == "numeric":
        return None if v is None else float(v)
    return None if v is None else str(v)


def ad_from_row(row: dict, image_bytes: bytes, ds: DatasetConfig) -> tuple:
    """A coerced ads-table row (plus its prepared image) → the ad tuple."""
    values = tuple(_value(f.kind, row.get(f.name)) for f in ds.ad_features)
    return (str(row["ad_id"]), str(row["category"]), str(row["image"]), image_bytes, values)


def _multi(v: Any) -> tuple:
    return () if v is None else tuple(str(x) for x in v)


def _number(v: Any) -> Any:
    return None if v is None else float(v)


def _string(v: Any) -> Any:
    return None if v is None else str(v)


_CONVERT = {"multi": _multi, "numeric": _number}  # any other kind: `_string` (as `_value`)


def impression_from_row(row: dict, ds: DatasetConfig) -> tuple:
    """A coerced impressions-table row → the impression tuple (`_value` per feature, the
    converters looked up once per config: this runs once per impression)."""
    plan = _plan(ds)
    values = tuple([convert(row.get(name)) for name, convert in plan.imp_convert])
    passthrough = tuple([_number(row.get(p)) for p in plan.passthrough])
    return (int(row["label"]), int(row["day"]), str(row["user_id"]), values, passthrough)


def ad_to_row(ad: tuple, ds: DatasetConfig) -> dict:
    """The ad tuple back to a readable row for the dead-letter file (the image as its URI)."""
    row = {"ad_id": ad[AD_ID], "category": ad[CATEGORY], "image": ad[IMAGE_URI]}
    for f, v in zip(ds.ad_features, ad[AD_VALUES], strict=True):
        row[f.name] = list(v) if isinstance(v, tuple) else v
    return row


def impression_to_row(ad_id: str, imp: tuple, ds: DatasetConfig) -> dict:
    """The impression tuple back to a readable row for the dead-letter file."""
    row = {"ad_id": ad_id, "label": imp[LABEL], "day": imp[DAY], "user_id": imp[USER_ID]}
    for f, v in zip(ds.impression_features, imp[IMP_VALUES], strict=True):
        row[f.name] = list(v) if isinstance(v, tuple) else v
    for name, v in zip(ds.passthrough, imp[PASSTHROUGH], strict=True):
        row[name] = v
    return row


PACK_LEVEL = 1  # zstd level of `pack`: 1 takes most of the gain at a fraction of a microsecond an impression
_codecs = threading.local()  # a zstd (de)compressor per thread: a worker runs bundles in threads
_MARSHAL, _PICKLE = b"m", b"p"  # `pack`'s first byte: which serialiser wrote the rest


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_codecs, "compressor"):
        _codecs.compressor = zstandard.ZstdCompressor(level=PACK_LEVEL)
    return _codecs.compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_codecs, "decompressor"):
        _codecs.decompressor = zstandard.ZstdDecompressor()
    return _codecs.decompressor


def pack(value: Any) -> bytes:
    """A batch of plain tuples (a row batch, an ad's impressions) as one bytes value for a shuffle.

    Beam's local runners decode every shuffled value into Python objects and encode it again
    (the FnApiRunner's grouping buffer), and its default coder walks a tuple field by
    field; one bytes value per batch costs one C-level pickle pass each way and sits in the
    runner's memory as bytes (≈ 77 an impression pickled) rather than an object graph
    (docs/beam_jobs.md, speed). Only this job's own DoFns `unpack` it: no outside input
    is ever unpickled.

    Compressed (zstd level `PACK_LEVEL`): the local runners hold the whole join input
    four times over (the Flatten's buffer, the grouping table, its re-encoded output, the
    copy sent to the worker), so its size per impression is most of the in_memory job's
    growth with the number of impressions: 77 → ≈ 25 bytes an impression. zstd with a
    compressor kept per thread, not zlib: a batch is one ad's share of a validation buffer
    (≈ 50 impressions at the benchmark's sizes), and zlib's set-up on every call cost
    ≈ 1.4 µs an impression there, zstd ≈ 0.3 (docs/beam_jobs.md, sixth round).

    Serialised by `marshal` (format 4), with `pickle` as the fallback for any type marshal
    refuses (a subclass of str or float, say), so every value round-trips with its type:
    an impression tuple holds only the plain types marshal writes, in ≈ 1.0 µs against
    pickle's ≈ 1.8 (its memo records every string). Marshal's format may change between
    Python versions; both ends of this shuffle are workers of one job, one version.
    """
    try:
        raw = _MARSHAL + marshal.dumps(value, 4)
    except ValueError:  # a type marshal does not write
        raw = _PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _compressor().compress(raw)


def unpack(data: bytes) -> Any:
    """The inverse of `pack`."""
    raw = memoryview(_decompressor().decompress(data))
    # Written by `pack` in this same job, never outside input.
    return marshal.loads(raw[1:]) if raw[:1] == _MARSHAL else pickle.loads(raw[1:])


# The cyclic collector's thresholds in a process that runs this job's DoFns (`relax_collector`).
RELAXED_THRESHOLDS = (20_000, 10, 10)


def relax_collector() -> None:
    """Makes Python's cyclic garbage collector run ~30 times less often in this process.

    Called in the `setup` of the two DoFns that see every impression (validation and
    chunking), so it acts in every worker process of the preprocess job. With the default
    thresholds (700, 10, 10) a 2-process worker ran ≈ 2,000 young and 12 full collections
    at 1M impressions, 1.7–1.9 CPU s of its ≈ 18: each young collection walks objects that
    die by reference counting a moment later (Beam's decoded elements, rows, protobuf
    pieces), and each full one walks every live object, Beam's own from its imports
    included. At (20,000, 10, 10) most short-lived objects are freed before a collection
    ever sees them: ≈ 0.8 s a worker (docs/beam_jobs.md, sixth round). Cycles are still collected, only later; the job makes few. Never lowers
    thresholds a user has raised; `restored_collector` gives an in-process runner's caller
    its own thresholds back.
    """
    if gc.get_threshold()[0] < RELAXED_THRESHOLDS[0]:
        gc.set_threshold(*RELAXED_THRESHOLDS)


@contextlib.contextmanager
def restored_collector() -> Iterator[None]:
    """Restores the collector's thresholds on exit: the in-memory runner runs the DoFns (and
    their `relax_collector`) in the launching process, which may go on to other work."""
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


_GC_LOCK = threading.Lock()
_gc_pauses = [0, False]  # holders, whether the collector was enabled before the first


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector while the hot loops build impression tuples.

    The tuples (and the lists, strings and floats in them) form no reference cycles, so
    reference counting frees every one of them; the cyclic collector would only walk them
    again and again while a worker holds its validation buffer (`GROUP_BUFFER`) and an
    ad's impressions: ≈ 3 CPU s of each 2-process worker's ≈ 23 at 1M impressions
    (docs/beam_jobs.md, fifth round). Nested and concurrent uses (a worker runs bundles in
    threads) share one pause; the collector is re-enabled, if it was enabled, when the
    last one ends, and then finds any cycle made meanwhile.
    """
    with _GC_LOCK:
        if _gc_pauses[0] == 0:
            _gc_pauses[1] = gc.isenabled()
            gc.disable()
        _gc_pauses[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_pauses[0] -= 1
            if _gc_pauses[0] == 0 and _gc_pauses[1]:
                gc.enable()


def shuffle_key(seed: int, imp: tuple) -> bytes:
    """A deterministic, seed-dependent sort key: sorting by it is a reproducible shuffle."""
    return hashlib.blake2b(repr((seed, imp)).encode(), digest_size=8).digest()


def chunks(impressions: Sequence[tuple], k: int) -> Iterable[Sequence[tuple]]:
    for start in range(0, len(impressions), k):
        yield impressions[start : start + k]


def make_sequence_example(ad: tuple, impressions: Sequence[tuple], chunk_index: int, impression_count: int,
                          ds: DatasetConfig) -> bytes:
    """One chunk as a serialised `tf.train.SequenceExample` (docs/formats.md §2).

    The bytes are exactly those of `SerializeToString(deterministic=True)` (map keys sorted,
    so the same chunk gives the same bytes in any worker and any run; a test compares
    with TensorFlow's own serialisation), written by the small protobuf encoder below so
    that Beam workers never import TensorFlow (seconds and hundreds of MB per process).
    Each impression's steps come from caches of already-encoded steps (`_Steps`): a
    categorical value, a label or a day is encoded once per process, not once per
    impression (the encoder was a fifth of the job's CPU, docs/beam_jobs.md).
    """
    plan = _plan(ds)
    context = {
        "ad_id": _bytes_feature([ad[AD_ID]]),
        "image": _bytes_feature([ad[IMAGE_BYTES]]),
        "category": _bytes_feature([ad[CATEGORY]]),
        "impression_count": _int64_feature(impression_count),
        "chunk_index": _int64_feature(chunk_index),
    }
    for name, kind, v in zip(plan.ad_names, plan.ad_kinds, ad[AD_VALUES], strict=True):
        if name not in context:  # `category` may be a feature too: same column, written once
            context[name] = _feature(kind, v)
    ints, strs = _STEPS.int64, _STEPS.string
    labels, days, users = [], [], []
    columns: list[list[bytes]] = [[] for _ in plan.imp_columns]
    for imp in impressions:
        label, day, user = imp[LABEL], imp[DAY], imp[USER_ID]
        labels.append(ints.get(label) or _STEPS.int64_step(label))
        days.append(ints.get(day) or _STEPS.int64_step(day))
        users.append(strs.get(user) or _STEPS.string_step(user))
        values = imp[IMP_VALUES]
        if len(values) != plan.num_imp:  # as a strict zip over the features would
            raise ValueError(f"impression has {len(values)} feature values, the config {plan.num_imp}")
        for steps, (index, step) in zip(columns, plan.imp_columns, strict=True):
            steps.append(step(values[index]))
    lists = {"label": labels, "day": days, "user_id": users}
    for name, steps in zip(plan.imp_names, columns, strict=True):
        lists[name] = steps
    for j, name in enumerate(plan.passthrough):
        lists[name] = [_numeric_step(imp[PASSTHROUGH][j]) for imp in impressions]
    feature_lists = b"".join(_entry(plan.keys[name], b"".join(lists[name])) for name in plan.sorted_lists)
    return _field(1, _map(context)) + _tag_len(0x12, len(feature_lists)) + feature_lists


class _Plan:
    """What `make_sequence_example` needs of a `DatasetConfig`, worked out once per config."""

    def __init__(self, ds: DatasetConfig):
        self.ad_names = [f.name for f in ds.ad_features]
        self.ad_kinds = [f.kind for f in ds.ad_features]
        # `user_id` may be a (hashed) feature too: its list is written once, from imp[USER_ID].
        imp = [(i, f) for i, f in enumerate(ds.impression_features) if f.name != "user_id"]
        self.imp_convert = [(f.name, _CONVERT.get(f.kind, _string)) for f in ds.impression_features]
        self.imp_names = [f.name for _, f in imp]
        self.num_imp = len(ds.impression_features)
        self.imp_columns = [(i, _STEPS.step_fn(f.kind)) for i, f in imp]
        self.passthrough = list(ds.passthrough)
        names = ["label", "day", "user_id", *self.imp_names, *self.passthrough]
        self.sorted_lists = sorted(names)
        self.keys = {name: _field(1, name.encode("utf-8")) for name in names}


_PLANS: dict[int, tuple[DatasetConfig, _Plan]] = {}


def _plan(ds: DatasetConfig) -> _Plan:
    # Keyed by identity (a DatasetConfig is mutable, so unhashable); the config is kept in
    # the value so that its id cannot be reused by another object.
    cached = _PLANS.get(id(ds))
    if cached is None or cached[0] is not ds:
        cached = _PLANS[id(ds)] = (ds, _Plan(ds))
    return cached[1]


class _Steps:
    """Encoded feature-list steps (`_field(1, Feature)`), cached by value per process.

    Categorical values, labels, days and multi values repeat across impressions; each is
    encoded once. A cache is emptied when it reaches `LIMIT` entries (a high-cardinality
    column such as user_id keeps memory bounded). Numbers are not cached: 0.0 and -0.0
    (and NaNs) are equal or unequal as dict keys where their float32 bytes are not.
    """

    LIMIT = 1 << 17

    def __init__(self) -> None:
        self.int64: dict = {}
        self.string: dict = {}
        self.multi: dict = {}

    def int64_step(self, value: int) -> bytes:
        return self._put(self.int64, value, _field(1, _int64_feature(value)))

    def string_step(self, value) -> bytes:
        # A missing string is written as "" (docs/formats.md §2).
        return self._put(self.string, value, _field(1, _bytes_feature(["" if value is None else value])))

    def multi_step(self, value) -> bytes:
        step = self.multi.get(value)
        return step if step is not None else self._put(self.multi, value, _field(1, _bytes_feature(value)))

    def categorical(self, value) -> bytes:
        step = self.string.get(value)
        return step if step is not None else self.string_step(value)

    def step_fn(self, kind: str):
        if kind == "numeric":
            return _numeric_step
        return self.multi_step if kind == "multi" else self.categorical

    def _put(self, cache: dict, key, step: bytes) -> bytes:
        if len(cache) >= self.LIMIT:
            cache.clear()
        cache[key] = step
        return step


_STEPS = _Steps()


def _numeric_step(v: Any) -> bytes:
    if v is None:
        return _NAN_STEP
    try:  # the step of one float: a constant prefix (set at the end of the module), then 4 bytes
        return _NUMBER_PREFIX + _PACK_F(v)
    except OverflowError:
        return _field(1, _float_feature([v]))


_PACK_F = struct.Struct("<f").pack


def _entry(key_field: bytes, value: bytes) -> bytes:
    """One map entry {key = 1, value = 2} as field 1 of the map's message."""
    body_len = len(key_field) + len(value) + len(_varint(len(value))) + 1
    return _tag_len(0x0A, body_len) + key_field + _tag_len(0x12, len(value)) + value


def _tag_len(tag: int, n: int) -> bytes:
    """A one-byte tag then the varint length `n` (the start of a length-delimited field)."""
    return bytes((tag, n)) if n < 0x80 else bytes((tag,)) + _varint(n)


# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/) of tf.train.Feature
# and friends: Feature {bytes_list = 1, float_list = 2, int64_list = 3}; each list holds
# `repeated value = 1` (floats and ints packed); map entries are {key = 1, value = 2}.


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[Any]) -> bytes:
    encoded = (v if isinstance(v, bytes) else v.encode("utf-8") for v in values)
    return _field(1, b"".join(_field(1, v) for v in encoded))


def _float_feature(values: Sequence[float]) -> bytes:
    if not values:
        return _field(2, b"")
    try:
        packed = struct.pack(f"<{len(values)}f", *values)
    except OverflowError:  # beyond float32: round to +-inf as protobuf's float cast does
        import numpy as np

        packed = np.asarray(values, dtype=np.float64).astype("<f4").tobytes()
    return _field(2, _field(1, packed))


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(int(value))))


def _feature(kind: str, v: Any) -> bytes:
    # A missing value keeps its one slot (the trainer parses fixed-length features): NaN
    # for a number and "" for a string, which the trainer maps to 0 (docs/formats.md §2).
    if kind == "numeric":
        return _float_feature([MISSING_NUMBER if v is None else v])
    if kind == "multi":
        return _bytes_feature(v)
    return _bytes_feature(["" if v is None else v])


def _map(entries: dict[str, bytes]) -> bytes:
    """A map<string, message> in deterministic order: entries sorted by key."""
    return b"".join(_field(1, _field(1, key.encode("utf-8")) + _field(2, entries[key])) for key in sorted(entries))


_NAN_STEP = _field(1, _feature("numeric", None))
_NUMBER_PREFIX = _field(1, _float_feature([0.0]))[:-4]
