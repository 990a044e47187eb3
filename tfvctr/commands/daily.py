"""`tfvctr daily --config C --workdir W --day D --ads A --impressions I`: one day of the production loop."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_beam_command, add_set_argument


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (its `daily` section: window, steps, promotion)")
    p.add_argument("--workdir", required=True, help="the loop's folder: data/, window/, models/, tables/, serving/, "
                                                    "state.json (created on the first day)")
    p.add_argument("--day", required=True, help="the new day (a day number or YYYY-MM-DD, as the table writes it)")
    p.add_argument("--ads", required=True, help="the ad catalog today (new ads included)")
    p.add_argument("--impressions", required=True, help="an impressions table holding day D (other days are skipped)")
    add_set_argument(p, "daily.promote_margin=0.005")


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_beam_command(
        sub, "daily", run, "one day of the production loop: preprocess, train, promote, embed, export",
        "For day D: preprocess only D's impressions into W/data/D; train on the last daily.window_days days "
        "(vocabularies frozen from the first day), warm-started from the promoted model; promote it only if it is "
        "not worse than the served model on D's held-out ads by more than daily.promote_margin; embed only new or "
        "changed ads when the CNN did not change (else rebuild the table); export the next version into "
        "W/serving/<name>/<N>/, where `tfvctr serve --model-base W/serving` picks it up. W/state.json holds the "
        "loop's state, W/days/D.json the day's report. docs/daily.md.",
        _arguments,
    )


def run(args: argparse.Namespace) -> int:
    from tfvctr.daily.driver import run_day

    report = run_day(args.config, args.workdir, args.day, args.ads, args.impressions, overrides=args.overrides,
                     beam_args=list(getattr(args, "beam_args", [])), log=lambda line: print(line, flush=True))
    t = report["timings"]
    print(f"daily {report['day']}: serving version {report['served_version']}; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()), flush=True)
    return 0
