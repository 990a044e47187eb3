"""The floor of `tfvctr preprocess`: the same work in one plain Python process, no Beam.

Reads both tables with the package's readers, validates every row with the same
`RowCoercer`, reads/decodes/resizes/re-encodes each ad image once (`beam_jobs.images`),
groups the impressions by ad in a dict, splits them (eval days, valid ads / day,
negative downsampling) as `beam_jobs.transforms.join` does, shuffles and chunks them by K,
serialises the same SequenceExamples (`beam_jobs.records`) and writes them as TFRecords
(one file per split), with `ad_counts.jsonl`, the dead letter, the vocabularies, the
label/presence counts and `manifest.json`'s counts. It is the yardstick of
`benchmarks/beam_preprocess.py`: what the Beam job costs on top of the work itself.
Local files only (no globs); the whole input is held in memory, which a plain script can
afford on one machine and a Beam job cannot assume. It never imports Apache Beam (4-6 s
of start-up on the loaded 2-core machine): the split draws are written out here (the
same hashes as `beam_jobs.transforms.join`, the benchmark checks the outputs agree) and
the TFRecord framing uses `google_crc32c` directly.

    python benchmarks/plain_preprocess.py --config C --ads A.csv --impressions I.csv --out OUT
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import struct
import time
from typing import Any

import google_crc32c


def _draw(key: tuple, share: float) -> bool:
    """`join.held_out_ad` / `join.keep_negative`: a stable hash of `key` below `share`."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big") < share * 2**64


def split_days(days: list, eval_days: int, mode: str) -> dict:
    """`join.eval_from_day` + `join.split_days`."""
    days = sorted(set(days))
    eval_from = days[-min(eval_days, len(days))] if days else None
    train = [d for d in days if eval_from is None or d < eval_from]
    valid_from = train[-1] if mode in ("temporal", "ads_and_temporal") and len(train) >= 2 else None
    return {"eval_from": eval_from, "valid_from": valid_from}


