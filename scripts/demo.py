"""`make demo`: every stage that exists, end to end, on the simulated demo dataset.

Each stage runs through the `tfvctr` console script, exactly as a user would type it, so
the demo doubles as a smoke test of the CLI. Outputs land under --out (default
demo_out/); the paths are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from tfvctr import layout

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TFVCTR = os.path.join(os.path.dirname(sys.executable), "tfvctr")


def step(title: str, args: list[str]) -> None:
    print(f"\n=== {title}\n$ tfvctr {' '.join(args)}", flush=True)
    start = time.time()
    result = subprocess.run([TFVCTR, *args])
    if result.returncode != 0:
        sys.exit(f"demo: step '{title}' failed (exit {result.returncode})")
    print(f"--- {title}: {time.time() - start:.0f} s", flush=True)


def summary_table(metrics: dict, selections: dict) -> str:
    """The eval-day figures of each model, with the training step model selection chose and
    that step's figure on the valid split (`M/selection.json`)."""
    nan = float("nan")

    def num(x, width):
        return f"{nan if x is None else x:{width}.4f}"

    metric = next(iter(selections.values()))["metric"] if selections else None
    valid_head = f"{metric or 'valid':>14s}" if metric else ""
    lines = [f"{'eval day (day 6)':22s} {'AUC':>7s} {'cold AUC':>9s} {'log loss':>9s} {'user AUC':>9s}"
             + (f" {'chosen step':>13s} {valid_head}" if selections else "")]
    for name, m in metrics.items():
        cold = m.get("cold") or {}
        line = (f"{name:22s} {num(m['auc'], 7)} {num(cold.get('auc'), 9)} {num(m['log_loss'], 9)} "
                f"{num(m.get('per_user_auc'), 9)}")
        sel = selections.get(name)
        if sel:
            chosen = f"{sel['best_step']}/{sel['last_step']}{'*' if sel['stopped_early'] else ''}"
            line += f" {chosen:>13s} {num(sel['best'].get(sel['metric']), 14)}"
        lines.append(line)
    m = metrics["CSCNN-DCN"]
    lines.append(f"{'simulator (ceiling)':22s} {num(m.get('ceiling_auc'), 7)} {num((m.get('cold') or {}).get('ceiling_auc'), 9)}")
    if selections:
        lines.append(f"chosen step: the step whose weights model.keras holds (best {metric} on the valid split) / the "
                     f"last step trained; * stopped early (training.patience)")
    else:
        lines.append("no valid split: model selection was off (the last step's weights are used)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.yaml"))
    parser.add_argument("--ads", type=int, default=2000)
    parser.add_argument("--impressions", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    args = parser.parse_args()

    out = os.path.abspath(args.out)
    raw, data, model, baseline, table = (os.path.join(out, d) for d in ("raw", "data", "model", "model_no_image", "table"))
    steps = ["--steps", str(args.steps)] if args.steps else []
    started = time.time()

    step("1/7 check the config", ["validate-config", args.config])
    step("2/7 generate the demo dataset", ["demo-data", "--out", raw, "--ads", str(args.ads), "--impressions", str(args.impressions)])
    step(
        "3/7 Beam: raw tables -> TFRecords grouped by ad (DirectRunner, 2 processes)",
        ["preprocess", "--config", args.config, "--ads", os.path.join(raw, "ads.csv"),
         "--impressions", os.path.join(raw, "impressions.csv"), "--out", data, "--direct_num_workers", "2", "--overwrite"],
    )
    step("4/7 train CSCNN-DCN", ["train", "--config", args.config, "--data", data, "--model-dir", model, *steps])
    step(
        "5/7 train the DCN without images (baseline)",
        ["train", "--config", args.config, "--data", data, "--model-dir", baseline, "--set", "model.architecture=dcn", "--set", "name=dcn_no_image", *steps],
    )
    step("6/7 evaluate both on the eval day", ["evaluate", "--model-dir", baseline, "--data", data])
    step("6/7 (cont.)", ["evaluate", "--model-dir", model, "--data", data, "--baseline", os.path.join(baseline, layout.METRICS)])
    pictures = os.path.join(out, "saliency")
    step("6/7 (cont.) what the model looks at: saliency and spatial attention pictures",
         ["saliency", "--model-dir", model, "--data", data, "--out", pictures])
    step("7/7 Beam: the visual-embedding table of the ad catalog",
         ["embed", "--model", model, "--data", data, "--ads", os.path.join(raw, "ads.csv"), "--out", table, "--overwrite"])
    serving = os.path.join(out, "serving")
    step("7/7 (cont.) export for TF Serving, checked through TF Serving's loader",
         ["export", "--model-dir", model, "--table", table, "--out", serving])
    exported = max((os.path.join(serving, n, v) for n in os.listdir(serving) for v in os.listdir(os.path.join(serving, n))
                    if v.isdigit()), key=os.path.getmtime)
    print(f"TF Serving export: {exported}", flush=True)
    # The REST step: the dev server on the export, a warm, a cold, an unknown and a new ad
    # (with its image), then SIGTERM (serving/demo.py; docs/serving.md).
    print("\n=== 7/7 (cont.) serve the export over TF Serving's REST API (dev server), then stop it", flush=True)
    started_serving = time.time()
    result = subprocess.run([sys.executable, "-m", "serving.demo", "--model-base", serving, "--model-name",
                             os.path.basename(os.path.dirname(exported)), "--model-dir", model, "--data", data], cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"demo: the REST serving step failed (exit {result.returncode})")
    print(f"--- REST serving: {time.time() - started_serving:.0f} s", flush=True)

    metrics, selections = {}, {}
    for name, d in (("CSCNN-DCN", model), ("DCN, no image", baseline)):
        with open(os.path.join(d, layout.METRICS)) as f:
            metrics[name] = json.load(f)
        selection_file = os.path.join(d, layout.SELECTION)
        if os.path.exists(selection_file):  # absent when preprocess wrote no valid split
            with open(selection_file) as f:
                selections[name] = json.load(f)
    print(f"\n=== done in {time.time() - started:.0f} s\n")
    print(summary_table(metrics, selections))
    print("\nOutputs:")
    for label, path in (("raw tables + images", raw), ("grouped TFRecords, vocab, stats, manifest", data),
                        ("CSCNN-DCN model dir (checkpoints, .keras, metrics.json, plots)", model),
                        ("DCN baseline model dir", baseline), ("saliency and attention pictures", pictures),
                        ("visual-embedding table", table),
                        ("TF Serving export (docs/export.md)", exported),
                        ("TensorBoard", f"tensorboard --logdir {model}/tensorboard")):
        print(f"  {label:62s} {path}")


if __name__ == "__main__":
    main()
