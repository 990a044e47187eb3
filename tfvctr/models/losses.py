"""Training losses: point-wise log loss (CTR) and pair-wise BPR (CSCNN Appendix A).

Both return *sums* over impressions (or pairs): under `tf.distribute` the trainer divides
by the global count of the step, because ads carry different numbers of impressions and a
per-replica mean would weight them unequally.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

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


def sampled_negative_pairs(labels: Any, user_ids: Any, ad_index: Any, num_ads: Any,
                           interacted: Optional[Any] = None) -> tuple[tf.Tensor, tf.Tensor]:  # fmt: skip
    """The papers' BPR protocol: each click (u, i⁺) paired with one ad j⁻ that u did not click.

    VBPR, DVBPR and CSCNN (Appendix A) draw the negative of a positive (u, i⁺) from the items
    u did not interact with, scored for u; in-batch pairs (`in_batch_pairs`) only use the
    non-clicks u happened to have in the batch. Here j⁻ is drawn uniformly from the batch's
    n ads (a sample of the catalog, so their images are already embedded) among those u did
    not click: not in the batch, and, given `interacted`, not anywhere in the train split
    (`ClickHistory`). A click whose user clicked every ad of the batch gets no pair. The
    draw is stateless, seeded by the batch's content, so a resumed run repeats it.

    Args:
        labels: `[N]` 0/1 labels.
        user_ids: `[N]` raw user ids (strings).
        ad_index: `[N]` int32, the ad (0..n-1) of each impression.
        num_ads: n.
        interacted: optional bool `[N, n]`: impression i's user clicked batch ad j in the
            train split (`ClickHistory.interacted`).

    Returns:
        `(positive impression indices [P], negative ads [P])`, int32.
    """
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
    user_ids = tf.reshape(user_ids, [-1])
    ad_index = tf.reshape(tf.cast(ad_index, tf.int32), [-1])
    pos = tf.cast(tf.reshape(tf.where(labels > 0.5), [-1]), tf.int32)
    same_user = tf.cast(tf.equal(tf.gather(user_ids, pos)[:, None], user_ids[None, :]), tf.float32)  # [P, N]
    clicks = tf.one_hot(ad_index, num_ads) * labels[:, None]  # [N, n]
    allowed = tf.matmul(same_user, clicks) < 0.5  # [P, n]: ads u did not click in the batch
    if interacted is not None:
        allowed = tf.logical_and(allowed, tf.logical_not(tf.gather(tf.cast(interacted, tf.bool), pos)))
    hashed = tf.strings.to_hash_bucket_fast(tf.strings.as_string(user_ids) if user_ids.dtype != tf.string else user_ids, 2**31 - 1)
    seed = tf.stack([tf.reduce_sum(hashed) % (2**31 - 1), tf.cast(tf.reduce_sum(ad_index * 7919 + 1), tf.int64)])
    u = tf.random.stateless_uniform(tf.shape(allowed), seed=seed, minval=1e-12, maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(u))
    neg = tf.argmax(tf.where(allowed, gumbel, tf.fill(tf.shape(gumbel), -float("inf"))), axis=1, output_type=tf.int32)
    has_negative = tf.reduce_any(allowed, axis=1)
    return tf.boolean_mask(pos, has_negative), tf.boolean_mask(neg, has_negative)


# Joins a user id and an ad id into one key of the click history (a byte no id holds:
# the raw tables are text, one value a field).
_KEY_SEPARATOR = "\x1f"


class ClickHistory:
    """The (user, ad) pairs clicked in the train split: the items each user interacted with.

    BPR's negatives j⁻ of user u must come from the items u did not interact with
    (Rendle et al. 2009; VBPR §4.2; CSCNN Appendix A). A batch holds a few of u's
    impressions only, so an ad u clicked on another day can sit in the batch unclicked;
    `interacted` marks it, and `sampled_negative_pairs` never draws it. One string per
    train click is kept in a `tf.lookup.StaticHashTable` (the pair-wise tables are
    Amazon-sized ablations; at JD scale use the point-wise loss).

    Args:
        users: raw user ids of the clicks.
        ads: raw ad ids of the clicks (same length).
    """

    def __init__(self, users: Sequence[Any], ads: Sequence[Any]) -> None:
        keys = sorted({_key(u, a) for u, a in zip(users, ads, strict=True)})
        self.size = len(keys)
        if not keys:  # a StaticHashTable needs one key; nothing matches this one
            keys = [_KEY_SEPARATOR]
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.ones([len(keys)], tf.int32)), default_value=0
        )

    def interacted(self, user_ids: Any, ad_ids: Any) -> tf.Tensor:
        """bool `[N, n]`: user `user_ids[i]` clicked ad `ad_ids[j]` in the train split."""
        users = tf.reshape(tf.convert_to_tensor(user_ids), [-1, 1])
        ads = tf.reshape(tf.convert_to_tensor(ad_ids), [1, -1])
        shape = tf.stack([tf.shape(users)[0], tf.shape(ads)[1]])
        keys = tf.strings.join([tf.broadcast_to(users, shape), tf.broadcast_to(ads, shape)], separator=_KEY_SEPARATOR)
        return self.table.lookup(keys) > 0

    @classmethod
    def from_files(cls, files: Sequence[str], dataset_config: Any) -> "ClickHistory":
        """Reads the clicks of the grouped TFRecord shards `files` (docs/formats.md §2)."""
        from tfvctr import data as data_lib

        users, ads = [], []
        compression = "GZIP" if files and files[0].endswith(".gz") else ""  # as tfvctr.data reads the shards
        records = tf.data.TFRecordDataset(list(files), compression_type=compression)
        for chunk in records.map(lambda r: data_lib.parse_chunk(r, dataset_config), num_parallel_calls=tf.data.AUTOTUNE):
            clicked = chunk["seq/user_id"].numpy()[chunk["seq/label"].numpy() > 0]
            users += clicked.tolist()
            ads += [chunk["ad_id"].numpy()] * len(clicked)
        return cls(users, ads)


def _key(user: Any, ad: Any) -> str:
    as_text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in (user, ad)]
    return _KEY_SEPARATOR.join(as_text)


def with_negative_impressions(inputs: dict, positives: Any, negative_ads: Any, impression_keys: list[str]) -> dict:
    """The batch plus one made-up impression per pair: the positive's impression features
    (its user and context) shown with the negative ad. They follow the N real ones, so the
    model's logits `[N + P]` hold y_ui⁺ at `positives` and y_uj⁻ at `N + arange(P)`."""
    out = dict(inputs)
    for key in impression_keys:
        out[key] = tf.concat([inputs[key], tf.gather(inputs[key], positives)], axis=0)
    out["ad_index"] = tf.concat([tf.cast(inputs["ad_index"], tf.int32), tf.cast(negative_ads, tf.int32)], axis=0)
    return out
