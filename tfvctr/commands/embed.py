"""`tfvctr embed`: the visual-embedding table of the trained tower (Beam job `beam_jobs.embed_ads`)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from beam_jobs.flags import add_embed_arguments, add_runner_help

    p = sub.add_parser(
        "embed",
        help="Beam: run the visual tower over the ads -> the visual-embedding table",
        description="Embed the most-impressed ads (until --coverage of train impressions is covered, CSCNN 3.4.2) "
        "with MODEL/visual_tower.keras and write .npz shards, index.json and per-category mean vectors "
        "(docs/formats.md section 4).",
        allow_abbrev=False,
    )
    add_embed_arguments(p)
    add_runner_help(p)
    p.set_defaults(func=run, beam_passthrough=True)


def run(args: argparse.Namespace) -> int:
    from beam_jobs.embed_ads import run_args

    run_args(args, list(getattr(args, "beam_args", [])))
    return 0
