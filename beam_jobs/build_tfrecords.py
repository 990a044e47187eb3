"""Raw ads + impressions tables → TFRecords of SequenceExamples grouped by ad (docs/formats.md §2).

    python -m beam_jobs.build_tfrecords --config configs/demo.yaml \\
        --ads raw/ads.csv --impressions raw/impressions.csv --out data [--direct_num_workers 2]

(or `tfvctr preprocess` with the same flags). The pipeline is a chain of named composite
transforms:

    ReadTable(ads) ─ ValidateAds ─────────────┐
    ReadTable(impressions) ─ ValidateImpressions ─ JoinAndChunk ─ WriteOutputs(train, valid, eval,
                        └─ EvalFromDay ───────┘        │              ad_counts, dead letter)
                                                       ├──────── VocabAndStats (train split)
    every rejected row ─────────────────────── (dead letter)

The valid split is carved out of the train days as `dataset.validation` says (none, the
last train day, a seeded share of ads held out whole, or both); nothing of it reaches the
vocabularies or statistics. Counters (namespace `tfvctr`) are read after the run into
`manifest.json` and the summary; input impressions = train + valid + eval + dead-letter
impressions, or the job fails.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Optional

import apache_beam as beam

from beam_jobs import checks, records
from beam_jobs.common import (
    NAMESPACE,
    FormatDeadLetter,
    job_main,
    join_path,
    pipeline_options,
    prepare_output,
    read_counters,
    read_text_file,
    runner_name,
    write_text_file,
)
from beam_jobs.flags import add_preprocess_arguments, add_runner_help
from beam_jobs.transforms.join import ADS_MODES, DistinctDays, EvalFromDay, JoinAndChunk
from beam_jobs.transforms.read import ReadTable
from beam_jobs.transforms.stats import VocabAndStats
from beam_jobs.transforms.validate import ValidateAds, ValidateImpressions
from beam_jobs.transforms.write import AD_COUNTS_TEXT, DEAD_LETTER_TEXT, FormatAdCounts, WriteRecords
from tfvctr import layout
from tfvctr.config import Config, load_config
from tfvctr.io.schema import format_days

IMPRESSION_BATCH = 1000  # rows per element from the impressions reader to its validation


def _parse_day(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    import datetime

    from tfvctr.errors import TfvctrError

    try:
        return int(value)
    except ValueError:
        pass
    try:
        return (datetime.date.fromisoformat(value) - datetime.date(1970, 1, 1)).days
    except ValueError:
        raise TfvctrError(f"--eval-from-day: expected an integer or YYYY-MM-DD, received {value!r}") from None


def build_pipeline(p: beam.Pipeline, config: Config, ads_path: str, impressions_path: str, out: str,
                   seed: int, eval_from: Optional[int] = None, no_eval: bool = False) -> None:
    """Adds the whole job to `p`: the composites above, wired as in the module docstring.

    `no_eval`: every day is train (and valid); `tfvctr daily` preprocesses one day this way.
    """
    ds = config.dataset
    ads_read = p | "ReadAds" >> ReadTable(ads_path, "ads", with_source=True)
    # Impression rows travel in lists of IMPRESSION_BATCH to their validation (docs/beam_jobs.md, speed).
    imps_read = p | "ReadImpressions" >> ReadTable(impressions_path, "impressions", with_source=True,
                                                   batch_rows=IMPRESSION_BATCH)
    ads = ads_read["rows"] | "ValidateAds" >> ValidateAds(ds, ads_path)
    # Grouped: the bundle's impressions of an ad cross the join's shuffle as one element.
    imps = imps_read["rows"] | "ValidateImpressions" >> ValidateImpressions(ds, grouped=True)

    # The distinct days once, for the first eval day and the splits' days (one pass, not two).
    distinct_days = imps["impressions"] | "DistinctDays" >> DistinctDays()
    if no_eval:
        eval_from_pc = p | "NoEval" >> beam.Create([None])
    elif eval_from is None:
        eval_from_pc = distinct_days | "EvalFromDay" >> EvalFromDay(ds.eval_days, from_distinct_days=True)
    else:
        eval_from_pc = p | "GivenEvalFromDay" >> beam.Create([eval_from])
    joined = {"ads": ads["ads"], "impressions": imps["impressions"], "rejected": ads["rejected"],
              "eval_from": eval_from_pc, "distinct_days": distinct_days} | "JoinAndChunk" >> JoinAndChunk(ds, seed)

    # No valid folder at all with validation "none": the output is what it was before validation existed.
    splits = [s for s in layout.SPLITS if not (s == layout.VALID and ds.validation.mode == "none")]
    _ = {"train_ads": joined["train_ads"], "train_impressions": joined["train_impressions"],
         "days": joined["days"]} | "VocabAndStats" >> VocabAndStats(ds, out)
    dead = ((ads_read["dead"], imps_read["dead"], ads["dead"], imps["dead"], joined["dead"])
            | "AllDead" >> beam.Flatten())
    # The records, ad_counts.jsonl and the dead letter in one writer: one plan, one copy step,
    # one clean-up (a WriteToText per text file was 25 of the job's 146 leaf transforms).
    outputs = {s: joined[s] for s in splits}
    outputs[AD_COUNTS_TEXT] = joined["ad_counts"] | "FormatAdCounts" >> FormatAdCounts()
    outputs[DEAD_LETTER_TEXT] = dead | "FormatDeadLetter" >> beam.ParDo(FormatDeadLetter())
    _ = outputs | "WriteOutputs" >> WriteRecords(out, splits, ds.num_shards, ds.compression,
                                                 text=(AD_COUNTS_TEXT, DEAD_LETTER_TEXT))


def make_manifest(counters: dict[str, int], config: Config, seed: int, stats: dict) -> dict[str, Any]:
    """docs/formats.md §2 `manifest.json` from the run's counters."""
    c = lambda name: int(counters.get(name, 0))  # noqa: E731
    days = stats.get("day", {})
    splits = {}
    for split in layout.SPLITS:
        splits[split] = {"impressions": c(f"{split}_impressions"), "chunks": c(f"{split}_chunks"),
                         "ads": c(f"{split}_ads"), "positives": c(f"{split}_positives"),
                         "days": days.get(split, [])}
    # Valid ads with no train impressions: every held-out ad, plus (temporal) ads first seen on the valid day.
    splits[layout.VALID]["cold_ads"] = c("valid_cold_ads")
    reasons = {name[len("reason_"):]: v for name, v in sorted(counters.items()) if name.startswith("reason_")}
    chunks = sum(s["chunks"] for s in splits.values())
    v = config.dataset.validation
    return {
        "config": config.to_dict(),
        "seed": seed,
        "eval_from_day": days.get("eval_from"),
        "validation": {"mode": v.mode, "ads_share": v.ads_share if v.mode in ADS_MODES else 0.0,
                       "seed": seed if v.seed is None else v.seed, "valid_from_day": days.get("valid_from"),
                       "held_out_ads": c("held_out_ads")},
        "splits": splits,
        "input": {"ads": c("input_ads"), "impressions": c("input_impressions")},
        "dead_letter": {"ads": c("dead_letter_ads"), "impressions": c("dead_letter_impressions"), "reasons": reasons},
        "ads_written": c("ads_written"),
        "cold_ads": c("cold_ads"),
        "duplication_factor": chunks / c("ads_written") if c("ads_written") else 0.0,
        "image_bytes": c("image_bytes"),
        "unique_image_bytes": c("unique_image_bytes"),
        "counter_namespace": NAMESPACE,
        # Negative downsampling of the train split (tfvctr.daily.recalibration): the trainer
        # copies the rate into the model dir; export and evaluate recalibrate with it.
        "negative_sampling_rate": config.dataset.negative_sampling_rate,
        "downsampled_negatives": c("downsampled_negatives"),
    }


