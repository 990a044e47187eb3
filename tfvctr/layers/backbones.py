"""CNN backbones with pluggable (category-specific) attention.

`build_backbone` returns a functional `keras.Model` mapping
`{"image": [B, H, W, 3] float32 in [0, 1], "category": [B] int32}` to a feature vector
[B, F]. CSCNN (Liu et al., KDD 2020, §3.3.1) refines the output F of a conv layer into
F'' and feeds F'' to the next layer; `attention` picks the module (see
`tfvctr.layers.attention.make_attention`) and `attention_layers = L'` puts it after the
*last* L' attention sites of the network (0: every site, i.e. every conv layer but conv1,
the paper's best setting).

What an "attention site" is, per backbone (every conv is followed by BatchNorm + ReLU):

| backbone | layers | sites (in depth order) | F at width 1 |
|---|---|---|---|
| `cnnf` | CNN-F (Chatfield et al. 2014, the CNN of VBPR/DVBPR): conv 64 11x11/4, pool, conv 256 5x5, pool, 3 x conv 256 3x3, pool, fc 4096, fc 4096 | conv2 ... conv5 (4) | 4096 |
| `resnet18` | ResNet-18 (He et al. 2016), no fc-1000 | each of the 16 3x3 convs of the 8 basic blocks, after its BN (and ReLU for the first conv of a block), before the residual addition for the second (16) | 512 |
| `inception_v1` | GoogLeNet (Szegedy et al. 2015) without the auxiliary heads and fc | the stem's 3x3 conv and the output of each of the 9 inception modules (10) | 1024 |
| `deepctr17` | DeepCTR's 17-layer Convnet (Chen et al. 2016, Fig. 4): conv 5x5/2, pool, 4 groups x 4 conv 3x3 (32, 64, 128, 256), stride 2 on the first conv of groups 2-4 | the 16 3x3 convs (16) | 256 |

ResNet-18's 16 sites are the "16 layers" of CSCNN §3.3.4, so `benchmarks/param_counts.py`
can be set beside the paper's Table 2 (docs/models/attention.md).

Departures, all for training from scratch on small images: 'same' padding everywhere so a
16 x 16 image never pools below 1 x 1; BatchNorm after every conv (CNN-F's LRN and
GoogLeNet's plain convs become conv + BN + ReLU); CNN-F has no dropout and no fc8 (the
visual tower's Dense(visual_dim) plays fc8); the networks end in global average pooling
except CNN-F, whose fc6 sees the flattened last pooled map as in the original. `width`
multiplies every channel count and CNN-F's fc sizes (tests use width 1/16).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import keras

from tfvctr.layers.attention import ATTENTION_NAMES, make_attention

# Attention sites per backbone (see the module docstring).
ATTENTION_SITES = {"cnnf": 4, "resnet18": 16, "inception_v1": 10, "deepctr17": 16}
BACKBONES = tuple(ATTENTION_SITES)

# GoogLeNet Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
_INCEPTION_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class _Builder:
    """Creates conv layers with seeded initializers and inserts attention at the sites."""

    def __init__(
        self,
        category: Any,
        attention: str,
        first_attended_site: int,
        width: float,
        num_categories: int,
        channel_prior_dim: int,
        spatial_prior_size: int,
        reduction: int,
        seed: Optional[int],
    ) -> None:
        self.category = category
        self.attention = attention
        self.first_attended_site = first_attended_site
        self.width = width
        self.num_categories = num_categories
        self.channel_prior_dim = channel_prior_dim
        self.spatial_prior_size = spatial_prior_size
        self.reduction = reduction
        self.seed = seed
        self.sites = 0
        self.layers = 0

    def channels(self, n: int) -> int:
        return max(1, int(round(n * self.width)))

    def _seed(self) -> Optional[int]:
        self.layers += 1
        return None if self.seed is None else self.seed + self.layers

    def conv(self, x: Any, filters: int, kernel: int, name: str, strides: int = 1, relu: bool = True) -> Any:
        # No conv bias: the BatchNorm that follows has its own shift.
        x = keras.layers.Conv2D(
            self.channels(filters),
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=keras.initializers.HeNormal(seed=self._seed()),
            name=f"{name}_conv",
        )(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def dense(self, x: Any, units: int, name: str) -> Any:
        return keras.layers.Dense(
            self.channels(units),
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=self._seed()),
            name=name,
        )(x)

    def attend(self, x: Any, name: str) -> Any:
        """The next attention site: refine x with the attention module if it is one of the last L'."""
        site = self.sites
        self.sites += 1
        if self.attention == "none" or site < self.first_attended_site:
            return x
        layer = make_attention(
            self.attention,
            num_categories=self.num_categories,
            channel_prior_dim=self.channel_prior_dim,
            spatial_prior_size=self.spatial_prior_size,
            reduction=self.reduction,
            seed=None if self.seed is None else self.seed + 10_000 + site,
            layer_name=f"{name}_attention",
        )
        return layer(x, self.category)


