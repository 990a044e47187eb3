"""`tfvctr export`: the model + its visual-embedding table → a checked TF Serving SavedModel (docs/export.md)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a TF Serving SavedModel (table inside), checked through TF Serving's loader",
        description="Write BASE/<name>/<version>/ (TF Serving's layout; <name> is the config's name, <version> the "
        "next free one): signatures serving_default (raw features + ad_id -> ctr, logit, in_table) and "
        "score_with_image (+ image_bytes), the table rows as variables, the ad_id map from an asset file, warmup "
        "requests from real eval rows. Before it reports success the export is loaded in a fresh process through "
        "the TF1 loader TF Serving uses and compared with the Keras model (|diff| <= 1e-5). See docs/export.md.",
        allow_abbrev=False,
    )
    p.add_argument("--model-dir", help="a `tfvctr train` model dir")
    p.add_argument("--table", help="the model's visual-embedding table (`tfvctr embed --out`)")
    p.add_argument("--out", help="the base folder (TF Serving's --model_base_path is OUT/<name>)")
    p.add_argument("--version", type=int, default=None, help="version number (default: the next free one)")
    p.add_argument("--data", default=None,
                   help="preprocess output whose eval rows feed the warmup file and the check (default: the model's "
                        "training data, MODEL/data_dir.txt)")
    p.add_argument("--sample-rows", type=int, default=100, help="eval impressions for warmup and check (default 100)")
    p.add_argument("--check", metavar="EXPORT_DIR", default=None,
                   help="only re-run the fresh-process check of an existing export BASE/<name>/<version>")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tfvctr.errors import TfvctrError
    from tfvctr.export import check_export, export_model

    def log(line: str) -> None:
        print(line, flush=True)

    if args.check:
        result = check_export(args.check, log=log)
        print(f"export --check: OK, {result['rows']} rows in {result['requests']} requests; max |diff| ctr "
              f"{result['max_abs_diff_ctr']:.2g}, logit {result['max_abs_diff_logit']:.2g} (tolerance "
              f"{result['tolerance']:g})", flush=True)
        return 0
    missing = [flag for flag, value in (("--model-dir", args.model_dir), ("--table", args.table), ("--out", args.out))
               if not value]
    if missing:
        raise TfvctrError(f"{', '.join(missing)} required (or --check EXPORT_DIR)")
    info = export_model(args.model_dir, args.table, args.out, version=args.version, data_dir=args.data,
                        sample_rows=args.sample_rows, log=log)
    c = info["check"]
    print(f"export: {info['path']} in {info['seconds']:.0f} s\n"
          f"  {info['rows']} ads x {info['dim']} ({info['dtype']}) + {info['fallback_rows']} category fallback rows; "
          f"saved_model.pb {info['saved_model_pb_bytes'] / 1e6:.2f} MB\n"
          f"  checked through the TF1 loader in a fresh process: {c['rows']} rows in {c['requests']} requests, max "
          f"|diff| ctr {c['max_abs_diff_ctr']:.2g}, logit {c['max_abs_diff_logit']:.2g}\n"
          f"  serve: tensorflow_model_server --rest_api_port=8501 --model_name={info['name']} "
          f"--model_base_path={info['path'].rsplit('/', 1)[0]}", flush=True)
    return 0
