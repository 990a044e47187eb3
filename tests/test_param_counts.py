"""benchmarks/param_counts.py: the GFLOPs beside CSCNN's Table 2 are counted, not assumed."""


import keras
import pytest

from tests.conftest import load_benchmark

param_counts = load_benchmark("param_counts")


def test_profiled_flops_count_a_convolution_by_hand():
    image = keras.Input((8, 8, 3), name="image")
    category = keras.Input((), dtype="int32", name="category")
    out = keras.layers.Conv2D(4, 3, use_bias=False)(image)  # 6 x 6 x 4 outputs, 27 multiply-adds each
    model = keras.Model({"image": image, "category": category}, out)
    assert param_counts.profiled_flops(model, 8) == 2 * 6 * 6 * 4 * 27


@pytest.mark.parametrize("attention", ["cbam", "cscnn"])
def test_attention_adds_flops_to_a_tiny_resnet(attention):
    from tfvctr.layers.backbones import build_backbone

    def flops(name):
        model = build_backbone("resnet18", image_size=32, num_categories=5, attention=name, width=0.125, seed=0)
        return param_counts.profiled_flops(model, 32)

    plain, attended = flops("none"), flops(attention)
    assert plain < attended < 1.2 * plain  # a light module (at 224 px and full width: +0.4 %, see the benchmark)
