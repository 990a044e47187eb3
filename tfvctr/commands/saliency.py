"""`tfvctr saliency`: what a trained model looks at (DeepCTR §6.3 saliency, CSCNN spatial attention)."""

from __future__ import annotations

import argparse

from tfvctr import layout
from tfvctr.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "saliency", run, "saliency and spatial-attention pictures of the highest- and lowest-CTR ads of each category",
        "For every category, the highest and lowest predicted-CTR ads of the eval split as PNG grids: "
        "image | saliency (DeepCTR Eqs. 9-11: max over RGB of |d logit / d pixel|) | overlay | the spatial attention "
        f"Ms of the first attended layer (CSCNN, CBAM); the learned category spatial priors ({layout.SPATIAL_PRIORS_PLOT}); "
        f"and {layout.SALIENCY_INDEX}, the ads shown with their CTRs and the share of saliency on the object.",
    )
    p.add_argument("--model-dir", required=True, help="a `tfvctr train` model dir")
    p.add_argument("--data", required=True, help="the `tfvctr preprocess` output to read ads from")
    p.add_argument("--out", required=True, help="folder for the pictures (created; files in it are overwritten)")
    p.add_argument("--ads", type=int, default=2, metavar="N", help="highest and lowest N ads per category (default 2)")
    p.add_argument("--split", default="eval", choices=list(layout.SPLITS), help="which split's ads (default eval)")


def run(args: argparse.Namespace) -> int:
    # Lazy, as in every command: see tfvctr/commands/__init__.py.
    from tfvctr.saliency import saliency_report

    summary = saliency_report(args.model_dir, args.data, args.out, ads_per_category=args.ads, split=args.split)
    shown = sum(len(c["ads"]) for c in summary["categories"].values())
    print(f"saliency: {shown} ads of {len(summary['categories'])} categories -> {args.out}")
    for category, c in sorted(summary["categories"].items()):
        # Above 1: the saliency sits on the object more than the object's area alone would give.
        ratio = [a["saliency_on_object"] / a["object_share"] for a in c["ads"] if a["object_share"] > 0]
        spread = f"{min(ratio):.2f}-{max(ratio):.2f}" if ratio else "n/a"
        print(f"  {category:12s} {c['plot']:28s} saliency on the object / object area {spread}")
    if summary["priors_plot"]:
        print(f"  spatial priors: {summary['priors_plot']}; attention maps of {summary['attention_site']}")
    return 0
