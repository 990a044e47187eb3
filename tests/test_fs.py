"""tfvctr.io.fs: atomic outputs (a failed run leaves the previous output and no debris)."""

from __future__ import annotations

import os

import pytest

from tfvctr.errors import DataError
from tfvctr.io import fs


def _tree(root) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path).read()
    return out


@pytest.mark.parametrize("suffix", ["", "/"], ids=["plain", "trailing_slash"])
def test_atomic_dir_replaces_the_old_output_whole_on_success(tmp_path, suffix):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with fs.atomic_dir(str(out) + suffix) as staged:
        assert os.path.dirname(staged) == str(tmp_path) and os.path.basename(staged).startswith(".out.tmp-")
        os.makedirs(os.path.join(staged, "train"))
        with open(os.path.join(staged, "train", "part-0"), "w") as f:
            f.write("new")
        assert _tree(out) == {"stale.txt": "old"}  # nothing visible until the block succeeds
    assert _tree(out) == {"train/part-0": "new"}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_keeps_the_old_output_and_leaves_no_debris_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(RuntimeError, match="pipeline failed"):
        with fs.atomic_dir(str(out)) as staged:
            os.makedirs(os.path.join(staged, "beam-temp-part-123"))
            raise RuntimeError("pipeline failed")
    assert _tree(out) == {"manifest.json": "{}"}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_creates_a_new_output_from_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with fs.atomic_dir("fresh") as staged:
        assert os.path.isabs(staged)
        open(os.path.join(staged, "a.txt"), "w").close()
    assert os.listdir(tmp_path / "fresh") == ["a.txt"]


def test_write_atomic_replaces_a_file_or_keeps_the_old_one(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"auc": 0.5}')
    fs.write_atomic(str(path), '{"auc": 0.7}')
    assert path.read_text() == '{"auc": 0.7}'
    with pytest.raises(TypeError):
        fs.write_atomic(str(path), 12345)  # fails while writing: the old file must stay whole
    assert path.read_text() == '{"auc": 0.7}' and os.listdir(tmp_path) == ["metrics.json"]


def test_check_writable_refuses_a_file_or_a_path_under_a_file(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(DataError, match=f"^{blocker}: is a file; expected an output folder$"):
        fs.check_writable(str(blocker))
    with pytest.raises(DataError, match=f"^{blocker}/x/y: cannot create the model dir: {blocker} is a file$"):
        fs.check_writable(str(blocker / "x" / "y"), "model dir")
    fs.check_writable(str(tmp_path / "new" / "deeper"))  # creatable: fine


def test_json_finite_nulls_nan_and_infinity_at_any_depth():
    import json
    import math

    from tfvctr.io import fs

    value = {"auc": math.nan, "cold": {"auc": math.inf, "n": 3}, "history": [0.5, -math.inf, "x"]}
    assert fs.json_finite(value) == {"auc": None, "cold": {"auc": None, "n": 3}, "history": [0.5, None, "x"]}
    json.loads(json.dumps(fs.json_finite(value), allow_nan=False))  # strict JSON
