"""Tiny configs and batches shared by the model tests (16 px images, width 1/16)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfvctr.config import Config, config_from_dict

FEATURES = [
    {"name": "user_id", "source": "impression", "kind": "categorical", "hash_buckets": 7},
    {"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto"},
    {"name": "tags", "source": "impression", "kind": "multi", "vocabulary": "auto", "max_length": 3},
    {"name": "price", "source": "ad", "kind": "numeric", "transform": "normalize"},
    {"name": "brand", "source": "ad", "kind": "categorical", "vocabulary": "auto"},
    {"name": "category", "source": "ad", "kind": "categorical", "vocabulary": "auto"},
]
VOCAB_SIZES = {"user_id": 8, "device": 4, "tags": 5, "brand": 4, "category": 3, "ad_id": 6}
NUM_CATEGORIES = 3


def tiny_config(architecture: str = "cscnn_dcn", features=None, **model) -> Config:
    model_cfg = {
        "architecture": architecture,
        "backbone": "cnnf",
        "backbone_width": 0.0625,
        "attention": "cscnn",
        "visual_dim": 4,
        "deep_layers": [16, 8],
        "cross_layers": 2,
        "deepctr": {"convnet_dim": 4, "basicnet_dim": 4, "combnet_layers": [8], "dropout": 0.0},
        "vbpr": {"factors": 3, "visual_factors": 3},
    }
    for key, value in model.items():
        if isinstance(value, dict):
            model_cfg[key] = {**model_cfg.get(key, {}), **value}
        else:
            model_cfg[key] = value
    return config_from_dict(
        {"dataset": {"image_size": 16, "features": features or FEATURES}, "model": model_cfg, "training": {"seed": 0}}
    )


def tiny_batch(seed: int = 0, ad_index=(0, 0, 1, 1, 1), extra=None) -> dict:
    """2 ads (n) with 5 impressions (N) by default."""
    rng = np.random.default_rng(seed)
    n = max(ad_index) + 1
    big_n = len(ad_index)
    batch = {
        "image": tf.constant(rng.uniform(size=(n, 16, 16, 3)), tf.float32),
        "category": tf.constant(rng.integers(1, NUM_CATEGORIES, size=n), tf.int32),
        "ad_index": tf.constant(ad_index, tf.int32),
        "user_id": tf.constant(rng.integers(1, 8, size=big_n), tf.int32),
        "device": tf.constant(rng.integers(0, 4, size=big_n), tf.int32),
        "tags": tf.constant(rng.integers(0, 5, size=(big_n, 3)), tf.int32),
        "price": tf.constant(rng.normal(size=n), tf.float32),
        "brand": tf.constant(rng.integers(0, 4, size=n), tf.int32),
    }
    batch.update(extra or {})
    return batch


def train_step(model, batch, labels, lr: float = 0.1):
    """One SGD step on the summed log loss; returns (old values, gradients) per variable."""
    from tfvctr.models.losses import pointwise_loss

    variables = model.trainable_variables
    old = [np.array(v.numpy()) for v in variables]
    with tf.GradientTape() as tape:
        loss = pointwise_loss(labels, model(batch, training=True))
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads, strict=True):
        if g is not None:
            v.assign_sub(lr * tf.convert_to_tensor(g))
    return dict(zip([id(v) for v in variables], old, strict=True)), dict(zip([id(v) for v in variables], grads, strict=True))


def moved(model, variables, old) -> bool:
    return any(not np.array_equal(old[id(v)], v.numpy()) for v in variables)
