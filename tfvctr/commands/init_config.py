"""`tfvctr init-config --ads A --impressions I [--out C]`: a commented starter config from the tables."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "init-config", run, "write a commented starter config inferred from your raw tables",
        "Read a sample of the ads and impressions tables (CSV, JSON Lines or Parquet) and a few images, "
        "and write a starter config: each column's kind (numeric, categorical, multi-valued), a vocabulary "
        "for small cardinalities and hash_buckets for large ones, embedding sizes, the day format and the "
        "eval split, K and the image size, each with a comment saying why (thresholds in "
        "tfvctr/init_config.py). Refuses with one line when a required column (ads: ad_id, category, image; "
        "impressions: ad_id, label, day, user_id) is missing. The config is validated before it is written.",
    )
    p.add_argument("--ads", required=True, help="the ads table")
    p.add_argument("--impressions", required=True, help="the impressions table")
    p.add_argument("--out", default=None, help="where to write the config (default: print it)")
    p.add_argument("--name", default="tfvctr", help="the config's name (the export's model name; default tfvctr)")
    p.add_argument("--sample-rows", type=int, default=None, help="rows read from each table (default 20000)")


def run(args: argparse.Namespace) -> int:
    from tfvctr import init_config
    from tfvctr.errors import TfvctrError
    from tfvctr.io import fs

    rows = args.sample_rows if args.sample_rows is not None else init_config.SAMPLE_ROWS
    if rows < 1:
        raise TfvctrError(f"--sample-rows: expected a positive integer, received {rows}")
    text = init_config.infer(args.ads, args.impressions, rows, args.name)
    if args.out is None:
        print(text, end="")
    else:
        fs.write_atomic(args.out, text)
        print(f"init-config: wrote {args.out}; check it with `tfvctr validate-config {args.out}`")
    return 0
