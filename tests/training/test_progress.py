"""The console progress line."""

from tfvctr.training.controller import format_progress

FIGURES = {"loss": 0.25, "auc": 0.7, "images_per_sec": 100.0, "impressions_per_sec": 2500.0}


def test_progress_line_shows_both_learning_rates_and_throughput():
    line = format_progress(5, 10, FIGURES, 0.001, 0.002)
    assert line.startswith("[##########..........] step 5/10")
    assert "loss 0.2500" in line and "auc 0.7000" in line and "lr 0.001/0.002" in line
    assert line.endswith("100.0 img/s 2500.0 imp/s")


def test_progress_line_shows_no_cnn_learning_rate_when_nothing_trains_in_a_cnn():
    assert "lr -/0.0002" in format_progress(10, 10, FIGURES, None, 0.0002)
