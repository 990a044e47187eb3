"""`tfvctr reproduce`: a quick run of a table slice end to end (train, pre-train, score,
doc, chart), its resume, and the summaries (Eq. 8, the paper's orderings) on fixed cells."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from tests import recordio_fixtures as rf
from tfvctr import cli, reproduce
from tfvctr.paper_tables import PAPER


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    data = str(root / "data")
    rf.write_dataset(data, num_ads=24, num_shards=2)
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump(rf.tiny_config_dict(augment={"random_crop": False, "flip": False})))
    argv = ["reproduce", "cscnn-4:bpr_mf,vbpr", "--data", data, "--config", str(base), "--quick",
            "--work", str(root / "work"), "--doc", str(root / "docs" / "results.md"), "--img-dir", str(root / "docs" / "img")]
    assert cli.main(argv) == 0
    return root, argv


def _lines(root):
    return list(reproduce.load_results(str(root / "work")).values())


def test_quick_run_trains_scores_and_writes_the_doc(quick):
    root, _ = quick
    rows = _lines(root)
    assert [(r["table"], r["row"], r["seed"]) for r in rows] == [("cscnn-4", "bpr_mf", 0), ("cscnn-4", "vbpr", 0)]
    for r in rows:
        assert 0.0 < r["auc"] < 1.0 and r["impressions"] == 46 and r["last_step"] == reproduce.QUICK.steps
    # VBPR's fixed features came from a category pre-training of the tower.
    assert list((root / "work" / "pretrain").glob("*/done"))
    doc = (root / "docs" / "results.md").read_text()
    assert "## CSCNN Table 4" in doc and "tfvctr reproduce cscnn-4:bpr_mf,vbpr" in doc
    assert f"{PAPER['cscnn-4']['vbpr']['user_auc']:.4f}" in doc  # the paper's number beside ours (Eq. 13)
    assert f"{rows[1]['auc']:.4f} (1 seed)" in doc
    assert "VBPR > BPR-MF on user_auc" in doc and "| DVBPR | not run |" in doc
    assert all(0.0 < r["user_auc"] < 1.0 and r["user_auc_users"] > 0 for r in rows)
    # The overview counts what the table shows: 2 of its 8 rows, one seed, one cost line.
    assert "| [cscnn-4](#cscnn-table-4-the-vbpr-family-point-wise-loss) | 2/8 | 1 |" in doc
    assert "Cost of the cells shown: 2 trainings" in doc and "over the 2 cells that recorded it" in doc
    assert (root / "docs" / "img" / "results_cscnn_4.png").stat().st_size > 1000
    shown = [json.loads(line) for line in (root / "docs" / "results.jsonl").read_text().splitlines()]
    assert [(c["table"], c["row"]) for c in shown] == [("cscnn-4", "bpr_mf"), ("cscnn-4", "vbpr")]


def test_rerun_skips_finished_cells_and_resumes_an_unfinished_one(quick):
    root, argv = quick
    before = _lines(root)
    results = root / "work" / "results.jsonl"
    # Kill mid-write: the last cell's line is torn, so that cell counts as unfinished.
    text = results.read_text().splitlines(keepends=True)
    results.write_text(text[0] + text[1][:20])
    assert cli.main(argv) == 0
    lines = (root / "work" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines[1] == text[1][:20]  # one new line after the torn one
    after = _lines(root)
    assert after[0] == before[0]  # skipped, not retrained
    assert after[1]["row"] == "vbpr" and after[1]["auc"] == pytest.approx(before[1]["auc"], abs=1e-6)  # same weights, reloaded


def test_an_unknown_table_or_row_is_a_one_line_error(capsys, tmp_path):
    assert cli.main(["reproduce", "cscnn-7", "--data", str(tmp_path)]) == 2
    assert "unknown table(s) cscnn-7" in capsys.readouterr().err
    with pytest.raises(Exception, match="cscnn-4 has no row"):
        reproduce.resolve_tables("cscnn-4:nope")


def _cell(table, row, seed, auc, log_loss, cold_auc=None):
    return {"table": table, "row": row, "seed": seed, "auc": auc, "log_loss": log_loss, "cold_auc": cold_auc,
            "cold_below": 1, "never_seen_cold_auc": cold_auc, "never_seen_cold_log_loss": log_loss}


def test_relative_auc_is_eq8_and_claims_are_judged_on_means_and_spread():
    table = reproduce.TABLES["deepctr-1"]
    cells = [_cell("deepctr-1", "lr_basic", s, 0.60, 0.40) for s in (0, 1)]
    cells += [_cell("deepctr-1", "deepctr", 0, 0.65, 0.38), _cell("deepctr-1", "deepctr", 1, 0.66, 0.39)]
    cells += [_cell("deepctr-1", "dnn_conv17", s, 0.70, 0.37) for s in (0, 1)]
    summary = reproduce.summarise(table, cells)
    # Eq. 8: ((AUC - 0.5) / (AUC_lr - 0.5) - 1) x 100 %: 0.65 → 50 %, 0.66 → 60 %.
    mean, std, n = summary["deepctr"]["rel_auc"]
    assert (mean, std, n) == (pytest.approx(55.0), pytest.approx(5.0), 2)
    assert summary["lr_basic"]["rel_auc"][0] == pytest.approx(0.0)
    assert summary["deepctr"]["rel_logloss"][0] == pytest.approx(((0.38 / 0.40 - 1) + (0.39 / 0.40 - 1)) / 2 * 100)
    claims = {text.split(":")[0]: (holds, clear) for holds, clear, text in reproduce.check_claims(table, summary)}
    # 55 ± 5 vs 100 ± 0: does not hold, and clearly so (the gap exceeds the spread).
    assert claims["DeepCTR > dnn, pre-extracted Convnet features (frozen) on rel_auc"] == (False, True)
    assert claims["FM_basic > lr_basic on rel_auc"] == (False, False)  # not measured


def test_deepctr_table_2_scores_the_ads_never_seen_in_training():
    table = reproduce.TABLES["deepctr-2"]
    cells = [_cell("deepctr-2", "lr_basic", 0, 0.70, 0.4, cold_auc=0.55), _cell("deepctr-2", "deepctr", 0, 0.70, 0.4, cold_auc=0.60)]
    summary = reproduce.summarise(table, cells)
    assert summary["deepctr"]["auc"][0] == pytest.approx(0.60)
    assert summary["deepctr"]["rel_auc"][0] == pytest.approx(100.0)


def test_fm_baseline_matches_numpy():
    head = reproduce.BaselineHead("fm", [{"name": "d", "kind": "categorical"}, {"name": "e", "kind": "categorical"}],
                                  {"d": 3, "e": 4}, factors=2, seed=0)
    x = {"d": np.array([1, 2]), "e": np.array([0, 3])}
    z = head({"features": x}).numpy()
    w = head.linear.weights
    v_d, v_e = head.fields[0].weights[0].numpy(), head.fields[1].weights[0].numpy()
    linear = w[0].numpy()[x["d"], 0] + w[1].numpy()[x["e"], 0] + head.bias.numpy()
    expected = linear + np.sum(v_d[x["d"]] * v_e[x["e"]], axis=1)  # Σ_{f<g} <v_f, v_g> with two fields
    np.testing.assert_allclose(z, expected, rtol=1e-5)


def test_every_table_has_the_papers_numbers_for_rows_it_runs():
    for name, table in reproduce.TABLES.items():
        keys = {r.key for r in table.rows}
        assert set(PAPER[name]) <= keys, name
        for better, worse, _ in table.claims:
            assert better in keys and worse in keys


def test_docstring_example_runs():
    import doctest

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder(recurse=False).find(reproduce.BaselineHead, "BaselineHead", globs=dict(vars(reproduce)))
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).attempted > 0 and runner.failures == 0


def test_fig5s_default_point_is_table_4s_cscnn_cell_and_the_other_points_set_their_field():
    fig5, table4 = reproduce.TABLES["cscnn-fig5"], reproduce.TABLES["cscnn-4"]
    key = {r.key: reproduce.cell_key(fig5, r, 0, reproduce.FULL) for r in fig5.rows}
    cscnn = reproduce.cell_key(table4, next(r for r in table4.rows if r.key == "cscnn"), 0, reproduce.FULL)
    assert key["c20"] == key["h7"] == key["l4"] == cscnn
    assert len({key[k] for k in ("c5", "c40", "h3", "h11", "l1", "l2")} | {cscnn}) == 7
    base = reproduce.load_base(reproduce.DEFAULT_CONFIG)
    config = reproduce.cell_config(base, fig5, next(r for r in fig5.rows if r.key == "h3"), 0, reproduce.FULL)
    assert (config.model.spatial_prior_size, config.model.channel_prior_dim, config.model.attention) == (3, 20, "cscnn")


def test_deepctr_table_4_compares_equal_impressions_per_step_relative_to_lr_basic():
    table = reproduce.TABLES["deepctr-4"]
    base = reproduce.load_base(reproduce.DEFAULT_CONFIG)
    alg1, shuffle = (reproduce.cell_config(base, table, r, 0, reproduce.FULL) for r in table.rows[1:])
    assert (alg1.training.sampling, shuffle.training.sampling) == ("alg1", "ungrouped")
    assert alg1.training.ads_per_batch * alg1.training.impressions_per_ad == shuffle.training.ads_per_batch
    assert alg1.training.freeze_cnn and shuffle.training.freeze_cnn
    assert table.relative_to == "lr_basic" and PAPER["deepctr-4"]["alg1"]["rel_auc"] == 4.13
    lr = reproduce.TABLES["deepctr-1"].rows[0]
    assert reproduce.cell_key(table, table.rows[0], 0, reproduce.FULL) == reproduce.cell_key(reproduce.TABLES["deepctr-1"], lr, 0, reproduce.FULL)


def test_write_only_trains_nothing_and_leaves_out_tables_without_cells(quick):
    root, argv = quick
    lines = (root / "work" / "results.jsonl").read_text()
    doc = root / "docs" / "written.md"
    spec = argv.index("cscnn-4:bpr_mf,vbpr")
    write = [*argv[:spec], "cscnn-4,cscnn-9", *argv[spec + 1:], "--write-only", "--doc", str(doc)]
    assert cli.main(write) == 0
    assert (root / "work" / "results.jsonl").read_text() == lines  # nothing trained
    text = doc.read_text()
    assert "## CSCNN Table 4" in text and "## CSCNN Table 9" not in text  # Table 9 has no finished cell
    # Each table shows the command that trains it alone.
    assert "`tfvctr reproduce cscnn-4 --data" in text and "--doc" not in text and "--write-only" not in text


def test_rescore_adds_the_per_user_auc_to_a_cell_that_lacks_it_without_training(quick):
    root, argv = quick
    results = root / "work" / "results.jsonl"
    cells = list(reproduce.load_results(str(root / "work")).values())
    old = {k: v for k, v in cells[0].items() if k not in ("user_auc", "user_auc_users")}  # as cells run before it existed
    results.write_text(results.read_text() + json.dumps(old) + "\n")
    assert cli.main([*argv, "--write-only", "--rescore"]) == 0
    after = reproduce.load_results(str(root / "work"))[cells[0]["key"]]
    assert after["user_auc"] == pytest.approx(cells[0]["user_auc"], abs=1e-6)  # the saved model, scored again
    assert after["seconds"] == cells[0]["seconds"]  # not retrained
    assert "| VBPR |" in (root / "docs" / "results.md").read_text()


def test_rescore_trains_again_a_cell_whose_saved_model_is_gone(quick):
    root, argv = quick
    results = root / "work" / "results.jsonl"
    cell = next(c for c in reproduce.load_results(str(root / "work")).values() if c["row"] == "bpr_mf")
    old = {k: v for k, v in cell.items() if k not in ("user_auc", "user_auc_users")}
    results.write_text(results.read_text() + json.dumps(old) + "\n")
    shutil.rmtree(root / "work" / "cells" / cell["key"])
    assert cli.main([*argv, "--write-only", "--rescore"]) == 0
    after = reproduce.load_results(str(root / "work"))[cell["key"]]  # a torn line of another test is skipped
    assert 0.0 < after["user_auc"] < 1.0 and results.read_text().rstrip().endswith(json.dumps(after))
    assert (root / "work" / "cells" / cell["key"] / "model.keras").exists()  # trained again, saved


def test_one_model_is_one_cell_across_tables_5_6_and_4():
    """Table 5's no-attention row is DVBPR; Table 6's CNN-F rows are Tables 4 and 5's cells."""
    t4, t5, t6 = (reproduce.TABLES[n] for n in ("cscnn-4", "cscnn-5", "cscnn-6"))

    def key(table, row):
        return reproduce.cell_key(table, next(r for r in table.rows if r.key == row), 1, reproduce.FULL)

    assert key(t4, "dvbpr") == key(t5, "none") == key(t6, "cnnf_none")
    assert key(t4, "cscnn") == key(t5, "cscnn") == key(t6, "cnnf_cscnn")
    assert key(t5, "cbam") == key(t6, "cnnf_cbam")
    inception = {key(t6, r) for r in ("inception_none", "inception_cbam", "inception_cscnn")}
    assert len(inception) == 3 and not inception & {key(t4, r.key) for r in t4.rows}
    # The shared rows build what their labels say, whatever the base config's backbone.
    base = reproduce.load_base(reproduce.DEFAULT_CONFIG)
    base["model"]["backbone"] = "resnet18"
    configs = {r: reproduce.cell_config(base, t6, next(x for x in t6.rows if x.key == r), 0, reproduce.FULL)
               for r in ("cnnf_none", "cnnf_cbam", "inception_cscnn")}  # fmt: skip
    assert [(c.model.backbone, c.model.vbpr.variant, c.model.attention if c.model.vbpr.variant == "cscnn" else "none")
            for c in configs.values()] == [("cnnf", "dvbpr", "none"), ("cnnf", "cscnn", "cbam"), ("inception_v1", "cscnn", "cscnn")]  # fmt: skip


