"""Images per second of the embedding job (`beam_jobs.embed_ads`) on DirectRunner.

Generates the demo dataset, preprocesses it (1 process), builds the visual tower of the
config (CSCNN on CNN-F x0.25 for `configs/demo.yaml`; untrained weights cost the same),
then runs the embedding job over every ad (`--coverage 1`) and over a quarter of them, and
reports images/s for the whole job (read, prepare each image, batch, tower, write shards),
its marginal rate (the difference of the two runs: start-up taken out) and the tower alone
on batches of the same size, called as the job calls it (one `tf.function` call a batch).
The same in CPU ms per image (process CPU time, every thread: steadier than wall time
on a shared machine), with the two per-image steps of the job beyond the tower timed
alone: preparing the catalogue image (`beam_jobs.images`) and decoding it in the graph.

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

        def embed(ads_csv: str, out: str) -> tuple[dict, float, float]:
            # The job runs in this process (DirectRunner in_memory): process_time() is its CPU,
            # every thread (TensorFlow's pools included); steadier than wall time on a shared machine.
            start, cpu = time.perf_counter(), time.process_time()
            index = embed_ads.run(["--model", model, "--data", data, "--ads", ads_csv, "--out", out, "--coverage", "1",
                                   "--batch-size", str(args.batch_size)], verbose=False)
            return index, time.perf_counter() - start, time.process_time() - cpu

        # A quarter of the catalogue first: the difference between the two runs is the job's
        # marginal rate, its start-up (TensorFlow import, model load, pipeline) taken out.
        with open(os.path.join(raw, "ads.csv")) as f:
            lines = f.read().splitlines()
        small_csv = os.path.join(raw, "ads_quarter.csv")
        with open(small_csv, "w") as f:
            f.write("\n".join(lines[: 1 + (len(lines) - 1) // 4]) + "\n")
        small_index, small_seconds, small_cpu = embed(small_csv, table + "_quarter")
        index, job_seconds, job_cpu = embed(os.path.join(raw, "ads.csv"), table)
        # Start-up varies by seconds on a loaded machine: no marginal rate when it swamps the difference.
        marginal = ((index["rows"] - small_index["rows"]) / (job_seconds - small_seconds)
                    if job_seconds > small_seconds + 0.5 else float("nan"))
        marginal_cpu = ((index["rows"] - small_index["rows"]) / (job_cpu - small_cpu)
                        if job_cpu > small_cpu + 0.5 else float("nan"))

        import tensorflow as tf

        pixels = np.random.default_rng(0).random((args.batch_size, args.image_size, args.image_size, 3), np.float32)
        cats = np.ones(args.batch_size, np.int32)
        # The tower as the job calls it: one graph call per batch (tf.function), so the job is
        # compared with the fastest way to run the same tower, not with eager Keras calls.
        call = tf.function(lambda x, c: tower({"image": x, "category": c}, training=False))
        np.asarray(call(pixels, cats))  # trace once
        batches = max(1, index["rows"] // args.batch_size)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            np.asarray(call(pixels, cats))
        tower_seconds, tower_cpu = time.perf_counter() - start, time.process_time() - cpu

        # Where the job's time per image goes beyond the tower: preparing each catalogue image
        # (read, decode, resize, JPEG encode: what preprocess does, beam_jobs.images) and
        # decoding the prepared bytes in the graph (the trainer's decoder), timed alone.
        from beam_jobs import images
        from tfvctr.data import decode_image

        header = lines[0].split(",")
        paths = [os.path.join(raw, line.split(",")[header.index("image")]) for line in lines[1:]]
        cpu = time.process_time()
        prepared = [images.load_image(path, args.image_size, config.dataset.image_format) for path in paths]
        prepare_cpu = (time.process_time() - cpu) / len(paths)
        size = args.image_size
        decode = tf.function(lambda b: tf.map_fn(lambda x: decode_image(x, size), b,
                                                 fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32)))
        batch = np.array(prepared[: args.batch_size], dtype=object)
        np.asarray(decode(batch))  # trace once
        cpu = time.process_time()
        for _ in range(batches):
            np.asarray(decode(batch))
        decode_cpu = (time.process_time() - cpu) / (batches * len(batch))
        keras.backend.clear_session()

        result = {"ads": index["rows"], "image_size": args.image_size, "batch_size": args.batch_size,
                  "backbone": f"{config.model.backbone} x{config.model.backbone_width}",
                  "attention": config.model.attention, "dim": index["dim"], "dtype": index["dtype"],
                  "job_seconds": round(job_seconds, 2), "job_images_per_s": round(index["rows"] / job_seconds, 1),
                  "quarter_job_seconds": round(small_seconds, 2), "job_marginal_images_per_s": None if marginal != marginal else round(marginal, 1),
                  "tower_images_per_s": round(batches * args.batch_size / tower_seconds, 1),
                  "job_cpu_seconds": round(job_cpu, 2), "quarter_job_cpu_seconds": round(small_cpu, 2),
                  "job_marginal_ms_cpu_per_image": None if marginal_cpu != marginal_cpu else round(1e3 / marginal_cpu, 3),
                  "tower_ms_cpu_per_image": round(1e3 * tower_cpu / (batches * args.batch_size), 3),
                  "prepare_ms_cpu_per_image": round(1e3 * prepare_cpu, 3),
                  "decode_ms_cpu_per_image": round(1e3 * decode_cpu, 3),
                  "table_bytes": index["size_bytes"]}
        print(f"embed on DirectRunner: {result['ads']} ads, {args.image_size} px, tower {result['backbone']} "
              f"attention {result['attention']}, x_v {result['dim']} ({result['dtype']}), {os.cpu_count()} CPUs")
        print(f"  whole job   {result['job_seconds']:.1f} s = {result['job_images_per_s']:.0f} images/s "
              f"(start-up included)")
        print(f"  marginal    {marginal:.0f} images/s (whole job minus a quarter-size "
              f"run of {result['quarter_job_seconds']:.1f} s: start-up taken out)")
        print(f"  tower only  {result['tower_images_per_s']:.0f} images/s (batches of {args.batch_size}); "
              f"marginal / tower = {marginal / result['tower_images_per_s']:.2f}")
        r = result
        print(f"  CPU ms per image: job marginal {r['job_marginal_ms_cpu_per_image']}, tower alone "
              f"{r['tower_ms_cpu_per_image']}; tower / job = "
              f"{r['tower_ms_cpu_per_image'] / (r['job_marginal_ms_cpu_per_image'] or float('nan')):.2f}")
        floor = r["prepare_ms_cpu_per_image"] + r["decode_ms_cpu_per_image"] + r["tower_ms_cpu_per_image"]
        print(f"  of which, timed alone: preparing the image {r['prepare_ms_cpu_per_image']}, decoding it in the "
              f"graph {r['decode_ms_cpu_per_image']}; the three steps alone {floor:.3f} = "
              f"{floor / (r['job_marginal_ms_cpu_per_image'] or float('nan')):.2f}x the job's marginal rate")
        print(f"  table       {result['table_bytes']} bytes")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
