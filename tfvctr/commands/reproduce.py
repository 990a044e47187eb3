"""`tfvctr reproduce TABLE --data D [--seeds 3] [--quick]`: the papers' tables on D (tfvctr/reproduce.py)."""

from __future__ import annotations

import argparse
import shlex
import sys

from tfvctr.commands import add_command

TABLE_NAMES = ("cscnn-4", "cscnn-9", "cscnn-5", "cscnn-6", "cscnn-8", "cscnn-fig5", "deepctr-1", "deepctr-2", "deepctr-4")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "reproduce", run, "run the papers' tables on your data → docs/results.md",
        "Train and score every cell (row x seed) of the named tables of CSCNN (KDD 2020) and DeepCTR (2016) on "
        "DATA (the output of `tfvctr preprocess`), the step of each chosen on the valid split; write "
        "docs/results.md with our mean ± std beside the papers' numbers, whether each ordering the paper claims "
        "holds, and a bar chart per table. Rerunning the same command skips finished cells and resumes an "
        "interrupted one. DeepCTR Table 3 is `python benchmarks/sparse_basicnet.py`.",
    )
    p.add_argument("table", help=f"a table, a comma-separated list, or all: {', '.join(TABLE_NAMES)}")
    p.add_argument("--data", required=True, help="output folder of `tfvctr preprocess`")
    p.add_argument("--config", default=None, help="the base config DATA was preprocessed with (default: the demo config)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per cell (default: 3)")
    p.add_argument("--quick", action="store_true", help="one seed, a few steps per cell (a smoke test of the suite)")
    p.add_argument("--work", default="reproduce_work", help="trained cells, pre-trained CNNs and results.jsonl (resume state)")
    p.add_argument("--doc", default="docs/results.md", help="the Markdown file to write (default: docs/results.md)")
    p.add_argument("--img-dir", default="docs/img", help="where the bar charts go (default: docs/img)")
    p.add_argument("--about-data", default="", help="a line for the doc saying what DATA is and how it was made (kept for later runs)")
    p.add_argument("--rescore", action="store_true",
                   help="score finished cells again from their saved models where they lack a figure added since they "
                        "ran (the per-user AUC)")
    p.add_argument("--write-only", action="store_true",
                   help="train nothing: write the doc from the cells already finished in --work (the command shown for "
                        "each table is then this one, which trains what is missing when run without --write-only)")


def run(args: argparse.Namespace) -> int:
    from tfvctr.errors import ConfigError
    from tfvctr.reproduce import DEFAULT_CONFIG, reproduce

    if args.seeds < 1:
        raise ConfigError(f"--seeds: expected a positive number, received {args.seeds}")
    argv = list(sys.argv[1:])
    # The doc's command for a table is what trains it: where the doc goes, the data's note
    # (printed once at the top) and --write-only change no number.
    for flag in ("--about-data", "--doc", "--img-dir"):
        if flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
        argv = [a for a in argv if not a.startswith(f"{flag}=")]
    argv = [a for a in argv if a not in ("--write-only", "--rescore")]
    command = "tfvctr " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["reproduce"] else ""
    results = reproduce(
        args.table, args.data, config=args.config or DEFAULT_CONFIG, seeds=args.seeds, quick=args.quick,
        work=args.work, doc=args.doc, img_dir=args.img_dir, command=command, about_data=args.about_data,
        write_only=args.write_only, rescore=args.rescore,
    )
    cells = sum(len(v) for v in results.values())
    print(f"{cells} cell(s) of {', '.join(results)}; written: {args.doc}")
    return 0
