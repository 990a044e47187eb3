"""A tiny writer of grouped TFRecords (docs/formats.md §2) for tests, independent of Beam.

`write_dataset(root, ...)` makes `root/{train,eval}/part-*.tfrecord`, `root/vocab/*.txt`,
`root/stats.json` and `root/ad_counts.jsonl` from a small synthetic click log in which the
click probability depends on the image brightness (so a CNN has something to learn) and on
one categorical impression feature.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
from PIL import Image

from tfvctr.config import config_from_dict

CATEGORIES = ["shoes", "bags", "hats"]
DEVICES = ["ios", "android", "web"]
INTERESTS = ["sport", "music", "food", "travel"]


def tiny_config_dict(image_size: int = 16, **training: Any) -> dict:
    """A config over the fixture's features with a tiny model; `training` overrides."""
    train = {
        "steps": 4,
        "ads_per_batch": 4,
        "learning_rate": 0.05,
        "checkpoint_every": 2,
        "log_every": 1,
        "shuffle_buffer": 16,
        "augment": {"random_crop": True, "crop_padding": 2, "flip": True},
    }
    train.update(training)
    return {
        "name": "tiny",
        "dataset": {
            "image_size": image_size,
            "image_format": "png",
            "impressions_per_chunk": 5,
            "passthrough": ["true_ctr"],
            "features": [
                {"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto"},
                {"name": "user_id", "source": "impression", "kind": "categorical", "hash_buckets": 50},
                {"name": "interests", "source": "impression", "kind": "multi", "vocabulary": "auto", "max_length": 3},
                {"name": "position", "source": "impression", "kind": "numeric", "transform": "normalize"},
                {"name": "brand", "source": "ad", "kind": "categorical", "vocabulary": "auto"},
                {"name": "price", "source": "ad", "kind": "numeric", "transform": "bucketize", "num_buckets": 4},
            ],
        },
        "model": {
            "architecture": "cscnn_dcn",
            "backbone": "cnnf",
            "backbone_width": 0.0625,
            "attention": "none",
            "visual_dim": 4,
            "deep_layers": [8],
            "cross_layers": 1,
        },
        "training": train,
    }


def tiny_config(image_size: int = 16, **training: Any):
    return config_from_dict(tiny_config_dict(image_size, **training), "tiny")


def _png(brightness: float, size: int, rng: np.random.Generator) -> bytes:
    pixels = np.clip(brightness * 255 + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_chunk(ad: dict, impressions: list[dict], chunk_index: int, impression_count: int) -> bytes:
    """One SequenceExample (docs/formats.md §2) serialised deterministically."""
    import tensorflow as tf

    def b(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def f(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    context = {
        "ad_id": b([ad["ad_id"]]),
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ad["image"]])),
        "category": b([ad["category"]]),
        "impression_count": i([impression_count]),
        "chunk_index": i([chunk_index]),
        "brand": b([ad["brand"]]),
        "price": f([ad["price"]]),
    }
    lists = {
        "label": [i([imp["label"]]) for imp in impressions],
        "day": [i([imp["day"]]) for imp in impressions],
        "user_id": [b([imp["user_id"]]) for imp in impressions],
        "device": [b([imp["device"]]) for imp in impressions],
        "interests": [b(imp["interests"]) for imp in impressions],
        "position": [f([imp["position"]]) for imp in impressions],
        "true_ctr": [f([imp["true_ctr"]]) for imp in impressions],
    }
    example = tf.train.SequenceExample(
        context=tf.train.Features(feature=context),
        feature_lists=tf.train.FeatureLists(
            feature_list={k: tf.train.FeatureList(feature=v) for k, v in lists.items()}
        ),
    )
    return example.SerializeToString(deterministic=True)


