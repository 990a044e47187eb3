"""`tfvctr train --config C --data D --model-dir M [--steps N]`: the distributed training loop."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_command, add_training_arguments, run_training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", run, "train a CTR model on grouped TFRecords (resumes from the model dir)",
        "Train the model of CONFIG on DATA/train with a custom tf.distribute loop. "
        "Multi-worker when TF_CONFIG names several workers (a worker whose peer never starts, dies or hangs "
        "stops with exit 2 within training.peer_timeout_seconds; run every worker again to resume). "
        "Checkpoints every training.checkpoint_every "
        "steps; rerunning the same command resumes from the latest checkpoint (data position included). "
        "With a DATA/valid split, every training.eval_every steps it is scored, training stops after "
        "training.patience evaluations without improvement, and the model dir keeps the best step "
        "(MODEL_DIR/selection.json).",
    )
    add_training_arguments(p, "checkpoints, TensorBoard summaries and the saved model go here", "model.architecture=dcn")


def run(args: argparse.Namespace) -> int:
    result = run_training(args, "train")
    print(f"trained to step {result['step']}; model dir: {args.model_dir}")
    if result.get("best_step") is not None:
        metric = result["metric"]
        print(f"model.keras holds step {result['best_step']}: best {metric} {result['best'][metric]:.4f} on the valid split"
              f"{' (stopped early)' if result['stopped_early'] else ''}")
    return 0
