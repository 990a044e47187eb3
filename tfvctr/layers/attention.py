"""Attention modules that refine a convolutional feature map.

CSCNN (Liu et al., "Category-Specific CNN for Visual-aware CTR Prediction at JD.com",
KDD 2020, §3.3) refines the output F of a conv layer with a channel attention and then a
spatial attention, both conditioned on the ad's category through learned per-category
priors. The self-attention baselines of the paper's Table 5 (SE, CBAM-Channel, CBAM-All)
and their "+ category prior" variants live here too.

Every layer has the same call signature, `layer(feature_map, category_ids)`, so a
backbone can swap them: `feature_map` is [B, H, W, C], `category_ids` is [B] int (the
self-attention baselines accept and ignore it). With `return_attention=True` a layer
returns `(refined, maps)` where `maps` holds the attention weights in (0, 1):
`maps["channel"]` [B, C] and/or `maps["spatial"]` [B, H, W].

Category ids. Row 0 of every prior table is the *unknown* category: the data pipeline
maps a category absent from the vocabulary to 0 (docs/formats.md), and these layers also
map any id outside [0, num_categories) to 0, so a gather is never out of range and a new
category at serving time gets the learned "unknown" prior rather than an error.
"""

from __future__ import annotations

from typing import Any, Optional

import keras
import tensorflow as tf

from tfvctr.layers.initializers import clone_initializer

UNKNOWN_CATEGORY = 0

ATTENTION_NAMES = (
    "none",
    "se",
    "cbam_channel",
    "cbam",
    "cscnn",
    "se_cscnn",
    "cbam_channel_cscnn",
    "cscnn_channel",
    "cscnn_spatial",
    "sca",  # SCA-CNN with a category embedding: the DVBPR-SCA baseline (not a `model.attention` value)
)


def category_index(category_ids: Any, num_categories: int) -> Any:
    """Maps category ids to prior-table rows: ids outside [0, num_categories) become 0.

    Args:
        category_ids: int tensor [B] (or [B, 1]).
        num_categories: rows of the prior tables, including the unknown row 0.

    Returns:
        int32 tensor [B].
    """
    ids = keras.ops.reshape(keras.ops.cast(category_ids, "int32"), (-1,))
    valid = keras.ops.logical_and(ids >= 0, ids < num_categories)
    return keras.ops.where(valid, ids, keras.ops.zeros_like(ids) + UNKNOWN_CATEGORY)


def _offset(seed: Optional[int], offset: int) -> Optional[int]:
    return None if seed is None else seed + offset


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )


def _check_feature_map_shape(shape: Any, layer_name: str) -> None:
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"Layer {layer_name!r} expects `feature_map` of rank 4 [batch, height, width, channels]. "
            f"Received: feature_map.shape={None if shape is None else tuple(shape)}"
        )
    if shape[-1] is None:
        raise ValueError(
            f"Layer {layer_name!r} needs a known channel dimension. Received: feature_map.shape={tuple(shape)}"
        )


class _Attention(keras.layers.Layer):
    """Shared arguments (kernel initializer, seed) and the category prior of the CSCNN variants.

    A layer is category-specific when `num_categories` is set: it then owns prior tables
    (initialized by `prior_initializer`) whose rows it looks up with `prior_rows`, and
    `get_config` returns both arguments. Subclasses implement `_refine(feature_map,
    category_ids)`.
    """

    def __init__(
        self,
        kernel_initializer: Any = "glorot_uniform",
        seed: Optional[int] = None,
        num_categories: Optional[int] = None,
        prior_initializer: Any = "random_normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(
                f"Invalid value received for argument `seed`. Expected an integer or None. Received: seed={seed!r}"
            )
        if num_categories is not None:
            _check_positive_int(num_categories, "num_categories")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.num_categories = num_categories
        self.prior_initializer = keras.initializers.get(prior_initializer)

    @property
    def uses_prior(self) -> bool:
        """Whether the layer is category-specific (has prior tables)."""
        return self.num_categories is not None

    def prior_rows(self, category_ids: Any, what: str) -> Any:
        """The prior-table rows of `category_ids` [B] (unknown ids: row 0); `what` names the map for the error."""
        if category_ids is None:
            raise ValueError(f"Layer {self.name!r} needs `category_ids`: its {what} attention is category-specific.")
        return category_index(category_ids, self.num_categories)

    def call(self, feature_map: Any, category_ids: Any = None, return_attention: bool = False) -> Any:
        _check_feature_map_shape(feature_map.shape, self.name)
        refined, maps = self._refine(feature_map, category_ids)
        return (refined, maps) if return_attention else refined

    def get_config(self) -> dict[str, Any]:
        config = {
            **super().get_config(),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "seed": self.seed,
        }
        if self.uses_prior:
            config.update(
                num_categories=self.num_categories,
                prior_initializer=keras.initializers.serialize(self.prior_initializer),
            )
        return config


