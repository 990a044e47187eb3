"""The YAML config: round trip, shipped configs, and every validation error path."""

import copy

import pytest
import yaml

from tfvctr import config as config_lib
from tfvctr.cli import main
from tfvctr.config import Config, config_from_dict, load_config, save_config
from tfvctr.errors import ConfigError

MINIMAL = {
    "dataset": {
        "features": [
            {"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto"},
            {"name": "price", "source": "ad", "kind": "numeric"},
        ]
    }
}


def _with(path: str, value, base=MINIMAL) -> dict:
    """A copy of `base` with the dotted `path` set to `value` (list indices allowed)."""
    data = copy.deepcopy(base)
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize("name", ["demo.yaml", "demo_vbpr.yaml", "jd_cscnn_dcn.yaml"])
def test_shipped_configs_load_and_round_trip(repo_root, tmp_path, name):
    config = load_config(str(repo_root / "configs" / name))
    out = tmp_path / "saved.yaml"
    save_config(config, str(out))
    assert load_config(str(out)) == config


def test_jd_config_has_the_papers_sizes(repo_root):
    config = load_config(str(repo_root / "configs" / "jd_cscnn_dcn.yaml"))
    assert len(config.dataset.features) == 95
    assert sum(f.embedding_dim for f in config.dataset.features) == 380
    assert (config.model.backbone, config.model.channel_prior_dim, config.model.spatial_prior_size) == ("resnet18", 20, 6)
    assert config.model.deep_layers == [1024, 512, 256] and config.model.cross_layers == 3
    assert config.model.visual_dim == 150 and config.dataset.impressions_per_chunk == 25


def test_defaults_are_filled_in():
    config = config_from_dict(MINIMAL)
    assert isinstance(config, Config)
    assert config.dataset.impressions_per_chunk == 25
    assert config.model.channel_prior_dim == 20
    assert config.dataset.feature("price").transform == "bucketize"
    assert [f.name for f in config.dataset.ad_features] == ["price"]


def test_integers_are_accepted_where_numbers_are_expected():
    config = config_from_dict(_with("training", {"learning_rate": 1}))
    assert config.training.learning_rate == 1.0 and isinstance(config.training.learning_rate, float)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("model.crossing_layers", 3, r"model\.crossing_layers: unknown key; allowed keys: architecture, backbone"),
        ("dataset.features.0.kind", "onehot", r"dataset\.features\[0\]\.kind: expected one of 'categorical', 'multi', 'numeric', received 'onehot'"),
        ("model.cross_layers", "three", r"model\.cross_layers: expected an integer, received 'three'"),
        ("model.cross_layers", True, r"model\.cross_layers: expected an integer, received True"),
        ("model.deep_layers", 64, r"model\.deep_layers: expected a list of an integer, received 64"),
        ("training.learning_rate", -1.0, r"training\.learning_rate: expected a positive number, received -1\.0"),
        ("training.augment.flip", "yes", r"training\.augment\.flip: expected true or false, received 'yes'"),
        ("dataset.eval_days", 0, r"dataset\.eval_days: expected a value >= 1, received 0"),
        ("model.dropout", 1.5, r"model\.dropout: expected a value in \[0, 1\), received 1\.5"),
        ("embed.coverage", 0.0, r"embed\.coverage: expected a value in \(0, 1\], received 0\.0"),
        ("training.decay_steps", [200, 100], r"training\.decay_steps: expected increasing step numbers"),
        ("dataset.features.1", {"name": "device", "source": "ad", "kind": "numeric"}, r"duplicate feature name 'device'"),
        ("dataset.features.0", {"name": "device", "source": "impression", "kind": "categorical"}, r"needs exactly one of `vocabulary`"),
        ("dataset.features.0", {"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto", "hash_buckets": 10}, r"needs exactly one of `vocabulary`"),
        ("dataset.features.1", {"name": "price", "source": "ad", "kind": "numeric", "hash_buckets": 10}, r"a numeric feature takes no `vocabulary`"),
        ("dataset.features.1", {"name": "label", "source": "ad", "kind": "numeric"}, r"'label' is a reserved column name"),
        ("dataset.features.0", {"name": "device", "source": "user", "kind": "categorical", "vocabulary": "auto"}, r"source: expected one of 'ad', 'impression', received 'user'"),
        ("dataset.features.0", {"source": "impression", "kind": "categorical", "vocabulary": "auto"}, r"dataset\.features\[0\]\.name: missing required key"),
        ("dataset", "oops", r"dataset: expected a mapping, received 'oops'"),
        ("model.vbpr", {"loss": "pairwise"}, r"model\.vbpr\.loss: pairwise training applies to architecture 'vbpr' only"),
    ],
)
def test_invalid_values_name_the_key_and_the_problem(path, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_with(path, value), "my.yaml")


def test_errors_name_the_source_file():
    with pytest.raises(ConfigError, match=r"^my\.yaml: model\.crossing_layers: unknown key"):
        config_from_dict(_with("model.crossing_layers", 3), "my.yaml")


def test_missing_dataset_section_is_reported():
    with pytest.raises(ConfigError, match=r"dataset: missing required key"):
        config_from_dict({"model": {}}, "x.yaml")


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(str(bad))


def test_cli_validate_config_prints_summary(repo_root, capsys):
    assert main(["validate-config", str(repo_root / "configs" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "demo.yaml: OK" in out and "x_nv=36" in out


def test_cli_reports_a_bad_config_in_one_line_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("dataset.features.0.kind", "onehot")))
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}: dataset.features[0].kind: expected one of" in err


def test_cli_debug_flag_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("model.crossing_layers", 3)))
    with pytest.raises(ConfigError):
        main(["--debug", "validate-config", str(path)])


def test_set_overrides_values_and_is_validated(repo_root, tmp_path):
    demo = str(repo_root / "configs" / "demo.yaml")
    config = load_config(demo, ["model.architecture=dcn", "training.steps=7", "model.deep_layers=[8, 4]"])
    assert (config.model.architecture, config.training.steps, config.model.deep_layers) == ("dcn", 7, [8, 4])
    with pytest.raises(ConfigError, match=r"with --set model\.crossing_layers=2\): model\.crossing_layers: unknown key"):
        load_config(demo, ["model.crossing_layers=2"])
    with pytest.raises(ConfigError, match=r"--set 'steps': expected KEY\.PATH=VALUE"):
        load_config(demo, ["steps"])


def test_cli_set_flag(repo_root, capsys):
    assert main(["validate-config", str(repo_root / "configs" / "demo.yaml"), "--set", "model.cross_layers=5"]) == 0
    assert "cross 5 (v1)" in capsys.readouterr().out


def test_a_float_written_1e_minus_4_is_a_number_although_yaml_reads_it_as_text():
    # PyYAML (YAML 1.1) parses `1e-4` as the string "1e-4"; users write it that way.
    data = yaml.safe_load("x: 1e-4")
    assert data["x"] == "1e-4"
    assert config_lib._convert(data["x"], float, "model.embedding_l2") == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="expected a number, received 'e-4'"):
        config_lib._convert("e-4", float, "model.embedding_l2")
