"""`tfvctr validate-config [CONFIG] [--print]`: check a config, print a summary or a starter config.

The configs of the repository's `configs/` folder ship inside the package (`tfvctr/configs`,
a link to that folder in a checkout; real files in an installed wheel), so after a plain
`pip install` they are still at hand: CONFIG may name one (`demo`, `demo_vbpr`,
`jd_cscnn_dcn`), and `--print` without CONFIG prints the demo config as a starter.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os

from tfvctr.commands import add_command, add_set_argument
from tfvctr.config import load_config
from tfvctr.errors import TfvctrError

STARTER = "demo"

STARTER_HEADER = """\
# A starter config for your own tables: tfvctr's demo config (`tfvctr validate-config demo`).
# Edit `dataset.features` to list your tables' columns (docs/formats.md §1: the ads table has
# ad_id, category, image; the impressions table ad_id, label, day, user_id; every other column
# you want the model to read is a feature here, `source: ad` or `source: impression`), drop
# `passthrough` unless your impressions carry a known click probability, then check it with
# `tfvctr validate-config YOUR.yaml` and see every default with `--print`.
"""


def shipped_configs() -> dict[str, str]:
    """`{name: path}` of the configs shipped in the package (`tfvctr/configs/*.yaml`)."""
    folder = importlib.resources.files("tfvctr") / "configs"
    if not folder.is_dir():
        return {}
    return {entry.name.removesuffix(".yaml"): str(entry) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve_config(path: str) -> str:
    """`path` itself, or the shipped config it names (`demo`, `demo.yaml`) when no such file exists."""
    shipped = shipped_configs()
    name = path.removesuffix(".yaml")
    if not os.path.exists(path) and os.sep not in path and "://" not in path and name in shipped:
        return shipped[name]
    return path


def starter_config() -> str:
    """The text of the starter config: the shipped demo config, comments kept, under a header."""
    shipped = shipped_configs()
    if STARTER not in shipped:
        raise TfvctrError("the package ships no configs (tfvctr/configs/ is missing): reinstall tfvctr")
    with open(shipped[STARTER], encoding="utf-8") as f:
        return STARTER_HEADER + f.read()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "validate-config", run, "check a YAML config and print what it declares (or print a starter config)",
        "Load a YAML config, check every key and value, and print a summary. "
        "Exits 2 with one line naming the file, key and problem if it is invalid. "
        "CONFIG may also name a config shipped with tfvctr: demo, demo_vbpr, jd_cscnn_dcn. "
        "With --print and no CONFIG, prints a starter config to edit for your own tables.",
    )
    p.add_argument("config", nargs="?", help="path to the YAML config (local or gs://), or a shipped config's name")
    p.add_argument(
        "--print", action="store_true", dest="print_full",
        help="print the full config with defaults filled in; without CONFIG, a starter config for your tables",
    )
    add_set_argument(p, "training.steps=100")


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        if not args.print_full:
            raise TfvctrError("no CONFIG given: name a YAML config to check, or use --print for a starter config")
        if args.overrides:
            raise TfvctrError("--set needs a CONFIG to override")
        print(starter_config(), end="")
        return 0
    path = resolve_config(args.config)
    config = load_config(path, args.overrides)
    if args.print_full:
        print(config.to_yaml(), end="")
        return 0
    ds, m, t = config.dataset, config.model, config.training
    print(f"{args.config}: OK" + ("" if path == args.config else f" ({path})"))
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
