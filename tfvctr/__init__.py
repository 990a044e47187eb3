"""tfvctr: visual-aware CTR prediction (DeepCTR 2016, CSCNN KDD 2020) on TensorFlow 2.21 + Keras 3.

Sub-packages: `config` (the YAML config), `io` (tables, files), `demo_data`, `features`,
`layers`, `models`, `data` (tf.data input), `training`, `metrics`, `evaluation`; the
`tfvctr` console script is `tfvctr.cli`. File formats between stages: docs/formats.md.
"""

__version__ = "0.1.0"
