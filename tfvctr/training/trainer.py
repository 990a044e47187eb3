"""`train` and `pretrain`: build data, model and optimizers under the strategy, resume, run
the controller, and write the model directory (docs/formats.md §3).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from tfvctr import data as data_lib
from tfvctr import layout
from tfvctr.config import Config, save_config
from tfvctr.errors import ConfigError, DataError, TfvctrError
from tfvctr.fingerprint import check_training_dir
from tfvctr.io import fs
from tfvctr.training.averaging import WeightAverage
from tfvctr.training.checkpoints import BestCheckpoint, CheckpointSet
from tfvctr.training.controller import Controller, print_line
from tfvctr.training.loop import (
    Trainer,
    category_objective,
    ctr_objective,
    model_inputs,
    pairwise_objective,
    with_pair_users,
)
from tfvctr.training.optimizers import make_optimizers
from tfvctr.training.selection import ModelSelection, Validator
from tfvctr.training.strategy import WorkerInfo, exit_on_lost_peer, make_strategy, worker_info


def _set_precision(config: Config, log: Optional[Callable[[str], None]]) -> None:
    if not config.training.mixed_precision:
        return
    if tf.config.list_physical_devices("GPU"):
        # bfloat16 keeps float32's exponent range, so no loss scaling is needed.
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    elif log:
        log("training.mixed_precision is ignored: no GPU (mixed precision only pays on GPUs)")


def _per_replica_batch(config: Config, strategy: tf.distribute.Strategy) -> int:
    n, replicas = config.training.ads_per_batch, strategy.num_replicas_in_sync
    if n % replicas:
        raise ConfigError(
            f"training.ads_per_batch: {n} ads cannot be split evenly over {replicas} replicas; use a multiple of {replicas}"
        )
    return n // replicas


def _default_encoder(config: Config, data_dir: str):
    from tfvctr.features import FeatureEncoder

    return FeatureEncoder.from_data_dir(config.dataset, data_dir)


def visual_tower_of(model: Any) -> Any:
    """The CTR model's `visual_tower`, or the pretrainer's layer named "visual_tower", or None."""
    tower = getattr(model, "visual_tower", None)
    if tower is None and isinstance(model, keras.Model):
        try:
            tower = model.get_layer("visual_tower")
        except ValueError:
            tower = None
    return tower


def _write_model_dir(config: Config, data_dir: str, model_dir: str, model: Any) -> None:
    from tfvctr.daily import recalibration

    save_config(config, fs.join(model_dir, layout.CONFIG))
    # The rate the train split was downsampled at, from the data (not the config: the data is
    # what the model saw); export and evaluate recalibrate the CTR with it.
    recalibration.write_model_rate(model_dir, recalibration.data_rate(data_dir), data_dir)
    with fs.open(fs.join(model_dir, layout.DATA_DIR_POINTER), "w") as f:
        f.write(os.path.abspath(data_dir) if not fs.is_remote(data_dir) else data_dir)
    tower = visual_tower_of(model)
    if tower is not None:
        tower.save(fs.join(model_dir, layout.VISUAL_TOWER))
    model.save(fs.join(model_dir, layout.MODEL))


def valid_files(data_dir: str) -> Optional[list[str]]:
    """The shards of `DATA_DIR/valid`, or None when preprocess wrote no valid split."""
    if not fs.exists(fs.join(data_dir, layout.VALID)):
        return None
    try:
        return data_lib.list_shards(data_dir, layout.VALID)
    except DataError:
        return None


def _validator(config: Config, data_dir: str, model: Any, encoder: Any, files: list[str], strategy, info: WorkerInfo,
               selection: ModelSelection) -> Validator:
    """The `Validator` of `train`: the chief scores DATA/valid with `tfvctr evaluate`'s code."""
    from tfvctr import evaluation

    score = None
    if info.is_chief:
        dataset = data_lib.make_dataset(
            config, data_dir, layout.VALID, training=False, encoder=encoder, batch_size=config.training.ads_per_batch,
            with_meta=True, files=files,
        )
        from tfvctr.daily import recalibration

        # Calibrated CTRs (valid_logloss would otherwise score the downsampled odds).
        evaluator = evaluation.Evaluator(model, logit_offset=recalibration.logit_offset(recalibration.data_rate(data_dir)))
        cold_ads = evaluation.read_cold_ads(data_dir)

        def score() -> dict:
            with data_lib.data_errors(files):
                pred = evaluation.score(evaluator, dataset)
            if pred["labels"].size == 0:
                raise DataError(f"{fs.join(data_dir, layout.VALID)}: no impressions to validate on")
            return evaluation.selection_metrics(pred, cold_ads)

    return Validator(
        strategy, selection, config.training.eval_every, score,
        num_workers=info.num_workers, is_chief=info.is_chief, local_replicas=info.local_replicas,
    )


def _fit_calibration(config: Config, data_dir: str, model: Any, encoder: Any, files: Optional[list[str]],
                     step: Optional[int], log: Optional[Callable[[str], None]]) -> dict:
    """`training.calibration: platt`: the valid split scored at the chosen step, Platt's a and b fitted on it.

    The logits fitted are the He-recalibrated ones (logit + log w), so `ctr = sigmoid(a · (logit +
    log w) + b)` (tfvctr.calibration). Falls back to no calibration, with a warning, when the
    split is missing or too small.
    """
    import numpy as np

    from tfvctr import calibration, evaluation
    from tfvctr.daily import recalibration

    min_clicks = config.training.calibration_min_clicks
    if files is None:
        record = {"method": "none", "requested": "platt", "step": step, "min_clicks": min_clicks,
                  "reason": f"{fs.join(data_dir, layout.VALID)}: no valid split to fit on"}
    else:
        dataset = data_lib.make_dataset(
            config, data_dir, layout.VALID, training=False, encoder=encoder, batch_size=config.training.ads_per_batch,
            with_meta=True, files=files,
        )
        offset = recalibration.logit_offset(recalibration.data_rate(data_dir))
        with data_lib.data_errors(files):
            pred = evaluation.score(evaluation.Evaluator(model, logit_offset=offset, output="logit"), dataset)
        record = calibration.fit_record(pred["labels"], np.asarray(pred["probs"], np.float64), min_clicks, step)
    if log:
        if record["method"] == "platt":
            log(f"calibration (platt, valid split at step {step}): ctr = sigmoid({record['slope']:.4f} * logit "
                f"{record['intercept']:+.4f}); valid log loss {record['valid_logloss_before']:.5f} -> "
                f"{record['valid_logloss_after']:.5f}")
        else:
            log(f"WARNING: training.calibration: platt skipped, CTRs stay uncalibrated: {record['reason']}")
    return record


@exit_on_lost_peer()  # several workers: a dead peer ends this one with one line, not a hang
def _run(
    config: Config,
    data_dir: str,
    model_dir: str,
    *,
    steps: Optional[int],
    strategy: Optional[tf.distribute.Strategy],
    encoder: Any,
    make_model: Callable[[Any], Any],
    objective: Any,
    variables_of: Callable[[Any], tuple[list, list]],
    init_model: Callable[[Any], None],
    freeze_visual: bool,
    log: Optional[Callable[[str], None]],
    summary_name: str,
    pair_users: bool = False,
    select: bool = False,
) -> dict:
    strategy = strategy or make_strategy(config.training.peer_timeout_seconds)
    info: WorkerInfo = worker_info(strategy)
    log = log if info.is_chief else None
    tr = config.training
    total = steps if steps is not None else tr.steps
    if total < 1:
        raise ConfigError(f"--steps: expected a positive number of steps, received {total}")
    files = data_lib.list_shards(data_dir, layout.TRAIN)
    data_lib.check_vocabularies(config.dataset, data_dir)
    check_training_dir(config, data_dir, model_dir, write=info.is_chief)  # fingerprint.json: refuses an incompatible dir
    _set_precision(config, log)
    encoder = encoder or _default_encoder(config, data_dir)
    batch = _per_replica_batch(config, strategy)
    def make():
        ds = data_lib.make_dataset(
            config, data_dir, "train", training=True, encoder=encoder, batch_size=batch,
            num_workers=info.num_workers, worker_index=info.worker_index, files=files, with_meta=pair_users,
        )
        return with_pair_users(ds) if pair_users else ds

    # Seed first: the shuffles' op seeds combine with the global seed, so a dataset built
    # before it would shuffle differently in the first run of a process than in later ones.
    keras.utils.set_random_seed(tr.seed)
    if tr.deterministic:  # before the datasets and the model exist: they pick deterministic kernels
        tf.config.experimental.enable_op_determinism()
    dataset = make()
    with data_lib.data_errors(files):
        # A first batch from a separate dataset builds the variables. Not from another
        # iterator of `dataset`: its seeded shuffle would then hand the training iterator
        # the second epoch order instead of the first.
        sample_inputs, _ = next(iter(make()))
    with strategy.scope():
        model = make_model(encoder)
        model(model_inputs(sample_inputs)) if objective is not category_objective else model({"image": sample_inputs["image"]})
        cnn_optimizer, optimizer = make_optimizers(tr, total_steps=total)
        cnn_vars, other_vars = variables_of(model)
        cnn_optimizer.build(cnn_vars)
        optimizer.build(other_vars)
        trained = (other_vars if freeze_visual else cnn_vars + other_vars)
        average = WeightAverage(trained, tr.ema_decay) if tr.ema_decay else None
    if freeze_visual and getattr(model, "visual_tower", None) is not None:
        # Frozen means inference mode too: batch-norm statistics stay as pre-trained.
        model.visual_tower.trainable = False
    selection = selection_state = validation = None
    if select:
        validation = valid_files(data_dir)
        if validation is None:
            if log:
                log(f"WARNING: {fs.join(data_dir, layout.VALID)}: no valid split, so model selection is off "
                    f"(all steps run and model.keras holds the last weights); tfvctr preprocess writes one "
                    f"with dataset.validation.mode")
        else:
            selection = ModelSelection(tr.selection_metric, tr.patience, tr.min_delta, tr.selection_tolerance)
            selection_state = tf.Variable("", dtype=tf.string, trainable=False, name="selection_state")
    iterator = iter(dataset)
    trainer = Trainer(
        strategy, model, cnn_optimizer, optimizer, objective, dataset.element_spec,
        local_replicas=info.local_replicas, clip_norm=tr.clip_norm, freeze_visual=freeze_visual,
        variables=(cnn_vars, other_vars), average=average,
    )
    model_objects = {"model": model, "cnn_optimizer": cnn_optimizer, "optimizer": optimizer}
    linear_part = getattr(model, "linear_part", None)
    if linear_part is not None:
        # Not trained, so no optimizer reaches these weights, and the model's own object graph
        # does not either (see checkpoints.weights_checkpoint): a resumed run needs them named.
        model_objects["linear_part"] = tf.train.Checkpoint(weights={v.path.replace("/", "."): v for v in linear_part.weights})
    if average is not None:
        model_objects["weight_average"] = average.checkpoint()
    if selection_state is not None:
        model_objects["selection"] = selection_state
    checkpoints = CheckpointSet(
        model_dir, model_objects,
        {"iterator": iterator, "batches_consumed": trainer.batches_consumed},
        worker_index=info.worker_index, is_chief=info.is_chief, keep=tr.keep_checkpoints,
    )
    start = checkpoints.restore()
    init_record: dict = {}
    if start == 0:
        init_record = init_model(model) or {}
        if average is not None:
            average.reset()  # after init_model: the average starts at the weights training starts from
    elif log:
        log(f"resumed from {checkpoints.latest()} at step {start}")
    validator = best = None
    if selection is not None:
        selection.load(selection_state.numpy().decode())
        best = BestCheckpoint(model_dir, model, worker_index=info.worker_index, is_chief=info.is_chief)
        if selection.best_step is not None:
            # A best written after the restored checkpoint (the run died before naming it) goes.
            best.prune(selection.best_step)
        validator = _validator(config, data_dir, model, encoder, validation, strategy, info, selection)
    if selection is not None and selection.stopped_early:
        if log:
            log(f"already stopped early at step {start} (training.patience); nothing to train "
                f"(delete {checkpoints.root} to train again)")
        figures: dict = {"step": start}
    elif start >= total:
        if log:
            log(f"already at step {start} of {total}; nothing to train")
        figures = {"step": start}
    else:
        controller = Controller(
            trainer, iterator, checkpoints, total, tr.checkpoint_every, tr.log_every,
            summary_dir=fs.join(model_dir, layout.TENSORBOARD_DIR, summary_name) if info.is_chief else None, log=log,
            validator=validator, best=best, selection_state=selection_state, average=average,
            # The pre-fitted regression alone is a candidate: selection keeps a later step only if it beats it.
            validate_first=start == 0 and linear_part is not None,
        )
        with data_lib.data_errors(files):
            figures = controller.run(start)
        figures["history"] = controller.history
    last_step = int(figures["step"])
    calibration_record = None
    if average is not None:
        # model.keras holds the average: of the best step below when selection chose an earlier one.
        average.copy_to_weights()
    if selection is not None:
        if selection.best_step is not None and selection.best_step != last_step:
            # Every worker loads the best weights; the barrier makes sure the chief has finished
            # writing them (it may have done so just before the last step's checkpoint).
            validator.barrier()
            best.restore(selection.best_step)
            if log:
                log(f"model.keras holds the best step {selection.best_step} by {selection.metric} "
                    f"({selection.best[selection.metric]:.4f}), not the last step {last_step}")
        summary = selection.summary(last_step)
        if info.is_chief and tr.calibration == "platt":
            # After the best weights are back: the calibration is that of the step model.keras holds.
            calibration_record = _fit_calibration(config, data_dir, model, encoder, validation, selection.best_step, log)
            summary["calibration"] = calibration_record
        if info.is_chief:
            with fs.open(fs.join(model_dir, layout.SELECTION), "w") as f:
                json.dump(summary, f, indent=2)
        # train()'s result carries selection.json: the whole dict as `selection`, and its
        # keys at the top level (`history` stays the per-block training figures).
        figures.update({k: v for k, v in summary.items() if k != "history"})
        figures["valid_history"] = summary["history"]
        figures["selection"] = summary
    if info.is_chief and select and tr.calibration == "platt":
        from tfvctr import calibration

        if calibration_record is None:  # no valid split: no selection either
            calibration_record = _fit_calibration(config, data_dir, model, encoder, None, last_step, log)
        calibration.write_calibration(model_dir, calibration_record)
        figures["calibration"] = calibration_record
    elif info.is_chief and select and fs.exists(fs.join(model_dir, layout.CALIBRATION)):
        # A run with calibration off must not serve the map of an earlier run in the same dir.
        tf.io.gfile.remove(fs.join(model_dir, layout.CALIBRATION))
    if info.is_chief and "linear_prefit" in init_record:
        with fs.open(fs.join(model_dir, layout.LINEAR_PREFIT), "w") as f:
            json.dump(init_record["linear_prefit"], f, indent=2)
    if "linear_prefit" in init_record:
        figures["linear_prefit"] = init_record["linear_prefit"]
    if info.is_chief:
        _write_model_dir(config, data_dir, model_dir, model)
    figures["batches_consumed"] = int(trainer.batches_consumed.numpy())
    figures["model"] = model
    return figures