class _ChannelAttention(_Attention):
    """M_c = sigmoid(sum over pools p of MLP([p(F), prior])); F' = M_c * F."""

    _POOLS: tuple[str, ...] = ("avg", "max")

    def __init__(self, reduction: int = 4, prior_dim: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_positive_int(reduction, "reduction")
        if self.uses_prior:
            _check_positive_int(prior_dim, "prior_dim")
        self.reduction = reduction
        self.prior_dim = prior_dim

    def build(self, feature_map_shape: Any, category_ids_shape: Any = None) -> None:
        _check_feature_map_shape(feature_map_shape, self.name)
        channels = int(feature_map_shape[-1])
        hidden = max(1, channels // self.reduction)
        prior_dim = self.prior_dim if self.uses_prior else 0
        # The MLP is shared by the pooled descriptors (Eq. 10: one MLP applied twice).
        self.hidden_kernel = self.add_weight(
            name="hidden_kernel",
            shape=(channels + prior_dim, hidden),
            initializer=clone_initializer(self.kernel_initializer, _offset(self.seed, 0)),
        )
        self.hidden_bias = self.add_weight(name="hidden_bias", shape=(hidden,), initializer="zeros")
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(hidden, channels),
            initializer=clone_initializer(self.kernel_initializer, _offset(self.seed, 1)),
        )
        self.output_bias = self.add_weight(name="output_bias", shape=(channels,), initializer="zeros")
        if self.uses_prior:
            self.channel_prior = self.add_weight(
                name="channel_prior",
                shape=(self.num_categories, self.prior_dim),
                initializer=clone_initializer(self.prior_initializer, _offset(self.seed, 2)),
            )

    def _mlp(self, x: Any) -> Any:
        hidden = keras.ops.relu(keras.ops.matmul(x, self.hidden_kernel) + self.hidden_bias)
        return keras.ops.matmul(hidden, self.output_kernel) + self.output_bias

    def channel_weights(self, feature_map: Any, category_ids: Any = None) -> Any:
        """The channel attention map M_c [B, C], values in (0, 1)."""
        pooled = {
            "avg": lambda f: keras.ops.mean(f, axis=(1, 2)),
            "max": lambda f: keras.ops.max(f, axis=(1, 2)),
        }
        prior = None
        if self.uses_prior:
            rows = self.prior_rows(category_ids, "channel")
            prior = keras.ops.cast(keras.ops.take(self.channel_prior, rows, axis=0), feature_map.dtype)
        logits = 0.0
        for pool in self._POOLS:
            descriptor = pooled[pool](feature_map)
            if prior is not None:
                descriptor = keras.ops.concatenate([descriptor, prior], axis=-1)
            logits = logits + self._mlp(descriptor)
        return keras.ops.sigmoid(logits)

    def _refine(self, feature_map: Any, category_ids: Any) -> tuple[Any, dict[str, Any]]:
        weights = self.channel_weights(feature_map, category_ids)
        return feature_map * weights[:, None, None, :], {"channel": weights}

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "reduction": self.reduction}
        if self.uses_prior:
            config["prior_dim"] = self.prior_dim
        return config


@keras.saving.register_keras_serializable(package="tfvctr")
class SEAttention(_ChannelAttention):
    """Squeeze-and-excitation channel attention (Hu et al. 2018), a self-attention baseline.

    CSCNN Table 5 ("SE", left): M_c = sigmoid(MLP(AvgPool(F))), F' = M_c * F, where the
    MLP is C -> C/r (ReLU) -> C. The category ids are accepted and ignored.

    Args:
        reduction: r, the bottleneck reduction of the MLP (hidden size max(1, C // r)).
        kernel_initializer: initializer of the MLP kernels.
        seed: seed of the initializers (weight i uses seed + i); None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: ignored (kept so that backbones can swap attention layers).
        return_attention: also return `{"channel": M_c}`.

    Returns:
        F' [B, H, W, C], or `(F', {"channel": [B, C]})` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = SEAttention(reduction=2, seed=0)
    >>> out = layer(np.ones((2, 4, 4, 8), "float32"), np.array([1, 2]))
    >>> tuple(out.shape)
    (2, 4, 4, 8)
    """

    _POOLS = ("avg",)

    def __init__(self, reduction: int = 4, **kwargs: Any) -> None:
        super().__init__(reduction=reduction, **kwargs)


