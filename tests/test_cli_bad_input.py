"""Issue 2's bad inputs, through the `tfvctr` console script as a user meets them.

Each gives one clear line naming the file and the problem, with no traceback (exit 2),
or, for a bad row inside an otherwise good table, a dead letter the job reports by reason.
"""

import csv
import os
import subprocess
import sys

import pytest
import yaml

from tfvctr.demo_data.generate import generate

TFVCTR = [sys.executable, "-m", "tfvctr.cli"]


def _tfvctr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TFVCTR, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, repo_root=None):
    import pathlib

    root = tmp_path_factory.mktemp("tiny")
    generate(str(root), num_ads=12, num_impressions=300, image_size=16, formats=("csv",))
    config = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    config["dataset"]["image_size"] = 16
    config["dataset"]["num_shards"] = 1
    (root / "demo16.yaml").write_text(yaml.safe_dump(config))
    return root


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tfvctr ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_unknown_feature_kind_is_one_line_naming_the_file(tiny):
    config = yaml.safe_load((tiny / "demo16.yaml").read_text())
    config["dataset"]["features"][1]["kind"] = "onehot"
    bad = tiny / "bad_kind.yaml"
    bad.write_text(yaml.safe_dump(config))
    line = _one_error_line(_tfvctr("preprocess", "--config", str(bad), "--ads", str(tiny / "ads.csv"),
                                   "--impressions", str(tiny / "impressions.csv"), "--out", str(tiny / "o1")))
    assert f"{bad}: dataset.features[1].kind: expected one of 'categorical', 'multi', 'numeric', received 'onehot'" in line


def test_table_missing_ad_id_is_one_line_naming_the_file_and_column(tiny):
    rows = list(csv.DictReader(open(tiny / "ads.csv")))
    bad = tiny / "ads_no_id.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "ad_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    line = _one_error_line(_tfvctr("preprocess", "--config", str(tiny / "demo16.yaml"), "--ads", str(bad),
                                   "--impressions", str(tiny / "impressions.csv"), "--out", str(tiny / "o2")))
    assert f"{bad}: missing column 'ad_id'" in line


def test_missing_image_is_dead_lettered_with_its_path_and_reported(tiny):
    rows = list(csv.DictReader(open(tiny / "ads.csv")))
    rows[0]["image"] = "images/does_not_exist.jpg"
    bad = tiny / "ads_missing_image.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = _tfvctr("preprocess", "--config", str(tiny / "demo16.yaml"), "--ads", str(bad),
                     "--impressions", str(tiny / "impressions.csv"), "--out", str(tiny / "o3"))
    assert result.returncode == 0, result.stderr
    assert "dead letter 1 ads" in result.stdout
    reported = [line for line in result.stdout.splitlines() if line.startswith("  dead letter (ads):")]
    assert len(reported) == 1 and "does_not_exist.jpg" in reported[0], result.stdout
    assert os.listdir(tiny / "o3" / "dead_letter")


def test_missing_config_file_and_debug_traceback(tiny):
    line = _one_error_line(_tfvctr("validate-config", str(tiny / "nope.yaml")))
    assert "nope.yaml: config file not found" in line
    result = _tfvctr("--debug", "validate-config", str(tiny / "nope.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr
