"""`tfvctr train --config C --data D --model-dir M [--steps N]`: the distributed training loop."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_set_argument
from tfvctr.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a CTR model on grouped TFRecords (resumes from the model dir)",
        description="Train the model of CONFIG on DATA/train with a custom tf.distribute loop. "
        "Multi-worker when TF_CONFIG names several workers. Checkpoints every training.checkpoint_every "
        "steps; rerunning the same command resumes from the latest checkpoint (data position included).",
    )
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--data", required=True, help="output folder of `tfvctr preprocess`")
    p.add_argument("--model-dir", required=True, help="checkpoints, TensorBoard summaries and the saved model go here")
    p.add_argument("--steps", type=int, default=None, help="total steps (default: training.steps)")
    add_set_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The strategy must exist before any other TensorFlow op (MultiWorkerMirroredStrategy).
    from tfvctr.training.strategy import make_strategy

    strategy = make_strategy()
    from tfvctr.training.trainer import train

    config = load_config(args.config, args.overrides)
    result = train(config, args.data, args.model_dir, steps=args.steps, strategy=strategy)
    print(f"trained to step {result['step']}; model dir: {args.model_dir}")
    return 0
