"""benchmarks/generalisation.py --quick: the scenario-suite pipeline end to end, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark


def _load_benchmark():
    return load_benchmark("generalisation")


@pytest.fixture(scope="module")
def bench():
    return _load_benchmark()


@pytest.fixture(scope="module")
def quick(tmp_path_factory, bench):
    work = tmp_path_factory.mktemp("generalisation")
    doc, png = work / "generalisation.md", work / "img" / "generalisation.png"
    assert bench.main(["--quick", "--work", str(work), "--doc", str(doc), "--png", str(png)]) == 0
    return work, doc, png


def _rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]


def test_quick_run_trains_and_scores_every_cell(quick, bench):
    work, _, _ = quick
    rows = _rows(work)
    assert sorted((r["scenario"], r["model"], r["seed"]) for r in rows) == [
        ("texture", "cscnn", 0),
        ("texture", "dcn", 0),
    ]
    for r in rows:
        assert 0.0 < r["auc"] < 1.0 and 0.0 < r["cold_auc"] < 1.0
        assert r["steps"] == bench.QUICK["steps"]
        assert r["cold_impressions"] > 0


def test_regressions_bracket_the_task_and_use_the_preprocess_splits(quick, bench):
    work, _, _ = quick
    lr = json.loads((work / "texture" / "lr.json").read_text())
    manifest = json.loads((work / "texture" / "data" / "manifest.json").read_text())
    # The regression trained on exactly the train split and picked C on the valid split.
    assert lr["counts"]["train"] == manifest["splits"]["train"]["impressions"]
    assert lr["counts"]["valid"] == manifest["splits"]["valid"]["impressions"]
    assert lr["counts"]["eval"] == manifest["splits"]["eval"]["impressions"]
    # Told the true visual effect, the regression beats the image-blind floor on cold ads,
    # and nothing beats the simulator's own probabilities on all ads.
    assert lr["told"]["cold_auc"] > lr["floor"]["cold_auc"]
    assert lr["bayes"]["auc"] > max(lr["floor"]["auc"], lr["told"]["auc"])
    assert lr["floor"]["C"] in bench.C_GRID


def test_doc_has_the_table_the_checks_and_the_plot(quick):
    _, doc, png = quick
    text = doc.read_text()
    assert "| CSCNN-DCN |" in text and "| DCN, no image |" in text
    assert "| floor: logistic regression" in text and "| Bayes: AUC of true_ctr |" in text
    assert "## Acceptance (issue 12)" in text
    assert "DCN within 0.003 of the floor" in text and "gap on cold ads" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_resumes_and_trains_nothing(quick, bench, capsys):
    work, doc, png = quick
    before = (work / "results.jsonl").read_text()
    capsys.readouterr()
    assert bench.main(["--quick", "--work", str(work), "--doc", str(doc), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "(2 already done)" in printed
    assert "seed 0: AUC" not in printed  # no cell ran again
    assert (work / "results.jsonl").read_text() == before


def test_summary_gap_share_and_paired_two_std_check(bench):
    plan = bench.Plan(["geometry"], 3, 100, ["dcn", "cscnn"], {"geometry": {"impressions": 80_000}})
    lr = {"geometry": {"floor": {"auc": 0.70, "cold_auc": 0.60}, "told": {"auc": 0.75, "cold_auc": 0.70},
                       "bayes": {"auc": 0.8, "cold_auc": 0.8}}}  # fmt: skip
    rows = [{"scenario": "geometry", "model": "dcn", "seed": k, "steps": 100, "auc": 0.70, "cold_auc": 0.600 + d,
             "seconds": 1.0} for k, d in enumerate((0.0, 0.002, -0.002))]  # fmt: skip
    rows += [{"scenario": "geometry", "model": "cscnn", "seed": k, "steps": 100, "auc": 0.72, "cold_auc": c,
              "seconds": 2.0} for k, c in enumerate((0.630, 0.634, 0.626))]  # fmt: skip
    summary = bench.summarise(plan, rows, lr)
    assert summary["geometry"]["models"]["cscnn"]["gap_share"] == pytest.approx(0.30)
    assert summary["geometry"]["models"]["cscnn"]["cold_auc_std"] == pytest.approx(np.std([0.63, 0.634, 0.626], ddof=1))

    def held(phrase: str) -> list[bool]:
        return [ok for ok, text in bench.checks(plan, summary) if phrase in text]

    assert held("DCN within 0.003 of the floor") == [True, True]  # all ads and cold ads
    assert held("not below the floor on cold ads") == [True]
    assert held("by more than 2 std") == [True]  # paired differences 0.03 each: std 0
    assert held("closes >= 25%") == [True]  # 30% at 80k impressions
    summary["geometry"]["models"]["cscnn"]["cold_by_seed"] = {0: 0.65, 1: 0.60, 2: 0.61}  # noisy: +0.05, -0.002, +0.012
    assert held("by more than 2 std") == [False]
