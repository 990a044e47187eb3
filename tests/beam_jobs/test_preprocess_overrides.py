"""`tfvctr preprocess --set KEY=VALUE`: config overrides are the job's, not Beam's (Beam's
PipelineOptions used to drop them with a warning, and the job ran with the config as written)."""

from tfvctr.cli import main


def _preprocess(demo_raw, out, *extra):
    return main(["preprocess", "--config", demo_raw["config"], "--ads", demo_raw["ads"], "--impressions",
                 demo_raw["impressions"], "--out", str(out), *extra])  # fmt: skip


def test_set_changes_the_dataset_section_the_job_runs_with(demo_raw, tmp_path):
    import json

    assert _preprocess(demo_raw, tmp_path / "none", "--set", "dataset.validation.mode=none") == 0
    with open(tmp_path / "none" / "manifest.json") as f:
        splits = json.load(f)["splits"]
    assert "valid" not in splits or splits["valid"]["impressions"] == 0  # demo.yaml's own mode (ads) writes one
    assert not (tmp_path / "none" / "valid").exists() or not list((tmp_path / "none" / "valid").iterdir())


def test_a_bad_override_is_one_line_naming_the_key(demo_raw, tmp_path, capsys):
    assert _preprocess(demo_raw, tmp_path / "bad", "--set", "dataset.validation.mode=sideways") == 2
    err = capsys.readouterr().err
    assert "dataset.validation.mode" in err and "sideways" in err and "Traceback" not in err
