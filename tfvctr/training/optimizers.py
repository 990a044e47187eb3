"""Per-part optimizers: the CNN and the rest learn at different rates (DeepCTR §5: 0.001 vs 0.1).

Two optimizers of the same kind, each with a step-decay schedule (×`decay_factor` at each of
`decay_steps`) and decoupled weight decay (`weight_decay`, the CNN's `cnn_weight_decay`;
embedding tables excluded). Gradient clipping is done by the loop on the
all-reduced gradients (Keras would clip each replica's partial gradient).
"""

from __future__ import annotations

import keras

from tfvctr.config import TrainingConfig


def learning_rate_schedule(base: float, decay_steps: list[int], decay_factor: float):
    """Step decay: `base` until decay_steps[0], then base*factor, base*factor², ..."""
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


def make_optimizers(training: TrainingConfig) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """(cnn_optimizer, optimizer): the CNN's at `cnn_learning_rate`, the rest at `learning_rate`."""
    cnn_lr = training.cnn_learning_rate if training.cnn_learning_rate is not None else training.learning_rate
    cnn_wd = training.cnn_weight_decay if training.cnn_weight_decay is not None else training.weight_decay
    cnn = make_optimizer(training.optimizer, learning_rate_schedule(cnn_lr, training.decay_steps, training.decay_factor), cnn_wd)
    rest = make_optimizer(
        training.optimizer,
        learning_rate_schedule(training.learning_rate, training.decay_steps, training.decay_factor),
        training.weight_decay,
    )
    return cnn, rest


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
