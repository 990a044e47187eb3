"""The cross network of Deep & Cross (DCN-v1, as CSCNN Eq. 5) and DCN-v2 via keras-rs."""

from __future__ import annotations

from typing import Any, Optional

import keras
import keras_rs
from keras import ops

from tfvctr.layers.arguments import attribute_config
from tfvctr.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tfvctr")
class CrossNetwork(keras.layers.Layer):
    """A stack of explicit feature-crossing layers.

    `kind="v1"` is DCN (Wang et al. 2017) as written in CSCNN (Liu et al. 2020) Eq. 5:
    `z_{l+1} = z_0 (z_l^T w_l) + b_l + z_l`, with `w_l, b_l` vectors of the input width
    d (2d parameters per layer). `kind="v2"` is DCN-v2 (Wang et al. 2021) Eq. 1,
    `z_{l+1} = z_0 * (W_l z_l + b_l) + z_l`, built from `keras_rs.layers.FeatureCross`
    with an optional low-rank `W_l = U_l V_l` of rank `projection_dim`.

    Args:
        num_layers: number of cross layers L (0: the input is returned unchanged).
        kind: `"v1"` or `"v2"`.
        projection_dim: rank of `W_l` for `v2` (None: full rank); must be None for `v1`.
        kernel_initializer: initializer of `w_l` (`v1`) / `W_l` (`v2`).
        bias_initializer: initializer of `b_l`.
        kernel_regularizer: optional regularizer of the kernels.
        seed: seed of the default kernel initializer (layer l gets `seed + l`).

    Call arguments:
        inputs: float tensor `[N, d]` (z_0).

    Returns:
        float tensor `[N, d]` (z_L).

    Example:
        >>> import numpy as np
        >>> tuple(CrossNetwork(num_layers=3)(np.ones((2, 5), "float32")).shape)
        (2, 5)
    """

    def __init__(
        self,
        num_layers: int = 3,
        kind: str = "v1",
        projection_dim: Optional[int] = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(
                f"Invalid value received for argument `num_layers`. Expected an integer >= 0. Received: num_layers={num_layers!r}"
            )
        if kind not in ("v1", "v2"):
            raise ValueError(f"Invalid value received for argument `kind`. Expected 'v1' or 'v2'. Received: kind={kind!r}")
        if projection_dim is not None:
            if kind == "v1":
                raise ValueError(
                    "Invalid value received for argument `projection_dim`. Expected None for kind='v1' "
                    f"(its w_l is already a vector). Received: projection_dim={projection_dim}"
                )
            if projection_dim < 1:
                raise ValueError(
                    "Invalid value received for argument `projection_dim`. Expected a positive integer or None. "
                    f"Received: projection_dim={projection_dim}"
                )
        self.num_layers = num_layers
        self.kind = kind
        self.projection_dim = projection_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.seed = seed
        self.kernels: list = []
        self.biases: list = []
        self.cross_layers: list = []

    def _kernel_init(self, i: int) -> keras.initializers.Initializer:
        return clone_initializer(self.kernel_initializer, None if self.seed is None else self.seed + i)

    def build(self, input_shape: Any) -> None:
        d = int(input_shape[-1])
        for i in range(self.num_layers):
            if self.kind == "v1":
                self.kernels.append(
                    self.add_weight(
                        shape=(d,), initializer=self._kernel_init(i), regularizer=self.kernel_regularizer, name=f"w_{i}"
                    )
                )
                self.biases.append(
                    self.add_weight(shape=(d,), initializer=clone_initializer(self.bias_initializer, None), name=f"b_{i}")
                )
            else:
                layer = keras_rs.layers.FeatureCross(
                    projection_dim=self.projection_dim,
                    kernel_initializer=self._kernel_init(i),
                    bias_initializer=clone_initializer(self.bias_initializer, None),
                    kernel_regularizer=self.kernel_regularizer,
                    name=f"feature_cross_{i}",
                )
                layer.build(input_shape)
                # FeatureCross.build creates its Dense sub-layers without building them (they
                # build on the first call), so a model reloaded from `.keras` before any call
                # would have no variables to load into: build them here.
                if self.projection_dim is not None:
                    layer.down_proj_dense.build(tuple(input_shape))
                    layer.dense.build(tuple(input_shape[:-1]) + (self.projection_dim,))
                else:
                    layer.dense.build(tuple(input_shape))
                self.cross_layers.append(layer)

    def call(self, inputs: Any) -> Any:
        z0 = inputs
        z = inputs
        for i in range(self.num_layers):
            if self.kind == "v1":
                # z_l^T w_l is a scalar per row: [N, 1].
                s = ops.sum(z * self.kernels[i], axis=-1, keepdims=True)
                z = z0 * s + self.biases[i] + z
            else:
                z = self.cross_layers[i](z0, z)
        return z

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **attribute_config(self, ("num_layers", "kind", "projection_dim", "seed")),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }
