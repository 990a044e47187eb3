"""`tfvctr demo-data --out DIR [--scenario NAME]`: write a simulated dataset (docs/demo_data.md)."""

from __future__ import annotations

import argparse

FORMAT_CHOICES = {"csv": ("csv",), "jsonl": ("jsonl",), "parquet": ("parquet",), "both": ("csv", "jsonl")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write the simulated demo dataset (tables, images, true click probabilities)",
        description="Simulate ads with procedurally rendered product images, users and impressions whose click "
        "probability depends on the image in a category-specific way, and write ads/impressions tables, "
        "images/*.jpg, ad_effects.csv (the true per-ad visual effect) and simulator.json under --out. The same "
        "--seed gives byte-identical files. --scenario picks the click world (which image property matters in "
        "which category, CTR level, size, how much the user matters); the default, demo, is the demo data. "
        "See docs/demo_data.md.",
        epilog="scenarios (ads, impressions, CTR, visual strength):\n" + _scenario_lines(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", help="output folder (local or gs://); existing files are overwritten (required)")
    p.add_argument(
        "--scenario",
        default="demo",
        metavar="NAME",
        help="the click world, see below or --list-scenarios (default: demo)",
    )
    p.add_argument("--list-scenarios", action="store_true", help="print the scenarios and exit")
    p.add_argument(
        "--ads",
        type=int,
        default=None,
        help="number of ads, about 10%% of them cold (default: the scenario's; demo 2000)",
    )
    p.add_argument(
        "--impressions",
        type=int,
        default=None,
        help="number of impressions, >= --ads (default: the scenario's; demo 200000)",
    )
    p.add_argument("--days", type=int, default=None, help="days 0..D-1; the last is the eval day (default: 7)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument(
        "--categories", type=int, default=None, help="number of categories (default: the scenario's; demo 10)"
    )
    p.add_argument(
        "--format",
        choices=sorted(FORMAT_CHOICES),
        default="both",
        help="table format(s); both = csv and jsonl (default: both)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _scenario_lines() -> str:
    from tfvctr.demo_data.scenarios import SCENARIOS

    return "\n".join(
        f"  {s.name:10s} {s.num_ads:5d} ads {s.num_impressions:8d} imp, {s.simulator_params().target_ctr:.0%}, "
        f"{s.visual_strength:.1f}: {s.summary}"
        for s in SCENARIOS.values()
    )


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tfvctr.demo_data.generate import check_arguments, generate
    from tfvctr.demo_data.scenarios import SCENARIOS, describe_scenarios
    from tfvctr.errors import TfvctrError

    if args.list_scenarios:
        print(describe_scenarios())
        return 0
    if not args.out:
        raise TfvctrError("--out: expected an output folder, received nothing")
    names = {"num_ads": "--ads", "num_impressions": "--impressions", "days": "--days", "seed": "--seed",
             "image_size": "--image-size", "formats": "--format", "num_categories": "--categories",
             "scenario": "--scenario"}  # fmt: skip
    if args.scenario not in SCENARIOS:
        raise TfvctrError(f"--scenario: expected one of {', '.join(SCENARIOS)}, received {args.scenario!r}")
    scenario = SCENARIOS[args.scenario]
    args.ads = scenario.num_ads if args.ads is None else args.ads
    args.impressions = scenario.num_impressions if args.impressions is None else args.impressions
    args.days = scenario.days if args.days is None else args.days
    args.categories = scenario.num_categories if args.categories is None else args.categories
    formats = FORMAT_CHOICES[args.format]
    # Checked here too so that errors name the flags the user typed.
    check_arguments(
        args.ads,
        args.impressions,
        args.days,
        args.seed,
        args.image_size,
        formats,
        args.categories,
        names=names,
        scenario=args.scenario,
    )

    def progress(iterable, total):
        return tqdm(
            iterable,
            total=total,
            desc="rendering images",
            unit="img",
            disable=True if args.no_progress else None,
            leave=False,
        )  # None: no bar when not a terminal (CI logs)

    s = generate(args.out, num_ads=args.ads, num_impressions=args.impressions, days=args.days, seed=args.seed,
                 image_size=args.image_size, formats=formats, num_categories=args.categories, progress=progress,
                 scenario=args.scenario)
    tables = [p for k, p in s["paths"].items() if k.startswith(("ads_", "impressions_"))]
    print(f"wrote {s['out_dir']} (scenario {s['scenario']}) in {s['seconds']:.1f}s")
    print(f"  tables: {', '.join(tables)}")
    print(
        f"  images: {s['paths']['images']} ({s['num_ads']} JPEGs, {args.image_size}x{args.image_size}, {s['image_bytes'] / 1e6:.1f} MB)"
    )
    print(f"  simulator: {s['paths']['simulator']}; true per-ad visual effects: {s['paths']['ad_effects']}")
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