@keras.saving.register_keras_serializable(package="tfvctr")
class CategorySEAttention(_ChannelAttention):
    """SE attention with a category prior: CSCNN Table 5 "SE" (right, + category prior).

    M_c = sigmoid(MLP([AvgPool(F), Ac_k])), F' = M_c * F — CSCNN Eq. (10) with the average
    pool only, as SE has no max pool. Ac_k in R^{C'} is row k of a learned
    [num_categories, C'] table (row 0: unknown category).

    Args:
        num_categories: rows of the prior table, including the unknown row 0.
        prior_dim: C', the size of the channel prior (paper: 20).
        reduction: r; the MLP is C + C' -> C/r (ReLU) -> C.
        kernel_initializer: initializer of the MLP kernels.
        prior_initializer: initializer of the prior table.
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: int tensor [B]; ids outside [0, num_categories) use row 0.
        return_attention: also return `{"channel": M_c}`.

    Returns:
        F' [B, H, W, C], or `(F', {"channel": [B, C]})` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CategorySEAttention(num_categories=5, prior_dim=3, seed=0)
    >>> out, maps = layer(np.ones((2, 4, 4, 8), "float32"), np.array([1, 2]), return_attention=True)
    >>> tuple(out.shape), tuple(maps["channel"].shape)
    ((2, 4, 4, 8), (2, 8))
    """

    _POOLS = ("avg",)

    def __init__(self, num_categories: int, prior_dim: int = 20, reduction: int = 4, **kwargs: Any) -> None:
        super().__init__(reduction=reduction, num_categories=num_categories, prior_dim=prior_dim, **kwargs)


@keras.saving.register_keras_serializable(package="tfvctr")
class CBAMChannelAttention(_ChannelAttention):
    """CBAM channel attention (Woo et al. 2018), a self-attention baseline.

    CSCNN Table 5 "CBAM-Channel" (left): M_c = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))),
    F' = M_c * F, with one MLP C -> C/r (ReLU) -> C shared by both pooled descriptors.
    The category ids are accepted and ignored.

    Args:
        reduction: r (hidden size max(1, C // r)).
        kernel_initializer: initializer of the MLP kernels.
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: ignored.
        return_attention: also return `{"channel": M_c}`.

    Returns:
        F' [B, H, W, C], or `(F', {"channel": [B, C]})` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CBAMChannelAttention(reduction=4, seed=0)
    >>> tuple(layer(np.ones((2, 4, 4, 8), "float32")).shape)
    (2, 4, 4, 8)
    """

    def __init__(self, reduction: int = 4, **kwargs: Any) -> None:
        super().__init__(reduction=reduction, **kwargs)


@keras.saving.register_keras_serializable(package="tfvctr")
class CategoryChannelAttention(_ChannelAttention):
    """Category-specific channel attention, CSCNN Eq. (10) (and "CBAM-Channel" + prior, Table 5).

    Eq. (10): M_c(F, Ac_k) = sigmoid(MLP([AvgPool(F), Ac_k]) + MLP([MaxPool(F), Ac_k])), and
    Eq. (8): F' = M_c * F (broadcast over H x W). Ac_k in R^{C'} is row k of a learned
    [num_categories, C'] table (row 0: unknown category); the MLP, shared by both pooled
    descriptors, is C + C' -> C/r (ReLU) -> C.

    Args:
        num_categories: rows of the prior table, including the unknown row 0.
        prior_dim: C' (paper: 20).
        reduction: r (paper: 4).
        kernel_initializer: initializer of the MLP kernels.
        prior_initializer: initializer of the prior table (paper: random).
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: int tensor [B]; ids outside [0, num_categories) use row 0.
        return_attention: also return `{"channel": M_c}`.

    Returns:
        F' [B, H, W, C], or `(F', {"channel": [B, C]})` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CategoryChannelAttention(num_categories=10, prior_dim=4, seed=0)
    >>> out = layer(np.ones((2, 6, 6, 8), "float32"), np.array([3, 0]))
    >>> tuple(out.shape), len(layer.trainable_weights)
    ((2, 6, 6, 8), 5)
    """

    def __init__(self, num_categories: int, prior_dim: int = 20, reduction: int = 4, **kwargs: Any) -> None:
        super().__init__(reduction=reduction, num_categories=num_categories, prior_dim=prior_dim, **kwargs)


