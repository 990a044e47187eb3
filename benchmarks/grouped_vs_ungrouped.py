"""Impressions/s of grouped (K impressions per image) vs ungrouped (one image per impression)
training input, on the same CNN-dominated model, side by side in one run.

Both modes run the real training loop (`tfvctr.training.train`: tf.data parsing + decoding,
the step under the strategy, checkpoints off the clock) with the same number of *images*
per step, so the CNN does the same work per step; grouping then carries K impressions per
image instead of one (DeepCTR Eq. 6, CSCNN §3.4.1: JD cut 226 GPUs to 28 with K = 25).
The goal is a speed-up of at least 0.7 × K in impressions/s.

    python benchmarks/grouped_vs_ungrouped.py [--steps 40] [--images-per-step 16] [--k 25]

Rates are the median over blocks of `--block` steps; the first block (tracing, pipeline
warm-up) is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def config_dict(args: argparse.Namespace, sampling: str) -> dict:
    from tests.recordio_fixtures import tiny_config_dict

    d = tiny_config_dict(
        image_size=args.image_size,
        steps=args.steps,
        ads_per_batch=args.images_per_step,
        sampling=sampling,
        checkpoint_every=args.steps,
        log_every=args.block,
        learning_rate=0.001,
        shuffle_buffer=256,
    )
    d["dataset"]["impressions_per_chunk"] = args.k
    d["model"].update(
        architecture="cscnn_dcn", backbone=args.backbone, backbone_width=args.width, attention="cscnn",
        visual_dim=32, deep_layers=[128, 64, 32], cross_layers=3,
    )
    return d


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images-per-step", type=int, default=16)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--ads", type=int, default=48)
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tests.recordio_fixtures import write_dataset
    from tfvctr.config import config_from_dict
    from tfvctr.training import train

    work = tempfile.mkdtemp(prefix="tfvctr-bench-")
    data_dir = os.path.join(work, "data")
    t0 = time.perf_counter()
    # Every ad has exactly 2K train impressions, so every grouped chunk holds K.
    write_dataset(data_dir, num_ads=args.ads, image_size=args.image_size, k=args.k, num_shards=4,
                  min_impressions=2 * args.k, max_impressions=2 * args.k, eval_ads=0)
    print(f"wrote {args.ads} ads x {2 * args.k} impressions in {time.perf_counter() - t0:.1f}s to {data_dir}")
    results = {}
    for sampling in ("grouped", "ungrouped"):
        config = config_from_dict(config_dict(args, sampling))
        r = train(config, data_dir, os.path.join(work, sampling), log=None)
        # The first block holds tracing and pipeline warm-up; the median of the other blocks
        # resists the spikes of a shared machine.
        timed = r["history"][1:]
        results[sampling] = {
            "impressions_per_sec": float(np.median([h["impressions_per_sec"] for h in timed])),
            "images_per_sec": float(np.median([h["images_per_sec"] for h in timed])),
            "impressions_per_step": sum(h["impressions"] for h in timed) / (len(timed) * args.block),
            "images_per_step": sum(h["images"] for h in timed) / (len(timed) * args.block),
            "blocks": len(timed),
        }
        row = results[sampling]
        print(f"{sampling:>9}: {row['impressions_per_sec']:9.1f} impressions/s  {row['images_per_sec']:7.1f} images/s  "
              f"({row['impressions_per_step']:.0f} impressions, {row['images_per_step']:.0f} images per step)")
    speedup = results["grouped"]["impressions_per_sec"] / results["ungrouped"]["impressions_per_sec"]
    results.update(
        speedup=speedup, k=args.k, goal=0.7 * args.k,
        setup=dict(vars(args), device=(tf.config.list_physical_devices("GPU") or ["CPU"])[0].__str__()),
    )
    print(f"speed-up {speedup:.1f}x with K={args.k} (goal >= {0.7 * args.k:.1f}x): {'met' if speedup >= 0.7 * args.k else 'NOT met'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
