"""The tf.data input pipeline over grouped TFRecords (docs/formats.md §2).

A batch holds n ads with all their (at most K) impressions, the layout both papers train
on (DeepCTR §4.2 Eq. 6, CSCNN §3.4.1): the CNN runs once per ad image and its output is
gathered to the impressions through `ad_index`. One element of `make_dataset` is

    inputs = {"image": [n,H,W,3] float32 in [0,1], "category": [n] int32,
              "ad_index": [N] int32, <ad feature>: [n,...], <impression feature>: [N,...]}
    labels = [N] float32
    meta   = {"ad_id": [n] string, "user_id": [N] string, <passthrough>: [N] float32}

(`meta` only when `with_meta=True`, i.e. for evaluation.)

Sampling (`training.sampling`):

* `grouped`: every chunk once per epoch in a seeded shuffled order, repeated forever; the
  trainer runs a step count, so every worker runs the same number of steps.
* `alg1`: DeepCTR Alg. 1. Every batch holds n *distinct* ads drawn with probability
  proportional to their impression count (Eq. 7; n draws without replacement by the
  Gumbel-top-n trick, i.e. successive draws in proportion to p(u) among the ads not yet
  drawn), and for each ad k impressions drawn uniformly with replacement from *all* of its
  impressions (every chunk of the ad in this worker's shards). The worker merges its
  shards' chunks per ad once, in memory (`load_ads`), so this mode is for data that fits
  a worker's memory; at scale use `grouped`, which streams.
* `ungrouped`: one image per impression (n = N). Only for `benchmarks/grouped_vs_ungrouped.py`.

Resume: the per-worker iterator of this dataset is checkpointable (`tf.train.Checkpoint(
iterator=...)`), including its shuffle buffer. Random augmentation and sampling use
stateless ops seeded by (seed, element number), so a restored iterator continues the
exact same random stream, and no stateful RNG has to be saved.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Optional

import tensorflow as tf

from tfvctr import layout
from tfvctr.config import Config, DatasetConfig, FeatureConfig
from tfvctr.errors import DataError
from tfvctr.features import FeatureEncoder
from tfvctr.io import fs

SPLITS = layout.SPLITS  # ("train", "valid", "eval")
_PATTERNS = layout.SHARD_PATTERNS


# --------------------------------------------------------------------------- files


def list_shards(data_dir: str, split: str) -> list[str]:
    """Returns the sorted TFRecord shards of `DATA_DIR/split`; DataError if there are none."""
    if split not in SPLITS:
        raise ValueError(f"Invalid value received for argument `split`. Expected one of {SPLITS}. Received: split={split!r}")
    folder = fs.join(data_dir, split)
    files = sorted(f for p in _PATTERNS for f in fs.glob(fs.join(folder, p)))
    if not files:
        raise DataError(
            f"{folder}: no TFRecord shards (*.tfrecord or *.tfrecord.gz); "
            f"run `tfvctr preprocess` to write them, or check --data"
        )
    return files


def shard_files(files: list[str], num_workers: int, worker_index: int) -> list[str]:
    """Per-worker file sharding (docs/design.md "Scale: what gives first"): worker i reads files i, i+W, ..."""
    if len(files) < num_workers:
        raise DataError(
            f"{os.path.dirname(files[0])}: {len(files)} shard(s) for {num_workers} workers; "
            f"every worker needs at least one shard (write more shards with dataset.num_shards)"
        )
    return files[worker_index::num_workers]


def _compression(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def find_corrupt_shard(files: list[str]) -> Optional[str]:
    """Reads every shard raw and returns the first one that is not valid TFRecord, if any."""
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type=_compression(path)):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            return path
    return None


@contextlib.contextmanager
def data_errors(files: list[str]) -> Iterator[None]:
    """Turns tf.data failures caused by the input files into one-line `DataError`s.

    DataLossError does not say which file was corrupt, so the shards are scanned (only after
    a failure) to name it.
    """
    try:
        yield
    except tf.errors.DataLossError as e:
        bad = find_corrupt_shard(files)
        where = bad or (os.path.dirname(files[0]) if files else "?")
        raise DataError(f"{where}: corrupt TFRecord shard ({e.message.splitlines()[0]})") from None
    except tf.errors.InvalidArgumentError as e:
        message = e.message.splitlines()[0]
        if "Feature:" in message or "Name:" in message or "Key:" in message or "decode" in message.lower():
            where = os.path.dirname(files[0]) if files else "?"
            raise DataError(f"{where}: records do not match the config: {message}") from None
        raise


# --------------------------------------------------------------------------- parsing


def _context_spec(f: FeatureConfig) -> Any:
    if f.kind == "categorical":
        return tf.io.FixedLenFeature([], tf.string, default_value=str(f.default) if f.default is not None else "")
    if f.kind == "multi":
        return tf.io.RaggedFeature(tf.string)
    return tf.io.FixedLenFeature([], tf.float32, default_value=float(f.default) if f.default is not None else 0.0)


def _sequence_spec(f: FeatureConfig) -> Any:
    if f.kind == "categorical":
        return tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=False)
    if f.kind == "multi":
        return tf.io.RaggedFeature(tf.string)
    return tf.io.FixedLenSequenceFeature([], tf.float32)


def parse_specs(dataset: DatasetConfig) -> tuple[dict, dict]:
    """The context and feature-list specs of one chunk record (docs/formats.md §2)."""
    context = {
        "ad_id": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
        "category": tf.io.FixedLenFeature([], tf.string),
        "impression_count": tf.io.FixedLenFeature([], tf.int64),
    }
    sequence = {
        "label": tf.io.FixedLenSequenceFeature([], tf.int64),
        "user_id": tf.io.FixedLenSequenceFeature([], tf.string),
    }
    for f in dataset.ad_features:
        if f.name != "category":  # the category is always in the context
            context[f.name] = _context_spec(f)
    for f in dataset.impression_features:
        if f.name != "user_id":
            sequence[f.name] = _sequence_spec(f)
    for name in dataset.passthrough:
        sequence[name] = tf.io.FixedLenSequenceFeature([], tf.float32)
    return context, sequence


def parse_chunk(serialized: tf.Tensor, dataset: DatasetConfig) -> dict:
    """Parses one chunk: context scalars plus `seq/<name>` per-impression tensors [L, ...]."""
    context_spec, sequence_spec = parse_specs(dataset)
    context, sequence = tf.io.parse_single_sequence_example(serialized, context_spec, sequence_spec)
    out = dict(context)
    for name, value in sequence.items():
        out[f"seq/{name}"] = value
    return out


def decode_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """Decodes a JPEG/PNG to float32 [size, size, 3] in [0, 1] (Beam stored it at `size`²)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.image.convert_image_dtype(image, tf.float32)