class _SpatialAttention(_Attention):
    """M_s = sigmoid(Conv_kxk([MaxPool_c(F), AvgPool_c(F)(, resize(As_k))])); F'' = M_s * F."""

    def __init__(self, kernel_size: int = 7, prior_size: int = 7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_positive_int(kernel_size, "kernel_size")
        if self.uses_prior:
            _check_positive_int(prior_size, "prior_size")
        self.kernel_size = kernel_size
        self.prior_size = prior_size

    def build(self, feature_map_shape: Any, category_ids_shape: Any = None) -> None:
        _check_feature_map_shape(feature_map_shape, self.name)
        in_maps = 3 if self.uses_prior else 2
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_maps, 1),
            initializer=clone_initializer(self.kernel_initializer, _offset(self.seed, 0)),
        )
        self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros")
        if self.uses_prior:
            self.spatial_prior = self.add_weight(
                name="spatial_prior",
                shape=(self.num_categories, self.prior_size, self.prior_size),
                initializer=clone_initializer(self.prior_initializer, _offset(self.seed, 1)),
            )

    def resized_prior(self, category_ids: Any, size: Any) -> Any:
        """As_k: the H' x W' prior of each category bilinearly resized to `size`, [B, H, W, 1]."""
        rows = self.prior_rows(category_ids, "spatial")
        prior = keras.ops.take(self.spatial_prior, rows, axis=0)[..., None]
        # CSCNN §3.3.1: learn a small H' x W' prior and resize it by linear interpolation,
        # so the prior costs H'W'|K| parameters per layer whatever the feature-map size.
        return tf.image.resize(prior, size, method="bilinear")

    def spatial_weights(self, feature_map: Any, category_ids: Any = None) -> Any:
        """The spatial attention map M_s [B, H, W, 1], values in (0, 1)."""
        maps = [keras.ops.max(feature_map, axis=-1, keepdims=True), keras.ops.mean(feature_map, axis=-1, keepdims=True)]
        if self.uses_prior:
            size = keras.ops.shape(feature_map)[1:3]
            maps.append(keras.ops.cast(self.resized_prior(category_ids, size), feature_map.dtype))
        stacked = keras.ops.concatenate(maps, axis=-1)
        logits = keras.ops.conv(stacked, self.kernel, strides=1, padding="same") + self.bias
        return keras.ops.sigmoid(logits)

    def _refine(self, feature_map: Any, category_ids: Any) -> tuple[Any, dict[str, Any]]:
        weights = self.spatial_weights(feature_map, category_ids)
        return feature_map * weights, {"spatial": weights[..., 0]}

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "kernel_size": self.kernel_size}
        if self.uses_prior:
            config["prior_size"] = self.prior_size
        return config


@keras.saving.register_keras_serializable(package="tfvctr")
class CBAMSpatialAttention(_SpatialAttention):
    """CBAM spatial attention (Woo et al. 2018), a self-attention baseline.

    M_s = sigmoid(Conv7x7([MaxPool_c(F), AvgPool_c(F)])), F'' = M_s * F (broadcast over
    channels); the pools run over the channel axis. The category ids are ignored.

    Args:
        kernel_size: size of the square convolution (paper: 7), 'same' padding.
        kernel_initializer: initializer of the convolution kernel.
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: ignored.
        return_attention: also return `{"spatial": M_s}`.

    Returns:
        F'' [B, H, W, C], or `(F'', {"spatial": [B, H, W]})` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CBAMSpatialAttention(seed=0)
    >>> tuple(layer(np.ones((2, 5, 5, 4), "float32")).shape)
    (2, 5, 5, 4)
    """

    def __init__(self, kernel_size: int = 7, **kwargs: Any) -> None:
        super().__init__(kernel_size=kernel_size, **kwargs)


@keras.saving.register_keras_serializable(package="tfvctr")
class CategorySpatialAttention(_SpatialAttention):
    """Category-specific spatial attention, CSCNN Eq. (11).

    Eq. (11): M_s(F', As_k) = sigmoid(Conv7x7([MaxPool_c(F'), AvgPool_c(F'), As_k])) and
    Eq. (9): F'' = M_s * F' (broadcast over channels). As_k is category k's learned
    H' x W' map (row k of a [num_categories, H', W'] table, row 0: unknown category)
    bilinearly resized to H x W (`tf.image.resize(..., "bilinear")`, §3.3.1).

    Args:
        num_categories: rows of the prior table, including the unknown row 0.
        prior_size: H' = W' (paper: 7 on Amazon, 6 at JD).
        kernel_size: size of the square convolution (paper: 7), 'same' padding.
        kernel_initializer: initializer of the convolution kernel.
        prior_initializer: initializer of the prior table (paper: random).
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C] (F', the channel-refined map in CSCNN).
        category_ids: int tensor [B]; ids outside [0, num_categories) use row 0.
        return_attention: also return `{"spatial": M_s}`.

    Returns:
        F'' [B, H, W, C], or `(F'', {"spatial": [B, H, W]})` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CategorySpatialAttention(num_categories=10, prior_size=6, seed=0)
    >>> out, maps = layer(np.ones((2, 12, 12, 4), "float32"), np.array([3, 0]), return_attention=True)
    >>> tuple(out.shape), tuple(maps["spatial"].shape)
    ((2, 12, 12, 4), (2, 12, 12))
    """

    def __init__(self, num_categories: int, prior_size: int = 7, kernel_size: int = 7, **kwargs: Any) -> None:
        super().__init__(kernel_size=kernel_size, num_categories=num_categories, prior_size=prior_size, **kwargs)


class _ChannelThenSpatial(_Attention):
    """F' = channel(F), F'' = spatial(F'): CSCNN Eq. (8)-(9), CBAM's sequential order."""

    def __init__(
        self,
        reduction: int = 4,
        kernel_size: int = 7,
        channel_prior_dim: int = 20,
        spatial_prior_size: int = 7,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_positive_int(reduction, "reduction")
        _check_positive_int(kernel_size, "kernel_size")
        if self.uses_prior:
            _check_positive_int(channel_prior_dim, "channel_prior_dim")
            _check_positive_int(spatial_prior_size, "spatial_prior_size")
        self.reduction = reduction
        self.kernel_size = kernel_size
        self.channel_prior_dim = channel_prior_dim
        self.spatial_prior_size = spatial_prior_size

    def _make_channel(self) -> _ChannelAttention:
        raise NotImplementedError

    def _make_spatial(self) -> _SpatialAttention:
        raise NotImplementedError

    def _common(self, offset: int) -> dict[str, Any]:
        return {
            "kernel_initializer": self.kernel_initializer,
            "seed": _offset(self.seed, offset),
            "dtype": self.dtype_policy,
        }

    def build(self, feature_map_shape: Any, category_ids_shape: Any = None) -> None:
        _check_feature_map_shape(feature_map_shape, self.name)
        self.channel = self._make_channel()
        self.spatial = self._make_spatial()
        self.channel.build(feature_map_shape, category_ids_shape)
        self.spatial.build(feature_map_shape, category_ids_shape)

    def _refine(self, feature_map: Any, category_ids: Any) -> tuple[Any, dict[str, Any]]:
        refined, channel_maps = self.channel._refine(feature_map, category_ids)
        refined, spatial_maps = self.spatial._refine(refined, category_ids)
        return refined, {**channel_maps, **spatial_maps}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "reduction": self.reduction, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="tfvctr")
class CBAMAttention(_ChannelThenSpatial):
    """CBAM (Woo et al. 2018): channel then spatial self-attention; CSCNN Table 5 "CBAM-All".

    F' = M_c(F) * F with M_c = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), then
    F'' = M_s(F') * F' with M_s = sigmoid(Conv7x7([MaxPool_c(F'), AvgPool_c(F')])).
    The category ids are ignored.

    Args:
        reduction: r of the channel MLP.
        kernel_size: size of the spatial convolution.
        kernel_initializer: initializer of the MLP and convolution kernels.
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: ignored.
        return_attention: also return `{"channel": [B, C], "spatial": [B, H, W]}`.

    Returns:
        F'' [B, H, W, C], or `(F'', maps)` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CBAMAttention(seed=0)
    >>> out, maps = layer(np.ones((2, 5, 5, 8), "float32"), return_attention=True)
    >>> tuple(out.shape), sorted(maps)
    ((2, 5, 5, 8), ['channel', 'spatial'])
    """

    def __init__(self, reduction: int = 4, kernel_size: int = 7, **kwargs: Any) -> None:
        super().__init__(reduction=reduction, kernel_size=kernel_size, **kwargs)

    def _make_channel(self) -> _ChannelAttention:
        return CBAMChannelAttention(reduction=self.reduction, name="channel_attention", **self._common(0))

    def _make_spatial(self) -> _SpatialAttention:
        return CBAMSpatialAttention(kernel_size=self.kernel_size, name="spatial_attention", **self._common(10))


@keras.saving.register_keras_serializable(package="tfvctr")
class CSCNNAttention(_ChannelThenSpatial):
    """Category-specific channel then spatial attention: the CSCNN module, Eq. (8)-(11).

    Eq. (8): F' = M_c(F, Ac_k) * F, with Eq. (10)
    M_c = sigmoid(MLP([AvgPool(F), Ac_k]) + MLP([MaxPool(F), Ac_k]));
    Eq. (9): F'' = M_s(F', As_k) * F', with Eq. (11)
    M_s = sigmoid(Conv7x7([MaxPool_c(F'), AvgPool_c(F'), resize(As_k)])).
    See `CategoryChannelAttention` and `CategorySpatialAttention`.

    Args:
        num_categories: rows of the prior tables, including the unknown row 0.
        channel_prior_dim: C' (paper: 20).
        spatial_prior_size: H' = W' (paper: 7, JD: 6).
        reduction: r (paper: 4).
        kernel_size: size of the spatial convolution (paper: 7).
        kernel_initializer: initializer of the MLP and convolution kernels.
        prior_initializer: initializer of both prior tables.
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: int tensor [B]; ids outside [0, num_categories) use row 0.
        return_attention: also return `{"channel": [B, C], "spatial": [B, H, W]}`.

    Returns:
        F'' [B, H, W, C], or `(F'', maps)` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = CSCNNAttention(num_categories=10, channel_prior_dim=4, spatial_prior_size=3, seed=0)
    >>> out = layer(np.ones((2, 8, 8, 8), "float32"), np.array([1, 9]))
    >>> tuple(out.shape), len(layer.trainable_weights)
    ((2, 8, 8, 8), 8)
    """

    def __init__(
        self,
        num_categories: int,
        channel_prior_dim: int = 20,
        spatial_prior_size: int = 7,
        reduction: int = 4,
        kernel_size: int = 7,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            reduction=reduction,
            kernel_size=kernel_size,
            num_categories=num_categories,
            channel_prior_dim=channel_prior_dim,
            spatial_prior_size=spatial_prior_size,
            **kwargs,
        )

    def _make_channel(self) -> _ChannelAttention:
        return CategoryChannelAttention(
            num_categories=self.num_categories,
            prior_dim=self.channel_prior_dim,
            reduction=self.reduction,
            prior_initializer=self.prior_initializer,
            name="channel_attention",
            **self._common(0),
        )

    def _make_spatial(self) -> _SpatialAttention:
        return CategorySpatialAttention(
            num_categories=self.num_categories,
            prior_size=self.spatial_prior_size,
            kernel_size=self.kernel_size,
            prior_initializer=self.prior_initializer,
            name="spatial_attention",
            **self._common(10),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "channel_prior_dim": self.channel_prior_dim,
            "spatial_prior_size": self.spatial_prior_size,
        }


def spatial_module(layer: Any) -> Optional["_SpatialAttention"]:
    """The spatial-attention part of an attention layer: the layer itself (CBAM / CSCNN
    spatial), its `spatial` sub-layer (CBAM, CSCNN), or None (channel attention only)."""
    if isinstance(layer, _SpatialAttention):
        return layer
    if isinstance(layer, _ChannelThenSpatial):
        if not hasattr(layer, "spatial"):
            raise ValueError(f"Layer {layer.name!r} is not built yet; call it once first.")
        return layer.spatial
    return None


