"""`tfvctr evaluate`: metrics from predictions, cold ads, ceiling, baseline, files written."""

import argparse
import json

import numpy as np
import pytest

from tests import recordio_fixtures as rf
from tfvctr import evaluation
from tfvctr.errors import TfvctrError


def test_compute_metrics_by_hand_with_cold_ads_ceiling_and_baseline():
    pred = {
        "labels": np.array([1, 0, 1, 0, 1, 0], float),
        "probs": np.array([0.9, 0.2, 0.4, 0.6, 0.7, 0.1]),
        "users": np.array([b"u1", b"u1", b"u2", b"u2", b"u3", b"u3"]),
        "ads": np.array([b"hot", b"hot", b"cold", b"cold", b"hot", b"cold"]),
        "true_ctr": np.array([0.8, 0.1, 0.7, 0.2, 0.6, 0.3]),
    }
    out = evaluation.compute_metrics(pred, cold_ads={"cold"}, baseline={"name": "lr", "auc": 0.6})
    # positives 0.9, 0.4, 0.7 vs negatives 0.2, 0.6, 0.1: 8 of 9 pairs won.
    assert out["auc"] == pytest.approx(8 / 9)
    # u1: 1.0, u2: 0.0, u3: 1.0 → mean 2/3 over 3 users (CSCNN Eq. 13).
    assert out["per_user_auc"] == pytest.approx(2 / 3) and out["per_user_auc_users"] == 3
    # cold impressions: (1, 0.4), (0, 0.6), (0, 0.1): 1 of 2 pairs won.
    assert out["cold"]["impressions"] == 3 and out["cold"]["auc"] == pytest.approx(0.5)
    assert out["ceiling_auc"] == pytest.approx(1.0) and out["cold"]["ceiling_auc"] == pytest.approx(1.0)
    assert out["relative_auc"] == pytest.approx((8 / 9 - 0.5) / 0.1 - 1)
    assert out["gap_closed"] == pytest.approx((8 / 9 - 0.6) / 0.4)
    assert out["calibration"]["observed"] == pytest.approx(0.5)


def test_read_cold_ads_takes_ads_without_train_impressions(tmp_path):
    (tmp_path / "ad_counts.jsonl").write_text(
        '{"ad_id": "a", "train_impressions": 0, "eval_impressions": 2}\n{"ad_id": "b", "train_impressions": 3, "eval_impressions": 1}\n'
    )
    assert evaluation.read_cold_ads(str(tmp_path)) == {"a"}
    assert evaluation.read_cold_ads(str(tmp_path / "none")) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tfvctr.config import config_from_dict
    from tfvctr.training import train

    root = tmp_path_factory.mktemp("eval")
    data_dir, model_dir = root / "data", root / "model"
    summary = rf.write_dataset(str(data_dir), num_ads=16, num_shards=2)
    train(config_from_dict(rf.tiny_config_dict(steps=2)), str(data_dir), str(model_dir), log=None)
    return data_dir, model_dir, summary


def test_evaluate_command_writes_metrics_json_and_png_plots(trained, tmp_path, capsys):
    from tfvctr.commands import evaluate as command

    data_dir, model_dir, summary = trained
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"name": "floor", "auc": 0.55, "cold": {"auc": 0.52}}))
    args = argparse.Namespace(model_dir=str(model_dir), data=str(data_dir), baseline=str(baseline), split="eval")
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    assert "relative AUC vs floor" in printed and "metrics.json" in printed
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["impressions"] == summary["impressions"]["eval"]
    assert metrics["cold"]["impressions"] > 0  # the fixture's last ads appear only in eval
    assert metrics["relative_auc"] == pytest.approx((metrics["auc"] - 0.5) / 0.05 - 1)
    assert 0.5 < metrics["ceiling_auc"] <= 1.0
    for name in ("roc.png", "calibration.png"):
        assert (model_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_baseline_or_model_is_a_one_line_error(trained, tmp_path):
    data_dir, model_dir, _ = trained
    with pytest.raises(TfvctrError, match="nope.json: baseline metrics file not found"):
        evaluation.evaluate(str(model_dir), str(data_dir), baseline=str(tmp_path / "nope.json"), write=False)
    empty = tmp_path / "m"
    empty.mkdir()
    (empty / "config.yaml").write_text((model_dir / "config.yaml").read_text())
    with pytest.raises(TfvctrError, match="model.keras: no trained model; run `tfvctr train"):
        evaluation.evaluate(str(empty), str(data_dir), write=False)
