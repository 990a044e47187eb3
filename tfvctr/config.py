"""Typed configuration: one YAML file drives Beam, training, evaluation and export.

The YAML maps onto the dataclasses below. Loading checks every key and value and raises
`ConfigError` naming the file, the key path and what was wrong, e.g.::

    configs/x.yaml: model.crossing_layers: unknown key; allowed keys: architecture, ...

(FuxiCTR silently ignores a misspelt `crossing_layers`; we refuse it.)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Optional, Union

import yaml

from tfvctr.errors import ConfigError
from tfvctr.io import fs

FeatureSource = Literal["ad", "impression"]
FeatureKind = Literal["categorical", "multi", "numeric"]


@dataclasses.dataclass
class FeatureConfig:
    """One non-visual feature (a "field" of the papers' x_nv).

    Categorical and multi-valued features are indexed either by a vocabulary computed by
    the Beam job on the train split (`vocabulary: auto`, index 0 = padding, 1 = out of
    vocabulary) or by hashing into `hash_buckets` buckets (JD-scale vocabularies do not fit
    a table). Numeric features are `normalize`d with train-split mean/std, or
    `bucketize`d on train-split quantiles and then embedded like a categorical feature.
    """

    name: str
    source: FeatureSource
    kind: FeatureKind
    embedding_dim: int = 4
    vocabulary: Optional[str] = None  # "auto" (computed by Beam) or a path to a text file
    hash_buckets: Optional[int] = None
    min_frequency: int = 1
    max_length: int = 8  # multi: longer lists are truncated, shorter padded with 0
    combiner: Literal["sum", "mean"] = "mean"
    transform: Literal["normalize", "bucketize"] = "bucketize"
    num_buckets: int = 10
    default: Optional[Union[str, float]] = None  # value used when the field is missing

    def validate(self, where: str) -> None:
        if self.kind in ("categorical", "multi"):
            if (self.vocabulary is None) == (self.hash_buckets is None):
                raise ConfigError(
                    f"{where}: a {self.kind} feature needs exactly one of `vocabulary` "
                    f"(auto or a file) or `hash_buckets`; received vocabulary="
                    f"{self.vocabulary!r}, hash_buckets={self.hash_buckets!r}"
                )
            if self.hash_buckets is not None and self.hash_buckets < 1:
                raise ConfigError(f"{where}.hash_buckets: expected a positive integer, received {self.hash_buckets}")
        elif self.vocabulary is not None or self.hash_buckets is not None:
            raise ConfigError(f"{where}: a numeric feature takes no `vocabulary` or `hash_buckets`")
        if self.embedding_dim < 1:
            raise ConfigError(f"{where}.embedding_dim: expected a positive integer, received {self.embedding_dim}")
        if self.max_length < 1:
            raise ConfigError(f"{where}.max_length: expected a positive integer, received {self.max_length}")
        if self.num_buckets < 2:
            raise ConfigError(f"{where}.num_buckets: expected an integer >= 2, received {self.num_buckets}")


@dataclasses.dataclass
class ValidationConfig:
    """The `valid` split `tfvctr preprocess` carves out of the train days, for model selection.

    `mode`:
    - `none`: no valid split; train is every train-day impression.
    - `temporal`: the last train day becomes valid (if there are at least two train days).
    - `ads`: a share `ads_share` of the ads, chosen by a stable hash of `(seed, ad_id)`, is
      held out whole: all their train-day impressions go to valid (cold ads there, by
      construction); their eval-day impressions stay in eval.
    - `ads_and_temporal`: both; valid is the last train day of every ad plus every
      train-day impression of the held-out ads.
    """

    # `ads_and_temporal` by default: the eval day holds warm ads and new (cold) ones, and so
    # does this valid split. Ads held out whole alone (`ads`) judge only generalisation to
    # unseen ads, but over few ads: ~100 held-out ads (a tenth of 1,000) made the valid AUC
    # jump by 0.03-0.05 between evaluations, and selection kept step 50 of 300 on the colour
    # scenario (eval AUC 0.638 against 0.694 with this mode; docs/generalisation.md). A
    # temporal split alone holds only warm ads and would reward memorising ads.
    mode: Literal["none", "temporal", "ads", "ads_and_temporal"] = "ads_and_temporal"
    ads_share: float = 0.1  # share of ads held out whole (modes ads, ads_and_temporal)
    seed: Optional[int] = None  # of the held-out draw; None: the job's seed (dataset.seed or --seed)

    def validate(self, where: str) -> None:
        if not 0.0 < self.ads_share < 1.0:
            raise ConfigError(f"{where}.ads_share: expected a value in (0, 1), received {self.ads_share}")


@dataclasses.dataclass
class DatasetConfig:
    """The raw-data contract (docs/formats.md §1) and the Beam job's settings."""

    features: list[FeatureConfig]
    image_size: int = 64  # training resolution, square; Beam resizes once to this
    image_format: Literal["jpeg", "png"] = "jpeg"
    max_image_pixels: int = 40_000_000  # larger source images are dead-lettered (decompression bombs)
    impressions_per_chunk: int = 25  # K: at most K impressions of one ad per SequenceExample
    eval_days: int = 1  # the last `eval_days` distinct days form the eval split
    passthrough: list[str] = dataclasses.field(default_factory=list)  # float impression columns kept for evaluation only
    num_shards: int = 0  # 0 = let the runner decide
    compression: Literal["none", "gzip"] = "none"
    seed: int = 0
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    # Negative downsampling (He et al. 2014): the train split keeps every click and a seeded
    # share w of the non-clicks (eval and valid keep everything); export and evaluate
    # recalibrate the CTR, q = p / (p + (1 - p) / w) (tfvctr.daily.recalibration).
    negative_sampling_rate: float = 1.0

    def validate(self, where: str) -> None:
        if not 0.0 < self.negative_sampling_rate <= 1.0:
            raise ConfigError(f"{where}.negative_sampling_rate: expected a value in (0, 1], "
                              f"received {self.negative_sampling_rate}")
        names = set()
        for i, f in enumerate(self.features):
            f.validate(f"{where}.features[{i}] ({f.name})")
            if f.name in names:
                raise ConfigError(f"{where}.features[{i}]: duplicate feature name {f.name!r}")
            if f.name in RESERVED_COLUMNS - {"user_id", "category", "ad_id"}:
                raise ConfigError(f"{where}.features[{i}]: {f.name!r} is a reserved column name")
            names.add(f.name)
        _positive(self.image_size, f"{where}.image_size", minimum=8)
        _positive(self.impressions_per_chunk, f"{where}.impressions_per_chunk")
        _positive(self.eval_days, f"{where}.eval_days")
        _positive(self.max_image_pixels, f"{where}.max_image_pixels")
        self.validation.validate(f"{where}.validation")

    def feature(self, name: str) -> FeatureConfig:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def ad_features(self) -> list[FeatureConfig]:
        return [f for f in self.features if f.source == "ad"]

    @property
    def impression_features(self) -> list[FeatureConfig]:
        return [f for f in self.features if f.source == "impression"]


# Columns with a fixed meaning in the raw tables and the TFRecords (docs/formats.md).
RESERVED_COLUMNS = frozenset({"ad_id", "category", "image", "label", "day", "user_id", "ad_index"})


@dataclasses.dataclass
class VBPRConfig:
    """VBPR family (CSCNN §4.1, Eq. 12): y = a + b_u + b_i + g_u.g_i + theta_u.Phi(image, category)."""

    variant: Literal["bpr_mf", "vbpr", "dvbpr", "dvbpr_c", "sherlock", "deepstyle", "dvbpr_sca", "cscnn"] = "cscnn"
    factors: int = 10  # size of gamma_u, gamma_i
    visual_factors: int = 10  # size of theta_u
    loss: Literal["pointwise", "pairwise"] = "pointwise"
    l2: float = 0.0
    # Negatives of the pair-wise loss: `sampled`, the papers' protocol (per click, an ad the user
    # did not click, scored for that user); `in_batch`, the user's own non-clicks in the batch.
    negatives: Literal["sampled", "in_batch"] = "sampled"
    # VBPR's fixed image features read from a `tfvctr embed` table (docs/formats.md §4) by
    # ad_id, instead of a pre-trained tower run on the images (`training.pretrained_cnn`).
    features_table: Optional[str] = None


@dataclasses.dataclass
class DeepCTRConfig:
    """DeepCTR (Chen et al. 2016): Convnet + Basicnet + Combnet."""

    convnet_dim: int = 128
    basicnet_dim: int = 128
    combnet_layers: list[int] = dataclasses.field(default_factory=lambda: [256])  # hidden FCs; + the FC to z
    dropout: float = 0.5
    # The gradient an image's Convnet output receives from its copies (docs/training.md,
    # "Eq. 6"): `sum` (autodiff of the copy; with the loss over the global impression count)
    # or `mean`, Eq. 6's 1/k average over the ad's impressions in the batch.
    image_gradient: Literal["sum", "mean"] = "sum"


@dataclasses.dataclass
class ModelConfig:
    """Which model, and its sizes. Defaults are the papers' settings."""

    architecture: Literal["cscnn_dcn", "dcn", "deepctr", "vbpr"] = "cscnn_dcn"
    backbone: Literal["cnnf", "resnet18", "inception_v1", "deepctr17"] = "resnet18"
    backbone_width: float = 1.0  # channel multiplier, so tests can build tiny backbones
    attention: Literal[
        "none", "se", "cbam_channel", "cbam", "cscnn", "se_cscnn", "cbam_channel_cscnn", "cscnn_channel", "cscnn_spatial"
    ] = "cscnn"
    attention_layers: int = 0  # L': attention on the last L' conv layers; 0 = every conv layer but conv1
    channel_prior_dim: int = 20  # C'
    spatial_prior_size: int = 7  # H' = W'
    reduction: int = 4
    visual_dim: int = 150  # x_v
    deep_layers: list[int] = dataclasses.field(default_factory=lambda: [1024, 512, 256])
    cross_layers: int = 3
    cross_type: Literal["v1", "v2"] = "v1"
    projection_dim: Optional[int] = None  # DCN-v2 low rank
    # Regularisation (issue 12). The defaults are starting points; the lead picks the final
    # values on the scenario suite (`tfvctr demo-data --scenario`), so keep them in one place.
    dropout: float = 0.0  # after each deep layer of the DCN head (the papers use none)
    # L2 on the non-visual embedding tables, lambda * sum(W^2) per step (FuxiCTR's
    # `embedding_regularizer`, which is lambda/2 * ||W||^2: ours = theirs / 2). Ad-side ids
    # (brand, keywords) let the head memorise ads seen in training; shrinking rarely seen rows
    # keeps cold ads from being scored by noise. Dense: it touches whole tables every step.
    embedding_l2: float = 1e-5
    # Dropout on x_v where it joins the head (CSCNN Eq. 3): the tower cannot hand the head one
    # exact per-ad code, the memorisation issue 12 measured (0.685 train vs 0.594 eval AUC).
    visual_dropout: float = 0.0
    # A fixed "wide" part under the DCN / CSCNN-DCN head (tfvctr.layers.LinearLogit): "prefit"
    # fits an L2 logistic regression on the train split's non-visual ids before training
    # (tfvctr.training.linear_prefit, to convergence, its L2 picked by valid AUC from
    # `linear_l2_grid`) and the head's logit becomes that regression's plus the deep part's,
    # which starts at zero. The step-wise fit of the head leaves rarely seen ids away from the
    # L2 optimum (issue 12: the DCN sat below scikit-learn's regression on most scenarios).
    # "none" by default until the scenario suite says it pays (docs/generalisation_experiments.md,
    # "Eighth pass").
    linear: Literal["none", "prefit"] = "none"
    # L2 strengths lambda of the pre-fit, in sum(log loss) + lambda/2 * ||w||^2 (the bias is
    # not penalised): lambda = 1/C of scikit-learn's LogisticRegression, this grid = the floor's C grid.
    linear_l2_grid: list[float] = dataclasses.field(
        default_factory=lambda: [1000.0, 300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1]
    )
    # L-BFGS stops when no gradient component of the mean objective exceeds this (scikit-learn's
    # `tol`). Not the exact optimum: measured, the early stop kept rarely seen ids' weights
    # nearer zero and scored better on the eval day than the exact fit (1e-10) did.
    linear_tolerance: float = 1e-4
    num_categories: Optional[int] = None  # None: the size of the category vocabulary + 1 (unknown)
    deepctr: DeepCTRConfig = dataclasses.field(default_factory=DeepCTRConfig)
    vbpr: VBPRConfig = dataclasses.field(default_factory=VBPRConfig)

    def validate(self, where: str) -> None:
        _positive(self.visual_dim, f"{where}.visual_dim")
        _positive(self.reduction, f"{where}.reduction")
        _positive(self.spatial_prior_size, f"{where}.spatial_prior_size")
        if self.backbone_width <= 0:
            raise ConfigError(f"{where}.backbone_width: expected a positive number, received {self.backbone_width}")
        if self.cross_layers < 0:
            raise ConfigError(f"{where}.cross_layers: expected an integer >= 0, received {self.cross_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: expected a value in [0, 1), received {self.dropout}")
        if not 0.0 <= self.visual_dropout < 1.0:
            raise ConfigError(f"{where}.visual_dropout: expected a value in [0, 1), received {self.visual_dropout}")
        if self.embedding_l2 < 0:
            raise ConfigError(f"{where}.embedding_l2: expected a value >= 0, received {self.embedding_l2}")
        if not self.linear_l2_grid or any(v <= 0 for v in self.linear_l2_grid):
            raise ConfigError(f"{where}.linear_l2_grid: expected a non-empty list of numbers > 0, received {self.linear_l2_grid}")
        if self.linear_tolerance <= 0:
            raise ConfigError(f"{where}.linear_tolerance: expected a value > 0, received {self.linear_tolerance}")
        if self.linear == "prefit" and self.architecture not in ("dcn", "cscnn_dcn"):
            raise ConfigError(
                f"{where}.linear: prefit applies to architectures 'dcn' and 'cscnn_dcn' (the Deep & Cross head); "
                f"received architecture {self.architecture!r}"
            )
        if self.vbpr.loss == "pairwise" and self.architecture != "vbpr":
            raise ConfigError(
                f"{where}.vbpr.loss: pairwise training applies to architecture 'vbpr' only; "
                f"received architecture {self.architecture!r}"
            )
        if not self.deep_layers or any(u < 1 for u in self.deep_layers):
            raise ConfigError(f"{where}.deep_layers: expected a non-empty list of positive integers, received {self.deep_layers}")


@dataclasses.dataclass
class AugmentConfig:
    # Augmentation strength. A CNN that sees each ad's one image every epoch can learn the
    # ad, not the visual rule (issue 12); jitter makes the exact pixels useless as an id. But
    # both erase information: a shift of up to `crop_padding` px blurs where an object is,
    # and `flip` swaps left and right, so weaken them when the image effect is positional.
    random_crop: bool = True
    crop_padding: int = 4  # translation strength in pixels (0: none)
    flip: bool = True  # horizontal


@dataclasses.dataclass
class TrainingConfig:
    """The training loop (tfvctr.training) settings."""

    steps: int = 1000
    ads_per_batch: int = 32  # n ads per global batch, each with all its <= K impressions
    sampling: Literal["grouped", "alg1", "ungrouped"] = "grouped"
    impressions_per_ad: int = 25  # k of DeepCTR Alg. 1 (sampling: alg1)
    optimizer: Literal["adam", "sgd", "adagrad"] = "adam"  # sgd: with momentum 0.9
    # The CNN's optimizer; None: the same as `optimizer`. SGD suits the embedding tables and the
    # head (a step in proportion to the gradient, so rarely seen ids move little: docs/training.md),
    # Adam the CNN, whose gradients differ in scale from layer to layer.
    cnn_optimizer: Optional[Literal["adam", "sgd", "adagrad"]] = None
    learning_rate: float = 0.001
    cnn_learning_rate: Optional[float] = None  # None: same as learning_rate (DeepCTR: 0.001 vs 0.1)
    decay_steps: list[int] = dataclasses.field(default_factory=list)  # step decay boundaries
    decay_factor: float = 0.1
    # "step": x decay_factor at each of decay_steps. "cosine": from learning_rate down to
    # learning_rate * final_lr_ratio over the run's steps (decay_steps must then be empty).
    lr_schedule: Literal["step", "cosine"] = "step"
    final_lr_ratio: float = 0.0
    # Decoupled weight decay (AdamW: w -= lr * weight_decay * w) of the CNN and the head's
    # dense/cross weights. Embedding tables are excluded: `model.embedding_l2` regularises them
    # (decaying rows that a step did not look up would erase rarely seen ids).
    weight_decay: float = 0.0
    cnn_weight_decay: Optional[float] = None  # None: same as weight_decay
    clip_norm: Optional[float] = None
    # An exponential moving average of the trained weights (tfvctr.training.averaging): what model
    # selection scores and model.keras holds, with this decay per step (0: off, the last weights).
    # Rarely seen ids jump from batch to batch under SGD; the average keeps their trend
    # (docs/generalisation_experiments.md, "Sixth pass").
    ema_decay: float = 0.0
    mixed_precision: bool = False  # float16 compute on GPU only
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 50
    seed: int = 0
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    pretrained_cnn: Optional[str] = None  # weights from `tfvctr pretrain`
    freeze_cnn: bool = False
    shuffle_buffer: int = 1000
    # Model selection on DATA/valid (tfvctr.training.selection). Every `eval_every` steps the
    # valid split is scored (each evaluation is also a checkpoint, so a resumed run keeps the
    # best-so-far); the best step by `selection_metric` is what model.keras holds. Without a
    # valid split training runs all `steps` and keeps the last weights.
    eval_every: int = 200
    selection_metric: Literal["valid_auc", "valid_cold_auc", "valid_logloss"] = "valid_auc"
    patience: int = 5  # evaluations without improvement before stopping; 0: never stop early
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    # Keep the latest evaluation within this of the best value so far instead of the best's
    # own step (in the metric's units; 0: the best's step). Valid figures are noisy, and the
    # argmax often lands on an early, undertrained step by luck (docs/training.md).
    selection_tolerance: float = 0.0
    # The logit's bias starts at the train split's click log-odds, log(p / (1 - p)), instead of
    # 0 (a 50 % CTR): otherwise the first few hundred steps of a short run are spent moving
    # the bias from 0.5 to a CTR of a few percent (docs/training.md). "zero": Keras' default.
    output_bias: Literal["base_rate", "zero"] = "base_rate"
    # Post-hoc calibration of the served CTR (tfvctr.calibration, docs/daily.md): "platt" fits
    # ctr = sigmoid(a * (logit + log w) + b) on the valid split (never downsampled) at the chosen
    # step, after model selection; evaluate and the export apply it. It corrects the spread of
    # the CTRs (a model over-confident after many passes over downsampled non-clicks), which
    # He et al.'s log w cannot. Below calibration_min_clicks clicks (or non-clicks) in the
    # valid split the fit is skipped with a warning and the CTRs stay uncalibrated.
    calibration: Literal["none", "platt"] = "none"
    calibration_min_clicks: int = 100
    # Op determinism (tf.config.experimental.enable_op_determinism, for the whole process):
    # two runs with the same seed and data give identical weights on CPU (docs/bad_input.md).
    deterministic: bool = False
    # Several workers (TF_CONFIG): how long a worker waits for its peers to start, and how long
    # a peer may stay silent before it counts as dead; then the worker stops with one line and
    # exit 2 instead of hanging (tfvctr.training.strategy, docs/training.md "Workers that die").
    peer_timeout_seconds: float = 120.0

    def validate(self, where: str) -> None:
        _positive(self.steps, f"{where}.steps")
        if not self.peer_timeout_seconds >= 1:  # `not >=` also refuses nan
            raise ConfigError(f"{where}.peer_timeout_seconds: expected a number of seconds >= 1, "
                              f"received {self.peer_timeout_seconds}")
        _positive(self.eval_every, f"{where}.eval_every")
        _positive(self.calibration_min_clicks, f"{where}.calibration_min_clicks")
        if self.patience < 0:
            raise ConfigError(f"{where}.patience: expected an integer >= 0, received {self.patience}")
        if self.min_delta < 0:
            raise ConfigError(f"{where}.min_delta: expected a value >= 0, received {self.min_delta}")
        if self.selection_tolerance < 0:
            raise ConfigError(f"{where}.selection_tolerance: expected a value >= 0, received {self.selection_tolerance}")
        for name in ("weight_decay", "cnn_weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{where}.{name}: expected a value >= 0, received {value}")
        _positive(self.ads_per_batch, f"{where}.ads_per_batch")
        _positive(self.impressions_per_ad, f"{where}.impressions_per_ad")
        _positive(self.checkpoint_every, f"{where}.checkpoint_every")
        _positive(self.keep_checkpoints, f"{where}.keep_checkpoints")
        if self.learning_rate <= 0:
            raise ConfigError(f"{where}.learning_rate: expected a positive number, received {self.learning_rate}")
        if self.lr_schedule == "cosine" and self.decay_steps:
            raise ConfigError(
                f"{where}.decay_steps: a cosine lr_schedule decays over the whole run; expected no decay_steps, "
                f"received {self.decay_steps}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{where}.ema_decay: expected a value in [0, 1) (0: no averaging), received {self.ema_decay}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ConfigError(f"{where}.final_lr_ratio: expected a value in [0, 1], received {self.final_lr_ratio}")
        if sorted(self.decay_steps) != self.decay_steps:
            raise ConfigError(f"{where}.decay_steps: expected increasing step numbers, received {self.decay_steps}")


@dataclasses.dataclass
class EmbedConfig:
    """The visual-embedding table job (beam_jobs.embed_ads), CSCNN §3.4.2."""

    # 1.0: every catalog ad. Below 1: the ads carrying this share of the most recent split's
    # impressions (ad_counts.jsonl), plus every ad newer than the data (docs/formats.md §4).
    coverage: float = 1.0
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = 64

    def validate(self, where: str) -> None:
        if not 0.0 < self.coverage <= 1.0:
            raise ConfigError(f"{where}.coverage: expected a value in (0, 1], received {self.coverage}")


@dataclasses.dataclass
class TuneConfig:
    """`tfvctr tune` (tfvctr.tuning, docs/tuning.md): an Optuna search over `params`, scored on the valid split.

    `params` maps a config key path to a range, e.g.::

        training.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}   # float (or int) range
        model.deep_layers: {choices: [[64, 32], [128, 64, 32]]}           # any values

    Every path and both ends of every range are checked against the config on load.
    """

    trials: int = 20  # finished trials the study should hold (across resumed runs)
    timeout_minutes: Optional[float] = None  # no new trial starts after this long (per run); None: no limit
    steps_per_trial: Optional[int] = None  # training.steps of each trial; None: training.steps
    metric: Optional[Literal["valid_auc", "valid_cold_auc", "valid_logloss"]] = None  # None: training.selection_metric
    seed: int = 0  # of the sampler
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["none", "median"] = "none"
    prune_every: Optional[int] = None  # median pruner: steps between checks; None: ~steps_per_trial / 4
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self, where: str, config: "Config") -> None:
        _positive(self.trials, f"{where}.trials")
        if self.timeout_minutes is not None and self.timeout_minutes <= 0:
            raise ConfigError(f"{where}.timeout_minutes: expected a positive number, received {self.timeout_minutes}")
        if self.steps_per_trial is not None:
            _positive(self.steps_per_trial, f"{where}.steps_per_trial")
        if self.prune_every is not None:
            _positive(self.prune_every, f"{where}.prune_every")
        from tfvctr.tuning import search_space  # tuning imports this module

        search_space(config, where)


@dataclasses.dataclass
class DailyConfig:
    """`tfvctr daily` (tfvctr.daily, docs/daily.md): one new day in, a checked new version served."""

    window_days: int = 3  # train on the last N days' data; older dated folders are deleted
    warm_steps: Optional[int] = None  # steps of a warm-started day; None: training.steps (the first day always)
    new_day_repeat: int = 1  # the new day's train shards are read this many times per pass over the window
    promote_metric: Literal["auc", "log_loss"] = "auc"  # on day D's held-out ads (the valid split)
    promote_margin: float = 0.002  # promote unless the new model is worse than the served one by more than this
    # Keep the promoted model's CNN fixed on warm-started days (only the head learns): the
    # embedding table is then extended with new or changed ads instead of rebuilt.
    freeze_cnn: bool = False
    # Warm-started days train at training.learning_rate (and cnn_learning_rate) times this:
    # a fresh Adam at the from-scratch rate undoes part of a trained model (measured in
    # docs/daily.md, "Warm start vs from scratch").
    warm_learning_rate_factor: float = 0.25
    # Vocabularies of `vocabulary: auto` features (and vocab/category.txt): "frozen" from the
    # first day, or "grow": a value enters on the first day its train split counts it
    # `min_frequency` times, appended (old ids never move); the warm start copies the old
    # embedding rows into the enlarged tables (docs/daily.md).
    vocabulary: Literal["frozen", "grow"] = "frozen"

    def validate(self, where: str) -> None:
        _positive(self.window_days, f"{where}.window_days")
        _positive(self.new_day_repeat, f"{where}.new_day_repeat")
        if self.warm_steps is not None:
            _positive(self.warm_steps, f"{where}.warm_steps")
        if self.promote_margin < 0:
            raise ConfigError(f"{where}.promote_margin: expected a value >= 0, received {self.promote_margin}")
        if not self.warm_learning_rate_factor > 0:
            raise ConfigError(f"{where}.warm_learning_rate_factor: expected a positive number, received "
                              f"{self.warm_learning_rate_factor}")


@dataclasses.dataclass
class Config:
    dataset: DatasetConfig
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)
    daily: DailyConfig = dataclasses.field(default_factory=DailyConfig)
    name: str = "tfvctr"

    def validate(self, where: str = "config") -> "Config":
        self.dataset.validate(f"{where}: dataset")
        self.model.validate(f"{where}: model")
        self.training.validate(f"{where}: training")
        self.embed.validate(f"{where}: embed")
        self.tune.validate(f"{where}: tune", self)
        self.daily.validate(f"{where}: daily")
        self._validate_vbpr_features(where)
        return self

    def _validate_vbpr_features(self, where: str) -> None:
        vbpr, table = self.model.vbpr, self.model.vbpr.features_table
        is_vbpr = self.model.architecture == "vbpr" and vbpr.variant == "vbpr"
        if table and not is_vbpr:
            raise ConfigError(f"{where}: model.vbpr.features_table: fixed features apply to architecture 'vbpr' with "
                              f"variant 'vbpr' only; received architecture {self.model.architecture!r}, variant {vbpr.variant!r}")
        if not is_vbpr:
            return
        if not self.training.pretrained_cnn and not table:
            # VBPR scores *fixed* features of a pre-trained CNN; a frozen random tower is not it.
            raise ConfigError(
                f"{where}: model.vbpr.variant: vbpr needs fixed features of a pre-trained CNN; set "
                f"training.pretrained_cnn to a `tfvctr pretrain` model dir or model.vbpr.features_table to a "
                f"`tfvctr embed` table (or use variant dvbpr to train the CNN)"
            )
        if self.training.pretrained_cnn and table:
            raise ConfigError(f"{where}: model.vbpr: set one source of VBPR's fixed features, training.pretrained_cnn "
                              f"(a tower run on the images) or model.vbpr.features_table (vectors by ad_id), not both")
        if table:
            ad = next((f for f in self.dataset.features if f.name == "ad_id"), None)
            if ad is None or ad.kind != "categorical" or ad.source != "ad" or not ad.vocabulary or ad.vocabulary == "auto":
                # The table is keyed by ad_id: the model maps each ad_id id to its row through the
                # vocabulary file. `auto` holds the train ads only (cold ads would all be out of
                # vocabulary, with no image features: VBPR's point), and hashed ids collide.
                raise ConfigError(
                    f"{where}: model.vbpr.features_table: the table is read by ad_id; declare the feature "
                    f"{{name: ad_id, source: ad, kind: categorical, vocabulary: FILE}} with FILE the catalog's ad ids, "
                    f"one a line (cold ads included; `tfvctr.models.vbpr.write_table_vocabulary(TABLE, FILE)` "
                    f"writes the table's), not vocabulary: auto or hash_buckets"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _positive(value: Any, where: str, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{where}: expected a value >= {minimum}, received {value}")


# --------------------------------------------------------------------------- loading


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the type hint `tp` and converts mappings to dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, received {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, received {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, received {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _from_mapping(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, received {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, received {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads `1e-4` (no dot) as text; every user writes it so.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, received {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, received {value!r}")
        return value
    return value


def _from_mapping(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, received {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if not where.endswith(": ") else where
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key; allowed keys: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: missing required key")
    return cls(**kwargs)


def config_from_dict(data: Any, source: str = "config") -> Config:
    """Builds and validates a `Config` from parsed YAML; errors name `source`."""
    return _from_mapping(Config, data, f"{source}: ").validate(source)


def apply_overrides(data: Any, overrides: list[str], source: str = "--set") -> Any:
    """Applies `key.path=value` overrides (values parsed as YAML) to parsed config data.

    Lets one config drive variants from the command line, e.g. the image-free baseline:
    `--set model.architecture=dcn`. Keys are validated with the rest of the config.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source} {item!r}: expected KEY.PATH=VALUE, e.g. model.architecture=dcn")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source} {item!r}: {part} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str, overrides: Optional[list[str]] = None) -> Config:
    """Loads and validates a YAML config from a local or gs:// path.

    `overrides` are `key.path=value` strings applied before validation (`--set`).
    """
    if not fs.exists(path):
        raise ConfigError(f"{path}: config file not found")
    with fs.open(path, "r") as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = apply_overrides(data, overrides)
        path = f"{path} (with --set {' '.join(overrides)})"
    return config_from_dict(data, path)


def save_config(config: Config, path: str) -> None:
    with fs.open(path, "w") as f:
        f.write(config.to_yaml())
