"""An exponential moving average of the trained weights (`training.ema_decay`).

Polyak & Juditsky (1992) showed that averaging the iterates of SGD reaches the optimum's
statistical efficiency on a convex problem without tuning the step size down to it; an
exponential average (TensorFlow's `ExponentialMovingAverage`) is the version used with a
schedule. The reason here: an id seen in a few impressions is pushed by every batch that
holds it and its weight jumps from batch to batch; the average keeps the trend of those
jumps, not the last one (docs/generalisation_experiments.md, "Sixth pass").

The average is what model selection scores, what the best checkpoint saves and what
`model.keras` holds. The trained weights themselves keep training, and both are in the
model checkpoint, so a resumed run continues the same average.
"""

from __future__ import annotations

import tensorflow as tf


class WeightAverage:
    """Shadow copies of `variables`, moved towards them after every step.

    `shadow ← d · shadow + (1 − d) · weight` with `d = min(decay, (1 + n) / (10 + n))` after
    the n-th update: TensorFlow's `ExponentialMovingAverage(num_updates=n)` warm-up, so the
    first evaluations average over the steps made so far instead of being held back at the
    initial weights.

    Create it under the strategy's scope (the shadows are then mirrored like the weights) and
    call `update` in cross-replica context after the step's all-reduce: every replica holds
    the same weights then, so every replica computes the same average.

    Args:
        variables: the weights to average (the trained ones; batch-norm statistics are
            already averages and are left alone).
        decay: `d` in [0, 1); 0 means no averaging.

    Example:
        >>> import tensorflow as tf
        >>> w = tf.Variable([0.0])
        >>> avg = WeightAverage([w], decay=0.9)
        >>> avg.reset()
        >>> _ = w.assign([1.0])
        >>> avg.update()  # the first update's decay is the warm-up's (1 + 1) / (10 + 1), not 0.9
        >>> [round(float(x), 4) for x in avg.shadows[0].numpy()]
        [0.8182]
        >>> avg.swap(); [round(float(x), 4) for x in w.numpy()]
        [0.8182]
    """

    def __init__(self, variables: list, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Invalid value received for argument `decay`. Expected a value in [0, 1). Received: decay={decay}")
        self.decay = float(decay)
        self._variables = list(variables)
        self.shadows = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"average_{i}")
            for i, v in enumerate(self._variables)
        ]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="average_updates")

    def checkpoint(self) -> tf.train.Checkpoint:
        """The shadows and the update count, for the model checkpoint (not the weights: the
        model's own entry holds those)."""
        return tf.train.Checkpoint(shadows=self.shadows, updates=self.updates)

    def reset(self) -> None:
        """Shadows ← weights, no updates yet (a run that starts from step 0)."""
        for s, v in zip(self.shadows, self._variables, strict=True):
            s.assign(tf.convert_to_tensor(v))
        self.updates.assign(0)

    def update(self) -> None:
        """One step's update (call it in cross-replica context, inside the step's function)."""
        n = tf.cast(self.updates.assign_add(1), tf.float32)
        d = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for s, v in zip(self.shadows, self._variables, strict=True):
            value = tf.convert_to_tensor(v)
            s.assign(tf.cast(d, value.dtype) * tf.convert_to_tensor(s) + tf.cast(1.0 - d, value.dtype) * value)

    def swap(self) -> None:
        """Exchanges the weights and the shadows (twice: back as before).

        The controller swaps before scoring the valid split and saving the best weights, and
        back before the checkpoint, which must hold both as they are.
        """
        for s, v in zip(self.shadows, self._variables, strict=True):
            weight = tf.identity(tf.convert_to_tensor(v))
            v.assign(tf.convert_to_tensor(s))
            s.assign(weight)

    def copy_to_weights(self) -> None:
        """Weights ← shadows (the end of training: the model keeps the average)."""
        for s, v in zip(self.shadows, self._variables, strict=True):
            v.assign(tf.convert_to_tensor(s))
