"""Per-part optimizers: the CNN and the rest learn at different rates (DeepCTR §5: 0.001 vs 0.1).

Two optimizers of the same kind, each with a step-decay schedule (×`decay_factor` at each of
`decay_steps`) or a cosine decay over the run (`lr_schedule: cosine`) and decoupled weight decay (`weight_decay`, the CNN's `cnn_weight_decay`;
embedding tables excluded). Gradient clipping is done by the loop on the
all-reduced gradients (Keras would clip each replica's partial gradient).
"""

from __future__ import annotations

import keras

from tfvctr.config import TrainingConfig


def learning_rate_schedule(
    base: float, decay_steps: list[int], decay_factor: float, kind: str = "step", total_steps: int = 0,
    final_ratio: float = 0.0,
):
    """The learning rate by step (`training.lr_schedule`).

    * `step`: `base` until decay_steps[0], then base*factor, base*factor², ...
    * `cosine`: half a cosine from `base` at step 0 to `base * final_ratio` at `total_steps`
      (Loshchilov & Hutter 2017, without restarts). It follows the run's length, so a run
      cut to a few hundred steps still ends at a small rate, which is what makes its last
      weights (and its best checkpoint) settle instead of jumping from batch to batch.
    """
    if kind == "cosine":
        if total_steps < 1:
            raise ValueError(f"Invalid value received for argument `total_steps`. Expected a positive integer. Received: {total_steps}")
        return keras.optimizers.schedules.CosineDecay(base, total_steps, alpha=final_ratio)
    if kind != "step":
        raise ValueError(f"Invalid value received for argument `kind`. Expected 'step' or 'cosine'. Received: kind={kind!r}")
    if not decay_steps:
        return base
    values = [base * decay_factor**i for i in range(len(decay_steps) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(list(decay_steps), values)


# Variables decoupled weight decay leaves alone (a regex on the variable name): embedding
# tables. Decay would shrink every row every step, also the rows of ids a step did not see,
# so rare ids would fade for lack of data, not for lack of use; `model.embedding_l2` is their
# regulariser.
NO_WEIGHT_DECAY = ("embeddings",)


def make_optimizer(kind: str, learning_rate, weight_decay: float) -> keras.optimizers.Optimizer:
    wd = weight_decay or None
    if kind == "adam":
        opt = keras.optimizers.Adam(learning_rate, weight_decay=wd)
    elif kind == "sgd":
        opt = keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=wd)
    elif kind == "adagrad":
        opt = keras.optimizers.Adagrad(learning_rate, weight_decay=wd)
    else:
        raise ValueError(f"Invalid value received for argument `kind`. Expected 'adam', 'sgd' or 'adagrad'. Received: kind={kind!r}")
    if wd:
        opt.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return opt


def make_optimizers(
    training: TrainingConfig, total_steps: int | None = None
) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """(cnn_optimizer, optimizer): the CNN's (`cnn_optimizer`, default `optimizer`) at
    `cnn_learning_rate`, the rest (`optimizer`) at `learning_rate`.

    `total_steps` (default `training.steps`) is the length a `cosine` schedule spans.
    """
    total = training.steps if total_steps is None else total_steps
    cnn_lr = training.cnn_learning_rate if training.cnn_learning_rate is not None else training.learning_rate
    cnn_wd = training.cnn_weight_decay if training.cnn_weight_decay is not None else training.weight_decay

    def schedule(base: float):
        return learning_rate_schedule(
            base, training.decay_steps, training.decay_factor, training.lr_schedule, total, training.final_lr_ratio
        )

    cnn = make_optimizer(training.cnn_optimizer or training.optimizer, schedule(cnn_lr), cnn_wd)
    rest = make_optimizer(training.optimizer, schedule(training.learning_rate), training.weight_decay)
    return cnn, rest


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
