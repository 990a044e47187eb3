"""`export_model` and `check_export`: a trained model dir + its table → `BASE/<name>/<version>/`.

The SavedModel is written to a hidden folder next to the version folders and renamed to
its version number only after the fresh-process check passed: TF Serving watches
`BASE/<name>/` and loads any new all-digit folder at once, so it must never see a
half-written or unchecked export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Optional

from tfvctr import calibration, layout
from tfvctr.config import Config, load_config
from tfvctr.daily import recalibration
from tfvctr.errors import DataError, TfvctrError
from tfvctr.export import check as check_lib
from tfvctr.export import warmup as warmup_lib
from tfvctr.export.table import Table, load_table, write_ad_ids
from tfvctr.fingerprint import check_model_data, trained_data_dir
from tfvctr.io import fs

SAMPLE_ROWS = 100
Log = Optional[Callable[[str], None]]


def next_version(model_base: str) -> int:
    """1 + the largest all-digit folder name under `BASE/<name>/` (1 when there is none)."""
    if not os.path.isdir(model_base):
        return 1
    versions = [int(d) for d in os.listdir(model_base) if d.isdigit()]
    return max(versions, default=0) + 1


def _trained_data_dir(model_dir: str, data_dir: Optional[str]) -> str:
    trained_on = trained_data_dir(model_dir, data_dir)
    if trained_on is None:
        raise DataError(f"{fs.join(model_dir, layout.DATA_DIR_POINTER)}: not found; pass --data (the `tfvctr "
                        "preprocess` output the model was trained on)")
    return trained_on


def load_model_dir(model_dir: str, data_dir: Optional[str] = None) -> tuple[Config, Any, Any, str]:
    """`(config, model, encoder, vocab_dir)` of a `tfvctr train` model dir; one-line errors otherwise."""
    import keras

    import tfvctr.models  # noqa: F401 - registers the model classes for load_model
    from tfvctr.features import FeatureEncoder

    # The model dir is complete and fits the data (tfvctr.fingerprint: unfinished training,
    # changed vocabularies, another feature set); then the files this stage reads.
    check_model_data(model_dir, data_dir, "export")
    config_path, model_path = fs.join(model_dir, layout.CONFIG), fs.join(model_dir, layout.MODEL)
    for path in (config_path, model_path):
        if not fs.exists(path):
            raise DataError(f"{model_dir}: not a model dir ({os.path.basename(path)} missing); pass the --model-dir "
                            f"of `tfvctr train`")
    config = load_config(config_path)
    vocab_dir = _trained_data_dir(model_dir, data_dir)
    encoder = FeatureEncoder.from_data_dir(config.dataset, vocab_dir)
    model = keras.saving.load_model(model_path, compile=False)
    if getattr(model, "visual_tower", None) is None or getattr(model, "head", None) is None:
        raise DataError(f"{model_dir}: model.architecture {config.model.architecture!r} has no visual tower; the "
                        f"export serves models with a visual-embedding table")
    return config, model, encoder, vocab_dir


def _visual_dim(model: Any) -> int:
    return int(model.visual_tower.output.shape[-1])


def _info_path(export_dir: str) -> str:
    return fs.join(export_dir, layout.WARMUP_DIR, layout.EXPORT_INFO)


def run_check(export_dir: str, config: Config, model: Any, encoder: Any, table: Table,
              logit_offset: float = 0.0, logit_scale: float = 1.0) -> dict[str, Any]:
    """Fresh-process TF1 outputs vs the Keras reference on every warmup request (see `check`)."""
    requests = warmup_lib.read_warmup(export_dir)
    served = check_lib.run_in_fresh_process(export_dir)
    expected = [check_lib.reference(model, encoder, table, config, sig, inputs, logit_offset, logit_scale)
                for sig, inputs in requests]
    return check_lib.compare(expected, served, [sig for sig, _ in requests])


def export_model(model_dir: str, table_path: str, out: str, version: Optional[int] = None,
                 data_dir: Optional[str] = None, sample_rows: int = SAMPLE_ROWS, log: Log = None) -> dict[str, Any]:
    """Writes, checks and publishes `OUT/<config name>/<version>/`; returns its export info.

    Args:
        model_dir: a `tfvctr train` model dir.
        table_path: the `tfvctr embed` table of that model.
        out: the TF Serving model base path (`--model_base_path` is `OUT/<name>`).
        version: the version number (default: the next free one).
        data_dir: preprocess output for the warmup/check rows (default: the training data,
            `MODEL/data_dir.txt`); its eval split is read.
        sample_rows: eval impressions in the warmup requests and the check.
        log: progress lines.
    """
    from tfvctr.export.signature import ServingModule

    start = time.time()
    config, model, encoder, vocab_dir = load_model_dir(model_dir, data_dir)
    table = load_table(table_path, encoder.vocabularies["category"], _visual_dim(model))
    model_base = os.path.join(out, config.name)
    if version is None:
        version = next_version(model_base)
    elif version < 1:
        raise TfvctrError(f"--version: expected a positive integer, received {version}")
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise TfvctrError(f"{final}: version {version} exists already; omit --version for the next free one")
    rows = warmup_lib.sample_rows(config, data_dir or vocab_dir, sample_rows)
    os.makedirs(model_base, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_base)  # not all digits: TF Serving ignores it
    try:
        asset_dir = tempfile.mkdtemp()
        ad_ids_path = os.path.join(asset_dir, layout.EXPORT_AD_IDS)
        write_ad_ids(table, ad_ids_path)
        # Negative downsampling (M/negative_sampling.json): served CTRs recalibrated in the graph.
        rate = recalibration.model_rate(model_dir)
        # With training.calibration: platt also Platt's a and b (M/calibration.json): one affine map.
        platt = calibration.read_calibration(model_dir)
        scale, offset = calibration.affine(rate, platt)
        module = ServingModule(config, model, encoder, table, ad_ids_path, logit_offset=offset, logit_scale=scale)
        module.write(staging)
        shutil.rmtree(asset_dir, ignore_errors=True)
        warmup_lib.write_warmup(staging, config.name, warmup_lib.warmup_requests(config, rows))
        if log:
            log(f"export: wrote {table.rows} ads x {table.dim} ({table.dtype}); checking through the TF1 loader in a "
                f"fresh process ...")
        result = run_check(staging, config, model, encoder, table, offset, scale)
        info = {
            "name": config.name, "version": version, "model_dir": os.path.abspath(model_dir),
            "table": os.path.abspath(table_path), "vocab_dir": vocab_dir, "rows": table.rows, "dim": table.dim,
            "dtype": table.dtype, "fallback_rows": int(table.fallback.shape[0]),
            "fused_path": module.fused is not None, "negative_sampling_rate": rate,
            **({"calibration": platt} if calibration.slope_intercept(platt) else {}),
            "saved_model_pb_bytes": os.path.getsize(os.path.join(staging, "saved_model.pb")),
            "check": result,
        }
        with open(_info_path(staging), "w") as f:
            json.dump(info, f, indent=1)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    info["path"] = final
    info["seconds"] = round(time.time() - start, 1)
    return info


def check_export(export_dir: str, log: Log = None) -> dict[str, Any]:
    """Re-runs the fresh-process check of an existing export (model dir and table from its info file)."""
    path = _info_path(export_dir)
    if not os.path.isdir(export_dir) or not fs.exists(path):
        raise DataError(f"{export_dir}: not a tfvctr export ({layout.WARMUP_DIR}/{layout.EXPORT_INFO} missing); "
                        f"pass BASE/<name>/<version>")
    with fs.open(path) as f:
        info = json.load(f)
    config, model, encoder, _ = load_model_dir(info["model_dir"], info.get("vocab_dir"))
    table = load_table(info["table"], encoder.vocabularies["category"], _visual_dim(model))
    if log:
        log(f"export --check: {export_dir} through the TF1 loader in a fresh process ...")
    scale, offset = calibration.affine(float(info.get("negative_sampling_rate", 1.0)), info.get("calibration"))
    return run_check(export_dir, config, model, encoder, table, offset, scale)
