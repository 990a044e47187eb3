"""`tfvctr evaluate --model-dir M --data D [--baseline metrics.json]`: offline metrics."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "evaluate", run, "AUC, per-user AUC, cold-ad AUC, log loss, calibration → M/metrics.json",
        "Score every impression of DATA/eval with the model in MODEL_DIR and write MODEL_DIR/metrics.json, "
        "roc.png and calibration.png. With --baseline, also the relative AUC (DeepCTR Eq. 8). metrics.json's "
        "best_step says which training step model.keras holds (the best one on the valid split; null without one).",
    )
    p.add_argument("--model-dir", required=True, help="a `tfvctr train` model dir")
    p.add_argument("--data", required=True, help="output folder of `tfvctr preprocess`")
    p.add_argument("--baseline", default=None, help="metrics.json of the baseline model (relative AUC)")
    p.add_argument("--split", default="eval", choices=["eval", "valid", "train"], help="which split to score")


def run(args: argparse.Namespace) -> int:
    # Lazy, as in every command: see tfvctr/commands/__init__.py.
    from tfvctr.evaluation import evaluate

    r = evaluate(args.model_dir, args.data, baseline=args.baseline, split=args.split)

    def f(x):
        return "n/a" if x is None or x != x else f"{x:.4f}"

    print(f"{args.model_dir}: {r['impressions']} impressions ({r['positives']} clicks)")
    sel = r.get("selection")
    if sel:
        # model.keras holds the best step by the valid split (tfvctr.training.selection).
        print(f"  model of step {r['best_step']} (best {sel['metric']} {f(sel['best'].get(sel['metric']))} "
              f"of the valid split; trained to step {sel['last_step']}{', stopped early' if sel['stopped_early'] else ''})")
    print(f"  AUC {f(r['auc'])}  log loss {f(r['log_loss'])}  per-user AUC {f(r['per_user_auc'])} ({r['per_user_auc_users']} users)")
    if "cold" in r:
        print(f"  cold ads: {r['cold']['impressions']} impressions, AUC {f(r['cold']['auc'])}")
    if "ceiling_auc" in r:
        print(f"  simulator ceiling AUC {f(r['ceiling_auc'])}")
    if "relative_auc" in r:
        print(f"  relative AUC vs {r['baseline']['name']}: {100 * r['relative_auc']:+.2f}%")
    c = r["calibration"]
    print(f"  calibration: mean predicted {f(c['mean_predicted'])} vs observed {f(c['observed'])} (ECE {f(c['ece'])})")
    print(f"  wrote {args.model_dir}/metrics.json, roc.png, calibration.png")
    return 0