def check_counts(manifest: dict) -> None:
    """Every input row is accounted for: written to a split or to the dead letter."""
    from tfvctr.errors import TfvctrError

    s, d, i = manifest["splits"], manifest["dead_letter"], manifest["input"]
    downsampled = manifest.get("downsampled_negatives", 0)
    written = sum(s[split]["impressions"] for split in layout.SPLITS) + d["impressions"] + downsampled
    if written != i["impressions"]:
        raise TfvctrError(f"impression counts do not add up: input {i['impressions']} != train "
                          f"{s['train']['impressions']} + valid {s['valid']['impressions']} + eval "
                          f"{s['eval']['impressions']} + dead letter {d['impressions']} + downsampled "
                          f"negatives {downsampled}")
    if manifest["ads_written"] + d["ads"] != i["ads"]:
        raise TfvctrError(f"ad counts do not add up: input {i['ads']} != written {manifest['ads_written']} "
                          f"+ dead letter {d['ads']}")


def summary(manifest: dict, out: str, seconds: float) -> str:
    s, d, i = manifest["splits"], manifest["dead_letter"], manifest["input"]
    lines = [
        f"preprocess: {out} in {seconds:.1f} s",
        f"  input      {i['ads']} ads, {i['impressions']} impressions",
    ]
    v = manifest["validation"]
    for split in layout.SPLITS:
        if split == layout.VALID and v["mode"] == "none":
            lines.append(f"  {split:10s} none (dataset.validation.mode: none)")
            continue
        lines.append(f"  {split:10s} {s[split]['impressions']} impressions ({s[split]['positives']} clicks) of "
                     f"{s[split]['ads']} ads in {s[split]['chunks']} chunks; days {format_days(s[split]['days'], manifest.get('day_format'))}")
        if split == layout.VALID:
            held = f", {v['held_out_ads']} ads held out whole" if v["mode"] in ADS_MODES else ""
            empty = "; EMPTY: no model selection possible" if not s[split]["impressions"] else ""
            lines.append(f"             mode {v['mode']}{held}; {s[split]['cold_ads']} cold ads (no train "
                         f"impressions){empty}")
    if manifest.get("negative_sampling_rate", 1.0) < 1.0:
        lines.append(f"  downsampled {manifest['downsampled_negatives']} train non-clicks (kept a share "
                     f"{manifest['negative_sampling_rate']:g}; dataset.negative_sampling_rate)")
    reasons = ", ".join(f"{k} {v}" for k, v in d["reasons"].items()) or "none"
    lines.append(f"  dead letter {d['ads']} ads, {d['impressions']} impressions ({reasons})")
    lines.append(f"  {manifest['cold_ads']} cold ads in eval (no train impressions); duplication factor {manifest['duplication_factor']:.2f} "
                 f"chunks/ad; {manifest['image_bytes'] / 1e6:.1f} MB of images in records")
    return "\n".join(lines)


