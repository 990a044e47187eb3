"""Distributed custom training loop (tf.distribute + strategy.run), checkpoints and resume."""

from tfvctr.training.controller import SUMMARY_TAGS, Controller
from tfvctr.training.loop import NonFiniteLoss, Trainer, histogram_auc
from tfvctr.training.selection import VALID_SUMMARY_TAGS, ModelSelection, Validator
from tfvctr.training.strategy import WorkerInfo, make_strategy, worker_info
from tfvctr.training.trainer import pretrain, train

__all__ = [
    "SUMMARY_TAGS", "VALID_SUMMARY_TAGS", "Controller", "ModelSelection", "NonFiniteLoss", "Trainer", "Validator",
    "WorkerInfo", "histogram_auc", "make_strategy", "pretrain", "train", "worker_info",
]
