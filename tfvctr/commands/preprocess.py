"""`tfvctr preprocess`: raw tables → TFRecords grouped by ad (Beam job `beam_jobs.build_tfrecords`)."""

from __future__ import annotations

import argparse

from beam_jobs.flags import add_preprocess_arguments, add_runner_help


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="Beam: raw ads + impressions tables -> grouped TFRecords, vocabularies, stats",
        description="Validate, join and split the raw tables and write one tf.train.SequenceExample per chunk of "
        "<= K impressions of one ad (docs/formats.md section 2). Bad rows go to OUT/dead_letter/ with a reason; "
        "the counts in OUT/manifest.json add up.",
        allow_abbrev=False,  # a prefix of one of Beam's flags must not be taken for ours
    )
    add_preprocess_arguments(p)
    add_runner_help(p)
    p.set_defaults(func=run, beam_passthrough=True)


def run(args: argparse.Namespace) -> int:
    # Lazy, as in every command: see tfvctr/commands/__init__.py.
    from beam_jobs.build_tfrecords import run_args

    run_args(args, list(getattr(args, "beam_args", [])))
    return 0
