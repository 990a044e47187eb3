"""The configs ship inside the package; `validate-config` reads them by name and prints a starter."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tfvctr.cli import main
from tfvctr.commands.validate_config import resolve_config, shipped_configs
from tfvctr.config import config_from_dict, load_config

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_the_package_ships_exactly_the_repository_configs():
    # tfvctr/configs is what setup.py's package_data puts in the wheel; it must be configs/.
    shipped = shipped_configs()
    assert set(shipped) == {p.stem for p in REPO_CONFIGS.glob("*.yaml")}
    assert {"demo", "demo_vbpr", "jd_cscnn_dcn"} <= set(shipped)
    for name, path in shipped.items():
        assert pathlib.Path(path).read_bytes() == (REPO_CONFIGS / f"{name}.yaml").read_bytes(), name


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_is_valid(name):
    config = load_config(shipped_configs()[name])
    assert config.dataset.features


def test_a_config_is_found_by_name_when_no_such_file_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("demo") == shipped_configs()["demo"]
    assert resolve_config("demo_vbpr.yaml") == shipped_configs()["demo_vbpr"]
    assert main(["validate-config", "demo"]) == 0
    assert capsys.readouterr().out.startswith("demo: OK (")
    # A file of that name wins over the shipped config.
    (tmp_path / "demo").write_text("name: mine\ndataset: {features: []}\n")
    assert resolve_config("demo") == "demo"


def test_print_without_config_prints_an_editable_starter(capsys):
    assert main(["validate-config", "--print"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# A starter config for your own tables")
    assert "dataset.features" in text.splitlines()[1]
    starter = yaml.safe_load(text)
    demo = yaml.safe_load((REPO_CONFIGS / "demo.yaml").read_text())
    assert starter == demo  # the demo config, comments kept, under a header of comments
    assert config_from_dict(starter).dataset.features


def test_no_config_without_print_is_a_one_line_error(capsys):
    assert main(["validate-config"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "tfvctr validate-config: error: no CONFIG given: name a YAML config to check, or use --print for a starter config"
    )
