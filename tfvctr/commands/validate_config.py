"""`tfvctr validate-config CONFIG`: load and check a config, print a summary."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_set_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-config",
        help="check a YAML config and print what it declares",
        description="Load a YAML config, check every key and value, and print a summary. "
        "Exits 2 with one line naming the file, key and problem if it is invalid.",
    )
    p.add_argument("config", help="path to the YAML config (local or gs://)")
    p.add_argument("--print", action="store_true", dest="print_full", help="print the full config with defaults filled in")
    add_set_argument(p, "training.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tfvctr.config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_full:
        print(config.to_yaml(), end="")
        return 0
    ds, m, t = config.dataset, config.model, config.training
    print(f"{args.config}: OK")
    print(
        f"  dataset: {len(ds.features)} features ({len(ds.ad_features)} ad, {len(ds.impression_features)} impression), "
        f"images {ds.image_size}x{ds.image_size}, K={ds.impressions_per_chunk}, eval_days={ds.eval_days}"
    )
    x_nv = sum(f.embedding_dim if not (f.kind == "numeric" and f.transform == "normalize") else 1 for f in ds.features)
    print(
        f"  model: {m.architecture}, backbone {m.backbone} x{m.backbone_width}, attention {m.attention}, "
        f"x_v={m.visual_dim}, x_nv={x_nv}, deep {m.deep_layers}, cross {m.cross_layers} ({m.cross_type})"
    )
    print(f"  training: {t.steps} steps, {t.ads_per_batch} ads/batch, sampling {t.sampling}, {t.optimizer} lr={t.learning_rate}")
    return 0
