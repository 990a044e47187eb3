"""`tfvctr embed`: the visual-embedding table of the trained tower (Beam job `beam_jobs.embed_ads`)."""

from __future__ import annotations

import argparse

from beam_jobs.flags import add_embed_arguments
from tfvctr.commands import add_beam_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_beam_command(
        sub, "embed", run, "Beam: run the visual tower over the ads -> the visual-embedding table",
        "Embed the ad catalog (--ads, read and validated as preprocess reads the ads table; bad rows to "
        "the dead letter) with MODEL/visual_tower.keras and write .npz shards, index.json and per-category mean "
        "vectors (docs/formats.md section 4). Coverage (CSCNN 3.4.2): 1 keeps every catalog ad; below 1, the ads "
        "carrying that share of the most recent split's impressions plus every ad newer than the data.",
        add_embed_arguments,
    )


def run(args: argparse.Namespace) -> int:
    # Lazy, as in every command: see tfvctr/commands/__init__.py.
    from beam_jobs.embed_ads import run_args
    from tfvctr.fingerprint import check_model_data

    check_model_data(args.model, args.data, "embed")  # unfinished training, a data dir that does not fit
    run_args(args, list(getattr(args, "beam_args", [])))
    return 0
