"""Subprocess entry for the multi-worker and resume tests: `python train_worker.py SPEC.json`.

SPEC: {"config": dict, "data": dir, "model_dir": dir, "steps": int, "out": json path,
"sleep_per_block": seconds, "local_cpus": n}. The strategy is created first
(MultiWorkerMirroredStrategy from TF_CONFIG must precede every other TensorFlow op); with
`local_cpus` the CPU is split into n logical devices under a MirroredStrategy (the path of a
host with several GPUs). The result JSON holds the final step, the batches consumed, the
per-block losses, a digest of the final weights and, with a valid split, the model selection.
"""

import hashlib
import json
import sys
import time

import tensorflow as tf

from tfvctr.training.strategy import make_strategy

with open(sys.argv[1]) as _f:
    _local_cpus = int(json.load(_f).get("local_cpus", 0))
if _local_cpus:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * _local_cpus
    )
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(_local_cpus)])
else:
    strategy = make_strategy()

import numpy as np  # noqa: E402

from tfvctr.config import config_from_dict  # noqa: E402
from tfvctr.training import train  # noqa: E402


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    sleep = float(spec.get("sleep_per_block", 0))

    def log(line):
        print(line, flush=True)
        # Slows the run down so the resume test can kill it between checkpoints.
        time.sleep(sleep)

    result = train(
        config_from_dict(spec["config"]), spec["data"], spec["model_dir"], steps=spec["steps"], strategy=strategy, log=log
    )
    weights = [np.asarray(w) for w in result["model"].get_weights()]
    digest = hashlib.sha256(b"".join(w.astype(np.float32).tobytes() for w in weights)).hexdigest()
    with open(spec["out"], "w") as f:
        json.dump(
            {
                "step": result["step"],
                "batches_consumed": result["batches_consumed"],
                "losses": [h["loss"] for h in result.get("history", [])],
                "steps_run": [h["step"] for h in result.get("history", [])],
                # Model selection (when the data dir has a valid split).
                "best_step": result.get("best_step"),
                "last_step": result.get("last_step"),
                "stopped_early": result.get("stopped_early"),
                "valid_history": result.get("valid_history"),
                "digest": digest,
                "weights": [w.astype(np.float64).ravel().tolist() for w in weights],
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1])
