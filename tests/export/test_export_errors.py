"""Version numbering, the size of saved_model.pb against the table, and the one-line user errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tfvctr import layout
from tfvctr.export import export_model, next_version


def test_next_version_is_one_past_the_largest_numbered_folder(tmp_path):
    assert next_version(str(tmp_path / "none")) == 1
    for name in ("1", "7", "3", ".tmp-8-x", "notes"):
        (tmp_path / name).mkdir()
    assert next_version(str(tmp_path)) == 8


def _write_table(src: str, dst: str, extra_rows: int = 0, dim: int | None = None, duplicate: bool = False) -> str:
    """A copy of table `src` with `extra_rows` more ads, another width, or one ad_id twice."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, layout.TABLE_INDEX)) as f:
        index = json.load(f)
    shard = dict(np.load(os.path.join(dst, index["shards"][0])))
    if extra_rows:
        rng = np.random.default_rng(0)
        shard["ad_id"] = np.concatenate([shard["ad_id"], [f"extra{i:07d}" for i in range(extra_rows)]])
        shard["category"] = np.concatenate([shard["category"], np.repeat(shard["category"][:1], extra_rows)])
        shard["impressions"] = np.concatenate([shard["impressions"], np.zeros(extra_rows, np.int64)])
        shard["vectors"] = np.concatenate([shard["vectors"], rng.normal(size=(extra_rows, index["dim"]))
                                           .astype(shard["vectors"].dtype)])
    if dim is not None:
        shard["vectors"] = np.zeros((len(shard["ad_id"]), dim), shard["vectors"].dtype)
        index["dim"] = dim
    if duplicate:
        shard["ad_id"][1] = shard["ad_id"][0]
    np.savez(os.path.join(dst, index["shards"][0]), **shard)
    index["rows"] = len(shard["ad_id"])
    with open(os.path.join(dst, layout.TABLE_INDEX), "w") as f:
        json.dump(index, f)
    return dst


def test_saved_model_pb_does_not_grow_with_the_table_and_explicit_version(tiny, exported, tmp_path):
    big = _write_table(tiny["table"], str(tmp_path / "big"), extra_rows=20_000)
    info = export_model(tiny["model"], big, os.path.join(tiny["root"], "serving"), version=5, sample_rows=10)
    assert info["path"].endswith(os.path.join("tiny", "5")) and info["rows"] == 20_040
    table_bytes = 20_000 * 4 * 4
    pb = os.path.getsize(os.path.join(info["path"], "saved_model.pb"))
    assert abs(pb - exported["saved_model_pb_bytes"]) < 1000  # the rows are not in the graph ...
    variables = sum(os.path.getsize(os.path.join(info["path"], "variables", n))
                    for n in os.listdir(os.path.join(info["path"], "variables")))
    small = sum(os.path.getsize(os.path.join(exported["path"], "variables", n))
                for n in os.listdir(os.path.join(exported["path"], "variables")))
    assert variables - small > 0.99 * table_bytes  # ... they are in the variables shards
    assert next_version(os.path.join(tiny["root"], "serving", "tiny")) == 6


def _error_line(cli_args: list[str], capsys) -> str:
    from tfvctr import cli

    assert cli.main(cli_args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_bad_model_dir_is_one_clear_line(tiny, tmp_path, capsys):
    err = _error_line(["export", "--model-dir", str(tmp_path), "--table", tiny["table"], "--out", str(tmp_path)],
                      capsys)
    # Refused by tfvctr.fingerprint.check_model_data (its wording is its own): names the file and the fix.
    assert err.startswith(f"tfvctr export: error: {tmp_path}") and "model.keras" in err
    assert f"tfvctr train --model-dir {tmp_path}" in err
    os.makedirs(tmp_path / "m")
    open(tmp_path / "m" / "model.keras", "w").close()
    err = _error_line(["export", "--model-dir", str(tmp_path / "m"), "--table", tiny["table"], "--out", str(tmp_path)],
                      capsys)
    assert err == f"tfvctr export: error: {tmp_path / 'm'}: not a model dir (config.yaml missing); pass the " \
                  f"--model-dir of `tfvctr train`"


def test_a_table_of_another_model_is_one_clear_line(tiny, tmp_path, capsys):
    wide = _write_table(tiny["table"], str(tmp_path / "wide"), dim=6)
    err = _error_line(["export", "--model-dir", tiny["model"], "--table", wide, "--out", str(tmp_path)], capsys)
    assert err == (f"tfvctr export: error: {wide}: table rows are 6-d but the model's visual tower gives 4-d (a table "
                   f"of another model? re-run `tfvctr embed` with this model)")


def test_a_table_with_a_duplicated_ad_id_is_one_clear_line(tiny, tmp_path, capsys):
    dupe = _write_table(tiny["table"], str(tmp_path / "dupe"), duplicate=True)
    first = str(np.load(os.path.join(dupe, layout.table_shard(0)))["ad_id"][0])
    err = _error_line(["export", "--model-dir", tiny["model"], "--table", dupe, "--out", str(tmp_path)], capsys)
    assert err == (f"tfvctr export: error: {dupe}: ad_id {first!r} appears 2 times (1 duplicated ad_ids); one row "
                   f"per ad is expected")


def test_an_existing_version_is_refused(tiny, exported, capsys):
    base = os.path.dirname(os.path.dirname(exported["path"]))
    err = _error_line(["export", "--model-dir", tiny["model"], "--table", tiny["table"], "--out", base,
                       "--version", "1"], capsys)
    assert err == f"tfvctr export: error: {exported['path']}: version 1 exists already; omit --version for the next " \
                  f"free one"
    assert not [d for d in os.listdir(os.path.dirname(exported["path"])) if d.startswith(".tmp")]


@pytest.mark.parametrize("missing", ["--model-dir", "--table"])
def test_export_without_its_inputs_says_what_is_required(tmp_path, capsys, missing):
    args = {"--model-dir": "m", "--table": "t", "--out": str(tmp_path)}
    del args[missing]
    err = _error_line(["export", *[x for kv in args.items() for x in kv]], capsys)
    assert err == f"tfvctr export: error: {missing} required (or --check EXPORT_DIR)"
