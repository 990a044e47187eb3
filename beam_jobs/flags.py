"""The Beam jobs' own command-line flags, apart from the jobs so `tfvctr --help` does not import Beam.

Flags not declared here go to Beam's `PipelineOptions` (`parse_known_args`).
"""

from __future__ import annotations

import argparse

from tfvctr import layout

TOWER_FILE = layout.VISUAL_TOWER


def add_runner_help(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Any other flag goes to Beam's PipelineOptions, e.g. --direct_num_workers 2 (two local processes), "
        "or --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py. "
        "The default runner is DirectRunner (in_memory)."
    )


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """`build_tfrecords` / `tfvctr preprocess`."""
    parser.add_argument("--config", required=True, help="YAML config (the `dataset` section drives this job)")
    parser.add_argument("--ads", required=True, help="ads table: .csv, .jsonl or .parquet; local, gs://, or a glob")
    parser.add_argument("--impressions", required=True, help="impressions table: .csv, .jsonl or .parquet")
    parser.add_argument("--out", required=True, help="output folder (local or gs://)")
    parser.add_argument("--eval-from-day", default=None,
                        help="first eval day (integer or YYYY-MM-DD); default: the last `dataset.eval_days` "
                             "distinct days of the data")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed (default: dataset.seed)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run's output in --out first")
    # Ours, not Beam's: without it `--set` went on to PipelineOptions, which drops what it
    # cannot parse with a warning, and the job ran with the config as written.
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set dataset.validation.mode=temporal (repeatable)")


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """`embed_ads` / `tfvctr embed`."""
    parser.add_argument("--model", required=True, help=f"model dir holding {TOWER_FILE} (and {layout.CONFIG})")
    parser.add_argument("--ads", default=None,
                        help="the ad catalog to embed (.csv/.jsonl/.parquet, local, gs:// or a glob), the ads table "
                             "format of preprocess; default: the ads of DATA/ad_counts.jsonl (no new ads)")
    parser.add_argument("--out", required=True, help="output folder of the table")
    parser.add_argument("--data", default=None,
                        help=f"the preprocess output the model was trained on ({layout.AD_COUNTS}, "
                             f"{layout.VOCAB_DIR}/{layout.CATEGORY_VOCAB}, {layout.MANIFEST}); default: "
                             f"MODEL/{layout.DATA_DIR_POINTER}")
    parser.add_argument("--config", default=None, help="config (default: MODEL/config.yaml)")
    parser.add_argument("--coverage", type=float, default=None,
                        help="keep the ads carrying this share of the most recent split's impressions, plus every "
                             "ad newer than the data, in (0, 1]; 1 = every catalog ad (default: embed.coverage)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default=None,
                        help="storage dtype of the vectors (default: embed.dtype)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per tower call (default: embed.batch_size)")
    parser.add_argument("--rows-per-shard", type=int, default=100_000, help="rows per .npz shard (default: 100000)")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier table in --out first")
