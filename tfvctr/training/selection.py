"""Model selection on the valid split: periodic scoring, the best step, early stopping.

Every `training.eval_every` steps (and at the last step) the chief scores `DATA/valid`
with the code of `tfvctr evaluate` (`tfvctr.evaluation.score`, exact AUC over every
prediction), and `ModelSelection` decides whether the step is the new best by
`training.selection_metric` and whether `training.patience` evaluations in a row failed
to improve on the best by more than `training.min_delta` (then training stops).

Multi-worker (MultiWorkerMirroredStrategy): only the chief scores the valid split; the
other workers wait in one all-reduce that carries the chief's figures and decision
(`Validator._broadcast`), so every worker records the same history, saves the best
checkpoint at the same step and leaves the loop at the same step. Why the chief alone:
the AUC is exact only over all predictions at once; sharding the split would need an
all-gather of variable-length prediction arrays, and the valid split is small (one day or
a share of the ads), so the idle time of the others during one evaluation is the cheaper
price.

The state (history, best, evaluations without improvement, stopped) is a JSON string in a
`tf.Variable` saved with every model checkpoint; evaluations are also checkpoint steps, so
a run killed at any point resumes with the best-so-far of its latest checkpoint. The best
weights live in their own folder (`checkpoints/best`, see `BestCheckpoint`), out of reach
of `keep_checkpoints` rotation.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from tfvctr.evaluation import SELECTION_METRICS

FIGURES = ("valid_auc", "valid_cold_auc", "valid_logloss")
# TensorBoard tags of one evaluation (under M/tensorboard/train, beside SUMMARY_TAGS).
VALID_SUMMARY_TAGS = {"valid_auc": "valid/auc", "valid_cold_auc": "valid/cold_auc", "valid_logloss": "valid/logloss"}


class ModelSelection:
    """The history of valid figures, the best step and the early-stopping count.

    Args:
        metric: one of `SELECTION_METRICS` (`valid_auc`, `valid_cold_auc`: higher is better;
            `valid_logloss`: lower is better).
        patience: evaluations without improvement before stopping (0: never stop early).
        min_delta: an improvement must beat the best by more than this.
        tolerance: a later evaluation within this of the peak (the best value so far) is
            kept instead of the peak's step (0: the peak's step). Valid figures are noisy
            (a valid AUC of a few hundred clicks moves by ~0.01 from sampling alone), so
            the argmax over evaluations often lands on an early, undertrained step by
            luck; with a decaying learning rate the later step within noise of the peak
            is the better-settled model. Patience still counts from the peak.
    """

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0, tolerance: float = 0.0):
        if metric not in SELECTION_METRICS:
            raise ValueError(
                f"Invalid value received for argument `metric`. Expected one of {sorted(SELECTION_METRICS)}. Received: metric={metric!r}"
            )
        self.metric = metric
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        if tolerance < 0:
            raise ValueError(f"Invalid value received for argument `tolerance`. Expected a value >= 0. Received: {tolerance}")
        self.tolerance = float(tolerance)
        self.history: list[dict] = []
        self.best_step: Optional[int] = None  # the step model.keras keeps
        self.best: dict = {}  # its figures
        self.peak: dict = {}  # the figures of the best value so far (the best step's when tolerance is 0)
        self.bad_evaluations = 0
        self.stopped_early = False
        self.notes: list[str] = []  # what changed on the way (e.g. a metric fallback), for the log

    @property
    def mode(self) -> str:
        return SELECTION_METRICS[self.metric]

    def _better(self, value: float) -> bool:
        if not self.peak:
            return True
        peak = self.peak[self.metric]
        return value > peak + self.min_delta if self.mode == "max" else value < peak - self.min_delta

    def _within_tolerance(self, value: float) -> bool:
        if not self.tolerance or not self.peak:
            return False
        peak = self.peak[self.metric]
        return value >= peak - self.tolerance if self.mode == "max" else value <= peak + self.tolerance

    def update(self, step: int, figures: dict) -> tuple[bool, bool]:
        """Records one evaluation; returns (improved, stop). Deterministic in its inputs."""
        self.notes = []
        figures = {k: _none_if_nan(figures.get(k)) for k in FIGURES}
        if figures[self.metric] is None and not self.best and self.metric == "valid_cold_auc":
            # No cold ad in the valid split (or only one class among them): the metric cannot
            # choose anything, and silently keeping the last weights would hide it.
            self.metric = "valid_auc"
            self.notes.append("WARNING: valid_cold_auc is undefined on this valid split (no cold ads with both "
                              "classes); selecting by valid_auc instead")
        self.history.append({"step": int(step), **figures})
        value = figures[self.metric]
        better = value is not None and self._better(value)
        if better:
            self.bad_evaluations, self.peak = 0, dict(figures)
        else:
            self.bad_evaluations += 1
        # `improved`: this step becomes the one kept (a new peak, or within tolerance of it).
        improved = better or (value is not None and self._within_tolerance(value))
        if improved:
            self.best_step, self.best = int(step), dict(figures)
        stop = bool(self.patience) and self.bad_evaluations >= self.patience
        self.stopped_early = self.stopped_early or stop
        return improved, stop

    def force(self, improved: bool, stop: bool) -> None:
        """Applies the chief's decision for the evaluation just recorded (non-chief workers)."""
        step = self.history[-1]["step"]
        if improved and self.best_step != step:
            self.best_step, self.best = step, {k: self.history[-1][k] for k in FIGURES}
        self.stopped_early = stop

    # ------------------------------------------------------------------ persistence

    def state(self) -> str:
        return json.dumps({"metric": self.metric, "history": self.history, "best_step": self.best_step, "best": self.best,
                           "peak": self.peak, "bad_evaluations": self.bad_evaluations,
                           "stopped_early": self.stopped_early})

    def load(self, text: str) -> None:
        """Restores `state()`; an empty string (a checkpoint from before model selection) is no state."""
        if not text:
            return
        d = json.loads(text)
        self.metric, self.history, self.best_step = d["metric"], d["history"], d["best_step"]
        self.best, self.bad_evaluations, self.stopped_early = d["best"], d["bad_evaluations"], d["stopped_early"]
        self.peak = d.get("peak", self.best)  # checkpoints from before `tolerance`: the peak was the best

    def summary(self, last_step: int) -> dict:
        """The content of `M/selection.json` (and of `train()`'s result keys)."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best_step": self.best_step,
            "best": dict(self.best),
            "history": [dict(h) for h in self.history],
            "stopped_early": self.stopped_early,
            "last_step": int(last_step),
        }


def _none_if_nan(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_valid(record: dict, metric: str) -> str:
    """`valid auc 0.6123 cold 0.5890 logloss 0.2231 *` (`*`: the new best by `metric`)."""

    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    mark = " *" if record.get("improved") else ""
    return f"valid auc {f(record['valid_auc'])} cold {f(record['valid_cold_auc'])} logloss {f(record['valid_logloss'])}{mark}"


class Validator:
    """Scores the valid split every `eval_every` steps and applies `ModelSelection` on every worker.

    Args:
        strategy: the training strategy (its all-reduce carries the chief's figures).
        selection: the `ModelSelection` (the same object on every worker).
        eval_every: interval in steps (the last step is always evaluated too).
        score: `() -> {figure: value}` (chief only; None on the other workers).
        num_workers, is_chief, local_replicas: from `worker_info`.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        selection: ModelSelection,
        eval_every: int,
        score: Optional[Callable[[], dict]],
        num_workers: int = 1,
        is_chief: bool = True,
        local_replicas: int = 1,
    ):
        self.strategy = strategy
        self.selection = selection
        self.eval_every = int(eval_every)
        self.score = score
        self.num_workers = num_workers
        self.is_chief = is_chief
        self.local_replicas = max(1, local_replicas)
        self._broadcast_fn: Optional[Callable] = None

    def due(self, step: int, total: int) -> bool:
        return step % self.eval_every == 0 or step == total

    def to_next(self, step: int) -> int:
        """Steps until the next evaluation point (the controller ends a block there)."""
        return self.eval_every - step % self.eval_every

    def _broadcast(self, values: np.ndarray) -> np.ndarray:
        """The chief's `values` on every worker (an all-reduce SUM to which only the chief adds).

        Each of the chief's local replicas adds the values, so the sum is divided by their
        count; the other workers add zeros. NaN (an undefined metric) survives the sum.
        """
        if self._broadcast_fn is None:
            chief = self.is_chief
            replicas = float(self.local_replicas)

            @tf.function(input_signature=[tf.TensorSpec([len(values)], tf.float64)])
            def broadcast(v):
                def replica_fn(x):
                    ctx = tf.distribute.get_replica_context()
                    # tf.identity: an input passed straight through has no device of the
                    # replica, and the all-reduce refuses it ("destinations can not be empty").
                    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(x) if chief else tf.zeros_like(x))

                out = self.strategy.run(replica_fn, args=(v,))
                return self.strategy.experimental_local_results(out)[0] / replicas

            self._broadcast_fn = broadcast
        return self._broadcast_fn(tf.constant(values, tf.float64)).numpy()

    def barrier(self) -> None:
        """All workers meet here (e.g. before reading a checkpoint the chief has just written)."""
        if self.num_workers > 1:
            self._broadcast(np.zeros(len(FIGURES) + 2))

    def validate(self, step: int) -> dict:
        """Scores (chief), agrees (all workers), updates the selection; returns the record."""
        if self.is_chief:
            figures = self.score()
            improved, stop = self.selection.update(step, figures)
        if self.num_workers > 1:
            local = np.zeros(len(FIGURES) + 2)
            if self.is_chief:
                local = np.array(
                    [np.nan if figures[k] is None else figures[k] for k in FIGURES] + [float(improved), float(stop)]
                )
            agreed = self._broadcast(local)
            if not self.is_chief:
                figures = {k: _none_if_nan(agreed[i]) for i, k in enumerate(FIGURES)}
                self.selection.update(step, figures)
                improved, stop = bool(agreed[-2]), bool(agreed[-1])
                self.selection.force(improved, stop)
        record = dict(self.selection.history[-1])
        record.update(improved=improved, stop=stop, metric=self.selection.metric)
        return record
