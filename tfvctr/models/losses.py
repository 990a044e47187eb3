"""Training losses: point-wise log loss (CTR) and pair-wise BPR (CSCNN Appendix A).

Both return *sums* over impressions (or pairs): under `tf.distribute` the trainer divides
by the global count of the step, because ads carry different numbers of impressions and a
per-replica mean would weight them unequally.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf
from keras import ops


def pointwise_loss(labels: Any, logits: Any, weights: Optional[Any] = None) -> tf.Tensor:
    """Sum of sigmoid cross-entropies (log loss), DeepCTR §3 / CSCNN Eq. 6.

    `sum_i w_i * -[y_i ln σ(z_i) + (1 - y_i) ln(1 - σ(z_i))]`, computed from the logits for
    numerical stability.

    Args:
        labels: `[N]` 0/1 labels.
        logits: `[N]` logits.
        weights: optional `[N]` per-impression weights.

    Returns:
        scalar float32.
    """
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    if weights is not None:
        losses = losses * ops.cast(weights, "float32")
    return ops.sum(losses)


def bpr_loss(pos_logits: Any, neg_logits: Any) -> tf.Tensor:
    """BPR (Rendle et al. 2009): `sum over pairs of -ln σ(y_ui − y_uj)`.

    Args:
        pos_logits: `[P]` scores of the positive items i⁺.
        neg_logits: `[P]` scores of the paired negative items j⁻ (same user).

    Returns:
        scalar float32; `-ln σ(x) = softplus(-x)` keeps it finite for large margins.
    """
    diff = ops.cast(pos_logits, "float32") - ops.cast(neg_logits, "float32")
    return ops.sum(ops.softplus(-diff))


def in_batch_pairs(labels: Any, user_ids: Any) -> tf.Tensor:
    """All in-batch (u, i⁺, j⁻) triples: impressions `a` (clicked) and `b` (not) of one user.

    Args:
        labels: `[N]` 0/1 labels.
        user_ids: `[N]` user ids (any dtype with equality, e.g. the encoded `user_id`).

    Returns:
        int32 `[P, 2]`: rows `(index of i⁺, index of j⁻)`; P may be 0. Memory is O(N²),
        fine for the N ≤ n·K impressions of one batch.
    """
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
    user_ids = tf.reshape(user_ids, [-1])
    pos = tf.greater(labels, 0.5)
    same_user = tf.equal(user_ids[:, None], user_ids[None, :])
    pairs = tf.logical_and(tf.logical_and(pos[:, None], tf.logical_not(pos)[None, :]), same_user)
    return tf.cast(tf.where(pairs), tf.int32)


def pairwise_loss(labels: Any, logits: Any, user_ids: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """BPR over the batch's in-batch pairs; returns `(loss sum, number of pairs)`."""
    pairs = in_batch_pairs(labels, user_ids)
    logits = tf.reshape(logits, [-1])
    loss = bpr_loss(tf.gather(logits, pairs[:, 0]), tf.gather(logits, pairs[:, 1]))
    return loss, tf.shape(pairs)[0]
