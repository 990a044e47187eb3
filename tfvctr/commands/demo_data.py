"""`tfvctr demo-data --out DIR`: write the simulated demo dataset (docs/demo_data.md)."""

from __future__ import annotations

import argparse

FORMAT_CHOICES = {"csv": ("csv",), "jsonl": ("jsonl",), "parquet": ("parquet",), "both": ("csv", "jsonl")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write the simulated demo dataset (tables, images, true click probabilities)",
        description="Simulate ads with procedurally rendered product images, users and impressions whose click "
        "probability depends on the image in a category-specific way, and write ads/impressions tables, "
        "images/*.jpg and simulator.json under --out. The same --seed gives byte-identical files. "
        "See docs/demo_data.md.",
    )
    p.add_argument("--out", required=True, help="output folder (local or gs://); existing files are overwritten")
    p.add_argument("--ads", type=int, default=2000, help="number of ads, about 10%% of them cold (default: 2000)")
    p.add_argument("--impressions", type=int, default=200_000, help="number of impressions, >= --ads (default: 200000)")
    p.add_argument("--days", type=int, default=7, help="days 0..D-1; the last is the eval day (default: 7)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument("--categories", type=int, default=10, help="number of categories, at most 10 (default: 10)")
    p.add_argument(
        "--format",
        choices=sorted(FORMAT_CHOICES),
        default="both",
        help="table format(s); both = csv and jsonl (default: both)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tfvctr.demo_data.generate import check_arguments, generate

    formats = FORMAT_CHOICES[args.format]
    # Checked here too so that errors name the flags the user typed.
    check_arguments(
        args.ads, args.impressions, args.days, args.seed, args.image_size, formats, args.categories,
        names={"num_ads": "--ads", "num_impressions": "--impressions", "days": "--days", "seed": "--seed",
               "image_size": "--image-size", "formats": "--format", "num_categories": "--categories"},
    )  # fmt: skip

    def progress(iterable, total):
        return tqdm(iterable, total=total, desc="rendering images", unit="img", disable=True if args.no_progress else None, leave=False)  # None: no bar when not a terminal (CI logs)

    s = generate(
        args.out,
        num_ads=args.ads,
        num_impressions=args.impressions,
        days=args.days,
        seed=args.seed,
        image_size=args.image_size,
        formats=formats,
        num_categories=args.categories,
        progress=progress,
    )
    tables = [p for k, p in s["paths"].items() if k.startswith(("ads_", "impressions_"))]
    print(f"wrote {s['out_dir']} in {s['seconds']:.1f}s")
    print(f"  tables: {', '.join(tables)}")
    print(
        f"  images: {s['paths']['images']} ({s['num_ads']} JPEGs, {args.image_size}x{args.image_size}, {s['image_bytes'] / 1e6:.1f} MB)"
    )
    print(f"  simulator: {s['paths']['simulator']}")
    print(
        f"  {s['num_ads']} ads ({s['cold_ads']} cold: last day only), {s['num_users']} users, "
        f"{s['num_impressions']} impressions ({s['train_impressions']} train, {s['eval_impressions']} eval), "
        f"CTR {s['ctr']:.2%}"
    )
    print(
        f"  AUC of true_ctr (the ceiling) on the eval day {_auc(s['eval_auc_true_ctr'])}, on cold ads "
        f"{_auc(s['cold_auc_true_ctr'])}; without the visual term {_auc(s['eval_auc_without_visual_term'])} and "
        f"{_auc(s['cold_auc_without_visual_term'])}"
    )
    return 0
