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
load. Figures are CPU ms per image (the child's CPU time, every thread, plus that of the
DirectRunner's worker processes under `--direct_num_workers N`: steadier than wall time on a
shared machine) and wall-clock images/s (the issue's measure), each as a ratio to the tower
alone, with the cores each kept busy (CPU seconds per wall second: the tower alone runs on
TensorFlow's intra-op threads, the job's Python work on one thread per worker process).
`--job-args '--direct_num_workers 2'` runs the job with two worker processes, each loading
the tower once; `--baseline-job-args ''` then measures the same tree in one process in the
same run. `--tower-config tfvctr/configs/jd_cscnn_dcn.yaml` takes the production tower
(ResNet18 + CSCNN, x_v 150) over the demo's data. The per-image steps of
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
    python benchmarks/beam_embed.py --ads 384 --image-size 224 --tower-config tfvctr/configs/jd_cscnn_dcn.yaml
    python benchmarks/beam_embed.py --ads 2000 --baseline-job-args '' --job-args '--direct_num_workers 2'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
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

    def cpu_time() -> float:
        # This process's threads plus its finished children (the DirectRunner's worker processes
        # under `--direct_num_workers N`, reaped at the end of each run).
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def run(ads_csv: str, out: str) -> dict:
        shutil.rmtree(out, ignore_errors=True)
        start, cpu = time.perf_counter(), cpu_time()
        index = embed_ads.run(["--model", spec["model"], "--data", spec["data"], "--ads", ads_csv, "--out", out,
                               "--coverage", "1", "--batch-size", str(spec["batch_size"]), *spec["job_args"]],
                              verbose=False)
        return {"rows": index["rows"], "seconds": time.perf_counter() - start, "cpu": cpu_time() - cpu,
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
            "job_args": spec["job_args"],
            # What a user waits for: the whole run, start-up (imports, model load, trace, workers) included.
            "whole_images_per_s": round(whole[0]["rows"] / statistics.median(r["seconds"] for r in whole), 1),
            "marginal_ms_cpu_per_image": round(1e3 * cpu / images, 3) if cpu > 0 else None,
            "marginal_images_per_s": round(images / wall, 1) if wall > 0 else None,
            # CPU seconds per wall second over the marginal images: the cores the job kept busy.
            "marginal_cores": round(cpu / wall, 2) if cpu > 0 and wall > 0 else None}


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
    parser.add_argument("--tower-config", default=None,
                        help="take the visual tower (model.backbone, backbone_width, attention*, *prior*, reduction, "
                             "visual_dim) from this config, e.g. tfvctr/configs/jd_cscnn_dcn.yaml (ResNet18 + CSCNN, "
                             "x_v 150); the data stay the demo's. --backbone-width applies after it")
    parser.add_argument("--pairs", type=int, default=3, help="quarter/whole runs of the job per source tree")
    parser.add_argument("--baseline", default=None,
                        help="an older source tree (beam_jobs/, tfvctr/) to measure in the same run")
    parser.add_argument("--job-args", default="",
                        help="extra flags for the job (current tree), e.g. '--direct_num_workers 2'")
    parser.add_argument("--baseline-job-args", default=None,
                        help="extra flags for the baseline's runs (default: --job-args); without --baseline, the "
                             "current tree is measured twice in the same run, with these flags and with --job-args")
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

    load_start = os.getloadavg()[0]
    from tfvctr import layout
    from tfvctr.config import load_config, save_config
    from tfvctr.demo_data.generate import generate

    work = tempfile.mkdtemp(prefix="beam_embed_")
    try:
        raw, data, model, table = (os.path.join(work, d) for d in ("raw", "data", "model", "table"))
        generate(raw, num_ads=args.ads, num_impressions=args.ads * 5, image_size=args.image_size, formats=("csv",))
        config = load_config(args.config)
        config.dataset.image_size = args.image_size
        if args.tower_config:
            tower_config = load_config(args.tower_config).model
            for field in ("backbone", "backbone_width", "attention", "attention_layers", "channel_prior_dim",
                          "spatial_prior_size", "reduction", "visual_dim"):
                setattr(config.model, field, getattr(tower_config, field))
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
        baseline_args = args.job_args if args.baseline_job_args is None else args.baseline_job_args
        if args.baseline or args.baseline_job_args is not None:
            jobs["baseline"] = measure_job(os.path.abspath(args.baseline or ROOT),
                                           {**spec, "out": table + "_baseline", "job_args": shlex.split(baseline_args)})
        jobs["current"] = measure_job(ROOT, {**spec, "out": table, "job_args": shlex.split(args.job_args)})
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
                  "tower_cores": round(tower_cpu / tower_seconds, 2),
                  "load_average": os.getloadavg(),
                  "prepare_ms_cpu_per_image": round(1e3 * prepare_cpu, 3),
                  "trainer_decode_ms_cpu_per_image": round(1e3 * decode_cpu["trainer"], 3),
                  "job_decode_ms_cpu_per_image": round(1e3 * decode_cpu["job"], 3),
                  "table_matches_trainer_tower": matches, "reference_sample": len(sample),
                  "table_bytes": index["size_bytes"]}
        if "baseline" in jobs:
            result["same_table_as_baseline"] = same_tables(table + "_baseline", table)
        r = result
        print(f"embed on DirectRunner: {r['ads']} ads, {args.image_size} px, batches of {args.batch_size}, tower "
              f"{r['backbone']} "
              f"attention {r['attention']}, x_v {r['dim']} ({r['dtype']}), {os.cpu_count()} CPUs, "
              f"{args.pairs} quarter/whole pairs per source, load {os.getloadavg()[0]:.1f} at the end "
              f"({load_start:.1f} at the start)")
        tower_ms = r["tower_ms_cpu_per_image"]
        for name, j in jobs.items():
            ms = j["marginal_ms_cpu_per_image"] or float("nan")
            wall = j["marginal_images_per_s"] or float("nan")
            print(f"  job ({name}, {j['source']} {' '.join(j['job_args'])}): marginal {ms} CPU ms per image = "
                  f"tower / job {tower_ms / ms:.2f} in CPU; {wall} images/s = job / tower "
                  f"{wall / r['tower_images_per_s']:.2f} in wall clock, on {j['marginal_cores']} cores; whole runs "
                  f"(start-up included) {j['whole_images_per_s']} images/s; "
                  f"whole runs CPU s {j['whole_cpu_s']}, wall s {j['whole_s']}, quarter runs CPU s {j['quarter_cpu_s']}")
        print(f"  tower alone {tower_ms} CPU ms per image, {r['tower_images_per_s']:.1f} images/s wall "
              f"on {r['tower_cores']} cores (batches of {args.batch_size})")
        print(f"  timed alone: preparing the image {r['prepare_ms_cpu_per_image']}, decoding it as the trainer "
              f"does {r['trainer_decode_ms_cpu_per_image']}, as the job does {r['job_decode_ms_cpu_per_image']}")
        floor = r["prepare_ms_cpu_per_image"] + r["job_decode_ms_cpu_per_image"] + tower_ms
        print(f"  the three steps alone {floor:.3f} ms: the job's marginal beyond them "
              f"{(job['marginal_ms_cpu_per_image'] or float('nan')) - floor:.3f} ms per image (Beam's per-ad work)")
        print(f"  table = trainer-side tower on the same pixels ({r['reference_sample']} ads, 2e-3): {matches}"
              + (f"; same table as the baseline: {r['same_table_as_baseline']}" if "baseline" in jobs else ""))
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
