"""The outer training loop (orbit's `Controller` shape): blocks of steps, one log line and
one set of summaries per block, checkpoints every `checkpoint_every` steps and at the end,
and, with a `Validator`, an evaluation of the valid split every `eval_every` steps (a
checkpoint step too; the best weights saved apart; an early stop ends the loop).
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Optional

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfvctr.training.averaging import WeightAverage
from tfvctr.training.checkpoints import BestCheckpoint, CheckpointSet
from tfvctr.training.loop import Trainer
from tfvctr.training.optimizers import current_learning_rate
from tfvctr.training.selection import VALID_SUMMARY_TAGS, Validator, format_valid

# The summary tags one block writes (TensorBoard, under M/tensorboard/<name>).
SUMMARY_TAGS = ("loss", "auc", "learning_rate/cnn", "learning_rate/rest", "images_per_sec", "impressions_per_sec")


def scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar without the `tensorboard` package (not installed beside TF 2.21
    here): `tf.summary.scalar` needs it, the core `tf.summary.write` with the scalars
    plugin's metadata writes the same event."""
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=metadata)


def format_progress(step: int, total: int, figures: dict, cnn_lr: Optional[float], lr: float, width: int = 20) -> str:
    """`[#####.....] step 40/100 loss 0.6412 auc 0.6120 lr 1e-03/1e-03 210 img/s 4100 imp/s`."""
    done = int(width * step / max(total, 1))
    loss_name = figures.get("loss_name", "loss")  # "bpr_loss" under the pair-wise objective
    parts = [f"[{'#' * done}{'.' * (width - done)}] step {step}/{total}", f"{loss_name} {figures['loss']:.4f}"]
    if "auc" in figures:
        parts.append(f"auc {figures['auc']:.4f}")
    if "accuracy" in figures:
        parts.append(f"acc {figures['accuracy']:.4f}")
    # cnn_lr is None when nothing trains in a CNN (no tower, or a frozen one): its optimizer
    # never steps, so its schedule would show a learning rate that applies to nothing.
    parts.append(f"lr {'-' if cnn_lr is None else f'{cnn_lr:.3g}'}/{lr:.3g}")
    parts.append(f"{figures['images_per_sec']:.1f} img/s {figures['impressions_per_sec']:.1f} imp/s")
    return "  ".join(parts)