def test_estimate_costs_each_distinct_cell_once_from_records_or_its_rows_mean():
    t4, t5 = reproduce.TABLES["cscnn-4"], reproduce.TABLES["cscnn-5"]
    budget = reproduce.FULL
    rows4 = {r.key: r for r in t4.rows}
    done = {reproduce.cell_key(t4, rows4["cscnn"], 0, budget): {"cpu_seconds": 30.0},
            reproduce.cell_key(t4, rows4["cscnn"], 1, budget): {"cpu_seconds": 50.0},
            reproduce.cell_key(t4, rows4["dvbpr"], 0, budget): {"cpu_seconds": 10.0},
            "unrelated": {"cpu_seconds": 1000.0}}  # fmt: skip
    est = reproduce.estimate_cost([t4, t5], range(3), budget, done)
    # 8 rows of Table 4 + 5 of Table 5's 7 (none = DVBPR, CSCNN shared) = 13 rows x 3 seeds.
    assert (est["cells"], est["measured"], est["imputed"]) == (39, 3, 36)
    assert est["measured_cpu_seconds"] == 90.0
    # cscnn seed 2: its row's mean (40); dvbpr seeds 1, 2: 10 each; the other 33 the family's mean (30).
    assert est["cpu_seconds"] == pytest.approx(90.0 + 40.0 + 2 * 10.0 + 33 * 30.0)
    line = reproduce.budget_markdown(est, 3)
    assert "39 distinct trainings" in line and f"≤ {(est['cpu_seconds'] + reproduce.STARTUP_CPU_SECONDS) / 60:.0f} min" in line


