"""Sparse Basicnet vs a dense one-hot fully-connected layer (DeepCTR 2016, §5.1, Table 3).

DeepCTR's Basicnet multiplies the one-hot basic features V [batch, d] by W [d, units]
(Eq. 4). Stored sparsely it costs O(batch · fields · units); as a dense matrix it costs
O(batch · d · units) and holds the [batch, d] matrix V and the dense gradient
dW = V^T dY [d, units] (Eq. 5). The paper measured, for batch 1000 and d ≈ 153k:
sparse 6.67 ms / 397 MB vs dense 189.56 ms / 4667 MB (GPU).

This script times one forward + backward step of both, side by side, with the same W:

* sparse: `tfvctr.layers.NonVisualEmbedding(merge="sum")`: one table per field, rows
  gathered and summed; the gradient is `IndexedSlices` over the looked-up rows;
* dense: V materialised with `tf.scatter_nd` (a 1 per field per row), then `V @ W`.

Each path runs in its own subprocess so their memory peaks do not mask each other.
Memory is reported two ways:

* `peak_mb`: measured. On GPU, `tf.config.experimental.get_memory_info("GPU:0")["peak"]`
  minus the bytes in use before the step (what the paper's GPU figure means). On CPU that
  API does not exist, so: the rise of the process's peak resident set size
  (`resource.getrusage(...).ru_maxrss`) from just before the first step to after the
  last, i.e. the step's working memory on top of the parameters and inputs (it includes
  TF's one-off tracing and allocator growth, so it is an upper bound).
* `tensor_mb`: computed. Bytes of the tensors the step materialises besides W:
  sparse: gathered rows + output + row gradients (values and indices);
  dense: V + output + dense dW.

Usage:
    python benchmarks/sparse_basicnet.py                  # batch 1000, 20 fields, d = 153,000
    python benchmarks/sparse_basicnet.py --batch 1000 --fields 20 --buckets 153000 --units 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any


def _run_one(path: str, args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from tfvctr.layers.embedding import NonVisualEmbedding

    gpu = bool(tf.config.list_physical_devices("GPU"))
    per_field = args.buckets // args.fields
    d = per_field * args.fields
    rng = np.random.default_rng(0)
    ids = rng.integers(0, per_field, size=(args.batch, args.fields)).astype("int32")
    upstream = tf.constant(rng.normal(size=(args.batch, args.units)).astype("float32"))
    features = [{"name": f"f{i}", "kind": "categorical"} for i in range(args.fields)]
    layer = NonVisualEmbedding(features, {f"f{i}": per_field for i in range(args.fields)}, merge="sum",
                               embedding_dim=args.units, seed=0)
    layer.build(None)
    inputs = {f"f{i}": tf.constant(ids[:, i]) for i in range(args.fields)}
    w_dense = tf.Variable(tf.concat([layer.tables[f"f{i}"] for i in range(args.fields)], axis=0))
    offsets = (np.arange(args.fields) * per_field).astype("int64")
    global_ids = tf.constant(ids.astype("int64") + offsets)
    rows = tf.repeat(tf.range(args.batch, dtype=tf.int64), args.fields)
    scatter_idx = tf.stack([rows, tf.reshape(global_ids, [-1])], axis=1)

    @tf.function
    def sparse_step():
        with tf.GradientTape() as tape:
            y = layer(inputs)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, layer.trainable_variables)

    @tf.function
    def dense_step():
        with tf.GradientTape() as tape:
            v = tf.scatter_nd(scatter_idx, tf.ones([args.batch * args.fields]), [args.batch, d])  # one-hot V
            y = tf.matmul(v, w_dense)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, [w_dense])

    step = sparse_step if path == "sparse" else dense_step
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
        base = tf.config.experimental.get_memory_info("GPU:0")["current"]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y, grads = step()  # trace + warm up
    for _ in range(args.warmup - 1):
        y, grads = step()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        y, grads = step()
        # Wait for the values (GPU ops are asynchronous).
        _ = y[:1].numpy()
        _ = [(g.values if isinstance(g, tf.IndexedSlices) else g)[:1].numpy() for g in grads]
        times.append((time.perf_counter() - t0) * 1e3)
    if gpu:
        peak_mb = (tf.config.experimental.get_memory_info("GPU:0")["peak"] - base) / 2**20
        how = "GPU get_memory_info peak"
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # ru_maxrss is KiB on Linux
        how = "CPU ru_maxrss rise"
    b, f, u = args.batch, args.fields, args.units
    if path == "sparse":
        tensor_bytes = 4 * (b * f * u + b * u + b * f * u) + 8 * b * f
    else:
        tensor_bytes = 4 * (b * d + b * u + d * u)
    return {
        "path": path,
        "device": "GPU" if gpu else "CPU",
        "d": d,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "peak_mb": peak_mb,
        "memory_method": how,
        "tensor_mb": tensor_bytes / 2**20,
        "checksum": float(tf.reduce_sum(y)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--buckets", type=int, default=153_000, help="total one-hot width d over all fields")
    parser.add_argument("--units", type=int, default=128, help="Basicnet output width")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(_run_one(args.only, args)))
        return 0
    results = {}
    for path in ("sparse", "dense"):
        cmd = [sys.executable, os.path.abspath(__file__), "--only", path] + [
            f"--{k}={getattr(args, k)}" for k in ("batch", "fields", "buckets", "units", "reps", "warmup")
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])
    s, dn = results["sparse"], results["dense"]
    if abs(s["checksum"] - dn["checksum"]) > 1e-3 * max(1.0, abs(dn["checksum"])):
        print(f"error: sparse and dense outputs differ ({s['checksum']} vs {dn['checksum']})", file=sys.stderr)
        return 1
    print(f"Basicnet forward+backward, batch {args.batch}, {args.fields} fields, d = {s['d']:,}, "
          f"{args.units} units, {s['device']} ({s['memory_method']}), median of {args.reps}")
    print(f"{'':8}{'ms':>10}{'peak MB':>12}{'tensor MB':>12}")
    for name, r in (("sparse", s), ("dense", dn)):
        print(f"{name:8}{r['ms_median']:10.2f}{r['peak_mb']:12.1f}{r['tensor_mb']:12.1f}")
    print(f"{'ratio':8}{dn['ms_median'] / s['ms_median']:10.1f}x"
          f"{dn['peak_mb'] / max(s['peak_mb'], 1e-9):11.1f}x{dn['tensor_mb'] / s['tensor_mb']:11.1f}x")
    print("DeepCTR Table 3 (K20m GPU, batch 1000): sparse 6.67 ms / 397 MB, dense 189.56 ms / 4667 MB (28.4x / 11.8x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
