"""benchmarks/daily.py --compare-rates helpers: DeLong's AUC errors, the step scaling, the train-share filter."""

from __future__ import annotations

import csv

import numpy as np

from tests.conftest import load_benchmark
from tfvctr import metrics

daily = load_benchmark("daily", "daily_benchmark")


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels at CTR 10 % and two correlated scorings of them (both informative)."""
    labels = (rng.random(n) < 0.1).astype(float)
    shared = labels + rng.normal(0, 1.2, n)
    return labels, shared + rng.normal(0, 0.5, n), shared + rng.normal(0, 0.5, n)


def test_delong_matches_the_spread_of_aucs_over_draws():
    rng = np.random.default_rng(0)
    labels, a, b = _draw(rng, 2000)
    aucs, cov = daily.delong(labels, [a, b])
    assert np.allclose(aucs, [metrics.auc(labels, a), metrics.auc(labels, b)])
    # The same scoring twice: a paired difference has no sampling error.
    _, same = daily.delong(labels, [a, a])
    assert abs(same[0, 0] + same[1, 1] - 2 * same[0, 1]) < 1e-12
    # Over fresh draws, the spread of one AUC and of the paired difference is what DeLong estimated.
    one, diff = [], []
    for _ in range(300):
        y, p, q = _draw(rng, 2000)
        one.append(metrics.auc(y, p))
        diff.append(metrics.auc(y, p) - metrics.auc(y, q))
    assert 0.75 < np.std(one) / np.sqrt(cov[0, 0]) < 1.3
    paired = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert 0.75 < np.std(diff) / paired < 1.3
    assert paired < 0.6 * np.sqrt(cov[0, 0])  # correlated models: pairing removes most of the error


def test_rate_spec_and_same_passes():
    p = daily._rate_spec("0.1:training.steps=300;same_passes;train_share=0.57;importance_weights")
    assert p == {"w": 0.1, "overrides": ["training.steps=300"], "weighted": True, "same_passes": True,
                 "share": 0.57}
    assert daily._rate_spec("1")["share"] == 1.0
    assert daily.scaled_steps(600, 435, 993) == 263
    assert daily.scaled_steps(600, 1, 100000) == 1


def test_train_share_thins_train_days_only(tmp_path):
    src, dst = tmp_path / "imp.csv", tmp_path / "out.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ad_id", "label", "day"])
        for i in range(4000):
            w.writerow([f"a{i % 7}", i % 2, i % 4])
    kept = daily.write_train_share(str(src), str(dst), 0.3, before_day=2)
    with open(dst, newline="") as f:
        rows = list(csv.DictReader(f))
    assert kept == len(rows)
    days = np.array([int(r["day"]) for r in rows])
    assert (days >= 2).sum() == 2000  # valid and eval days untouched
    assert 0.26 < (days < 2).sum() / 2000 < 0.34
    daily.write_train_share(str(src), str(tmp_path / "again.csv"), 0.3, before_day=2)
    assert (tmp_path / "again.csv").read_bytes() == dst.read_bytes()  # seeded


def test_aligned_matches_impressions_across_orders():
    rng = np.random.default_rng(1)
    n = 50
    a = {"labels": (rng.random(n) < 0.3).astype(float), "probs": rng.random(n),
         "ads": np.array([f"ad{i % 5}" for i in range(n)], "S"), "users": np.array([f"u{i}" for i in range(n)], "S"),
         "true_ctr": rng.random(n).astype(np.float32)}
    perm = rng.permutation(n)
    b = {k: v[perm] for k, v in a.items()}
    ia, ib = daily._aligned(a, b)
    assert np.array_equal(a["probs"][ia], b["probs"][ib])
    b["labels"] = b["labels"].copy()
    b["labels"][0] = 1 - b["labels"][0]
    assert daily._aligned(a, b) is None  # not the same impressions


def test_ece_floor_is_the_binning_noise_of_calibrated_ctrs():
    rng = np.random.default_rng(2)
    probs = rng.uniform(0.0, 0.05, 20000)
    floor = daily.ece_floor(probs, draws=20)
    calibrated = metrics.calibration(rng.random(probs.size) < probs, probs)["ece"]
    doubled = metrics.calibration(rng.random(probs.size) < probs, np.minimum(2 * probs, 1.0))["ece"]
    assert 0.3 * floor < calibrated < 3 * floor
    assert doubled > 5 * floor  # a real miscalibration (CTRs doubled: ECE = the mean CTR) stands far above it
