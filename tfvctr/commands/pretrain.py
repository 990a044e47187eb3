"""`tfvctr pretrain --config C --data D --model-dir M [--steps N]`: DeepCTR's Convnet pre-training."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_command, add_training_arguments, run_training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "pretrain", run, "pre-train the visual tower on category labels (DeepCTR)",
        "Pre-train the CNN of CONFIG to predict each ad's category from its image (DeepCTR §4). "
        "Start `tfvctr train` from it with training.pretrained_cnn: MODEL_DIR (and training.freeze_cnn to keep it fixed).",
    )
    add_training_arguments(p, "where the pre-trained model goes", "training.steps=100")


def run(args: argparse.Namespace) -> int:
    result = run_training(args, "pretrain")
    print(f"pre-trained to step {result['step']}; model dir: {args.model_dir}")
    return 0