def augment_image(image: tf.Tensor, seed: tf.Tensor, padding: int, crop: bool, flip: bool) -> tf.Tensor:
    """Random crop after zero padding + horizontal flip, stateless so a resumed run repeats it."""
    size = image.shape[0]
    if crop and padding > 0:
        padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
        image = tf.image.stateless_random_crop(padded, [size, size, 3], seed=seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return image


# --------------------------------------------------------------------------- batching


def _seed_pair(seed: int, salt: int, index: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(seed * 7919 + salt, tf.int64), tf.cast(index, tf.int64)])


def load_ads(files: list[str], dataset: DatasetConfig) -> dict:
    """Every chunk of `files` merged per ad (for `alg1`): `{name: [A]}` context tensors and
    `{"seq/<name>": ragged [A, None, ...]}` holding all of each ad's impressions, in order of
    first appearance; `impression_count` is the ad's total."""
    records = tf.data.TFRecordDataset(files, compression_type=_compression(files[0]))
    order: dict[bytes, int] = {}
    context: list[dict] = []
    seqs: list[dict[str, list]] = []
    for chunk in records.map(lambda r: parse_chunk(r, dataset)):
        ad = chunk["ad_id"].numpy()
        if ad not in order:
            order[ad] = len(order)
            context.append({k: v for k, v in chunk.items() if not k.startswith("seq/")})
            seqs.append({k: [] for k in chunk if k.startswith("seq/")})
        for k, v in chunk.items():
            if k.startswith("seq/"):
                seqs[order[ad]][k].append(v)
    if not order:
        raise DataError(f"{os.path.dirname(files[0])}: no chunks to sample from")
    merged: dict[str, Any] = {}
    for name, first in context[0].items():
        values = [c[name] for c in context]
        merged[name] = tf.ragged.stack(values) if first.shape.rank else tf.stack(values)
    for name in seqs[0]:
        per_ad = [tf.concat(s[name], axis=0) for s in seqs]
        lengths = [int(v.shape[0]) if not isinstance(v, tf.RaggedTensor) else int(v.nrows()) for v in per_ad]
        merged[name] = tf.RaggedTensor.from_row_lengths(tf.concat(per_ad, axis=0), lengths)
    merged["impression_count"] = tf.cast(merged["seq/label"].row_lengths(), tf.int64)
    return merged


