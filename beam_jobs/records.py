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

import hashlib
import pickle
import struct
from typing import Any, Iterable, Sequence

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


def impression_from_row(row: dict, ds: DatasetConfig) -> tuple:
    """A coerced impressions-table row → the impression tuple."""
    values = tuple(_value(f.kind, row.get(f.name)) for f in ds.impression_features)
    passthrough = tuple(None if row.get(p) is None else float(row[p]) for p in ds.passthrough)
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


def pack(value: Any) -> bytes:
    """A batch of plain tuples (a row batch, an ad's impressions) as one bytes value for a shuffle.

    Beam's local runners decode every shuffled value into Python objects and encode it again
    (the FnApiRunner's grouping buffer), and its default coder walks a tuple field by
    field; one bytes value per batch costs one C-level pickle pass each way and sits in the
    runner's memory as ~30 bytes an impression rather than an object graph
    (docs/beam_jobs.md, speed). Only this job's own DoFns `unpack` it: no outside input
    is ever unpickled.
    """
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes) -> Any:
    """The inverse of `pack`."""
    return pickle.loads(data)  # written by `pack` in this same job, never outside input


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
    """
    context = {
        "ad_id": _bytes_feature([ad[AD_ID]]),
        "image": _bytes_feature([ad[IMAGE_BYTES]]),
        "category": _bytes_feature([ad[CATEGORY]]),
        "impression_count": _int64_feature(impression_count),
        "chunk_index": _int64_feature(chunk_index),
    }
    for f, v in zip(ds.ad_features, ad[AD_VALUES], strict=True):
        if f.name not in context:  # `category` may be a feature too: same column, written once
            context[f.name] = _feature(f.kind, v)
    names = ["label", "day", "user_id"]
    for f in ds.impression_features:
        if f.name != "user_id":  # `user_id` may be a (hashed) feature too: written once
            names.append(f.name)
    lists: list[list[bytes]] = [[] for _ in names]
    skip_user = [f.name == "user_id" for f in ds.impression_features]
    for imp in impressions:
        lists[0].append(_int64_feature(imp[LABEL]))
        lists[1].append(_int64_feature(imp[DAY]))
        lists[2].append(_bytes_feature([imp[USER_ID]]))
        position = 3
        for f, skip, v in zip(ds.impression_features, skip_user, imp[IMP_VALUES], strict=True):
            if not skip:
                lists[position].append(_feature(f.kind, v))
                position += 1
    for j, name in enumerate(ds.passthrough):
        names.append(name)
        lists.append([_feature("numeric", imp[PASSTHROUGH][j]) for imp in impressions])
    feature_lists = {name: b"".join(_field(1, feature) for feature in steps) for name, steps in zip(names, lists,
                                                                                                   strict=True)}
    return _field(1, _map(context)) + _field(2, _map(feature_lists))


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
