"""A faster serving path for DCN heads whose non-visual fields are all hashed strings (JD-sized).

The training graph encodes and embeds field by field: for 95 fields that is 95 hash ops,
95 `where`s and 95 gathers, each a few microseconds of op overhead that a single CPU
core pays in sequence. Here the same numbers come from one hash op per distinct bucket
count (`tf.strings.to_hash_bucket_fast` on the stacked `[B, fields]` strings), one
`where` for the padding value, and one gather from one concatenated table (the fields'
tables stacked, each field's ids shifted by its offset):

    ids[b, f]  = 0 if x[b, f] == "" else 1 + fingerprint64(x[b, f]) mod buckets_f   (FeatureEncoder)
    x_nv[b]    = concat_f table_f[ids[b, f]] = reshape(T[ids[b, :] + offset], [F * d])   (NonVisualEmbedding)

followed by the head's own layers (`DCNHead.call`, CSCNN Eqs. 3-6). `applies` says when
it can be used: a `DCNHead` with `merge="concat"` whose every x_nv field is a
single-valued hashed categorical of one embedding width. The export's fresh-process check
compares its outputs with the Keras model like any other export.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tfvctr.config import Config


def applies(config: Config, head: Any) -> bool:
    from tfvctr.models.cscnn_dcn import DCNHead

    if not isinstance(head, DCNHead) or getattr(head.embedding, "merge", None) != "concat":
        return False
    features = config.dataset.features
    if len(features) < 2 or [f.name for f in features] != [s["name"] for s in head.embedding.features]:
        return False
    if any(f.kind != "categorical" or f.hash_buckets is None or f.name == "category" for f in features):
        return False
    return len({int(head.embedding.tables[f.name].shape[1]) for f in features}) == 1


class FusedDCN:
    """x_nv with one gather, then the DCN head's layers; `jit` compiles the dense part with XLA.

    `bf16` (opt-in, off by default) runs the deep layers' matmuls in bfloat16 (AVX512_BF16 /
    AMX cores) with float32 accumulation in oneDNN, from bfloat16 copies of their kernels made
    here (a cast per call would cost more than it saves); the cross layers and the output
    layer stay float32. Outputs then differ from the float32 graph by more than the export
    check's 1e-5 (3e-3 in the logit on the random-weight JD-sized head, measured by
    benchmarks/serving.py): not reachable from `tfvctr export`, for measuring only until its
    AUC is compared with the float32 model's on real eval rows (docs/export.md).
    """

    def __init__(self, config: Config, head: Any, jit: bool = False, bf16: bool = False) -> None:
        self._head = head
        self.bf16_kernels = [tf.Variable(tf.cast(layer.kernel, tf.bfloat16), trainable=False, name=f"deep_{i}_bf16")
                             for i, layer in enumerate(head.deep)] if bf16 else None
        self._names = [f.name for f in config.dataset.features]
        buckets = [int(f.hash_buckets) for f in config.dataset.features]
        tables = [np.asarray(head.embedding.tables[n].numpy()) for n in self._names]
        self._dim = int(tables[0].shape[1])
        offsets = np.cumsum([0] + [t.shape[0] for t in tables[:-1]])
        # A copy of the fields' tables, stacked: a variable, so it lives in the variables shards.
        self.table = tf.Variable(np.concatenate(tables), trainable=False, name="fused_embeddings")
        self._groups: list[tuple[int, np.ndarray]] = []  # (buckets, field positions)
        for n in sorted(set(buckets)):
            self._groups.append((n, np.array([i for i, b in enumerate(buckets) if b == n])))
        self._order: Optional[np.ndarray] = None
        positions = np.concatenate([p for _, p in self._groups])
        if not np.array_equal(positions, np.arange(len(buckets))):
            self._order = np.argsort(positions)  # group order back to field order
        self._offsets = tf.constant(offsets[positions if self._order is not None else np.arange(len(buckets))],
                                    tf.int64)
        self._dense = tf.function(self._dense_fn, jit_compile=True) if jit else self._dense_fn

    def _ids(self, raw: dict) -> tf.Tensor:
        parts = []
        for n, positions in self._groups:
            strings = tf.stack([raw[self._names[i]] for i in positions], axis=1)  # [B, g]
            ids = tf.strings.to_hash_bucket_fast(strings, n) + 1
            parts.append(tf.where(tf.equal(strings, ""), tf.zeros_like(ids), ids))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def x_nv(self, raw: dict) -> tf.Tensor:
        rows = tf.gather(self.table, self._ids(raw) + self._offsets)  # [B, F, d], fields in group order
        if self._order is not None:
            rows = tf.gather(rows, self._order, axis=1)
        return tf.reshape(rows, [-1, len(self._names) * self._dim])

    def _dense_fn(self, x_nv: tf.Tensor, x_v: tf.Tensor) -> tf.Tensor:
        head = self._head
        h = x_nv
        for i, layer in enumerate(head.deep):
            if self.bf16_kernels is not None:
                product = tf.matmul(tf.cast(h, tf.bfloat16), self.bf16_kernels[i])
                h = layer.activation(tf.cast(product, tf.float32) + layer.bias)
            else:
                h = layer(h)
            if i == 0 and head.visual_dim:
                h = tf.concat([tf.cast(x_v, h.dtype), h], axis=-1)  # Eq. 3
        z = head.cross(x_nv)
        return tf.squeeze(head.out(tf.concat([h, z], axis=-1)), axis=-1)

    def logit(self, raw: dict, x_v: tf.Tensor) -> tf.Tensor:
        return tf.cast(self._dense(self.x_nv(raw), x_v), tf.float32)
