"""`tfvctr pretrain --config C --data D --model-dir M [--steps N]`: DeepCTR's Convnet pre-training."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_set_argument
from tfvctr.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train the visual tower on category labels (DeepCTR)",
        description="Pre-train the CNN of CONFIG to predict each ad's category from its image (DeepCTR §4). "
        "Start `tfvctr train` from it with training.pretrained_cnn: MODEL_DIR (and training.freeze_cnn to keep it fixed).",
    )
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--data", required=True, help="output folder of `tfvctr preprocess`")
    p.add_argument("--model-dir", required=True, help="where the pre-trained model goes")
    p.add_argument("--steps", type=int, default=None, help="total steps (default: training.steps)")
    add_set_argument(p, "training.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The strategy must exist before any other TensorFlow op (MultiWorkerMirroredStrategy).
    from tfvctr.training.strategy import make_strategy

    strategy = make_strategy()
    from tfvctr.training.trainer import pretrain

    config = load_config(args.config, args.overrides)
    result = pretrain(config, args.data, args.model_dir, steps=args.steps, strategy=strategy)
    print(f"pre-trained to step {result['step']}; model dir: {args.model_dir}")
    return 0