def write_record(f, value: bytes) -> None:
    """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    def masked(b: bytes) -> bytes:
        crc = google_crc32c.value(b)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    length = struct.pack("<Q", len(value))
    f.write(b"".join([length, masked(length), value, masked(value)]))


def run(config_path: str, ads_path: str, impressions_path: str, out: str) -> dict[str, Any]:
    from beam_jobs import images, records
    from tfvctr import layout
    from tfvctr.config import load_config
    from tfvctr.io import tables

    config = load_config(config_path)
    ds = config.dataset
    seed = ds.seed
    ads_path, impressions_path = os.path.abspath(ads_path), os.path.abspath(impressions_path)
    counts: collections.Counter = collections.Counter()
    dead: list[str] = []

    def dead_letter(table: str, row: Any, code: str, reason: str) -> None:
        counts[f"dead_letter_{table}"] += 1
        counts[f"reason_{code}"] += 1
        dead.append(json.dumps({"table": table, "row": row, "reason": reason}, sort_keys=True, default=str))

    # ---- read + validate the ads: each image read and prepared once
    ads: dict[str, list] = collections.defaultdict(list)
    rejected: dict[str, list] = collections.defaultdict(list)
    coerce_ad = tables.RowCoercer("ads", ds)
    name = os.path.basename(ads_path)
    for where, record in tables.iter_numbered(ads_path):
        counts["input_ads"] += 1
        src = f"{name} {where}"
        if record.row is None:
            dead_letter("ads", record.text, "unparseable", f"ads: unparseable line: {record.error} ({src})")
            continue
        row = record.row
        try:
            typed = coerce_ad(row)
        except ValueError as e:
            dead_letter("ads", row, "bad_field", f"ads: {e} ({src})")
            if row.get("ad_id") not in (None, ""):
                rejected[str(row["ad_id"])].append(f"ad {row['ad_id']} rejected: {e}")
            continue
        ad_id = str(typed["ad_id"])
        uri = tables.resolve_image_path(str(typed["image"]), ads_path)
        try:
            try:
                with open(uri, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise images.ImageError("image_unreadable", f"image {uri} cannot be read: {e}") from None
            encoded = images.prepare_image(data, ds.image_size, ds.image_format, ds.max_image_pixels, name=uri)
        except images.ImageError as e:
            dead_letter("ads", row, e.code, f"ad {ad_id}: {e} ({src})")
            rejected[ad_id].append(f"ad {ad_id} rejected: {e}")
            continue
        typed["image"] = uri
        ads[ad_id].append(records.ad_from_row(typed, encoded, ds))

    # ---- read + validate the impressions, grouped by ad in a dict
    imps: dict[str, list] = collections.defaultdict(list)
    coerce_imp = tables.RowCoercer("impressions", ds)
    name = os.path.basename(impressions_path)
    for where, record in tables.iter_numbered(impressions_path):
        counts["input_impressions"] += 1
        src = f"{name} {where}"
        if record.row is None:
            dead_letter("impressions", record.text, "unparseable", f"impressions: unparseable line: {record.error} ({src})")
            continue
        try:
            typed = coerce_imp(record.row)
        except ValueError as e:
            dead_letter("impressions", record.row, "bad_field", f"impressions: {e} ({src})")
            continue
        counts[f"day_format_{coerce_imp.day_format}"] += 1
        imps[str(typed["ad_id"])].append(records.impression_from_row(typed, ds))

    # ---- splits, chunks, records
    all_days = {imp[records.DAY] for group in imps.values() for imp in group}
    days = split_days(sorted(all_days), ds.eval_days, ds.validation.mode)
    eval_from, valid_from = days["eval_from"], days["valid_from"]
    v = ds.validation
    held_seed = seed if v.seed is None else v.seed
    share = v.ads_share if v.mode in ("ads", "ads_and_temporal") else 0.0
    k = ds.impressions_per_chunk
    splits_out = [s for s in layout.SPLITS if not (s == layout.VALID and v.mode == "none")]
    files = {}
    for split in splits_out:
        os.makedirs(os.path.join(out, split), exist_ok=True)
        files[split] = open(os.path.join(out, split, "part-00000-of-00001.tfrecord"), "wb")
    ad_count_lines = []
    vocab: collections.Counter = collections.Counter()
    auto = [f.vocabulary == "auto" and f.name != "category" for f in ds.impression_features]
    ad_auto = [f.vocabulary == "auto" and f.name != "category" for f in ds.ad_features]
    for ad_id in sorted(set(ads) | set(imps) | set(rejected)):
        group_ads, group_imps, reasons = ads.get(ad_id, []), imps.get(ad_id, []), sorted(rejected.get(ad_id, []))
        if reasons or len(group_ads) != 1:
            duplicate = f"ad_id {ad_id!r} appears {len(group_ads) + len(reasons)} times in the ads table"
            if reasons:
                code, reason = "ad_rejected", reasons[0]
            elif not group_ads:
                code, reason = "unknown_ad", f"unknown ad_id {ad_id!r}: not in the ads table"
            else:
                code, reason = "duplicate_ad", duplicate
            for ad in group_ads:
                dead_letter("ads", records.ad_to_row(ad, ds), "duplicate_ad", duplicate)
            for imp in group_imps:
                dead_letter("impressions", records.impression_to_row(ad_id, imp, ds), code, reason)
            continue
        ad = group_ads[0]
        held_out = share > 0 and _draw((held_seed, ad_id), share)
        splits: dict[str, list] = {layout.TRAIN: [], layout.VALID: [], layout.EVAL: []}
        for imp in group_imps:
            day = imp[records.DAY]
            if eval_from is not None and day >= eval_from:
                splits[layout.EVAL].append(imp)
            elif held_out or (valid_from is not None and day >= valid_from):
                splits[layout.VALID].append(imp)
            else:
                splits[layout.TRAIN].append(imp)
        downsampled = 0
        if ds.negative_sampling_rate < 1.0:
            kept = [imp for imp in splits[layout.TRAIN]
                    if imp[records.LABEL] or _draw(("negative", seed, imp), ds.negative_sampling_rate)]
            downsampled, splits[layout.TRAIN] = len(splits[layout.TRAIN]) - len(kept), kept
        chunks = {}
        for split, group in splits.items():
            group.sort(key=lambda imp: records.shuffle_key(seed, imp))
            chunks[split] = 0
            for index, chunk in enumerate(records.chunks(group, k)):
                write_record(files[split], records.make_sequence_example(ad, chunk, index, len(group), ds))
                counts[f"{split}_chunks"] += 1
                counts[f"{split}_impressions"] += len(chunk)
                counts[f"{split}_positives"] += sum(imp[records.LABEL] for imp in chunk)
            if group:
                counts[f"{split}_ads"] += 1
        counts["downsampled_negatives"] += downsampled
        ad_count_lines.append(json.dumps(
            {"ad_id": ad_id, "category": ad[records.CATEGORY], "image": ad[records.IMAGE_URI],
             "train_impressions": len(splits[layout.TRAIN]), "valid_impressions": len(splits[layout.VALID]),
             "eval_impressions": len(splits[layout.EVAL]), "held_out": held_out,
             "downsampled_negatives": downsampled}, sort_keys=True))
        counts["ads_written"] += 1
        if splits[layout.TRAIN]:  # vocabularies of the train split, as VocabAndStats counts them
            vocab["category", ad[records.CATEGORY]] += 1
            for f, on, value in zip(ds.ad_features, ad_auto, ad[records.AD_VALUES], strict=True):
                if on:
                    for x in (value if f.kind == "multi" else ([] if value is None else [value])):
                        vocab[f.name, x] += 1
            for imp in splits[layout.TRAIN]:
                counts["label_positives"] += imp[records.LABEL]
                for f, on, value in zip(ds.impression_features, auto, imp[records.IMP_VALUES], strict=True):
                    if on:
                        for x in (value if f.kind == "multi" else ([] if value is None else [value])):
                            vocab[f.name, x] += 1
    for f in files.values():
        f.close()

    # ---- the small outputs
    with open(os.path.join(out, layout.AD_COUNTS), "w") as f:
        f.write("".join(line + "\n" for line in ad_count_lines))
    os.makedirs(os.path.join(out, layout.DEAD_LETTER_DIR), exist_ok=True)
    with open(os.path.join(out, layout.DEAD_LETTER_DIR, "part-00000-of-00001.jsonl"), "w") as f:
        f.write("".join(line + "\n" for line in dead))
    min_freq = {f.name: f.min_frequency for f in ds.features if f.vocabulary == "auto"}
    min_freq.setdefault("category", 1)
    by_feature: dict[str, list] = collections.defaultdict(list)
    for (feature, value), n in vocab.items():
        if n >= min_freq[feature]:
            by_feature[feature].append((value, n))
    os.makedirs(os.path.join(out, layout.VOCAB_DIR), exist_ok=True)
    for feature, value_counts in by_feature.items():
        with open(os.path.join(out, layout.vocab_file(feature)), "w") as f:
            f.write("".join(f"{v}\n" for v, _ in sorted(value_counts, key=lambda vc: (-vc[1], vc[0]))))
    splits_manifest = {s: {"impressions": counts[f"{s}_impressions"], "chunks": counts[f"{s}_chunks"],
                           "ads": counts[f"{s}_ads"], "positives": counts[f"{s}_positives"]} for s in layout.SPLITS}
    manifest = {"splits": splits_manifest,
                "input": {"ads": counts["input_ads"], "impressions": counts["input_impressions"]},
                "dead_letter": {"ads": counts["dead_letter_ads"], "impressions": counts["dead_letter_impressions"],
                                "reasons": {n[len("reason_"):]: c for n, c in sorted(counts.items())
                                            if n.startswith("reason_")}},
                "ads_written": counts["ads_written"], "downsampled_negatives": counts["downsampled_negatives"]}
    with open(os.path.join(out, layout.MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ads", required=True)
    parser.add_argument("--impressions", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    manifest = run(args.config, args.ads, args.impressions, args.out)
    print(f"plain preprocess: {manifest['input']['impressions']} impressions in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