def dead_letter_examples(out: str, limit: int = 3) -> list[str]:
    """One line per dead letter (the first `limit`), so a user sees what went wrong at once."""
    from tfvctr.io import fs

    lines: list[str] = []
    paths = fs.glob(join_path(out, layout.DEAD_LETTER_DIR, "part*.jsonl"))
    for path in paths:
        with fs.open(path) as f:
            for text in f:
                if len(lines) == limit:
                    break
                letter = json.loads(text)
                lines.append(f"  dead letter ({letter.get('table')}): {letter.get('reason')}")
    if lines:
        lines.append(f"  all dead letters: {join_path(out, 'dead_letter')}/")
    return lines


def run(argv: Optional[list[str]] = None, verbose: bool = True) -> dict[str, Any]:
    """Runs the job; returns the manifest. Unknown flags go to Beam's `PipelineOptions`."""
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.build_tfrecords", description=__doc__.splitlines()[0])
    add_preprocess_arguments(parser)
    add_runner_help(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_args(args, beam_args, verbose)


def run_args(args: argparse.Namespace, beam_args: list[str], verbose: bool = True) -> dict[str, Any]:
    import os

    from tfvctr.io import fs

    config = load_config(args.config, getattr(args, "overrides", None) or [])
    # Image paths resolve against the table's folder: absolute, so ad_counts.jsonl points at
    # the images from anywhere (embed_ads reads them from there).
    args.ads, args.impressions = (p if fs.is_remote(p) else os.path.abspath(p) for p in (args.ads, args.impressions))
    seed = config.dataset.seed if args.seed is None else args.seed
    eval_from = _parse_day(args.eval_from_day)
    inputs = checks.check_inputs(args.ads, args.impressions, config.dataset, args.eval_from_day)  # refused up front
    prepare_output(args.out, args.overwrite, delete=False)  # an earlier output is replaced only on success
    options = pipeline_options(beam_args)
    if verbose:
        print(f"preprocess: {args.ads} + {args.impressions} -> {args.out} on {runner_name(options)} ...", flush=True)
    start = time.time()
    # Written beside OUT and moved into place only when complete and checked (docs/bad_input.md):
    # a failed or refused run leaves the previous output untouched and no beam-temp-* debris.
    with fs.atomic_dir(args.out) as staged:
        p = beam.Pipeline(options=options)
        build_pipeline(p, config, args.ads, args.impressions, staged, seed, eval_from,
                       no_eval=getattr(args, "no_eval", False))
        with records.restored_collector():  # in memory, the DoFns relax the collector in this process
            result = p.run()
            result.wait_until_finish()
        counters = read_counters(result)
        stats = json.loads(read_text_file(join_path(staged, layout.STATS)))
        manifest = make_manifest(counters, config, seed, stats)
        warnings = checks.check_output(manifest, counters, inputs["impressions"], eval_from, args.eval_from_day)
        write_text_file(join_path(staged, layout.MANIFEST), json.dumps(manifest, indent=1) + "\n")
        check_counts(manifest)
    if verbose:
        print(summary(manifest, args.out, time.time() - start), flush=True)
        for line in dead_letter_examples(args.out) + warnings:
            print(line, flush=True)
    return manifest


if __name__ == "__main__":
    job_main(run, "build_tfrecords")