class Controller:
    """Runs `trainer` from the restored step to `total_steps`.

    Args:
        trainer: the inner loop.
        iterator: this worker's local iterator (checkpointed with the data checkpoint).
        checkpoints: the `CheckpointSet`.
        total_steps: the step to stop at.
        checkpoint_every, log_every: intervals in steps.
        summary_dir: TensorBoard folder (chief only; None writes no summaries).
        log: where progress lines go (None: silent).
        validator: scores the valid split and decides best step / early stop (None: no
            model selection).
        best: where the best weights go (with `validator`).
        selection_state: the string variable of the model checkpoint that holds the
            selection state (with `validator`).
        average: a `WeightAverage`: the averaged weights are scored and saved as the best,
            the trained ones go on training.
        validate_first: also score the weights training starts from, as step 0 (with
            `validator`; `model.linear: prefit`, whose step 0 is the fitted regression).
    """

    def __init__(
        self,
        trainer: Trainer,
        iterator: Iterator,
        checkpoints: CheckpointSet,
        total_steps: int,
        checkpoint_every: int,
        log_every: int,
        summary_dir: Optional[str] = None,
        log: Optional[Callable[[str], None]] = None,
        validator: Optional[Validator] = None,
        best: Optional[BestCheckpoint] = None,
        selection_state: Optional[tf.Variable] = None,
        average: Optional[WeightAverage] = None,
        validate_first: bool = False,
    ):
        self.trainer = trainer
        self.validator = validator
        self.best = best
        self.selection_state = selection_state
        self.average = average
        self.validate_first = validate_first
        self.iterator = iterator
        self.checkpoints = checkpoints
        self.total_steps = total_steps
        self.checkpoint_every = checkpoint_every
        self.log_every = max(1, log_every)
        self.writer = tf.summary.create_file_writer(summary_dir) if summary_dir else tf.summary.create_noop_writer()
        self.log = log
        self.history: list[dict] = []

    def _next_block(self, step: int) -> int:
        """Steps until the next log point, checkpoint point or the end, whichever is first."""
        to_log = self.log_every - step % self.log_every
        to_ckpt = self.checkpoint_every - step % self.checkpoint_every
        to_eval = self.validator.to_next(step) if self.validator else to_ckpt
        return min(to_log, to_ckpt, to_eval, self.total_steps - step)

    def _validate_start(self) -> None:
        """Step 0 as a candidate of model selection: no checkpoint (a kill before the first one
        starts over, and scores step 0 again), only the best weights and the selection state."""
        record = self.validator.validate(0)
        if self.log:
            self.log(f"step 0 (the weights training starts from)  {format_valid(record, record['metric'])}")
        with self.writer.as_default(step=0):
            for key, tag in VALID_SUMMARY_TAGS.items():
                if record[key] is not None:
                    scalar(tag, record[key])
        if record["improved"]:
            self.best.save(0)
        self.selection_state.assign(self.validator.selection.state())

    def run(self, start_step: int) -> dict:
        step = start_step
        last: dict = {}
        if self.validate_first and self.validator is not None and step == 0:
            self._validate_start()
        while step < self.total_steps:
            n = self._next_block(step)
            figures = self.trainer.train(self.iterator, n, first_step=step + 1)
            step += n
            cnn_lr = current_learning_rate(self.trainer.cnn_optimizer)
            lr = current_learning_rate(self.trainer.optimizer)
            figures.update(step=step, cnn_learning_rate=cnn_lr, learning_rate=lr)
            record = None
            if self.validator and self.validator.due(step, self.total_steps):
                if self.average is not None:
                    self.average.swap()  # back after the best weights are saved, below
                record = self.validator.validate(step)
                figures["valid"] = record
            self.history.append(figures)
            last = figures
            with self.writer.as_default(step=step):
                scalar("loss", figures["loss"])
                if "auc" in figures:
                    scalar("auc", figures["auc"])
                else:
                    scalar("accuracy", figures.get("accuracy", 0.0))
                scalar("learning_rate/cnn", cnn_lr)
                scalar("learning_rate/rest", lr)
                scalar("images_per_sec", figures["images_per_sec"])
                scalar("impressions_per_sec", figures["impressions_per_sec"])
                for key, tag in VALID_SUMMARY_TAGS.items():
                    if record is not None and record[key] is not None:
                        scalar(tag, record[key])
            self.writer.flush()
            if self.log:
                shown_cnn_lr = cnn_lr if getattr(self.trainer.model, "visual_variables", None) else None
                line = format_progress(step, self.total_steps, figures, shown_cnn_lr, lr)
                if record is not None:
                    line += "  " + format_valid(record, record["metric"])
                self.log(line)
                for note in self.validator.selection.notes if record is not None else ():
                    self.log(note)
            if record is not None:
                # Best weights first, then the checkpoint whose state names them, then the older
                # bests go (see BestCheckpoint): a kill anywhere leaves a consistent pair.
                if record["improved"]:
                    self.best.save(step)
                if self.average is not None:
                    self.average.swap()  # the checkpoint holds the trained weights and the average as they are
                self.selection_state.assign(self.validator.selection.state())
                self.checkpoints.save(step)
                if record["improved"]:
                    self.best.prune(step)
                if record["stop"]:
                    if self.log:
                        sel = self.validator.selection
                        best = f"best step {sel.best_step} ({sel.metric} {sel.best[sel.metric]:.4f})" if sel.best else "no best step"
                        self.log(f"early stop at step {step}: {sel.metric} did not improve for {sel.patience} evaluations; {best}")
                    break
            elif step % self.checkpoint_every == 0 or step == self.total_steps:
                self.checkpoints.save(step)
        return last


def print_line(line: str) -> None:
    print(line, flush=True, file=sys.stdout)
