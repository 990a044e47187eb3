"""Images per second of the embedding job (`beam_jobs.embed_ads`) on DirectRunner.

Generates the demo dataset, preprocesses it (1 process), builds the visual tower of the
config (CSCNN on CNN-F x0.25 for `configs/demo.yaml`; untrained weights cost the same),
then runs the embedding job over every ad (`--coverage 1`) and over a quarter of them,
`--pairs` times each, and reports its marginal rate (the median whole run minus the
median quarter run: start-up taken out) against the tower alone on batches of the same
size, called as the job calls it (one `tf.function` call a batch).

The job runs in a child process with the source tree on `PYTHONPATH` first: the current
tree, and with `--baseline DIR` (e.g. `git archive <commit> beam_jobs tfvctr | tar -x -C
DIR`) an older one too, in the same run, so a before/after is measured under the same
load. Figures are CPU ms per image (the child's CPU time, every thread: steadier than wall
time on a shared machine); wall-clock images/s are printed too. The per-image steps of
the job beyond the tower are timed alone: preparing the catalogue image
(`beam_jobs.images`), decoding it as the trainer does (`tfvctr.data.decode_image`) and as
the job does (`beam_jobs.transforms.embed.decode_batch`).

Checks: the table's vectors equal the trainer-side tower's on the same pixels (prepared,
then `tfvctr.data.decode_image`) for a sample of ads, within the float16 tolerance of the
tests (2e-3); with `--baseline`, the two tables are the same files' arrays, bit for bit.

Usage:
    python benchmarks/beam_embed.py                     # 500 ads
    python benchmarks/beam_embed.py --ads 8000 --baseline /tmp/embed_before
    python benchmarks/beam_embed.py --ads 2000 --backbone-width 1.0   # a 16x costlier tower
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _child(spec: dict) -> None:
    """`--child SPEC`: the job's runs (a warm-up quarter, then `pairs` × (quarter, whole)); JSON on stdout."""
    from beam_jobs import embed_ads

    def run(ads_csv: str, out: str) -> dict:
        shutil.rmtree(out, ignore_errors=True)
        start, cpu = time.perf_counter(), time.process_time()
        index = embed_ads.run(["--model", spec["model"], "--data", spec["data"], "--ads", ads_csv, "--out", out,
                               "--coverage", "1", "--batch-size", str(spec["batch_size"])], verbose=False)
        return {"rows": index["rows"], "seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                "index": index}

    # The first run pays TensorFlow's and Keras' imports: a warm-up, not measured.
    run(spec["quarter_csv"], spec["out"] + "_warm")
    runs = []
    for _ in range(spec["pairs"]):
        runs.append(("quarter", run(spec["quarter_csv"], spec["out"] + "_quarter")))
        runs.append(("whole", run(spec["whole_csv"], spec["out"])))
    print(json.dumps({"source": embed_ads.__file__, "runs": runs}))


def measure_job(source: str, spec: dict) -> dict:
    """Runs `_child` with `source` first on the path; the marginal rate from the medians."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], env=env,
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    quarter = [r for kind, r in result["runs"] if kind == "quarter"]
    whole = [r for kind, r in result["runs"] if kind == "whole"]
    images = whole[0]["rows"] - quarter[0]["rows"]
    cpu = statistics.median(r["cpu"] for r in whole) - statistics.median(r["cpu"] for r in quarter)
    wall = statistics.median(r["seconds"] for r in whole) - statistics.median(r["seconds"] for r in quarter)
    return {"source": os.path.dirname(os.path.dirname(result["source"])), "rows": whole[0]["rows"],
            "index": whole[-1]["index"],
            "whole_cpu_s": [round(r["cpu"], 2) for r in whole], "quarter_cpu_s": [round(r["cpu"], 2) for r in quarter],
            "whole_s": [round(r["seconds"], 2) for r in whole],
            "marginal_ms_cpu_per_image": round(1e3 * cpu / images, 3) if cpu > 0 else None,
            "marginal_images_per_s": round(images / wall, 1) if wall > 0 else None}


def same_tables(a: str, b: str) -> bool:
    import numpy as np

    names = sorted(n for n in os.listdir(a) if n.endswith(".npz"))
    if names != sorted(n for n in os.listdir(b) if n.endswith(".npz")):
        return False
    for name in names:
        x, y = np.load(os.path.join(a, name)), np.load(os.path.join(b, name))
        if sorted(x.files) != sorted(y.files) or not all(np.array_equal(x[k], y[k]) for k in x.files):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ads", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone-width", type=float, default=None,
                        help="override model.backbone_width (a costlier tower: how the job's per-ad cost amortises)")
    parser.add_argument("--pairs", type=int, default=3, help="quarter/whole runs of the job per source tree")
    parser.add_argument("--baseline", default=None,
                        help="an older source tree (beam_jobs/, tfvctr/) to measure in the same run")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        _child(json.loads(args.child))
        return

    import numpy as np

    from beam_jobs import build_tfrecords
    from tfvctr import layout
    from tfvctr.config import load_config, save_config
    from tfvctr.demo_data.generate import generate

    work = tempfile.mkdtemp(prefix="beam_embed_")
    try:
        raw, data, model, table = (os.path.join(work, d) for d in ("raw", "data", "model", "table"))
        generate(raw, num_ads=args.ads, num_impressions=args.ads * 5, image_size=args.image_size, formats=("csv",))
        config = load_config(args.config)
        config.dataset.image_size = args.image_size
        if args.backbone_width:
            config.model.backbone_width = args.backbone_width
        os.makedirs(model)
        config_path = os.path.join(model, layout.CONFIG)
        save_config(config, config_path)
        build_tfrecords.run(["--config", config_path, "--ads", os.path.join(raw, "ads.csv"),
                             "--impressions", os.path.join(raw, "impressions.csv"), "--out", data], verbose=False)

        import keras

        import tfvctr.layers  # noqa: F401
        from tfvctr.models.visual_tower import build_visual_tower

        with open(os.path.join(data, layout.VOCAB_DIR, layout.CATEGORY_VOCAB)) as f:
            vocab = [line for line in f.read().splitlines() if line]
        tower = build_visual_tower(config.model, args.image_size, len(vocab) + 1, seed=0)
        tower.save(os.path.join(model, layout.VISUAL_TOWER))

        # A quarter of the catalogue: the difference with the whole is the job's marginal
        # rate, its start-up (model load, trace, pipeline) taken out.
        with open(os.path.join(raw, "ads.csv")) as f:
            lines = f.read().splitlines()
        small_csv = os.path.join(raw, "ads_quarter.csv")
        with open(small_csv, "w") as f:
            f.write("\n".join(lines[: 1 + (len(lines) - 1) // 4]) + "\n")
        spec = {"model": model, "data": data, "whole_csv": os.path.join(raw, "ads.csv"), "quarter_csv": small_csv,
                "batch_size": args.batch_size, "pairs": args.pairs}
        jobs = {}
        if args.baseline:
            jobs["baseline"] = measure_job(os.path.abspath(args.baseline), {**spec, "out": table + "_baseline"})
        jobs["current"] = measure_job(ROOT, {**spec, "out": table})
        index = jobs["current"]["index"]

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

        # The job's other per-image steps, timed alone: preparing each catalogue image (read,
        # decode, resize, JPEG encode: what preprocess does, beam_jobs.images) and decoding the
        # prepared bytes in the graph, as the trainer does and as the job does.
        from beam_jobs import images
        from beam_jobs.transforms.embed import decode_batch
        from tfvctr.data import decode_image

        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        paths = [os.path.join(raw, row["image"]) for row in rows]
        cpu = time.process_time()
        prepared = [images.load_image(path, args.image_size, config.dataset.image_format) for path in paths]
        prepare_cpu = (time.process_time() - cpu) / len(paths)
        size, image_format = args.image_size, config.dataset.image_format
        trainer_decode = tf.function(lambda b: tf.map_fn(lambda x: decode_image(x, size), b,
                                                         fn_output_signature=tf.TensorSpec([size, size, 3],
                                                                                           tf.float32)))
        job_decode = tf.function(lambda b: decode_batch(b, size, image_format))
        decode_cpu = {}
        for name, decode in (("trainer", trainer_decode), ("job", job_decode)):
            batch = np.array(prepared[: args.batch_size], dtype=object)
            np.asarray(decode(batch))  # trace once
            cpu = time.process_time()
            for _ in range(batches):
                np.asarray(decode(batch))
            decode_cpu[name] = (time.process_time() - cpu) / (batches * len(batch))

        # The table against the trainer-side tower on the same pixels, for a sample of ads.
        stored = {}
        for shard in index["shards"]:
            part = np.load(os.path.join(table, shard))
            stored.update(zip(part["ad_id"].tolist(), part["vectors"].astype(np.float32), strict=True))
        sample = [i for i in range(0, len(rows), max(1, len(rows) // 256)) if rows[i]["ad_id"] in stored]
        ids = {c: i + 1 for i, c in enumerate(vocab)}
        reference = np.asarray(tower({"image": np.asarray(trainer_decode(np.array([prepared[i] for i in sample],
                                                                                  dtype=object))),
                                      "category": np.array([ids.get(rows[i]["category"], 0) for i in sample],
                                                           np.int32)}, training=False))
        table_vectors = np.stack([stored[rows[i]["ad_id"]] for i in sample])
        matches = bool(np.allclose(table_vectors, reference, rtol=2e-3, atol=2e-3))
        keras.backend.clear_session()

        job = jobs["current"]
        result = {"ads": index["rows"], "image_size": args.image_size, "batch_size": args.batch_size,
                  "backbone": f"{config.model.backbone} x{config.model.backbone_width}",
                  "attention": config.model.attention, "dim": index["dim"], "dtype": index["dtype"],
                  "pairs": args.pairs,
                  "jobs": {k: {key: v for key, v in j.items() if key != "index"} for k, j in jobs.items()},
                  "job_marginal_ms_cpu_per_image": job["marginal_ms_cpu_per_image"],
                  "job_marginal_images_per_s": job["marginal_images_per_s"],
                  "tower_images_per_s": round(batches * args.batch_size / tower_seconds, 1),
                  "tower_ms_cpu_per_image": round(1e3 * tower_cpu / (batches * args.batch_size), 3),
                  "prepare_ms_cpu_per_image": round(1e3 * prepare_cpu, 3),
                  "trainer_decode_ms_cpu_per_image": round(1e3 * decode_cpu["trainer"], 3),
                  "job_decode_ms_cpu_per_image": round(1e3 * decode_cpu["job"], 3),
                  "table_matches_trainer_tower": matches, "reference_sample": len(sample),
                  "table_bytes": index["size_bytes"]}
        if args.baseline:
            result["same_table_as_baseline"] = same_tables(table + "_baseline", table)
        r = result
        print(f"embed on DirectRunner: {r['ads']} ads, {args.image_size} px, tower {r['backbone']} "
              f"attention {r['attention']}, x_v {r['dim']} ({r['dtype']}), {os.cpu_count()} CPUs, "
              f"{args.pairs} quarter/whole pairs per source, load {os.getloadavg()[0]:.1f}")
        tower_ms = r["tower_ms_cpu_per_image"]
        for name, j in jobs.items():
            ms = j["marginal_ms_cpu_per_image"] or float("nan")
            print(f"  job ({name}, {j['source']}): marginal {ms} CPU ms per image = tower / job "
                  f"{tower_ms / ms:.2f}; wall {j['marginal_images_per_s']} images/s; whole runs CPU s "
                  f"{j['whole_cpu_s']}, quarter runs {j['quarter_cpu_s']}")
        print(f"  tower alone {tower_ms} CPU ms per image, {r['tower_images_per_s']:.0f} images/s wall "
              f"(batches of {args.batch_size})")
        print(f"  timed alone: preparing the image {r['prepare_ms_cpu_per_image']}, decoding it as the trainer "
              f"does {r['trainer_decode_ms_cpu_per_image']}, as the job does {r['job_decode_ms_cpu_per_image']}")
        floor = r["prepare_ms_cpu_per_image"] + r["job_decode_ms_cpu_per_image"] + tower_ms
        print(f"  the three steps alone {floor:.3f} ms: the job's marginal beyond them "
              f"{(job['marginal_ms_cpu_per_image'] or float('nan')) - floor:.3f} ms per image (Beam's per-ad work)")
        print(f"  table = trainer-side tower on the same pixels ({r['reference_sample']} ads, 2e-3): {matches}"
              + (f"; same table as the baseline: {r['same_table_as_baseline']}" if args.baseline else ""))
        print(f"  table       {r['table_bytes']} bytes")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        if not matches or not result.get("same_table_as_baseline", True):
            sys.exit("the table differs: see above")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