def make_attention(
    name: str,
    *,
    num_categories: int,
    channel_prior_dim: int = 20,
    spatial_prior_size: int = 7,
    reduction: int = 4,
    seed: Optional[int] = None,
    layer_name: Optional[str] = None,
) -> Optional[keras.layers.Layer]:
    """The attention layer for a `ModelConfig.attention` name, or None for "none".

    | name                 | layer                                   | CSCNN paper              |
    |----------------------|-----------------------------------------|--------------------------|
    | `none`               | None                                    | "No Attention"           |
    | `se`                 | `SEAttention`                           | Table 5 left, SE         |
    | `cbam_channel`       | `CBAMChannelAttention`                  | Table 5 left, CBAM-Chan. |
    | `cbam`               | `CBAMAttention`                         | Table 5 left, CBAM-All   |
    | `cscnn`              | `CSCNNAttention`                        | Eq. 8-11; Table 5 right, CBAM-All |
    | `se_cscnn`           | `CategorySEAttention`                   | Table 5 right, SE        |
    | `cbam_channel_cscnn` | `CategoryChannelAttention`              | Table 5 right, CBAM-Chan.|
    | `cscnn_channel`      | `CategoryChannelAttention` (CSCNN's channel module alone, ablation) | Eq. 10 |
    | `cscnn_spatial`      | `CategorySpatialAttention` (CSCNN's spatial module alone, ablation) | Eq. 11 |
    | `sca`                | `SCAAttention` (SCA-CNN, category embedding as state) | Table 4, DVBPR-SCA |

    Args:
        name: one of `ATTENTION_NAMES`.
        num_categories: rows of the prior tables (unknown row 0 included); ignored by the
            self-attention layers.
        channel_prior_dim: C'.
        spatial_prior_size: H' = W'.
        reduction: r of the channel MLPs.
        seed: initializer seed; None for random.
        layer_name: the Keras name of the layer.

    Returns:
        A layer called as `layer(feature_map, category_ids)`, or None.
    """
    if name not in ATTENTION_NAMES:
        raise ValueError(
            f"Invalid value received for argument `name`. Expected one of {', '.join(ATTENTION_NAMES)}. "
            f"Received: name={name!r}"
        )
    common: dict[str, Any] = {"seed": seed, "name": layer_name}
    prior = {"num_categories": num_categories}
    if name == "none":
        return None
    if name == "se":
        return SEAttention(reduction=reduction, **common)
    if name == "cbam_channel":
        return CBAMChannelAttention(reduction=reduction, **common)
    if name == "cbam":
        return CBAMAttention(reduction=reduction, **common)
    if name == "cscnn":
        return CSCNNAttention(
            channel_prior_dim=channel_prior_dim,
            spatial_prior_size=spatial_prior_size,
            reduction=reduction,
            **prior,
            **common,
        )
    if name == "se_cscnn":
        return CategorySEAttention(prior_dim=channel_prior_dim, reduction=reduction, **prior, **common)
    if name == "sca":
        return SCAAttention(embedding_dim=channel_prior_dim, reduction=reduction, **prior, **common)
    if name in ("cbam_channel_cscnn", "cscnn_channel"):
        return CategoryChannelAttention(prior_dim=channel_prior_dim, reduction=reduction, **prior, **common)
    return CategorySpatialAttention(prior_size=spatial_prior_size, **prior, **common)