def base_rate_logit(data_dir: str) -> Optional[float]:
    """log(p / (1 - p)) of the train split's click rate p (stats.json), None if unknown or degenerate."""
    path = fs.join(data_dir, layout.STATS)
    if not fs.exists(path):
        return None
    label = fs.read_json(path, DataError).get("label", {})
    count, positives = label.get("count") or 0, label.get("positives") or 0
    if not 0 < positives < count:
        return None
    p = positives / count
    return math.log(p / (1.0 - p))


def init_output_bias(model: Any, data_dir: str) -> None:
    """Sets the logit's bias to the train split's click log-odds (`training.output_bias: base_rate`).

    A negatively downsampled train split (`dataset.negative_sampling_rate`) gives the
    downsampled rate, which is what the model predicts during training.
    """
    bias, value = getattr(model, "output_bias", None), base_rate_logit(data_dir)
    if bias is not None and value is not None:
        bias.assign(tf.fill(tuple(bias.shape), tf.constant(value, dtype=bias.dtype)))


def train(
    config: Config,
    data_dir: str,
    model_dir: str,
    *,
    steps: Optional[int] = None,
    strategy: Optional[tf.distribute.Strategy] = None,
    encoder: Any = None,
    model_fn: Optional[Callable[..., Any]] = None,
    loss_fn: Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = None,
    log: Optional[Callable[[str], None]] = print_line,
    warm_start: Optional[str] = None,
) -> dict:
    """Trains the CTR model of `config` on `DATA_DIR/train`, resuming from `MODEL_DIR` if it holds a checkpoint.

    Args:
        config: the typed config.
        data_dir: the output of `tfvctr preprocess`.
        model_dir: where checkpoints, summaries and the saved model go.
        steps: total steps (default `training.steps`); a resumed run stops at the same step.
        strategy: default: from the environment (`make_strategy`).
        encoder: raw features → ids (default `FeatureEncoder.from_data_dir`).
        model_fn: `(config, num_categories, vocab_sizes, seed) -> model` (default
            `tfvctr.models.factory.build_model`).
        loss_fn: `(labels, logits) -> summed loss` (default `tfvctr.models.losses.pointwise_loss`);
            point-wise only: with `model.architecture: vbpr` and `model.vbpr.loss: pairwise` the
            objective is BPR (`tfvctr.training.loop.pairwise_objective`: negatives the user never
            clicked in the train split, or in-batch pairs).
        log: progress lines (chief only); None for silence.
        warm_start: a model dir whose `model.keras` weights a fresh run starts from (`tfvctr
            daily`: the last promoted model; same features and vocabularies); with it,
            `training.freeze_cnn` keeps that model's CNN fixed without `pretrained_cnn`.

    Returns:
        The last block's figures (loss, auc, images_per_sec, impressions_per_sec, step,
        learning rates), `history` (one entry per block), `batches_consumed` and `model`.
        With a valid split also model selection (`M/selection.json`): the whole dict as
        `selection`, its `metric`, `mode`, `best_step`, `best` ({valid_auc, valid_cold_auc,
        valid_logloss} of the best step), `stopped_early`, `last_step` at the top level and
        its history as `valid_history`; `model` then holds the best step's weights.
    """
    if model_fn is None:
        from tfvctr.models.factory import build_model as model_fn
    pairwise = config.model.architecture == "vbpr" and config.model.vbpr.loss == "pairwise"
    if pairwise and loss_fn is not None:
        raise TfvctrError("train: loss_fn is a point-wise loss; model.vbpr.loss: pairwise trains the BPR objective")
    if loss_fn is None:
        from tfvctr.models.losses import pointwise_loss as loss_fn
    tr = config.training

    def make_model(enc):
        return model_fn(config, enc.num_categories, enc.vocab_sizes, seed=tr.seed)

    def init_model(model):
        if warm_start:
            model.load_weights(fs.join(warm_start, layout.MODEL))
            if log:
                log(f"warm start: every weight from {warm_start}")
            return
        if tr.pretrained_cnn:
            load_pretrained_cnn(tr.pretrained_cnn, model)
            if log:
                log(f"visual tower initialised from {tr.pretrained_cnn}")
        if config.model.linear == "prefit":
            # The linear part carries the bias; the deep part's logit starts at 0 (DCNHead).
            from tfvctr.training.linear_prefit import prefit_linear

            record = prefit_linear(model, config, data_dir, encoder or _default_encoder(config, data_dir), log)
            return {"linear_prefit": record}
        if tr.output_bias == "base_rate":
            init_output_bias(model, data_dir)
        return None

    if tr.freeze_cnn and not tr.pretrained_cnn and not warm_start:
        raise ConfigError("training.freeze_cnn: a frozen CNN needs training.pretrained_cnn (a `tfvctr pretrain` model dir)")
    return _run(
        config, data_dir, model_dir, steps=steps, strategy=strategy, encoder=encoder, make_model=make_model,
        objective=pairwise_objective(config, data_lib.list_shards(data_dir, layout.TRAIN)) if pairwise else ctr_objective(loss_fn),
        variables_of=lambda m: (list(m.visual_variables), list(m.non_visual_variables)),
        init_model=init_model, freeze_visual=tr.freeze_cnn, log=log, summary_name="train", pair_users=pairwise,
        select=True,
    )


