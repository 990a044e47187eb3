"""The names of the files and folders that stages exchange (docs/formats.md).

Stages meet only through files, so every name a stage writes and another reads lives
here, once. Paths are joined with `tfvctr.io.fs.join` (local paths and `gs://` alike).
A module of constants and tiny helpers only: importing it costs nothing, so the Beam
workers (which do not import TensorFlow) can use it too.
"""

from __future__ import annotations

# --------------------------------------------------------------- data dir (preprocess)
TRAIN = "train"
VALID = "valid"  # held out of the train days: the model-selection split
EVAL = "eval"
SPLITS = (TRAIN, VALID, EVAL)
SHARD_PATTERNS = ("*.tfrecord", "*.tfrecord.gz")
VOCAB_DIR = "vocab"
CATEGORY_VOCAB = "category.txt"
STATS = "stats.json"
AD_COUNTS = "ad_counts.jsonl"
DEAD_LETTER_DIR = "dead_letter"
MANIFEST = "manifest.json"

# --------------------------------------------------------------- model dir (train)
CONFIG = "config.yaml"
DATA_DIR_POINTER = "data_dir.txt"
CHECKPOINTS_DIR = "checkpoints"
MODEL = "model.keras"
VISUAL_TOWER = "visual_tower.keras"
TENSORBOARD_DIR = "tensorboard"
METRICS = "metrics.json"
ROC_PLOT = "roc.png"  # beside metrics.json
CALIBRATION_PLOT = "calibration.png"
FINGERPRINT = "fingerprint.json"  # what the model was trained on (features, vocabularies, image size, architecture)
SELECTION = "selection.json"  # the validation history and the chosen (best) step
NEGATIVE_SAMPLING = "negative_sampling.json"  # the train split's negative sampling rate (tfvctr.daily.recalibration)
CALIBRATION = "calibration.json"  # Platt slope and intercept fitted on the valid split (tfvctr.calibration)
LINEAR_PREFIT = "linear_prefit.json"  # model.linear: prefit: the L2 grid, its valid AUCs, the chosen L2

# --------------------------------------------------------------- embedding table (embed)
TABLE_INDEX = "index.json"
CATEGORY_MEANS = "category_means.npz"


def table_shard(index: int) -> str:
    """The name of shard `index` of the visual-embedding table."""
    return f"part-{index:05d}.npz"


def vocab_file(feature: str) -> str:
    """`vocab/<feature>.txt`, relative to the data dir."""
    return f"{VOCAB_DIR}/{feature}.txt"


# --------------------------------------------------------------- export (TF Serving layout)
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_AD_IDS = "ad_ids.txt"  # assets/: one ad_id per line, line i = row i of the table variable
EXPORT_INFO = "tfvctr_export.json"  # assets.extra/: what was exported and the check's result

# --------------------------------------------------------------- saliency dir (saliency)
SALIENCY_INDEX = "saliency.json"  # the ads shown, their CTRs, and which picture holds them
SPATIAL_PRIORS_PLOT = "spatial_priors.png"  # CSCNN's learned A's, one row per category


def saliency_plot(category: str) -> str:
    """`saliency_<category>.png`: the category's highest- and lowest-CTR ads (any character
    outside [A-Za-z0-9_-] of the category becomes `_`)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in category)
    return f"saliency_{safe or '_'}.png"


# --------------------------------------------------------------- tune dir (tune)
TUNE_STUDY = "study.db"  # the Optuna study (SQLite): re-running `tfvctr tune` continues it
TUNE_TRIALS_DIR = "trials"  # trials/NNNN/: one model dir per trial
TUNE_TRIALS_CSV = "trials.csv"
TUNE_BEST_CONFIG = "best_config.yaml"  # a full config for `tfvctr train`
