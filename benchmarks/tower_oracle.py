"""Can a visual tower learn a scenario's visual rule when it is told the answer?

The scenario suite (`benchmarks/generalisation.py`) asks a CTR model to learn, from clicks,
which image property moves the click-through rate in which category, and to carry that to
ads it has never seen (the cold ads). When it fails, two causes look alike: the clicks are too
few and too noisy to teach the rule, or the tower cannot learn the rule from so few images at
all. This benchmark separates them. It trains the config's visual tower, plus a per-category
bias, to regress each train ad's *true* visual logit (`ad_effects.csv` of `tfvctr demo-data`:
no click noise at all) from its image, with the trainer's augmentation (crop after padding,
flip), and reports on the cold ads how well the prediction follows the truth: the Pearson
correlation over all cold ads and its mean within each category (the part that ranks ads
inside a category, which the category's own bias cannot).

A tower that reaches only a low within-category correlation here, told the answer, cannot
be expected to do better from clicks: change the tower before the training recipe. Each
`--backbones` entry is trained in the same run on the same ads, steps and seeds.

Usage:
    tfvctr demo-data --out /tmp/demo_raw
    python benchmarks/tower_oracle.py --raw /tmp/demo_raw --backbones cnnf,resnet18
    python benchmarks/tower_oracle.py --raw out/generalisation/texture/raw --steps 3000

Measured on the suite's scenarios: docs/generalisation_experiments.md § "Fifth pass".
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_CONFIG = os.path.join(REPO, "configs", "demo.yaml")


def read_ads(raw: str) -> dict:
    """The catalogue joined with the true per-ad effects: ids, image paths, categories, cold flags, targets."""
    for name in ("ads.csv", "ad_effects.csv"):
        if not os.path.exists(os.path.join(raw, name)):
            raise SystemExit(f"tower_oracle.py: error: {raw} has no {name} (write it with `tfvctr demo-data --out {raw}`)")
    with open(os.path.join(raw, "ad_effects.csv"), newline="") as f:
        effects = {r["ad_id"]: r for r in csv.DictReader(f)}
    with open(os.path.join(raw, "ads.csv"), newline="") as f:
        ads = [r for r in csv.DictReader(f) if r["ad_id"] in effects]
    categories = sorted({r["category"] for r in ads})
    index = {c: i + 1 for i, c in enumerate(categories)}  # 0 stays the unknown row, as in training
    return {
        "images": [os.path.join(raw, r["image"]) for r in ads],
        "category": np.array([index[r["category"]] for r in ads], np.int32),
        "cold": np.array([int(effects[r["ad_id"]]["cold"]) for r in ads], bool),
        "target": np.array([float(effects[r["ad_id"]]["true_visual_logit"]) for r in ads], np.float32),
        "num_categories": len(categories) + 1,
    }


def load_images(paths: list[str], size: int) -> np.ndarray:
    import tensorflow as tf

    def load(path: str) -> np.ndarray:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return (tf.image.resize(image, [size, size]) / 255.0).numpy()

    return np.stack([load(p) for p in paths]).astype(np.float32)


def correlations(prediction: np.ndarray, truth: np.ndarray, category: np.ndarray) -> tuple[float, float]:
    """(Pearson r over all, mean of the per-category r) for categories with more than 3 ads.

    >>> import numpy as np
    >>> truth = np.array([0., 1., 2., 3., 10., 11., 12., 13.])
    >>> category = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    >>> round(correlations(truth, truth, category)[1], 6)
    1.0
    >>> round(correlations(-truth + 20 * (category == 2), truth, category)[1], 6)  # within: reversed
    -1.0
    """
    # A (nearly) constant prediction, an untrained tower at the first reports, has no
    # correlation: NaN, without numpy's divide warning in the test output.
    with np.errstate(divide="ignore", invalid="ignore"):
        overall = float(np.corrcoef(prediction, truth)[0, 1])
        within = [
            float(np.corrcoef(prediction[category == c], truth[category == c])[0, 1])
            for c in np.unique(category)
            if (category == c).sum() > 3 and np.std(truth[category == c]) > 0 and np.std(prediction[category == c]) > 0
        ]
    return overall, float(np.mean(within)) if within else float("nan")


def run_one(config, data: dict, pixels: np.ndarray, backbone: str, steps: int, seed: int,
            learning_rate: float, batch_size: int, report_every: int) -> list[dict]:
    """Trains tower(backbone) + a per-category bias on the train ads' true visual logits; scores every report_every steps."""
    import keras
    import tensorflow as tf

    from tfvctr.data import augment_image
    from tfvctr.models.visual_tower import build_visual_tower

    model_config = dataclasses.replace(config.model, backbone=backbone)
    size = pixels.shape[1]
    keras.utils.set_random_seed(seed)
    tower = build_visual_tower(model_config, size, data["num_categories"], seed=seed)
    image = keras.Input((size, size, 3), name="image")
    category = keras.Input((), dtype="int32", name="category")
    visual = keras.layers.Dense(1, name="effect")(tower({"image": image, "category": category}))
    bias = keras.layers.Embedding(data["num_categories"], 1, name="category_bias")(category)
    output = keras.layers.Add()([keras.layers.Flatten()(visual), keras.layers.Flatten()(bias)])
    model = keras.Model({"image": image, "category": category}, output)
    optimizer = keras.optimizers.Adam(learning_rate)
    augment = config.training.augment
    padding = augment.crop_padding * size // config.dataset.image_size

    @tf.function
    def step(images, categories, targets, step_seed):
        n = tf.shape(images)[0]
        # One stateless seed per image and step, as the trainer's per-example augmentation.
        seeds = tf.stack([tf.fill([n], step_seed[0]), step_seed[1] * 1024 + tf.range(n)], axis=1)
        images = tf.map_fn(
            lambda x: augment_image(x[0], x[1], padding, augment.random_crop, augment.flip),
            (images, seeds), fn_output_signature=tf.float32,
        )
        with tf.GradientTape() as tape:
            prediction = tf.reshape(model({"image": images, "category": categories}, training=True), [-1])
            loss = tf.reduce_mean(tf.square(prediction - targets))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    train = np.flatnonzero(~data["cold"])
    cold = np.flatnonzero(data["cold"])
    rng = np.random.default_rng(seed)
    rows, start = [], time.time()

    def score(rows_index: np.ndarray) -> tuple[float, float]:
        # Eager calls, not model.predict: predict traces a function per input size (train and
        # cold ads differ), which cost more than the scoring itself on small runs.
        prediction = np.concatenate([
            np.asarray(model({"image": pixels[part], "category": data["category"][part]}, training=False)).reshape(-1)
            for part in np.array_split(rows_index, max(1, -(-len(rows_index) // 256)))
        ])
        return correlations(prediction, data["target"][rows_index], data["category"][rows_index])

    for s in range(1, steps + 1):
        batch = rng.choice(train, min(batch_size, len(train)), replace=False)
        step(pixels[batch], data["category"][batch], data["target"][batch], tf.constant([seed, s], tf.int32))
        if s % report_every == 0 or s == steps:
            train_r, train_within = score(train)
            cold_r, cold_within = score(cold)
            rows.append(dict(backbone=backbone, seed=seed, step=s, train_r=train_r, train_within=train_within,
                             cold_r=cold_r, cold_within=cold_within, seconds=time.time() - start))
            print(f"  {backbone:12s} seed {seed} step {s:5d}: train r {train_r:.3f} (within {train_within:.3f}), "
                  f"cold r {cold_r:.3f} (within {cold_within:.3f}), {rows[-1]['seconds']:.0f} s", flush=True)
    keras.backend.clear_session()
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Trains each backbone's tower to regress the true per-ad visual "
        "logit of `tfvctr demo-data` (told the answer) and reports how well it predicts the cold ads'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--raw", required=True, help="a `tfvctr demo-data --out` folder (ads.csv, ad_effects.csv, images/)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the tower's settings (model.*) and augmentation")
    parser.add_argument("--backbones", default=None, help="comma-separated backbones to compare (default: the config's)")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, as the config's CNN")
    parser.add_argument("--batch-size", type=int, default=32, help="ads per step (the suite's ads_per_batch)")
    parser.add_argument("--image-size", type=int, default=None, help="resize the images (default: the config's)")
    parser.add_argument("--report-every", type=int, default=300)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.backbone_width=0.5")
    parser.add_argument("--json", default=None, help="write every report row here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.report_every < 1:
        parser.error("--steps and --report-every must be >= 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfvctr.config import load_config

    config = load_config(args.config, args.overrides)
    backbones = args.backbones.split(",") if args.backbones else [config.model.backbone]
    data = read_ads(args.raw)
    if data["cold"].sum() < 4 or (~data["cold"]).sum() < 4:
        parser.error(f"{args.raw} needs at least 4 cold and 4 warm ads")
    size = args.image_size or config.dataset.image_size
    pixels = load_images(data["images"], size)
    print(f"{len(data['target'])} ads ({int(data['cold'].sum())} cold), {size} px, {args.steps} steps of "
          f"{args.batch_size} ads, Adam {args.learning_rate}", flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for backbone in backbones:
            rows += run_one(config, data, pixels, backbone, args.steps, seed, args.learning_rate,
                            args.batch_size, args.report_every)
    print("\nlast step, mean over seeds: cold-ad r (within category)")
    for backbone in backbones:
        last = [r for r in rows if r["backbone"] == backbone and r["step"] == args.steps]
        print(f"  {backbone:12s} {np.mean([r['cold_r'] for r in last]):.3f} "
              f"({np.mean([r['cold_within'] for r in last]):.3f}), {np.mean([r['seconds'] for r in last]):.0f} s a run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