def write_dataset(
    root: str,
    num_ads: int = 24,
    image_size: int = 16,
    k: int = 5,
    num_shards: int = 2,
    seed: int = 0,
    max_impressions: int = 12,
    eval_ads: int = 6,
    min_impressions: int = 1,
) -> dict:
    """Writes a grouped dataset under `root`; returns a summary (counts per split)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    ads = []
    for a in range(num_ads):
        brightness = float(rng.uniform(0.1, 0.9))
        ads.append(
            {
                "ad_id": f"ad{a:03d}",
                "category": CATEGORIES[a % len(CATEGORIES)],
                "brand": f"brand{a % 4}",
                "price": float(rng.uniform(1, 100)),
                "brightness": brightness,
                "image": _png(brightness, image_size, rng),
            }
        )
    splits: dict[str, list[bytes]] = {"train": [], "eval": []}
    counts = {"train": 0, "eval": 0}
    ad_counts = []
    for a, ad in enumerate(ads):
        # The last `eval_ads` ads appear only in eval: they are the cold ads.
        n_train = 0 if a >= num_ads - eval_ads else int(rng.integers(min_impressions, max_impressions + 1))
        n_eval = int(rng.integers(1, 4))
        ad_counts.append(
            {"ad_id": ad["ad_id"], "category": ad["category"], "image": f"{ad['ad_id']}.png",
             "train_impressions": n_train, "eval_impressions": n_eval}
        )
        for split, n, day in (("train", n_train, 0), ("eval", n_eval, 1)):
            imps = []
            for _ in range(n):
                device = DEVICES[int(rng.integers(0, 3))]
                logit = 3.0 * (ad["brightness"] - 0.5) + (1.0 if device == "ios" else -0.5)
                p = 1.0 / (1.0 + np.exp(-logit))
                imps.append(
                    {
                        "label": int(rng.random() < p),
                        "day": day,
                        "user_id": f"u{int(rng.integers(0, 6))}",
                        "device": device,
                        "interests": list(rng.choice(INTERESTS, size=int(rng.integers(0, 3)), replace=False)),
                        "position": float(rng.integers(1, 6)),
                        "true_ctr": float(p),
                    }
                )
            counts[split] += n
            for c in range(0, n, k):
                splits[split].append(make_chunk(ad, imps[c : c + k], c // k, n))
    for split, records in splits.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for s in range(num_shards):
            path = os.path.join(root, split, f"part-{s:05d}-of-{num_shards:05d}.tfrecord")
            with tf.io.TFRecordWriter(path) as w:
                for r in records[s::num_shards]:
                    w.write(r)
    os.makedirs(os.path.join(root, "vocab"), exist_ok=True)
    vocabs = {"device": DEVICES, "interests": INTERESTS, "brand": [f"brand{i}" for i in range(4)], "category": CATEGORIES}
    for name, values in vocabs.items():
        with open(os.path.join(root, "vocab", f"{name}.txt"), "w") as f:
            f.write("".join(v + "\n" for v in values))
    stats = {
        "device": {"count": counts["train"], "missing": 0, "vocab_size": 3},
        "interests": {"count": counts["train"], "missing": 0, "vocab_size": 4},
        "brand": {"count": counts["train"], "missing": 0, "vocab_size": 4},
        "user_id": {"count": counts["train"], "missing": 0, "vocab_size": 6},
        "category": {"count": counts["train"], "missing": 0, "vocab_size": 3},
        "position": {"count": counts["train"], "missing": 0, "mean": 3.0, "std": 1.4, "min": 1.0, "max": 5.0,
                     "boundaries": [2.0, 3.0, 4.0]},
        "price": {"count": counts["train"], "missing": 0, "mean": 50.0, "std": 28.0, "min": 1.0, "max": 100.0,
                  "boundaries": [25.0, 50.0, 75.0]},
        "label": {"count": counts["train"], "positives": 0},
    }
    with open(os.path.join(root, "stats.json"), "w") as f:
        json.dump(stats, f)
    with open(os.path.join(root, "ad_counts.jsonl"), "w") as f:
        for row in ad_counts:
            f.write(json.dumps(row) + "\n")
    return {"impressions": counts, "chunks": {s: len(r) for s, r in splits.items()}, "ads": num_ads}
