"""Images per second of the embedding job (`beam_jobs.embed_ads`) on DirectRunner.

Generates the demo dataset, preprocesses it (1 process), builds the visual tower of the
config (CSCNN on CNN-F x0.25 for `configs/demo.yaml`; untrained weights cost the same),
then runs the embedding job over every ad (`--coverage 1`) and over a quarter of them, and
reports images/s for the whole job (read, prepare each image, batch, tower, write shards),
its marginal rate (the difference of the two runs: start-up taken out) and the tower alone
on batches of the same size, called as the job calls it (one `tf.function` call a batch).

Usage:
    python benchmarks/beam_embed.py                     # 500 ads
    python benchmarks/beam_embed.py --ads 2000 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from tfvctr import layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ads", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    from beam_jobs import build_tfrecords, embed_ads
    from tfvctr.config import load_config, save_config
    from tfvctr.demo_data.generate import generate

    work = tempfile.mkdtemp(prefix="beam_embed_")
    try:
        raw, data, model, table = (os.path.join(work, d) for d in ("raw", "data", "model", "table"))
        generate(raw, num_ads=args.ads, num_impressions=args.ads * 5, image_size=args.image_size, formats=("csv",))
        config = load_config(args.config)
        config.dataset.image_size = args.image_size
        os.makedirs(model)
        config_path = os.path.join(model, layout.CONFIG)
        save_config(config, config_path)
        build_tfrecords.run(["--config", config_path, "--ads", os.path.join(raw, "ads.csv"),
                             "--impressions", os.path.join(raw, "impressions.csv"), "--out", data], verbose=False)

        import keras

        import tfvctr.layers  # noqa: F401
        from tfvctr.models.visual_tower import build_visual_tower

        with open(os.path.join(data, layout.VOCAB_DIR, layout.CATEGORY_VOCAB)) as f:
            num_categories = len(f.read().splitlines()) + 1
        tower = build_visual_tower(config.model, args.image_size, num_categories, seed=0)
        tower.save(os.path.join(model, layout.VISUAL_TOWER))

        def embed(ads_csv: str, out: str) -> tuple[dict, float]:
            start = time.perf_counter()
            index = embed_ads.run(["--model", model, "--data", data, "--ads", ads_csv, "--out", out, "--coverage", "1",
                                   "--batch-size", str(args.batch_size)], verbose=False)
            return index, time.perf_counter() - start

        # A quarter of the catalogue first: the difference between the two runs is the job's
        # marginal rate, its start-up (TensorFlow import, model load, pipeline) taken out.
        with open(os.path.join(raw, "ads.csv")) as f:
            lines = f.read().splitlines()
        small_csv = os.path.join(raw, "ads_quarter.csv")
        with open(small_csv, "w") as f:
            f.write("\n".join(lines[: 1 + (len(lines) - 1) // 4]) + "\n")
        small_index, small_seconds = embed(small_csv, table + "_quarter")
        index, job_seconds = embed(os.path.join(raw, "ads.csv"), table)
        # Start-up varies by seconds on a loaded machine: no marginal rate when it swamps the difference.
        marginal = ((index["rows"] - small_index["rows"]) / (job_seconds - small_seconds)
                    if job_seconds > small_seconds + 0.5 else float("nan"))

        import tensorflow as tf

        pixels = np.random.default_rng(0).random((args.batch_size, args.image_size, args.image_size, 3), np.float32)
        cats = np.ones(args.batch_size, np.int32)
        # The tower as the job calls it: one graph call per batch (tf.function), so the job is
        # compared with the fastest way to run the same tower, not with eager Keras calls.
        call = tf.function(lambda x, c: tower({"image": x, "category": c}, training=False))
        np.asarray(call(pixels, cats))  # trace once
        batches = max(1, index["rows"] // args.batch_size)
        start = time.perf_counter()
        for _ in range(batches):
            np.asarray(call(pixels, cats))
        tower_seconds = time.perf_counter() - start
        keras.backend.clear_session()

        result = {"ads": index["rows"], "image_size": args.image_size, "batch_size": args.batch_size,
                  "backbone": f"{config.model.backbone} x{config.model.backbone_width}",
                  "attention": config.model.attention, "dim": index["dim"], "dtype": index["dtype"],
                  "job_seconds": round(job_seconds, 2), "job_images_per_s": round(index["rows"] / job_seconds, 1),
                  "quarter_job_seconds": round(small_seconds, 2), "job_marginal_images_per_s": None if marginal != marginal else round(marginal, 1),
                  "tower_images_per_s": round(batches * args.batch_size / tower_seconds, 1),
                  "table_bytes": index["size_bytes"]}
        print(f"embed on DirectRunner: {result['ads']} ads, {args.image_size} px, tower {result['backbone']} "
              f"attention {result['attention']}, x_v {result['dim']} ({result['dtype']}), {os.cpu_count()} CPUs")
        print(f"  whole job   {result['job_seconds']:.1f} s = {result['job_images_per_s']:.0f} images/s "
              f"(start-up included)")
        print(f"  marginal    {marginal:.0f} images/s (whole job minus a quarter-size "
              f"run of {result['quarter_job_seconds']:.1f} s: start-up taken out)")
        print(f"  tower only  {result['tower_images_per_s']:.0f} images/s (batches of {args.batch_size}); "
              f"marginal / tower = {marginal / result['tower_images_per_s']:.2f}")
        print(f"  table       {result['table_bytes']} bytes")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
