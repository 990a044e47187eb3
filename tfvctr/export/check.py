"""The export's acceptance check: TF Serving's loader in a fresh process vs the Keras model.

TF Serving loads a SavedModel with the TF1 loader into a `Session` (the `serve` tag), runs
its restore and init ops (the init op fills the ad_id hash table from the asset file),
and feeds / fetches by the SignatureDef's tensor names. `run_in_fresh_process` does
exactly that in a new Python process (nothing of the exporting process, no eager
function, no cached table can help), on every request of the warmup file. `reference`
computes the same rows with the in-memory Keras objects: the `FeatureEncoder`, the head,
x_v from the table files (NumPy lookup) or from the visual tower.

    python -m tfvctr.export.check EXPORT_DIR OUT.npz    # the child: TF1 loader → OUT.npz
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any, Mapping

import numpy as np

from tfvctr.errors import TfvctrError
from tfvctr.export.signature import AD_ID, IMAGE_BYTES, IMAGE_SIGNATURE, OUTPUTS
from tfvctr.features import CATEGORY

TOLERANCE = 1e-5


def load_session(export_dir: str, intra_threads: int = 0, inter_threads: int = 0) -> tuple[Any, Any]:
    """`(session, meta_graph)`: the export loaded as TF Serving loads it (TF1 loader, `serve` tag)."""
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_threads,
                                      inter_op_parallelism_threads=inter_threads)
    session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
    with session.graph.as_default():
        # Restores the variables and runs the SavedModel's init op (table initialisers).
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
    return session, meta


def session_runner(session: Any, meta: Any, signature: str, input_names: list[str]) -> Any:
    """A callable `inputs → outputs` bound by SignatureDef tensor names (`Session.make_callable`)."""
    sig = meta.signature_def[signature]
    feeds = [session.graph.get_tensor_by_name(sig.inputs[k].name) for k in input_names]
    names = sorted(sig.outputs)
    fetches = [session.graph.get_tensor_by_name(sig.outputs[k].name) for k in names]
    run = session.make_callable(fetches, feeds)

    def call(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, run(*[inputs[k] for k in input_names]), strict=True))

    return call


def _child(export_dir: str, out_path: str) -> None:
    from tfvctr.export.warmup import read_warmup

    session, meta = load_session(export_dir)
    results = {}
    for i, (signature, inputs) in enumerate(read_warmup(export_dir)):
        sig = meta.signature_def[signature]
        feed = {sig.inputs[k].name: v for k, v in inputs.items()}
        fetch = {k: sig.outputs[k].name for k in sig.outputs}
        for name, value in session.run(fetch, feed).items():
            results[f"{i}/{name}"] = value
    np.savez(out_path, **results)


def run_in_fresh_process(export_dir: str) -> list[dict[str, np.ndarray]]:
    """The outputs of every warmup request, computed by a new process through the TF1 loader."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "outputs.npz")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run([sys.executable, "-m", "tfvctr.export.check", export_dir, out],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise TfvctrError(f"{export_dir}: the TF1 loader (as TF Serving loads it) failed in a fresh process: {tail}")
        with np.load(out) as npz:
            flat = {k: npz[k] for k in npz.files}
    count = 1 + max((int(k.split("/")[0]) for k in flat), default=-1)
    return [{name: flat[f"{i}/{name}"] for name in OUTPUTS} for i in range(count)]


def reference(model: Any, encoder: Any, table: Any, config: Any, signature: str,
              inputs: Mapping[str, np.ndarray], logit_offset: float = 0.0,
              logit_scale: float = 1.0) -> dict[str, np.ndarray]:
    """The same request computed in memory with Keras (FeatureEncoder + head; NumPy table lookup).

    `logit_offset`: log(w) of negative downsampling, added to the logit as the export does;
    `logit_scale`: Platt's slope, applied first (`tfvctr.calibration.transform`).
    """
    import tensorflow as tf

    from tfvctr.data import decode_image

    raw = {k: tf.constant(v) for k, v in inputs.items() if k not in (AD_ID, IMAGE_BYTES)}
    encoded = encoder(raw)
    features = {f.name: encoded[f.name] for f in config.dataset.features}
    features[CATEGORY] = encoded[CATEGORY]
    ad_ids = [a.decode() if isinstance(a, bytes) else str(a) for a in inputs[AD_ID]]
    x_v, in_table = table.lookup(ad_ids, np.asarray(encoded[CATEGORY]))
    if signature == IMAGE_SIGNATURE:
        size = config.dataset.image_size
        images = []
        for encoded_image in inputs[IMAGE_BYTES]:
            image = decode_image(tf.constant(encoded_image), size)
            images.append(image)
        x_v = np.asarray(model.visual_tower({"image": tf.stack(images), "category": encoded[CATEGORY]},
                                            training=False), np.float32)
    logit = np.asarray(model.head({"features": features, "x_v": tf.constant(x_v)}, training=False), np.float32)
    logit = logit * np.float32(logit_scale) if logit_scale != 1.0 else logit
    logit = logit + np.float32(logit_offset) if logit_offset else logit
    return {"ctr": 1.0 / (1.0 + np.exp(-logit.astype(np.float64))), "logit": logit, "in_table": in_table}


def compare(expected: list[dict[str, np.ndarray]], served: list[dict[str, np.ndarray]],
            signatures: list[str]) -> dict[str, Any]:
    """Max |Δ| of ctr and logit and `in_table` agreement; raises `TfvctrError` beyond `TOLERANCE`."""
    if len(expected) != len(served):
        raise TfvctrError(f"check: {len(served)} served results for {len(expected)} requests")
    worst = {"ctr": 0.0, "logit": 0.0}
    rows = 0
    for i, (want, got, signature) in enumerate(zip(expected, served, signatures, strict=True)):
        rows += len(want["logit"])
        for name in worst:
            delta = float(np.max(np.abs(np.asarray(got[name], np.float64) - want[name]))) if len(want[name]) else 0.0
            worst[name] = max(worst[name], delta)
            if not delta <= TOLERANCE:
                raise TfvctrError(f"check: request {i} ({signature}): {name} differs by {delta:.3g} between the "
                                  f"TF1-loaded export and the Keras model (tolerance {TOLERANCE})")
        if not np.array_equal(np.asarray(got["in_table"], bool), want["in_table"]):
            raise TfvctrError(f"check: request {i} ({signature}): in_table differs between the export and the table")
    return {"requests": len(expected), "rows": rows, "max_abs_diff_ctr": worst["ctr"],
            "max_abs_diff_logit": worst["logit"], "tolerance": TOLERANCE, "loader": "tf.compat.v1.saved_model.loader"}


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