@keras.saving.register_keras_serializable(package="tfvctr")
class SCAAttention(_Attention):
    """SCA-CNN's channel-wise then spatial attention (Chen et al., CVPR 2017, §3.2-3.4), with
    a category embedding in place of the captioning LSTM state: the DVBPR-SCA baseline of
    CSCNN (Liu et al. 2020, §4.4, Table 4).

    SCA-CNN conditions both attentions on the decoder's hidden state h_{t-1}; CSCNN's
    baseline feeds it the ad's category instead, h = E_k (row k of a learned
    [num_categories, embedding_dim] table, row 0 the unknown category). With V the feature
    map as C channels over m = H x W locations:

    Channel-wise, Eq. (5)-(6): v = mean over locations of V (v in R^C);
    b = tanh((W_c (x) v + b_c) (+) W_hc h)   (W_c in R^k, outer product: k x C);
    beta = softmax(W_i' b + b_i')            (beta in R^C, over channels).
    Spatial, Eq. (3)-(4), on the channel-weighted V' = beta * V (the C-S order, Eq. 8):
    a = tanh((W_s V' + b_s) (+) W_hs h)      (W_s in R^{k x C}, per location);
    alpha = softmax(W_i a + b_i)             (alpha in R^m, over locations).
    Output X = alpha * V' = alpha * beta * V.

    Unlike CSCNN (Eq. 8-11: sigmoid gates, max and mean pooling, a 7x7 convolution and a
    category *map* As_k), both weightings are softmaxes (they sum to 1 over channels and
    over locations) computed by one-hidden-layer perceptrons, and the category enters as
    an additive term inside the tanh.

    Args:
        num_categories: rows of the category embedding, including the unknown row 0.
        embedding_dim: size of h = E_k (default 20, CSCNN's C').
        reduction: the attention width is k = max(1, C // reduction).
        kernel_initializer: initializer of the W matrices.
        prior_initializer: initializer of the category embedding.
        seed: seed of the initializers; None for random.

    Call arguments:
        feature_map: float tensor [B, H, W, C].
        category_ids: int tensor [B]; ids outside [0, num_categories) use row 0.
        return_attention: also return `{"channel": beta [B, C], "spatial": alpha [B, H, W]}`.

    Returns:
        X [B, H, W, C], or `(X, maps)` with `return_attention=True`.

    Example:

    >>> import numpy as np
    >>> layer = SCAAttention(num_categories=10, embedding_dim=4, seed=0)
    >>> out, maps = layer(np.ones((2, 5, 5, 8), "float32"), np.array([1, 9]), return_attention=True)
    >>> tuple(out.shape), len(layer.trainable_weights), tuple(maps["spatial"].shape)
    ((2, 5, 5, 8), 11, (2, 5, 5))
    """

    def __init__(self, num_categories: int, embedding_dim: int = 20, reduction: int = 4, **kwargs: Any) -> None:
        super().__init__(num_categories=num_categories, **kwargs)
        _check_positive_int(embedding_dim, "embedding_dim")
        _check_positive_int(reduction, "reduction")
        self.embedding_dim = embedding_dim
        self.reduction = reduction

    def build(self, feature_map_shape: Any, category_ids_shape: Any = None) -> None:
        _check_feature_map_shape(feature_map_shape, self.name)
        channels = int(feature_map_shape[-1])
        k = max(1, channels // self.reduction)

        def kernel(name: str, shape: tuple, offset: int) -> keras.Variable:
            init = clone_initializer(self.kernel_initializer, _offset(self.seed, offset))
            return self.add_weight(name=name, shape=shape, initializer=init)

        self.category_embedding = self.add_weight(
            name="category_embedding",
            shape=(self.num_categories, self.embedding_dim),
            initializer=clone_initializer(self.prior_initializer, _offset(self.seed, 0)),
        )
        # Channel-wise attention (Eq. 5): W_c, b_c, W_hc, W_i', b_i'.
        self.channel_kernel = kernel("channel_kernel", (k,), 1)
        self.channel_bias = self.add_weight(name="channel_bias", shape=(k,), initializer="zeros")
        self.channel_state_kernel = kernel("channel_state_kernel", (self.embedding_dim, k), 2)
        self.channel_output_kernel = kernel("channel_output_kernel", (k,), 3)
        self.channel_output_bias = self.add_weight(name="channel_output_bias", shape=(), initializer="zeros")
        # Spatial attention (Eq. 3): W_s, b_s, W_hs, W_i (b_i cancels in the softmax over
        # locations, as b_i' does over channels; both are kept to match the equations).
        self.spatial_kernel = kernel("spatial_kernel", (channels, k), 4)
        self.spatial_bias = self.add_weight(name="spatial_bias", shape=(k,), initializer="zeros")
        self.spatial_state_kernel = kernel("spatial_state_kernel", (self.embedding_dim, k), 5)
        self.spatial_output_kernel = kernel("spatial_output_kernel", (k,), 6)
        self.spatial_output_bias = self.add_weight(name="spatial_output_bias", shape=(), initializer="zeros")

    def _refine(self, feature_map: Any, category_ids: Any) -> tuple[Any, dict[str, Any]]:
        ops = keras.ops
        dtype = feature_map.dtype
        rows = self.prior_rows(category_ids, "channel-wise and spatial")
        h = ops.cast(ops.take(self.category_embedding, rows, axis=0), dtype)  # [B, E]
        # Channel-wise: b[B, C, k] = tanh(v_c W_c + b_c + h W_hc); beta = softmax_C(b W_i' + b_i').
        v = ops.mean(feature_map, axis=(1, 2))  # [B, C]
        b = ops.tanh(
            v[:, :, None] * self.channel_kernel[None, None, :]
            + self.channel_bias
            + ops.matmul(h, self.channel_state_kernel)[:, None, :]
        )
        beta = ops.softmax(ops.einsum("bck,k->bc", b, self.channel_output_kernel) + self.channel_output_bias, axis=-1)
        weighted = feature_map * beta[:, None, None, :]
        # Spatial: a[B, H, W, k] = tanh(V' W_s + b_s + h W_hs); alpha = softmax over H x W.
        a = ops.tanh(
            ops.matmul(weighted, self.spatial_kernel) + self.spatial_bias + ops.matmul(h, self.spatial_state_kernel)[:, None, None, :]
        )
        scores = ops.einsum("bhwk,k->bhw", a, self.spatial_output_kernel) + self.spatial_output_bias
        shape = ops.shape(scores)
        alpha = ops.reshape(ops.softmax(ops.reshape(scores, (shape[0], -1)), axis=-1), shape)
        return weighted * alpha[:, :, :, None], {"channel": beta, "spatial": alpha}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "embedding_dim": self.embedding_dim, "reduction": self.reduction}