def alg1_draws(step: tf.Tensor, counts: tf.Tensor, n: int, k: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """DeepCTR Alg. 1, one batch: n distinct ads by p(u) ∝ #V_u (Eq. 7), k impressions each.

    Gumbel-top-n: the n largest `log #V_u + Gumbel noise` are n successive draws without
    replacement, each in proportion to p(u) among the ads left. Then k impression positions
    per ad, uniform with replacement over all of that ad's impressions.

    Returns:
        `(ads [n] int32, picks [n, k] int32)`; stateless in `(seed, step)`.
    """
    counts = tf.cast(counts, tf.float32)
    u = tf.random.stateless_uniform(tf.shape(counts), seed=_seed_pair(seed, 1, step), minval=1e-12, maxval=1.0)
    keys = tf.math.log(counts) - tf.math.log(-tf.math.log(u))
    ads = tf.math.top_k(keys, k=n, sorted=False).indices
    lengths = tf.gather(counts, ads)
    r = tf.random.stateless_uniform([n, k], seed=_seed_pair(seed, 2, step))
    picks = tf.minimum(tf.cast(tf.floor(r * lengths[:, None]), tf.int32), tf.cast(lengths[:, None], tf.int32) - 1)
    return tf.cast(ads, tf.int32), picks


def _alg1_chunks(files: list[str], dataset: DatasetConfig, n: int, k: int, seed: int) -> tf.data.Dataset:
    """`(element number, ad chunk of k impressions)`, n distinct ads after each other per batch."""
    ads = load_ads(files, dataset)
    num_ads = int(ads["impression_count"].shape[0])
    if n > num_ads:
        raise DataError(
            f"{os.path.dirname(files[0])}: training.sampling alg1 draws {n} distinct ads per batch "
            f"(training.ads_per_batch) but this worker's shards hold {num_ads}; lower ads_per_batch"
        )
    counts = ads["impression_count"]

    def batch_of(step):
        chosen, picks = alg1_draws(step, counts, n, k, seed)
        return tf.data.Dataset.from_tensor_slices((step * n + tf.range(n, dtype=tf.int64), chosen, picks))

    def gather(index, a, picks):
        out = {}
        for name, value in ads.items():
            row = value[a]
            out[name] = tf.gather(row, picks) if name.startswith("seq/") else row
        return index, out

    return tf.data.Dataset.counter().flat_map(batch_of).map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _ungroup(chunk: dict) -> dict:
    """One chunk of L impressions → L rows of one-impression chunks (to `unbatch`), each with
    its own copy of the image: what training without grouping reads and decodes."""
    length = tf.shape(chunk["seq/label"])[0]
    out = {}
    for name, value in chunk.items():
        if name.startswith("seq/"):
            out[name] = tf.expand_dims(value, 1)  # [L, ...] → [L, 1, ...]
        else:
            out[name] = tf.repeat(tf.expand_dims(value, 0), length, axis=0)
    return out


def _flatten_batch(batch: dict, dataset: DatasetConfig) -> tuple[dict, tf.Tensor, dict]:
    """[n ads] × ragged impressions → (raw inputs, labels [N], meta) with `ad_index` [N]."""
    # With a fixed impression count per ad (alg1: k, ungrouped: 1) ragged_batch gives dense
    # [n, k] tensors; make every per-impression tensor ragged so one code path flattens all.
    batch = {
        k: (tf.RaggedTensor.from_tensor(v) if k.startswith("seq/") and not isinstance(v, tf.RaggedTensor) else v)
        for k, v in batch.items()
    }
    labels_ragged = batch["seq/label"]
    ad_index = tf.cast(labels_ragged.value_rowids(), tf.int32)
    raw = {"image": batch["image"], "category": batch["category"], "ad_index": ad_index}
    for f in dataset.ad_features:
        if f.name != "category":
            raw[f.name] = batch[f.name]
    for f in dataset.impression_features:
        value = batch[f"seq/{f.name}"]
        raw[f.name] = value.values  # [N] or, for multi, ragged [N, None]
    labels = tf.cast(labels_ragged.values, tf.float32)
    meta = {"ad_id": batch["ad_id"], "user_id": batch["seq/user_id"].values}
    for name in dataset.passthrough:
        meta[name] = batch[f"seq/{name}"].values
    return raw, labels, meta


def make_dataset(
    config: Config,
    data_dir: str,
    split: str = "train",
    *,
    training: bool = True,
    encoder: Optional[Callable[[dict], dict]] = None,
    batch_size: Optional[int] = None,
    num_workers: int = 1,
    worker_index: int = 0,
    sampling: Optional[str] = None,
    with_meta: bool = False,
    files: Optional[list[str]] = None,
) -> tf.data.Dataset:
    """Builds the batched dataset of one worker (see the module docstring for the layout).

    Args:
        config: the typed config (dataset + training sections are used).
        data_dir: the folder written by `tfvctr preprocess`.
        split: "train" or "eval".
        training: shuffle, repeat forever, augment and sample; False reads every chunk once
            in file order, without augmentation (evaluation).
        encoder: maps raw features to ids (`tfvctr.features.FeatureEncoder`); default
            `FeatureEncoder.from_data_dir(config.dataset, data_dir)`.
        batch_size: ads per batch of this worker (default `training.ads_per_batch`).
        num_workers, worker_index: file sharding across workers.
        sampling: overrides `training.sampling`.
        with_meta: also yield `meta` (ad_id, user_id, passthrough) for evaluation.
        files: the shards to read (default: all of `DATA_DIR/split`).

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)` or `(inputs, labels, meta)`.
    """
    ds_config, tr = config.dataset, config.training
    sampling = sampling or (tr.sampling if training else "grouped")
    if sampling not in ("grouped", "alg1", "ungrouped"):
        raise ValueError(
            f"Invalid value received for argument `sampling`. Expected 'grouped', 'alg1' or 'ungrouped'. Received: sampling={sampling!r}"
        )
    files = files or list_shards(data_dir, split)
    files = shard_files(files, num_workers, worker_index)
    if encoder is None:
        encoder = FeatureEncoder.from_data_dir(ds_config, data_dir)
    batch_size = batch_size or tr.ads_per_batch
    seed = tr.seed + 1000 * worker_index
    size = ds_config.image_size
    augment = tr.augment

    if training and sampling == "alg1":
        # Element numbers seed the augmentation below, as enumerate() does for the others.
        chunks = _alg1_chunks(files, ds_config, batch_size, tr.impressions_per_ad, seed)
    else:
        file_ds = tf.data.Dataset.from_tensor_slices(files)
        if training:
            file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        records = file_ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=_compression(files[0])),
            cycle_length=min(len(files), 8),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if training:
            records = records.shuffle(tr.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        chunks = records.map(lambda r: parse_chunk(r, ds_config), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if sampling == "ungrouped":
            chunks = chunks.map(_ungroup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
        # Element numbers seed the stateless augmentation ops (resumable randomness).
        chunks = chunks.enumerate()

    def prepare(index, chunk):
        chunk = dict(chunk)
        image = decode_image(chunk.pop("image"), size)
        if training and (augment.random_crop or augment.flip):
            image = augment_image(image, _seed_pair(seed, 3, index), augment.crop_padding, augment.random_crop, augment.flip)
        chunk["image"] = image
        chunk.pop("impression_count")
        return chunk

    chunks = chunks.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = chunks.ragged_batch(batch_size, drop_remainder=training)

    def finish(batch):
        raw, labels, meta = _flatten_batch(batch, ds_config)
        inputs = dict(encoder(raw))
        inputs["image"] = raw["image"]
        inputs["ad_index"] = raw["ad_index"]
        return (inputs, labels, meta) if with_meta else (inputs, labels)

    return batches.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def check_vocabularies(dataset: DatasetConfig, data_dir: str) -> None:
    """DataError if a `vocabulary: auto` feature has no vocab file in DATA_DIR/vocab."""
    missing = [
        f.name
        for f in dataset.features
        if f.kind in ("categorical", "multi") and f.vocabulary == "auto" and not fs.exists(fs.join(data_dir, layout.vocab_file(f.name)))
    ]
    if missing:
        raise DataError(
            f"{fs.join(data_dir, 'vocab')}: no vocabulary file for feature(s) {', '.join(missing)}; "
            f"the config does not match the data (was it preprocessed with another config?)"
        )
