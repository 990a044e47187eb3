"""The inner training loop (orbit's `StandardTrainer` shape, without the Keras 2 package).

`Trainer.train(num_steps)` runs `train_loop_begin`, `num_steps` × `train_step` (each calls
`strategy.run` once) and `train_loop_end`, which returns the block's figures. The outer
loop (checkpoints, summaries, one log line per block) is `tfvctr.training.controller`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from tfvctr.errors import TfvctrError
from tfvctr.models.losses import (
    ClickHistory,
    bpr_loss,
    pairwise_loss,
    sampled_negative_pairs,
    with_negative_impressions,
)
from tfvctr.training.averaging import WeightAverage

AUC_BINS = 1000  # histogram resolution of the streaming train AUC

# objective(model, inputs, labels) -> (summed loss, the count it is averaged over, {name: tensor to SUM}):
# impressions for `ctr_objective`, same-user pairs for `bpr_objective`, ads for `category_objective`.
Objective = Callable[[Any, dict, tf.Tensor], tuple]


# The raw user id of every impression and the raw ad id of every ad, added to a batch's
# inputs for the pair-wise objective (`with_pair_users`); the objective takes them out again
# before the model sees the batch.
PAIR_USER_KEY = "pair_user_id"
PAIR_AD_KEY = "pair_ad_id"


def _auc_histograms(labels: tf.Tensor, logits: tf.Tensor) -> dict:
    """Per-bin label counts of the predicted probabilities (the train AUC, `histogram_auc`)."""
    probs = tf.sigmoid(logits)
    bins = tf.clip_by_value(tf.cast(probs * AUC_BINS, tf.int32), 0, AUC_BINS - 1)
    return {
        "positives": tf.math.unsorted_segment_sum(labels, bins, AUC_BINS),
        "negatives": tf.math.unsorted_segment_sum(1.0 - labels, bins, AUC_BINS),
    }


def ctr_objective(loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Objective:
    """Point-wise CTR loss summed over impressions, plus label histograms for the train AUC."""

    def objective(model, inputs, labels):
        logits = tf.cast(model(inputs, training=True), tf.float32)
        loss_sum = loss_fn(labels, logits)
        return loss_sum, tf.cast(tf.shape(labels)[0], tf.float32), _auc_histograms(labels, logits)

    return objective


def with_pair_users(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`(inputs, labels, meta)` → `(inputs + {PAIR_USER_KEY: meta["user_id"], PAIR_AD_KEY: meta["ad_id"]}, labels)`.

    Pairs are formed on the raw `user_id` strings, not on the encoded feature: hashed or
    out-of-vocabulary ids would pair impressions of different users. The raw ad ids look
    up the users' train clicks (`ClickHistory`).
    """

    def attach(inputs, labels, meta):
        return {**inputs, PAIR_USER_KEY: meta["user_id"], PAIR_AD_KEY: meta["ad_id"]}, labels

    return dataset.map(attach, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def model_inputs(inputs: dict) -> dict:
    """The batch without `PAIR_USER_KEY` and `PAIR_AD_KEY` (what the model is called with)."""
    return {k: v for k, v in inputs.items() if k not in (PAIR_USER_KEY, PAIR_AD_KEY)}


def bpr_objective(model: Any, inputs: dict, labels: tf.Tensor, history: Optional[ClickHistory] = None) -> tuple[tf.Tensor, tf.Tensor, dict]:
    """Pair-wise BPR objective (CSCNN Appendix A, Eq. 14; Rendle et al. 2009).

    `sum over (u, i⁺, j⁻) of -ln σ(y_ui − y_uj)`. `model.vbpr.negatives: sampled` (default,
    the papers' protocol): each click paired with an ad of the batch its user did not
    click, in the batch nor, given `history` (the train split's clicks, what
    `pairwise_objective` binds), anywhere in training, scored for that user
    (`sampled_negative_pairs`). `in_batch`: every clicked impression of user u paired with
    every non-clicked impression of the same u in the batch (`in_batch_pairs`). Users are
    the raw ids of `with_pair_users`. The count is the number of pairs, so the trainer
    divides by the global number of pairs of the step. The label histograms still give the
    train AUC on impressions.
    """
    users = inputs[PAIR_USER_KEY]
    if model.config.model.vbpr.negatives == "sampled":  # the papers' protocol (losses.sampled_negative_pairs)
        batch = model_inputs(inputs)
        interacted = history.interacted(users, inputs[PAIR_AD_KEY]) if history is not None else None
        pos, neg_ads = sampled_negative_pairs(labels, users, batch["ad_index"], tf.shape(batch["image"])[0], interacted)
        impression_keys = [f.name for f in model.config.dataset.impression_features]
        scores = tf.cast(model(with_negative_impressions(batch, pos, neg_ads, impression_keys), training=True), tf.float32)
        n = tf.shape(labels)[0]
        logits = scores[:n]
        loss_sum = bpr_loss(tf.gather(logits, pos), scores[n:])
        return loss_sum, tf.cast(tf.shape(pos)[0], tf.float32), _auc_histograms(labels, logits)
    logits = tf.cast(model(model_inputs(inputs), training=True), tf.float32)
    loss_sum, pairs = pairwise_loss(labels, logits, users)
    return loss_sum, tf.cast(pairs, tf.float32), _auc_histograms(labels, logits)


def pairwise_objective(config: Any, files: list[str]) -> Objective:
    """The BPR objective `tfvctr train` runs: with `negatives: sampled`, bound to the click
    history of the train shards `files` (every worker reads all of them: a user's clicks
    can sit in any shard)."""
    if config.model.vbpr.negatives != "sampled":
        return bpr_objective
    history = ClickHistory.from_files(files, config.dataset)

    def objective(model, inputs, labels):
        return bpr_objective(model, inputs, labels, history)

    objective.loss_name = "bpr_loss"
    objective.history = history
    return objective


bpr_objective.loss_name = "bpr_loss"  # the progress line says which objective is optimised


def category_objective(model, inputs, labels):
    """DeepCTR's Convnet pre-training: cross-entropy of the softmax over the ads' categories."""
    del labels  # the impressions' clicks play no part; the target is the category
    probs = tf.cast(model({"image": inputs["image"]}, training=True), tf.float32)
    target = inputs["category"]
    loss_sum = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(target, probs))
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), target), tf.float32))
    return loss_sum, tf.cast(tf.shape(target)[0], tf.float32), {"correct": correct}


def histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC from per-bin label counts (ties within a bin count one half); nan without both classes."""
    p, n = positives.sum(), negatives.sum()
    if p == 0 or n == 0:
        return float("nan")
    below = np.cumsum(negatives) - negatives  # negatives in lower bins
    return float((positives * (below + 0.5 * negatives)).sum() / (p * n))


class Trainer:
    """Runs training steps of one model under a strategy.

    Args:
        strategy: the `tf.distribute.Strategy` the variables were created under.
        model: the model; `visual_variables` / `non_visual_variables` split its weights.
        cnn_optimizer, optimizer: for the visual tower and for the rest.
        objective: see `Objective`; its optional `loss_name` attribute (default "loss") names
            the loss in the block figures and the progress line.
        element_spec: the per-worker dataset's element spec (the step is traced once for it:
            under MultiWorkerMirroredStrategy a retrace on one worker only would misalign the
            collectives and hang).
        local_replicas: replicas on this worker; each step pulls that many batches.
        clip_norm: clip the global gradient norm (after the all-reduce).
        freeze_visual: leave the visual tower's weights unchanged.
        variables: (cnn variables, the rest) to train; default: the model's split.
        average: a `WeightAverage` of the trained variables, updated after every step.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: Any,
        cnn_optimizer: keras.optimizers.Optimizer,
        optimizer: keras.optimizers.Optimizer,
        objective: Objective,
        element_spec: Any,
        local_replicas: int = 1,
        clip_norm: Optional[float] = None,
        freeze_visual: bool = False,
        variables: Optional[tuple[list, list]] = None,
        average: Optional[WeightAverage] = None,
    ):
        self.strategy = strategy
        self.model = model
        self.cnn_optimizer = cnn_optimizer
        self.optimizer = optimizer
        self.objective = objective
        self.local_replicas = local_replicas
        self.clip_norm = clip_norm
        if variables is None:
            variables = (list(model.visual_variables), list(model.non_visual_variables))
        self.cnn_variables = [] if freeze_visual else variables[0]
        self.variables = variables[1]
        self.average = average
        # Batches this worker has pulled from its iterator; saved with the data checkpoint so a
        # test (and a user) can check that a resumed run consumed each batch exactly once.
        with tf.init_scope():
            self.batches_consumed = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches_consumed")
        trainable_ids = {id(v) for v in variables[0] + variables[1]}
        self._synced_state = [
            v for v in model.weights if id(v) not in trainable_ids and not v.trainable and "float" in str(v.dtype)
        ]
        signature = [tuple([element_spec] * local_replicas)]
        self._step = tf.function(self._distributed_step, input_signature=signature)
        self._totals: dict[str, Any] = {}
        # What `loss` is, for the progress line: "loss" (point-wise), "bpr_loss" (pair-wise).
        self.loss_name = getattr(objective, "loss_name", "loss")

    # ------------------------------------------------------------------ one step

    def _replica_step(self, inputs, labels):
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            loss_sum, count, extras = self.objective(self.model, inputs, labels)
            global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
            # Divide by the GLOBAL example count of the step, not this replica's: ads carry
            # different numbers of impressions, so replicas hold different impression counts,
            # and the optimizer SUMs the replicas' gradients. Dividing every replica's summed
            # loss by the all-reduced count makes that sum the gradient of the mean loss over
            # all impressions of the global batch (a per-replica mean would over-weight the
            # impressions of replicas that happened to get few).
            loss = loss_sum / tf.maximum(global_count, 1.0)
            penalty = self._regularization()
            if penalty is not None:
                # λR of the objective (e.g. VBPR's L2, CSCNN Eq. 14) is a once-per-step term:
                # each replica adds its share so the optimizer's SUM applies it once. A step
                # with no examples anywhere (a BPR step without a pair) adds nothing, so its
                # gradient is exactly zero.
                share = penalty / float(ctx.num_replicas_in_sync)
                loss = loss + tf.where(global_count > 0.0, share, tf.zeros_like(share))
        all_vars = self.cnn_variables + self.variables
        grads = tape.gradient(loss, all_vars)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, all_vars, strict=True)]
        if self.clip_norm:
            # Keras clips each replica's partial gradient before its own all-reduce; the norm
            # that matters is the summed gradient's, so reduce here, clip, and divide by the
            # replica count so the optimizer's SUM gives back the clipped gradient.
            grads = [tf.convert_to_tensor(g) for g in grads]
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
            grads = [g / float(ctx.num_replicas_in_sync) for g in grads]
        k = len(self.cnn_variables)
        if k:
            self.cnn_optimizer.apply_gradients(zip(grads[:k], self.cnn_variables, strict=True))
        self.optimizer.apply_gradients(zip(grads[k:], self.variables, strict=True))
        images = tf.cast(tf.shape(inputs["image"])[0], tf.float32)
        impressions = tf.cast(tf.shape(labels)[0], tf.float32)
        out = {"loss_sum": loss_sum, "count": count, "images": images, "impressions": impressions, **extras}
        out = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out)
        if ctx.num_replicas_in_sync > 1 and self._synced_state:
            # Batch-norm moving statistics are updated from each replica's own batch; their
            # mean over replicas is assigned back (cross-replica, in `_distributed_step`) so
            # every worker holds the same model.
            state = [tf.identity(tf.convert_to_tensor(v)) * 1.0 for v in self._synced_state]
            out["_state"] = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, state)
        return out

    def _regularization(self) -> Optional[tf.Tensor]:
        """Sum of the model's `losses` (weight regularizers, `add_loss`) as float32, or None."""
        losses = list(getattr(self.model, "losses", None) or [])
        if not losses:
            return None
        return tf.add_n([tf.cast(x, tf.float32) for x in losses])

    def _distributed_step(self, batches):
        if self.local_replicas == 1:
            inputs, labels = batches[0]
            out = self.strategy.run(self._replica_step, args=(inputs, labels))
        else:
            per_replica = self.strategy.experimental_distribute_values_from_function(
                lambda ctx: batches[ctx.replica_id_in_sync_group % self.local_replicas]
            )
            out = self.strategy.run(lambda b: self._replica_step(*b), args=(per_replica,))
        # Every replica holds the same all-reduced figures: take the first.
        out = tf.nest.map_structure(lambda t: self.strategy.experimental_local_results(t)[0], out)
        state = out.pop("_state", None)
        if state is not None:
            for v, mean in zip(self._synced_state, state, strict=True):
                v.assign(mean)
        if self.average is not None:
            self.average.update()
        return out

    # ------------------------------------------------------------------ inner loop

    def train_loop_begin(self) -> None:
        self._totals = {}
        self._start = time.perf_counter()

    def train_step(self, iterator: Iterator, step: int) -> dict:
        """One optimisation step (the global step number `step` is for the NaN message)."""
        batches = tuple(next(iterator) for _ in range(self.local_replicas))
        self.batches_consumed.assign_add(len(batches))
        out = {k: v.numpy() for k, v in self._step(batches).items()}
        loss = float(out["loss_sum"]) / max(float(out["count"]), 1.0)
        if not math.isfinite(loss):
            raise NonFiniteLoss(step, loss)
        for k, v in out.items():
            self._totals[k] = self._totals.get(k, 0) + v
        return {"loss": loss}

    def train_loop_end(self) -> dict:
        t = self._totals
        seconds = max(time.perf_counter() - self._start, 1e-9)
        result = {
            "loss": float(t["loss_sum"]) / max(float(t["count"]), 1.0),
            "loss_name": self.loss_name,
            "images_per_sec": float(t["images"]) / seconds,
            "impressions_per_sec": float(t["impressions"]) / seconds,
            "images": float(t["images"]),
            "impressions": float(t["impressions"]),
            "seconds": seconds,
        }
        if "positives" in t:
            result["auc"] = histogram_auc(np.asarray(t["positives"]), np.asarray(t["negatives"]))
        if "correct" in t:
            result["accuracy"] = float(t["correct"]) / max(float(t["count"]), 1.0)
        return result

    def train(self, iterator: Iterator, num_steps: int, first_step: int) -> dict:
        """Runs `num_steps` steps; `first_step` is the global number of the first of them."""
        self.train_loop_begin()
        for i in range(num_steps):
            self.train_step(iterator, first_step + i)
        return self.train_loop_end()


class NonFiniteLoss(TfvctrError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss is {loss} at step {step}; training stopped (the last good checkpoint is kept)")
        self.step = step
        self.loss = loss
