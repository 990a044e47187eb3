"""Impressions per second of the preprocess job (`beam_jobs.build_tfrecords`) on DirectRunner.

Generates the demo dataset at the requested size, then runs the whole job (read, validate,
decode/resize every image once, CoGroupByKey join, chunk, write TFRecords, vocabularies,
statistics, manifest) with 1 process (`in_memory`) and with N processes
(`--direct_num_workers N`, `multi_processing`), and prints them side by side. The time is
the job's wall clock from pipeline construction to the manifest, start-up included, as a
user sees it.

Usage:
    python benchmarks/beam_preprocess.py                              # 300 ads, 30,000 impressions
    python benchmarks/beam_preprocess.py --ads 2000 --impressions 200000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ads", type=int, default=300)
    parser.add_argument("--impressions", type=int, default=30_000)
    parser.add_argument("--image-size", type=int, default=64, help="source and training image side (default: 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from beam_jobs import build_tfrecords
    from tfvctr.demo_data.generate import generate

    work = tempfile.mkdtemp(prefix="beam_preprocess_")
    try:
        raw = os.path.join(work, "raw")
        generate(raw, num_ads=args.ads, num_impressions=args.impressions, image_size=args.image_size, formats=("csv",))
        config = os.path.join(work, "config.yaml")
        with open(args.config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text.replace("image_size: 64", f"image_size: {args.image_size}"))
        results = []
        for workers in args.workers:
            out = os.path.join(work, f"out_{workers}")
            extra = ["--direct_num_workers", str(workers)] if workers > 1 else []
            start = time.perf_counter()
            manifest = build_tfrecords.run(["--config", config, "--ads", os.path.join(raw, "ads.csv"),
                                            "--impressions", os.path.join(raw, "impressions.csv"), "--out", out,
                                            *extra], verbose=False)
            seconds = time.perf_counter() - start
            n = manifest["input"]["impressions"]
            results.append({"processes": workers, "mode": "multi_processing" if workers > 1 else "in_memory",
                            "impressions": n, "ads": manifest["input"]["ads"],
                            "chunks": manifest["splits"]["train"]["chunks"] + manifest["splits"]["eval"]["chunks"],
                            "seconds": round(seconds, 2), "impressions_per_s": round(n / seconds)})
        print(f"preprocess on DirectRunner: {args.ads} ads, {args.impressions} impressions, {args.image_size} px images, "
              f"{os.cpu_count()} CPUs")
        print(f"{'processes':>9s} {'mode':>17s} {'seconds':>8s} {'impressions/s':>14s} {'chunks':>7s}")
        for r in results:
            print(f"{r['processes']:9d} {r['mode']:>17s} {r['seconds']:8.1f} {r['impressions_per_s']:14d} {r['chunks']:7d}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