def _max_pool(x: Any, name: str) -> Any:
    return keras.layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)


def _cnnf(b: _Builder, x: Any) -> Any:
    x = b.conv(x, 64, 11, "conv1", strides=4)
    x = _max_pool(x, "pool1")
    x = b.attend(b.conv(x, 256, 5, "conv2"), "conv2")
    x = _max_pool(x, "pool2")
    for i in (3, 4, 5):
        x = b.attend(b.conv(x, 256, 3, f"conv{i}"), f"conv{i}")
    x = _max_pool(x, "pool5")
    x = keras.layers.Flatten(name="flatten")(x)
    x = b.dense(x, 4096, "fc6")
    return b.dense(x, 4096, "fc7")


def _resnet18(b: _Builder, x: Any) -> Any:
    x = b.conv(x, 64, 7, "conv1", strides=2)
    x = _max_pool(x, "pool1")
    for stage, filters in enumerate((64, 128, 256, 512), start=2):
        for block in (1, 2):
            name = f"conv{stage}_block{block}"
            strides = 2 if stage > 2 and block == 1 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != b.channels(filters):
                shortcut = b.conv(x, filters, 1, f"{name}_0", strides=strides, relu=False)
            y = b.attend(b.conv(x, filters, 3, f"{name}_1", strides=strides), f"{name}_1")
            y = b.attend(b.conv(y, filters, 3, f"{name}_2", relu=False), f"{name}_2")
            x = keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([shortcut, y]))
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)


def _inception_module(b: _Builder, x: Any, name: str) -> Any:
    n1, r3, n3, r5, n5, pool = _INCEPTION_MODULES[name]
    name = f"inception{name}"
    branch1 = b.conv(x, n1, 1, f"{name}_1x1")
    branch3 = b.conv(b.conv(x, r3, 1, f"{name}_3x3_reduce"), n3, 3, f"{name}_3x3")
    branch5 = b.conv(b.conv(x, r5, 1, f"{name}_5x5_reduce"), n5, 5, f"{name}_5x5")
    pooled = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch_pool = b.conv(pooled, pool, 1, f"{name}_pool_proj")
    x = keras.layers.Concatenate(name=f"{name}_concat")([branch1, branch3, branch5, branch_pool])
    return b.attend(x, name)


def _inception_v1(b: _Builder, x: Any) -> Any:
    x = b.conv(x, 64, 7, "conv1", strides=2)
    x = _max_pool(x, "pool1")
    x = b.conv(x, 64, 1, "conv2_reduce")
    x = b.attend(b.conv(x, 192, 3, "conv2"), "conv2")
    x = _max_pool(x, "pool2")
    for module in ("3a", "3b"):
        x = _inception_module(b, x, module)
    x = _max_pool(x, "pool3")
    for module in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception_module(b, x, module)
    x = _max_pool(x, "pool4")
    for module in ("5a", "5b"):
        x = _inception_module(b, x, module)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)


