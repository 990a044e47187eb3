"""Shared pytest set-up: quiet TF, deterministic seeds, repo paths."""

import importlib.util
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_benchmark(name: str, module_name: str = ""):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package), registered in
    sys.modules under `module_name` (default NAME): dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(module_name or name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repo_root() -> pathlib.Path:
    return REPO
