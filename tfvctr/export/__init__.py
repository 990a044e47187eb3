"""Export for TF Serving (docs/export.md): a SavedModel with the visual-embedding table inside.

Modules: `table` (read and check the table; fallback rows; the ad_id asset file),
`signature` (the serving graph and its two signatures), `warmup` (real eval rows; the
`assets.extra` warmup file), `protos` (TF Serving's `PredictionLog` subset), `check`
(TF Serving's TF1 loader in a fresh process vs the Keras model), `exporter` (the whole
export, version numbering, `--check`).
"""

from tfvctr.export.exporter import check_export, export_model, next_version

__all__ = ["check_export", "export_model", "next_version"]