def _deepctr17(b: _Builder, x: Any) -> Any:
    x = b.conv(x, 32, 5, "conv1", strides=2)
    x = _max_pool(x, "pool1")
    for group, filters in enumerate((32, 64, 128, 256), start=1):
        for layer in range(1, 5):
            # DeepCTR §6.1.4: "the stride of the first convolution layer is 2 if the output
            # size of a group halves" (groups 2-4).
            strides = 2 if group > 1 and layer == 1 else 1
            name = f"group{group}_conv{layer}"
            x = b.attend(b.conv(x, filters, 3, name, strides=strides), name)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)


_BUILDERS: dict[str, Callable[[_Builder, Any], Any]] = {
    "cnnf": _cnnf,
    "resnet18": _resnet18,
    "inception_v1": _inception_v1,
    "deepctr17": _deepctr17,
}


def build_backbone(
    name: str,
    *,
    image_size: int,
    num_categories: int,
    attention: str = "none",
    attention_layers: int = 0,
    width: float = 1.0,
    channel_prior_dim: int = 20,
    spatial_prior_size: int = 7,
    reduction: int = 4,
    seed: Optional[int] = None,
) -> keras.Model:
    """Builds a CNN backbone with attention after its last `attention_layers` sites.

    CSCNN §3.3.1: "CSCNN could be added to any CNNs, by only replacing the input to the
    next layer from F to F''"; §4.8: it is added to the last L' conv layers.

    Args:
        name: one of `BACKBONES` (cnnf, resnet18, inception_v1, deepctr17).
        image_size: H = W of the input images.
        num_categories: rows of the category prior tables (unknown row 0 included).
        attention: a `ModelConfig.attention` name (see `make_attention`).
        attention_layers: L', attention on the last L' sites; 0 = every site.
        width: multiplier of every channel count (and CNN-F's fc sizes).
        channel_prior_dim: C'.
        spatial_prior_size: H' = W'.
        reduction: r of the channel-attention MLPs.
        seed: seed of every initializer; None for random.

    Returns:
        A `keras.Model` named `<name>_backbone` mapping `{"image": [B, H, W, 3] float32,
        "category": [B] int32}` to features [B, F].
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"Invalid value received for argument `name`. Expected one of {', '.join(BACKBONES)}. Received: name={name!r}"
        )
    if attention not in ATTENTION_NAMES:
        raise ValueError(
            f"Invalid value received for argument `attention`. Expected one of {', '.join(ATTENTION_NAMES)}. "
            f"Received: attention={attention!r}"
        )
    sites = ATTENTION_SITES[name]
    if (
        isinstance(attention_layers, bool)
        or not isinstance(attention_layers, int)
        or not 0 <= attention_layers <= sites
    ):
        raise ValueError(
            f"Invalid value received for argument `attention_layers`. Expected an integer in [0, {sites}] "
            f"({name} has {sites} attention sites; 0 = all). Received: attention_layers={attention_layers!r}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(
            f"Invalid value received for argument `image_size`. Expected an integer >= 8. Received: image_size={image_size!r}"
        )
    if not width > 0:
        raise ValueError(
            f"Invalid value received for argument `width`. Expected a positive number. Received: width={width!r}"
        )
    if isinstance(num_categories, bool) or not isinstance(num_categories, int) or num_categories < 1:
        raise ValueError(
            f"Invalid value received for argument `num_categories`. Expected an integer >= 1. "
            f"Received: num_categories={num_categories!r}"
        )

    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    category = keras.Input(shape=(), dtype="int32", name="category")
    first = 0 if attention_layers == 0 else sites - attention_layers
    builder = _Builder(
        category, attention, first, width, num_categories, channel_prior_dim, spatial_prior_size, reduction, seed
    )
    features = _BUILDERS[name](builder, image)
    if builder.sites != sites:  # keeps ATTENTION_SITES honest when a builder changes
        raise AssertionError(f"{name}: built {builder.sites} attention sites, ATTENTION_SITES says {sites}")
    return keras.Model({"image": image, "category": category}, features, name=f"{name}_backbone")