def test_the_doc_says_which_seeds_each_row_has_and_shows_the_common_ones():
    table = reproduce.TABLES["cscnn-8"]
    budget = reproduce.FULL
    done = {}
    for row in table.rows:
        for seed in (0, 1) if row.key != "dcn" else (0, 1, 2):
            if (row.key, seed) != ("cscnn", 1):
                done[reproduce.cell_key(table, row, seed, budget)] = {"seed": seed, "auc": 0.7}
    text = reproduce.seeds_markdown(table, done, budget)
    assert text.startswith("Seeds shown: 0 (1 per row")
    assert "DCN (no image) (seed 1, 2)" in text and "DCN + CNN fixed (seed 1)" in text and "DCN + CSCNN (seed" not in text
    assert reproduce.table_command("tfvctr reproduce all --seeds 3 --data d", "all", "cscnn-8") == "tfvctr reproduce cscnn-8 --seeds 3 --data d"
    assert reproduce.table_command("tfvctr reproduce cscnn-8:dcn --data d", "cscnn-8:dcn", "cscnn-8") == "tfvctr reproduce cscnn-8:dcn --data d"


def test_a_base_config_unlike_the_one_the_data_was_preprocessed_with_is_refused(quick, tmp_path):
    root, argv = quick
    base = yaml.safe_load((root / "base.yaml").read_text())
    numeric = next(f for f in base["dataset"]["features"] if f.get("kind") == "numeric")
    numeric["transform"] = "normalize" if numeric.get("transform", "bucketize") == "bucketize" else "bucketize"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(base))
    # The data as `tfvctr preprocess` writes it: its manifest holds the config it was made with.
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    manifest = json.loads((data / "manifest.json").read_text()) if (data / "manifest.json").exists() else {}
    manifest["config"] = yaml.safe_load((root / "base.yaml").read_text())
    (data / "manifest.json").write_text(json.dumps(manifest))
    reproduce.check_base_matches_data(manifest["config"], "same.yaml", str(data))  # the same config passes
    lines = (root / "work" / "results.jsonl").read_text()
    i, j = argv.index("--config"), argv.index("--data")
    run = list(argv)
    run[i + 1], run[j + 1] = str(other), str(data)
    assert cli.main(run) == 2  # one line, before any training
    assert (root / "work" / "results.jsonl").read_text() == lines
    with pytest.raises(reproduce.ConfigError, match=f"feature '{numeric['name']}' differs .*[(]transform"):
        reproduce.check_base_matches_data(base, str(other), str(data))
