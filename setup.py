"""tfvctr: visual-aware CTR prediction (DeepCTR 2016, CSCNN KDD 2020) on TensorFlow 2.21 + Keras 3."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # TF 2.21: the CPU wheel is what build machines and Dataflow CPU workers need; on GPU
    # hosts install `tensorflow[and-cuda]==2.21.*` first (README "GPU install").
    "tensorflow-cpu>=2.21,<2.22; platform_machine == 'x86_64'",
    "tensorflow>=2.21,<2.22; platform_machine != 'x86_64'",
    "keras>=3.10,<4",
    "keras-rs>=0.2",
    "apache-beam[gcp]>=2.77,<2.78",
    "numpy",
    "pyyaml>=6",
    "pyarrow",
    "pillow>=10",
    "tqdm",
    "matplotlib",
    "tensorboard>=2.21,<2.22",  # `tensorboard --logdir M/tensorboard`; tensorflow-cpu does not pull it in
    "optuna>=4.0",  # `tfvctr tune`: samplers, pruners, a resumable SQLite study (docs/tuning.md)
    "aiohttp>=3.9,<4",  # `tfvctr serve`: the TF Serving REST dev server's HTTP stack (docs/serving.md)
    "google-crc32c",  # TFRecord framing of the preprocess job's record writer (beam_jobs/transforms/write.py)
    "zstandard",  # the preprocess job's packed join values (beam_jobs/records.py); Beam requires it too
    "scipy",  # `model.linear: prefit`: the L-BFGS fit of the pre-fitted regression (tfvctr/training/linear_prefit.py)
]

setup(
    name="tfvctr",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["tfvctr", "tfvctr.*", "beam_jobs", "beam_jobs.*", "serving", "serving.*"]),
    # tfvctr/configs is a link to configs/ in the checkout; a built wheel holds copies of the YAMLs.
    package_data={"tfvctr": ["configs/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": ["pytest>=8", "pytest-timeout", "pytest-xdist", "scikit-learn", "ruff"]},
    entry_points={"console_scripts": ["tfvctr=tfvctr.cli:main"]},
)
