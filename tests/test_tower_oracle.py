"""benchmarks/tower_oracle.py: the tower told the true visual effect, on a tiny demo-data folder."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("tower_oracle")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle_raw")
    subprocess.run([sys.executable, "-m", "tfvctr.cli", "demo-data", "--out", str(out), "--ads", "80",
                    "--impressions", "400", "--image-size", "16", "--format", "csv", "--no-progress"],
                   check=True, cwd=REPO, capture_output=True)
    return out


def test_docstring_examples():
    assert doctest.testmod(_load()).failed == 0


def test_reads_the_true_effects_and_keeps_cold_ads_apart(raw):
    data = _load().read_ads(str(raw))
    effects = {line.split(",")[0]: line.split(",") for line in (raw / "ad_effects.csv").read_text().splitlines()[1:]}
    assert len(data["target"]) == len(effects) == 80
    assert 0 < data["cold"].sum() < 80
    assert data["category"].min() >= 1  # row 0 is the unknown category, as in training
    expected = sorted(float(v[-1]) for v in effects.values())
    assert np.allclose(sorted(data["target"]), expected, atol=1e-6)


def test_compares_two_backbones_in_one_run(raw, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert _load().main(["--raw", str(raw), "--backbones", "cnnf,deepctr17", "--steps", "4", "--report-every", "2",
                         "--image-size", "16", "--set", "model.backbone_width=0.125", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["backbone"], r["step"]) for r in rows] == [("cnnf", 2), ("cnnf", 4), ("deepctr17", 2), ("deepctr17", 4)]
    for r in rows:
        assert -1.0 <= r["cold_r"] <= 1.0 and -1.0 <= r["train_r"] <= 1.0
    assert "last step, mean over seeds" in capsys.readouterr().out


def test_refuses_a_folder_without_the_true_effects(tmp_path):
    (tmp_path / "ads.csv").write_text("ad_id,category,image\n")  # a catalogue, but no simulator output
    with pytest.raises(SystemExit, match="has no ad_effects.csv"):
        _load().main(["--raw", str(tmp_path)])
