"""`tfvctr preprocess`: raw tables → TFRecords grouped by ad (Beam job `beam_jobs.build_tfrecords`)."""

from __future__ import annotations

import argparse

from beam_jobs.flags import add_preprocess_arguments
from tfvctr.commands import add_beam_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_beam_command(
        sub, "preprocess", run, "Beam: raw ads + impressions tables -> grouped TFRecords, vocabularies, stats",
        "Validate, join and split the raw tables and write one tf.train.SequenceExample per chunk of "
        "<= K impressions of one ad (docs/formats.md section 2). Bad rows go to OUT/dead_letter/ with a reason; "
        "the counts in OUT/manifest.json add up.",
        add_preprocess_arguments,
    )


def run(args: argparse.Namespace) -> int:
    # Lazy, as in every command: see tfvctr/commands/__init__.py.
    from beam_jobs.build_tfrecords import run_args

    run_args(args, list(getattr(args, "beam_args", [])))
    return 0
