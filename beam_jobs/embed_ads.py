"""The visual-embedding table: the trained visual tower over the ad catalog (docs/formats.md §4).

    python -m beam_jobs.embed_ads --model M --ads ADS --out T [--data D] [--coverage 1] [--dtype float16]

(or `tfvctr embed`). Serving never runs the CNN for a known ad: CSCNN §3.4.2 precomputes
x_v offline. The ads come from the catalog itself (`--ads`, read and validated exactly as
`build_tfrecords` reads the ads table, bad rows to the dead letter), so ads that have no
impressions yet are embedded too. Without `--ads` the ads are those of
`D/ad_counts.jsonl` (every ad preprocess wrote, images read again from the URIs it
records): no ad can be newer than the data then. **Coverage rule**: `coverage: 1` (the default) keeps
every catalog ad; below 1 it keeps the ads that carry that share of the most recent
split's impressions (`D/ad_counts.jsonl`: the eval days, the last `dataset.eval_days`
days; the train days when there is no eval split) **plus every ad newer than the data**
(in the catalog, not in `ad_counts.jsonl`). The cut is a threshold on the impression
count found from a histogram of counts (never a sort of the catalog); ads tied at it
are all kept.

    ReadTable(ads) ─ ValidateAds ─ JoinRecentCounts ─ KeepCovered ─ EmbedAds ─ WriteTable
                                                                        └──────── (category means)
    every rejected row ─────────────────────────────────────────────── WriteDeadLetter

Counters (namespace `tfvctr`) become `index.json`; catalog rows = table rows + ads below
the coverage cut + dead-letter ads, or the job fails.

Locally, one DirectRunner process runs the tower on every core but the per-image Python
work (reading, validation, image preparation, Beam's elements) on one, stage after stage;
`--direct_num_workers 2` overlaps the two (each worker loads the tower once, in `setup`):
faster past its start-up on large catalogues (docs/beam_jobs.md, embed fifth round).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from beam_jobs.common import (
    job_main,
    join_path,
    pipeline_options,
    prepare_output,
    read_counters,
    runner_name,
    write_text_file,
)
from beam_jobs.flags import add_embed_arguments, add_runner_help
from beam_jobs.transforms.embed import (  # noqa: F401 - coverage_threshold, CoverageThreshold re-exported
    DEAD,
    CoverageThreshold,
    EmbedAds,
    JoinRecentCounts,
    KeepCovered,
    ReadDataAds,
    WriteTable,
    coverage_threshold,
)
from beam_jobs.transforms.read import ReadTable, check_table
from beam_jobs.transforms.validate import ValidateAds
from beam_jobs.transforms.write import WriteDeadLetter
from tfvctr import layout
from tfvctr.config import Config, load_config
from tfvctr.errors import ConfigError, DataError, TfvctrError
from tfvctr.fingerprint import check_model_data
from tfvctr.io import fs

PROG = "python -m beam_jobs.embed_ads"


def build_pipeline(p: beam.Pipeline, config: Config, model_dir: str, data: str, ads_path: Optional[str], out: str,
                   coverage: float, recent: str, dtype: str, batch_size: int, rows_per_shard: int) -> None:
    """Adds the whole job to `p`: the composites of `beam_jobs.transforms.embed`, wired as in the docstring."""
    ds = config.dataset
    counts_path = join_path(data, layout.AD_COUNTS)
    if ads_path is None:  # --data only: the ads preprocess wrote (no new ads by definition)
        joined = p | "ReadDataAds" >> ReadDataAds(counts_path, recent, ds)
        dead = [joined[DEAD]]
    else:
        read = p | "ReadAds" >> ReadTable(ads_path, "ads", with_source=True)
        ads = read["rows"] | "ValidateAds" >> ValidateAds(ds, ads_path)
        joined = ads["ads"] | "JoinRecentCounts" >> JoinRecentCounts(counts_path, recent, ds)
        dead = [read[DEAD], ads[DEAD], joined[DEAD]]
    kept = joined["ads"] | "KeepCovered" >> KeepCovered(coverage)
    embedded = kept | "EmbedAds" >> EmbedAds(join_path(model_dir, layout.VISUAL_TOWER),
                                             join_path(data, layout.VOCAB_DIR, layout.CATEGORY_VOCAB), batch_size,
                                             ds.image_format)
    _ = embedded["rows"] | "WriteTable" >> WriteTable(out, dtype, rows_per_shard)
    _ = ((*dead, embedded[DEAD]) | "AllDead" >> beam.Flatten() | "WriteDeadLetter" >> WriteDeadLetter(out))


def recent_field(data: str) -> str:
    """The `ad_counts.jsonl` column of the most recent split: eval when the data has eval impressions."""
    path = fs.join(data, layout.MANIFEST)
    if fs.exists(path):
        with fs.open(path) as f:
            manifest = json.load(f)
        if manifest.get("splits", {}).get(layout.EVAL, {}).get("impressions"):
            return "eval_impressions"
    return "train_impressions"


def _data_dir(args: argparse.Namespace) -> str:
    if args.data:
        return args.data
    pointer = fs.join(args.model, layout.DATA_DIR_POINTER)
    if not fs.exists(pointer):
        raise DataError(f"{pointer}: not found; pass --data (the preprocess output the model was trained on)")
    with fs.open(pointer) as f:
        return f.read().strip()


def _load_config(args: argparse.Namespace) -> Config:
    path = args.config or fs.join(args.model, layout.CONFIG)
    if args.config is None and not fs.exists(path):
        raise DataError(f"{path}: not found; pass --config (the config the model was trained with)")
    return load_config(path)


def make_index(counters: dict[str, int], out: str, dtype: str, coverage: float, recent: str, model_dir: str,
               ads_path: str) -> dict[str, Any]:
    """docs/formats.md §4 `index.json` from the run's counters and the written shards."""
    c = lambda name: int(counters.get(name, 0))  # noqa: E731
    shards = sorted(os.path.basename(path) for path in fs.glob(fs.join(out, "part-*.npz")))
    dim = 0
    if shards:
        with fs.open(fs.join(out, shards[0]), "rb") as f:
            dim = int(np.load(io.BytesIO(f.read()))["vectors"].shape[1])
    total = c("total_impressions")
    return {
        "dim": dim, "dtype": dtype, "rows": c("rows"), "shards": shards,
        "coverage": c("covered_impressions") / total if total else 1.0,
        "requested_coverage": coverage, "impressions_field": recent,
        "covered_impressions": c("covered_impressions"), "total_impressions": total,
        "size_bytes": c("table_bytes"),
        "ads_input": c("input_ads"), "ads_below_coverage": c("ads_below_coverage"), "new_ads": c("new_ads"),
        "dead_letter_ads": c("dead_letter_ads"),
        "model_dir": model_dir, "ads": ads_path,
    }


