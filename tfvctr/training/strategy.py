"""The tf.distribute strategy from the environment (docs/design.md "The stack, and why").

* TF_CONFIG naming several tasks → `MultiWorkerMirroredStrategy` (must be created before
  any other TensorFlow op runs in the process);
* several local GPUs → `MirroredStrategy`;
* otherwise the default strategy (one CPU or GPU).
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where this process stands in the cluster."""

    num_workers: int
    worker_index: int
    is_chief: bool
    local_replicas: int  # replicas (devices) in this worker


def _cluster_size(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy() -> tf.distribute.Strategy:
    """Chooses the strategy from TF_CONFIG and the visible GPUs."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if _cluster_size(tf_config) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def worker_info(strategy: tf.distribute.Strategy) -> WorkerInfo:
    """Worker count, this worker's index, whether it is the chief, and its local replicas."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        num_workers = _cluster_size(tf_config)
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        has_chief = bool(tf_config.get("cluster", {}).get("chief"))
        # With a chief task the chief is worker 0 and workers follow it.
        index = 0 if task_type == "chief" else task_id + (1 if has_chief else 0)
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
        local = max(1, strategy.num_replicas_in_sync // num_workers)
        return WorkerInfo(num_workers, index, is_chief, local)
    return WorkerInfo(1, 0, True, strategy.num_replicas_in_sync)
