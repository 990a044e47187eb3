"""`tfvctr train --config C --data D --model-dir M [--steps N]`: the distributed training loop."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_command, add_training_arguments, run_training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", run, "train a CTR model on grouped TFRecords (resumes from the model dir)",
        "Train the model of CONFIG on DATA/train with a custom tf.distribute loop. "
        "Multi-worker when TF_CONFIG names several workers. Checkpoints every training.checkpoint_every "
        "steps; rerunning the same command resumes from the latest checkpoint (data position included).",
    )
    add_training_arguments(p, "checkpoints, TensorBoard summaries and the saved model go here", "model.architecture=dcn")


def run(args: argparse.Namespace) -> int:
    result = run_training(args, "train")
    print(f"trained to step {result['step']}; model dir: {args.model_dir}")
    return 0