def check_counts(index: dict[str, Any]) -> None:
    """Every catalog row is accounted for: a table row, below the cut, or in the dead letter."""
    accounted = index["rows"] + index["ads_below_coverage"] + index["dead_letter_ads"]
    if accounted != index["ads_input"]:
        raise TfvctrError(f"ad counts do not add up: catalog {index['ads_input']} != table {index['rows']} + below "
                          f"coverage {index['ads_below_coverage']} + dead letter {index['dead_letter_ads']}")


def summary(index: dict[str, Any], out: str, seconds: float) -> str:
    return (f"embed: {out} in {seconds:.1f} s\n"
            f"  {index['rows']} ads x {index['dim']} ({index['dtype']}) in {len(index['shards'])} shards, "
            f"{index['size_bytes'] / 1e6:.2f} MB; {index['new_ads']} of them newer than the data\n"
            f"  catalog {index['ads_input']} = {index['rows']} in the table + {index['ads_below_coverage']} below the "
            f"coverage cut + {index['dead_letter_ads']} in the dead letter\n"
            f"  coverage {index['coverage']:.4f} of {index['total_impressions']} recent impressions "
            f"({index['impressions_field']}; requested {index['requested_coverage']})")


def run(argv: Optional[list[str]] = None, verbose: bool = True) -> dict[str, Any]:
    """Runs the job; returns the table's index (docs/formats.md §4). Unknown flags go to Beam."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_embed_arguments(parser)
    add_runner_help(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_args(args, beam_args, verbose)


def run_args(args: argparse.Namespace, beam_args: list[str], verbose: bool = True) -> dict[str, Any]:
    config = _load_config(args)
    coverage = config.embed.coverage if args.coverage is None else args.coverage
    if not 0.0 < coverage <= 1.0:
        raise ConfigError(f"--coverage: expected a value in (0, 1], received {coverage}")
    dtype = args.dtype or config.embed.dtype
    batch_size = args.batch_size or config.embed.batch_size
    check_model_data(args.model, args.data, "embed")  # a complete model dir, data that fits it (tfvctr.fingerprint)
    data = _data_dir(args)
    for path in (fs.join(args.model, layout.VISUAL_TOWER), fs.join(data, layout.AD_COUNTS),
                 fs.join(data, layout.VOCAB_DIR, layout.CATEGORY_VOCAB)):
        if not fs.exists(path):
            raise DataError(f"{path}: not found")
    ads_path = None
    if args.ads:
        # Image paths resolve against the table's folder: absolute, so workers find them anywhere.
        ads_path = args.ads if fs.is_remote(args.ads) else os.path.abspath(args.ads)
        check_table(ads_path, "ads", config.dataset)  # refused up front, as preprocess does
    recent = recent_field(data)
    prepare_output(args.out, args.overwrite)
    options = pipeline_options(beam_args)
    if verbose:
        print(f"embed: {fs.join(args.model, layout.VISUAL_TOWER)} over {ads_path or fs.join(data, layout.AD_COUNTS)} -> "
              f"{args.out} on "
              f"{runner_name(options)} ...", flush=True)
    start = time.time()
    p = beam.Pipeline(options=options)
    build_pipeline(p, config, args.model, data, ads_path, args.out, coverage, recent, dtype, batch_size,
                   args.rows_per_shard)
    result = p.run()
    result.wait_until_finish()
    index = make_index(read_counters(result), args.out, dtype, coverage, recent, args.model, ads_path)
    write_text_file(join_path(args.out, layout.TABLE_INDEX), json.dumps(index, indent=1) + "\n")
    check_counts(index)
    if verbose:
        print(summary(index, args.out, time.time() - start), flush=True)
    return index


if __name__ == "__main__":
    job_main(run, "embed_ads")
