"""Latency of the TF Serving export through TF Serving's own loader, against this core's FLOP floor.

    nice .venv/bin/python benchmarks/serving.py [--demo-export demo_out/serving/demo/1] [--jd-ads 1000000]

For each model the SavedModel written by `tfvctr export` (the JD-sized one is built here
with random weights: latency does not depend on their values) is loaded with
`tf.compat.v1.saved_model.loader.load` into a `Session` with **one intra-op and one
inter-op thread**, for 1, 100 and 1,000 candidates: p50, p99, min and items/s.

JD-sized variants are timed **interleaved** (A, B, A, B, … within each batch size, after all
are loaded), so the load of other jobs on a shared machine hits them alike; the load
average is printed. Each variant is timed two ways:

* `fed`: `serving_default` through `Session.make_callable` by its SignatureDef tensor
  names, fed pre-built numpy object arrays (97 string inputs for JD): what a Python client
  of the session pays, including numpy → string-tensor conversion;
* `alone`: the same export loaded by the same loader with its inputs mapped (`input_map`)
  to slices of variables already holding those rows; a call feeds only the batch size.
  This is the graph's own cost, the part TF Serving runs after it has built the input
  tensors from the request in C++. **The goal (p50 ≤ 1.1× the floor) is judged on it.**

`feed only` is the same inputs fed to a graph that only reads their sizes.

The FLOP floor of a case is the head's dense FLOPs (2·B·Σ in·out over the deep layers,
the output layer and the cross layers) divided by this core's fp32 GEMM rate, measured in
the same run and the same kind of session (the best of 256×1024×1024 and 100×1174×512
matmuls, 300 tries each: see `gemm_peak`).
`ratio` = p50 / floor: 1.0 would be a graph that does nothing but its matmuls at fp32
peak speed. Also: the table's bytes per ad (float16 and float32), the time the TF1 loader
needs for the JD-sized export (restore of the table variable + the hash table's init from
the asset file), and each variant's largest |Δ logit| against the float32 fused graph.

JD-sized: `configs/jd_cscnn_dcn.yaml` (95 hashed string fields × 4-d, 1024/512/256, 3
cross layers, x_v 150-d, ResNet18 tower), the hash buckets cut to `--hash-buckets` per
field (10M × 95 × 4 floats would be 15 GB; a gather's cost does not depend on the table
size), and a `--jd-ads`-row float16 table of random vectors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tfvctr import layout  # noqa: E402
from tfvctr.export.check import load_session, session_runner  # noqa: E402
from tfvctr.export.warmup import read_warmup  # noqa: E402

BATCHES = (1, 100, 1000)
RUNS = {1: 1000, 100: 300, 1000: 60}
# (label, fused, jit, bf16)
VARIANTS = (("jd", False, False, False), ("jd-fused", True, False, False), ("jd-fused-xla", True, True, False),
            ("jd-fused-bf16", True, False, True))


def gemm_peak(shapes: tuple[tuple[int, int, int], ...] = ((256, 1024, 1024), (100, 1174, 512)),
              repeats: int = 300) -> float:
    """FLOP/s of fp32 matmuls in a 1-thread TF1 session: the best over `shapes` of the best of `repeats`.

    Short matmuls (1-5 ms) tried many times: on a loaded machine a long one is nearly always
    preempted and its best time understates the peak (measured at load 15: 512×1024×1024 and
    256×1024×1024 gave 29 and 27 GFLOP/s while 100×1174 @ 1174×512, the JD head's largest
    layer, reached 101), which would flatter every ratio to the floor."""
    best_rate = 0.0
    for m, k, n in shapes:
        graph = tf.Graph()
        with graph.as_default():
            a = tf.Variable(np.random.default_rng(0).standard_normal((m, k)).astype(np.float32))
            b = tf.Variable(np.random.default_rng(1).standard_normal((k, n)).astype(np.float32))
            out = tf.reduce_sum(tf.matmul(a, b)[:, :1])  # a small fetch: the matmul dominates
            init = tf.compat.v1.global_variables_initializer()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        with tf.compat.v1.Session(graph=graph, config=config) as s:
            s.run(init)
            run = s.make_callable(out)
            for _ in range(5):
                run()
            best_rate = max(best_rate, 2.0 * m * k * n / min(_timed(run) for _ in range(repeats)))
    return best_rate


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def head_flops(model: Any, batch: int) -> float:
    """Dense FLOPs of the head for `batch` candidates (deep layers, output layer, cross layers)."""
    head = model.head
    flops = 0.0
    for layer in [*head.deep, head.out]:
        k, n = layer.kernel.shape
        flops += 2.0 * batch * int(k) * int(n)
    d = head.embedding.output_dim
    flops += head.cross_layers * 4.0 * batch * d  # x0 (x_l . w) + b + x_l: a dot and two axpys per layer
    return flops


def _inputs_like(request: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    n = len(request["ad_id"])
    index = np.arange(batch) % n
    return {k: v[index] for k, v in request.items()}


def random_inputs(meta: Any, batch: int, ad_ids: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    sig = meta.signature_def["serving_default"]
    out = {}
    for name, info in sig.inputs.items():
        rank = len(info.tensor_shape.dim)
        if name == "ad_id":
            out[name] = np.array([ad_ids[i].encode() for i in rng.integers(0, len(ad_ids), batch)], dtype=object)
        elif info.dtype == tf.string.as_datatype_enum:
            shape = (batch,) if rank == 1 else (batch, 4)
            out[name] = np.array([f"v{i}".encode() for i in rng.integers(0, 10**9, int(np.prod(shape)))],
                                 dtype=object).reshape(shape)
        else:
            out[name] = rng.standard_normal(batch).astype(np.float32)
    return out


def feed_cost(meta: Any, inputs: dict[str, np.ndarray], runs: int) -> float:
    """p50 of feeding the same inputs to a graph that only reads their sizes: what the harness
    (numpy → tensors for every input) and one session call cost, without the model."""
    session, feed = feed_only(meta, inputs)
    with session:
        for _ in range(20):
            feed(inputs)
        return float(np.percentile([_timed(feed, inputs) for _ in range(runs)], 50))


def measure(export_dir: str, make_inputs: Any, flops: Any, peak: float, label: str) -> list[dict[str, Any]]:
    start = time.perf_counter()
    session, meta = load_session(export_dir, intra_threads=1, inter_threads=1)
    load_seconds = time.perf_counter() - start
    names = sorted(meta.signature_def["serving_default"].inputs)
    call = session_runner(session, meta, "serving_default", names)
    rows = []
    for batch in BATCHES:
        inputs = make_inputs(batch)
        for _ in range(20):
            call(inputs)
        times = np.array([_timed(call, inputs) for _ in range(RUNS[batch])])
        p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        floor = flops(batch) / peak
        feed = feed_cost(meta, inputs, RUNS[batch])
        rows.append({"model": label, "candidates": batch, "p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3),
                     "items_per_s": round(batch / p50), "flop_floor_ms": round(floor * 1e3, 3),
                     "ratio_p50_to_floor": round(p50 / floor, 2), "p99_over_p50": round(p99 / p50, 2),
                     "feed_only_p50_ms": round(feed * 1e3, 3),
                     "load_seconds": round(load_seconds, 2)})
        print(f"  {label:10s} {batch:5d} candidates: p50 {p50 * 1e3:8.3f} ms  p99 {p99 * 1e3:8.3f} ms  "
              f"{batch / p50:9.0f} items/s  floor {floor * 1e3:7.3f} ms  ratio {p50 / floor:6.2f}  "
              f"(feeding the inputs alone: {feed * 1e3:.3f} ms)", flush=True)
    session.close()
    return rows


def load_graph_alone(export_dir: str, inputs: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """`(session, call(batch))`: the export loaded by the same TF1 loader, its signature inputs
    mapped (`input_map`) to slices of variables that already hold `inputs`: a call feeds one int
    (the batch size) and fetches the outputs, so it times the graph without the harness's
    numpy → string-tensor conversion (TF Serving builds those tensors in C++ from the request).
    Variables, not constants: grappler would fold the hashing of constant strings away."""
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
    meta = load_meta(export_dir)
    sig = meta.signature_def["serving_default"]
    with session.graph.as_default():
        batch = tf.compat.v1.placeholder(tf.int32, [], name="bench_batch")
        held = {k: tf.Variable(v, trainable=False, name=f"bench_{k}") for k, v in inputs.items()}
        mapping = {sig.inputs[k].name: held[k][:batch] for k in inputs}
        tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir, input_map=mapping)
        session.run(tf.compat.v1.variables_initializer(list(held.values())))
    names = sorted(sig.outputs)
    run = session.make_callable([session.graph.get_tensor_by_name(sig.outputs[k].name) for k in names], [batch])
    return session, lambda b: dict(zip(names, run(b), strict=True))


def _stats(times: list[float]) -> tuple[float, float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), float(np.min(times))


def measure_interleaved(exports: dict[str, str], inputs: dict[str, np.ndarray], flops: Any, peak: float,
                        batches: tuple[int, ...] = BATCHES) -> list[dict[str, Any]]:
    """Every variant, fed and graph-alone, and the feed-only graph, timed in turn (A, B, A, B, …)
    within each batch size: on a machine shared with other jobs a load change then hits every
    variant alike instead of whichever ran at that moment."""
    calls: dict[str, Any] = {}
    sessions = []
    load_seconds = {}
    for label, export_dir in exports.items():
        start = time.perf_counter()
        session, meta = load_session(export_dir, intra_threads=1, inter_threads=1)
        load_seconds[label] = time.perf_counter() - start
        names = sorted(meta.signature_def["serving_default"].inputs)
        fed = session_runner(session, meta, "serving_default", names)
        calls[f"{label} fed"] = lambda b, fed=fed: fed({k: v[:b] for k, v in inputs.items()})
        alone_session, alone = load_graph_alone(export_dir, inputs)
        calls[f"{label} alone"] = alone
        sessions += [session, alone_session]
    meta = load_meta(next(iter(exports.values())))
    feed_session, feed = feed_only(meta, inputs)
    calls["feed only"] = lambda b: feed({k: v[:b] for k, v in inputs.items()})
    sessions.append(feed_session)
    rows = []
    for batch in batches:
        times: dict[str, list[float]] = {k: [] for k in calls}
        for call in calls.values():
            for _ in range(10):
                call(batch)
        load = os.getloadavg()[0]
        for _ in range(RUNS[batch]):
            for key, call in calls.items():
                times[key].append(_timed(call, batch))
        load = (load + os.getloadavg()[0]) / 2
        floor = flops(batch) / peak
        for key, ts in times.items():
            p50, p99, best = _stats(ts)
            label = key.rsplit(" ", 1)[0]
            rows.append({"model": key, "candidates": batch, "p50_ms": round(p50 * 1e3, 3),
                         "p99_ms": round(p99 * 1e3, 3), "min_ms": round(best * 1e3, 3),
                         "items_per_s": round(batch / p50), "flop_floor_ms": round(floor * 1e3, 3),
                         "ratio_p50_to_floor": round(p50 / floor, 2), "ratio_min_to_floor": round(best / floor, 2),
                         "p99_over_p50": round(p99 / p50, 2), "load_average": round(load, 1),
                         "load_seconds": round(load_seconds.get(label, 0.0), 2)})
            print(f"  {key:22s} {batch:5d}: p50 {p50 * 1e3:8.3f} ms  p99 {p99 * 1e3:8.3f} ms  min {best * 1e3:7.3f} ms"
                  f"  floor {floor * 1e3:6.3f} ms  p50/floor {p50 / floor:5.2f}  min/floor {best / floor:5.2f}"
                  f"  (load {load:.1f})", flush=True)
    for session in sessions:
        session.close()
    return rows


def feed_only(meta: Any, inputs: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """A graph that only reads the sizes of the same inputs, fed the same way (see `feed_cost`)."""
    sig = meta.signature_def["serving_default"]
    names = sorted(inputs)
    graph = tf.Graph()
    with graph.as_default():
        placeholders = [tf.compat.v1.placeholder(tf.dtypes.as_dtype(sig.inputs[n].dtype)) for n in names]
        out = tf.add_n([tf.size(p) for p in placeholders])
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    session = tf.compat.v1.Session(graph=graph, config=config)
    run = session.make_callable(out, placeholders)
    return session, lambda values: run(*[values[n] for n in names])


def demo_case(export_dir: str, peak: float) -> list[dict[str, Any]]:
    from tfvctr.export.exporter import load_model_dir

    with open(os.path.join(export_dir, layout.WARMUP_DIR, layout.EXPORT_INFO)) as f:
        info = json.load(f)
    _, model, _, _ = load_model_dir(info["model_dir"], info.get("vocab_dir"))
    request = max((inputs for sig, inputs in read_warmup(export_dir) if sig == "serving_default"),
                  key=lambda r: len(r["ad_id"]))  # real eval rows, tiled to the batch size
    return measure(export_dir, lambda b: _inputs_like(request, b), lambda b: head_flops(model, b), peak, "demo")


def build_jd(ads: int, hash_buckets: int, dtype: str) -> tuple[Any, Any, Any, Any]:
    """`(config, model, encoder, table)`: the JD-sized model with random weights and a random table."""
    import keras

    from tfvctr.config import load_config
    from tfvctr.export.table import Table
    from tfvctr.features import FeatureEncoder
    from tfvctr.models.factory import build_model

    config = load_config(os.path.join(REPO, "configs", "jd_cscnn_dcn.yaml"))
    config.dataset.features = [dataclasses.replace(f, hash_buckets=min(f.hash_buckets, hash_buckets))
                               if f.hash_buckets else f for f in config.dataset.features]
    categories = [f"cat{i:04d}" for i in range(config.model.num_categories - 1)]
    encoder = FeatureEncoder(config.dataset, {"category": categories}, {})
    keras.utils.set_random_seed(0)
    model = build_model(config, len(categories) + 1, encoder.vocab_sizes, seed=0)
    rng = np.random.default_rng(0)
    ad_ids = [f"ad{i:08d}" for i in range(ads)]
    vectors = np.empty((ads, config.model.visual_dim), dtype)
    for start in range(0, ads, 100_000):  # in slices: no 1M x 150 float64 temporary
        vectors[start:start + 100_000] = rng.standard_normal((min(100_000, ads - start), vectors.shape[1]))
    fallback = np.zeros((len(categories) + 1, vectors.shape[1]), dtype)
    table = Table(path="random", ad_ids=np.array(ad_ids), categories=np.array(["cat0000"] * ads),
                  vectors=vectors, fallback=fallback, dtype=dtype)
    return config, model, encoder, table


def write_jd_export(out: str, config: Any, model: Any, encoder: Any, table: Any, fused: bool,
                    jit: bool, bf16: bool = False) -> dict[str, Any]:
    from tfvctr.export.signature import ServingModule
    from tfvctr.export.table import write_ad_ids

    dtype = table.dtype
    asset_dir = tempfile.mkdtemp()
    write_ad_ids(table, os.path.join(asset_dir, layout.EXPORT_AD_IDS))
    start = time.perf_counter()
    module = ServingModule(config, model, encoder, table, os.path.join(asset_dir, layout.EXPORT_AD_IDS), fused=fused, jit=jit,
                           bf16=bf16)
    assert (module.fused is not None) == fused
    module.write(out)
    write_seconds = time.perf_counter() - start
    shutil.rmtree(asset_dir, ignore_errors=True)
    variables = sum(os.path.getsize(os.path.join(out, "variables", n)) for n in os.listdir(os.path.join(out, "variables")))
    info = {"write_seconds": round(write_seconds, 1), "variables_bytes": variables,
            "saved_model_pb_bytes": os.path.getsize(os.path.join(out, "saved_model.pb")),
            "ad_ids_bytes": os.path.getsize(os.path.join(out, "assets", layout.EXPORT_AD_IDS)),
            "row_bytes": int(table.dim * np.dtype(dtype).itemsize)}
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-export", default=None, help="a `tfvctr export` of the demo model (BASE/demo/N)")
    parser.add_argument("--jd-ads", type=int, default=1_000_000, help="rows of the JD-sized table (0: skip JD)")
    parser.add_argument("--hash-buckets", type=int, default=100_000, help="hash buckets per JD field (see above)")
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS),
                        help="JD-sized graphs to measure: jd (field by field, as training), jd-fused (one hash op per "
                             "bucket count, one gather), jd-fused-xla (+ jit_compile of the dense part), "
                             "jd-fused-bf16 (deep-layer matmuls in bfloat16: not reachable from `tfvctr export`)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="candidates per call, e.g. 100")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    print(f"load average at start: {os.getloadavg()}", flush=True)
    peak = gemm_peak()
    print(f"fp32 GEMM, 1 thread: {peak / 1e9:.1f} GFLOP/s (best of 256x1024x1024 and 100x1174x512, 300 tries each)", flush=True)
    result: dict[str, Any] = {"gemm_gflops": round(peak / 1e9, 1), "cases": []}
    if args.demo_export:
        result["cases"] += demo_case(args.demo_export, peak)
    if args.jd_ads:
        config, model, encoder, table = build_jd(args.jd_ads, args.hash_buckets, "float16")
        ad_ids = table.ad_ids.tolist()
        work = tempfile.mkdtemp(prefix="serving_bench_")
        try:
            exports = {}
            for label, fused, jit, bf16 in VARIANTS:
                if label not in args.variants.split(","):
                    continue
                out = os.path.join(work, label, "1")
                info = write_jd_export(out, config, model, encoder, table, fused, jit, bf16)
                exports[label] = out
                per_id = info["ad_ids_bytes"] / args.jd_ads
                result.setdefault("jd_table", {})[label] = {
                    **info, "ads": args.jd_ads, "bytes_per_ad_float16": round(info["row_bytes"] + per_id, 1),
                    "bytes_per_ad_float32": round(2 * info["row_bytes"] + per_id, 1)}
                print(f"  {label}: {args.jd_ads} ads, row {info['row_bytes']} B float16 ({2 * info['row_bytes']} B "
                      f"float32) + {per_id:.1f} B of ad_id; variables {info['variables_bytes'] / 1e6:.0f} MB in all; "
                      f"saved_model.pb {info['saved_model_pb_bytes'] / 1e6:.1f} MB; write {info['write_seconds']} s",
                      flush=True)
            # Pre-built numpy object arrays, sliced per batch size: no input building in the timings.
            inputs = random_inputs(load_meta(next(iter(exports.values()))), max(BATCHES), ad_ids,
                                   np.random.default_rng(1))
            cases = measure_interleaved(exports, inputs, lambda b: head_flops(model, b), peak,
                                        tuple(int(b) for b in args.batches.split(",")))
            result["cases"] += cases
            for label in exports:
                result["jd_table"][label]["load_seconds"] = next(c["load_seconds"] for c in cases
                                                                 if c["model"] == f"{label} fed")
            result["jd_max_abs_diff_logit"] = max_diffs(exports, inputs)
            print(f"  max |logit - jd-fused logit| over {max(BATCHES)} rows: {result['jd_max_abs_diff_logit']}",
                  flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def max_diffs(exports: dict[str, str], inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest |Δ logit| of each variant against `jd-fused` (float32) on the same rows."""
    if "jd-fused" not in exports:
        return {}
    logits = {}
    for label, export_dir in exports.items():
        session, meta = load_session(export_dir, intra_threads=1, inter_threads=1)
        names = sorted(meta.signature_def["serving_default"].inputs)
        logits[label] = session_runner(session, meta, "serving_default", names)(inputs)["logit"]
        session.close()
    return {k: float(np.max(np.abs(v - logits["jd-fused"]))) for k, v in logits.items() if k != "jd-fused"}


_META: dict[str, Any] = {}


def load_meta(export_dir: str) -> Any:
    """The MetaGraphDef (signature shapes/dtypes) without a session, cached."""
    if export_dir not in _META:
        from tensorflow.python.tools import saved_model_utils

        _META[export_dir] = saved_model_utils.get_meta_graph_def(export_dir, "serve")
    return _META[export_dir]


if __name__ == "__main__":
    main()