def load_pretrained_cnn(pretrain_dir: str, model: Any) -> None:
    """Copies the visual tower of a `tfvctr pretrain` model dir into `model`."""
    from tfvctr.models.deepctr import transfer_visual_weights

    path = fs.join(pretrain_dir, layout.MODEL)
    if not fs.exists(path):
        raise TfvctrError(f"{path}: training.pretrained_cnn names no `tfvctr pretrain` model dir (model.keras missing)")
    source = keras.saving.load_model(path, compile=False)
    if getattr(model, "visual_tower", None) is None:
        raise ConfigError("training.pretrained_cnn: the model has no visual tower to initialise (model.architecture has no CNN)")
    transfer_visual_weights(visual_tower_of(source), model.visual_tower)


def pretrain(
    config: Config,
    data_dir: str,
    model_dir: str,
    *,
    steps: Optional[int] = None,
    strategy: Optional[tf.distribute.Strategy] = None,
    encoder: Any = None,
    model_fn: Optional[Callable[..., Any]] = None,
    log: Optional[Callable[[str], None]] = print_line,
) -> dict:
    """DeepCTR's Convnet pre-training on category labels (softmax over categories).

    Same loop, checkpoints and resume as `train`; `model_fn(config, num_categories) -> model`
    maps images [n,H,W,3] to category logits (default
    `tfvctr.models.deepctr.build_category_pretrainer`). `train` starts from the result with
    `training.pretrained_cnn: MODEL_DIR` (and keeps it fixed with `training.freeze_cnn`).
    """
    if model_fn is None:
        from tfvctr.models.deepctr import build_category_pretrainer as model_fn

    return _run(
        config, data_dir, model_dir, steps=steps, strategy=strategy, encoder=encoder,
        make_model=lambda enc: model_fn(config, enc.num_categories), objective=category_objective,
        variables_of=lambda m: ([], list(m.trainable_variables)), init_model=lambda m: None,
        freeze_visual=False, log=log, summary_name="pretrain",
    )
