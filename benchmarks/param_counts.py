"""Parameter counts and GFLOPs of ResNet-18, + CBAM and + CSCNN beside CSCNN's Table 2.

Usage::

    python benchmarks/param_counts.py            # the paper's settings, prints a Markdown table

Settings of CSCNN §3.3.4: 224 x 224 images, C in {64, 128, 256, 512}, C' = 20, r = 4,
|K| = 3310 categories, H' = W' = 6, attention on 16 layers. Our ResNet-18 puts the module
after each of the 16 3x3 convs of its 8 basic blocks (tfvctr/layers/backbones.py), which
are the paper's "16 layers". Only trainable parameters are counted (BatchNorm's moving
statistics are buffers in PyTorch, not parameters).

GFLOPs: TensorFlow's profiler counts the floating-point operations of one 224 x 224 image
through the backbone (graph frozen, batch 1), a multiply-add counting 2. The paper's 1.82
"GFLOPs" for ResNet-18 is the usual multiply-add count (ResNet-18 is 1.8 G multiply-adds),
so the table shows profiler FLOPs / 2 beside it. Ops without registered FLOP statistics
(pooling, sigmoid, bilinear resize, gathers) count 0, as in most FLOP counters.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402

from tfvctr.layers.backbones import build_backbone  # noqa: E402

PAPER_TABLE_2 = {"none": 17.9961e6, "cbam": 18.6936e6, "cscnn": 21.6791e6}
PAPER_TABLE_2_GFLOPS = {"none": 1.8206, "cbam": 1.8322, "cscnn": 1.8329}
LABELS = {"none": "Res18", "cbam": "Res18 + CBAM", "cscnn": "Res18 + CSCNN"}
# ResNet-18's 16 attended conv layers: 4 of each width.
LAYER_CHANNELS = [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
FC_1000 = 512 * 1000 + 1000


def trainable_params(model: keras.Model) -> int:
    return int(sum(int(keras.ops.size(w)) for w in model.trainable_weights))


def profiled_flops(model: keras.Model, image_size: int) -> int:
    """Floating-point operations of one image through `model` (TF profiler, multiply-add = 2)."""
    fn = tf.function(lambda image, category: model({"image": image, "category": category}, training=False))
    concrete = fn.get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32), tf.TensorSpec([1], tf.int32)
    )
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


def paper_formula_added(num_categories: int, prior_dim: int, prior_size: int, reduction: int) -> dict[str, int]:
    """The added parameters as CSCNN §3.3.4 states them, summed over the 16 layers."""
    cbam_channel = sum(2 * c * c // reduction for c in LAYER_CHANNELS)
    cscnn_channel = sum(
        c * c // reduction + (c + prior_dim) * c // reduction + prior_dim * num_categories for c in LAYER_CHANNELS
    )
    # "W' * H' * |K| + 6 * 6 ~ 120k" per layer (the 6 * 6 is the paper's; it does not say what it is).
    cscnn_spatial = len(LAYER_CHANNELS) * (prior_size * prior_size * num_categories + 6 * 6)
    return {"cbam": cbam_channel, "cscnn": cscnn_channel + cscnn_spatial}


def our_formula_added(
    num_categories: int, prior_dim: int, prior_size: int, reduction: int, kernel: int = 7
) -> dict[str, int]:
    """What our layers hold: the paper's MLP kernels plus biases, and the 7x7 spatial convs."""
    cbam = cscnn = 0
    for c in LAYER_CHANNELS:
        hidden = c // reduction
        mlp_tail = hidden + hidden * c + c  # hidden bias, output kernel and bias
        cbam += c * hidden + mlp_tail + kernel * kernel * 2 + 1
        cscnn += (c + prior_dim) * hidden + mlp_tail + prior_dim * num_categories
        cscnn += kernel * kernel * 3 + 1 + prior_size * prior_size * num_categories
    return {"cbam": cbam, "cscnn": cscnn}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-categories", type=int, default=3310)
    parser.add_argument("--prior-dim", type=int, default=20)
    parser.add_argument("--prior-size", type=int, default=6)
    parser.add_argument("--reduction", type=int, default=4)
    args = parser.parse_args(argv)

    counts, flops = {}, {}
    for attention in ("none", "cbam", "cscnn"):
        model = build_backbone(
            "resnet18",
            image_size=args.image_size,
            num_categories=args.num_categories,
            attention=attention,
            channel_prior_dim=args.prior_dim,
            spatial_prior_size=args.prior_size,
            reduction=args.reduction,
            seed=0,
        )
        counts[attention] = trainable_params(model)
        flops[attention] = profiled_flops(model, args.image_size)
    settings = (args.num_categories, args.prior_dim, args.prior_size, args.reduction)
    paper_formula = paper_formula_added(*settings)
    ours_formula = our_formula_added(*settings)

    print(
        f"ResNet-18 at {args.image_size}x{args.image_size}, C' = {args.prior_dim}, r = {args.reduction}, "
        f"|K| = {args.num_categories}, H' = W' = {args.prior_size}; trainable parameters, millions\n"
    )
    print("| model | params, ours (no fc) | params, ours + fc-1000 | params, paper | GFLOPs, profiler | "
          "G multiply-adds, ours + fc-1000 | GFLOPs, paper |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for attention, label in LABELS.items():
        ours = counts[attention]
        macs = flops[attention] / 2 + 512 * 1000
        print(
            f"| {label} | {ours / 1e6:.4f} | {(ours + FC_1000) / 1e6:.4f} | {PAPER_TABLE_2[attention] / 1e6:.4f} | "
            f"{flops[attention] / 1e9:.4f} | {macs / 1e9:.4f} | {PAPER_TABLE_2_GFLOPS[attention]:.4f} |"
        )
    extra = {a: (flops[a] - flops["none"]) / flops["none"] * 100 for a in ("cbam", "cscnn")}
    print(f"\nAdded computation over Res18: CBAM {extra['cbam']:.2f} %, CSCNN {extra['cscnn']:.2f} % "
          f"(paper: {(1.8322 / 1.8206 - 1) * 100:.2f} %, {(1.8329 / 1.8206 - 1) * 100:.2f} %)")
    print("\nAdded over plain ResNet-18, millions\n")
    print("| module | ours, measured | ours, formula | paper, §3.3.4 formula | paper, Table 2 difference |")
    print("|---|---:|---:|---:|---:|")
    for attention in ("cbam", "cscnn"):
        measured = counts[attention] - counts["none"]
        table = PAPER_TABLE_2[attention] - PAPER_TABLE_2["none"]
        print(
            f"| {LABELS[attention][len('Res18 + ') :]} | {measured / 1e6:.4f} | {ours_formula[attention] / 1e6:.4f} | "
            f"{paper_formula[attention] / 1e6:.4f} | {table / 1e6:.4f} |"
        )
    if any(counts[a] - counts["none"] != ours_formula[a] for a in ("cbam", "cscnn")):
        raise SystemExit("measured counts differ from our own formula: the backbone changed, update the formula")


if __name__ == "__main__":
    main()
