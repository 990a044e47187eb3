"""Checkpoints that survive SIGKILL and multi-worker training (docs/design.md "Scale: what gives first").

Two checkpoints per save, both numbered by the global step:

* the model checkpoint (model, both optimizers, step) in `M/checkpoints/ckpt-S`. Every
  worker takes part in saving it (collectives), but only the chief writes to the real
  folder; the others write to a throw-away folder that is deleted at once;
* the data checkpoint of each worker (its local tf.data iterator, shuffle buffer included,
  and its count of batches consumed) in `M/checkpoints/data/worker-I/data-S`. The
  distributed iterator is not checkpointable on TF 2.21, a per-worker local iterator is.

The data checkpoint is written first: if the process dies between the two writes, the
latest model checkpoint is the previous one and its data checkpoint is still kept (one
more is kept than `keep_checkpoints`).
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

import tensorflow as tf

from tfvctr import layout
from tfvctr.errors import TfvctrError
from tfvctr.io import fs


class CheckpointSet:
    """The model checkpoint plus this worker's data checkpoint."""

    def __init__(
        self,
        model_dir: str,
        model_objects: dict,
        data_objects: dict,
        worker_index: int = 0,
        is_chief: bool = True,
        keep: int = 3,
    ):
        self.root = fs.join(model_dir, layout.CHECKPOINTS_DIR)
        self.is_chief = is_chief
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.model_checkpoint = tf.train.Checkpoint(step=self.step, **model_objects)
        write_dir = self.root if is_chief else fs.join(self.root, f"tmp-worker-{worker_index}")
        self._write_dir = write_dir
        # Non-chief workers never write through the manager (see `save`); it only reads.
        self.model_manager = tf.train.CheckpointManager(self.model_checkpoint, self.root, max_to_keep=keep, checkpoint_name="ckpt")
        self.data_checkpoint = tf.train.Checkpoint(**data_objects)
        self.data_dir = fs.join(self.root, "data", f"worker-{worker_index}")
        self.data_manager = tf.train.CheckpointManager(self.data_checkpoint, self.data_dir, max_to_keep=keep + 1, checkpoint_name="data")

    def latest(self) -> Optional[str]:
        """The chief's latest model checkpoint (every worker resumes from it)."""
        return tf.train.latest_checkpoint(self.root)

    def restore(self) -> int:
        """Restores the latest checkpoint and this worker's data position; returns the step (0: none)."""
        path = self.latest()
        if path is None:
            return 0
        self.model_checkpoint.restore(path).expect_partial()
        step = int(self.step.numpy())
        data_path = fs.join(self.data_dir, f"data-{step}")
        if not tf.io.gfile.exists(data_path + ".index"):
            raise TfvctrError(
                f"{data_path}: no data position for checkpoint step {step}; resuming would repeat or skip data "
                f"(was the run restarted with another number of workers?)"
            )
        self.data_checkpoint.restore(data_path).expect_partial()
        return step

    def save(self, step: int) -> str:
        self.step.assign(step)
        self.data_manager.save(checkpoint_number=step)
        if self.is_chief:
            return self.model_manager.save(checkpoint_number=step)
        # A non-chief worker must still run the save (it takes part in its collectives), but
        # into a throw-away folder, so workers never overwrite the chief's files.
        path = self.model_checkpoint.write(fs.join(self._write_dir, f"ckpt-{step}"))
        if fs.is_remote(self._write_dir):
            tf.io.gfile.rmtree(self._write_dir)
        else:
            shutil.rmtree(self._write_dir, ignore_errors=True)
        return path

    @property
    def saved_steps(self) -> list[int]:
        return [int(os.path.basename(p).split("-")[-1]) for p in self.model_manager.checkpoints]


def weights_checkpoint(model) -> tf.train.Checkpoint:
    """A checkpoint of every weight of `model` (trainable or not), keyed by position and path.

    Not `tf.train.Checkpoint(model=model)`: TensorFlow's object graph does not reach the
    sub-layers a Keras 3 layer keeps in plain attributes (measured: of the DCN head only the
    output layer was saved). The model checkpoint gets the head's trainable weights through
    the optimizers; the best checkpoint has no optimizer, so it names every weight itself.
    """
    return tf.train.Checkpoint(
        weights={f"{i:04d}_{v.path.replace('/', '.')}": v for i, v in enumerate(model.weights)}
    )


class BestCheckpoint:
    """The model weights of the best step by the valid split, in `M/checkpoints/best/best-S`.

    Apart from `CheckpointSet` so `keep_checkpoints` rotation never deletes them. Order of
    writes at an evaluation that improves: `save(S)`, then the model checkpoint of S (whose
    selection state names S as the best), then `prune(S)` removes the older bests. If the
    process dies anywhere in between, the latest model checkpoint names a best that is
    still on disk. Every worker takes part in a save (as in `CheckpointSet.save`); only the
    chief writes into the real folder.
    """

    def __init__(self, model_dir: str, model, worker_index: int = 0, is_chief: bool = True):
        self.root = fs.join(model_dir, layout.CHECKPOINTS_DIR, "best")
        self.is_chief = is_chief
        self.model = model
        self.checkpoint = weights_checkpoint(model)
        self._write_dir = self.root if is_chief else fs.join(model_dir, layout.CHECKPOINTS_DIR, f"tmp-best-worker-{worker_index}")

    def path(self, step: int) -> str:
        return fs.join(self.root, f"best-{step}")

    def save(self, step: int) -> str:
        path = self.checkpoint.write(fs.join(self._write_dir, f"best-{step}"))
        if not self.is_chief:
            if fs.is_remote(self._write_dir):
                tf.io.gfile.rmtree(self._write_dir)
            else:
                shutil.rmtree(self._write_dir, ignore_errors=True)
        return path

    def prune(self, keep: int) -> None:
        """Deletes every best checkpoint but the one of step `keep` (chief only)."""
        if not self.is_chief:
            return
        for path in tf.io.gfile.glob(fs.join(self.root, "best-*")):
            if os.path.basename(path).split(".")[0] != f"best-{keep}":
                tf.io.gfile.remove(path)

    def restore(self, step: int) -> None:
        """Loads the weights of best step `step` into the model."""
        path = self.path(step)
        if not tf.io.gfile.exists(path + ".index"):
            raise TfvctrError(f"{path}: the best checkpoint of step {step} is missing (was {self.root} deleted?)")
        self.checkpoint.read(path).expect_partial()
