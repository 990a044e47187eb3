"""The dev server on a real `tfvctr export` (the tiny CSCNN-DCN of tests/export): REST answers
equal the in-process SavedModel, for warm, unknown and new (image) ads."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import DevServer, dev_server_only

from serving.client import ServingClient
from serving.demo import rest_row
from tests.export.conftest import exported, tiny  # noqa: F401  (the export tests' fixtures)
from tfvctr.export.signature import DEFAULT_SIGNATURE, IMAGE_SIGNATURE, input_specs
from tfvctr.export.warmup import sample_rows

pytestmark = [dev_server_only, pytest.mark.slow]


def rest_rows(columns: dict[str, np.ndarray], names) -> list[dict]:
    """Signature inputs (numpy columns) as REST instances: text as strings, bytes as b64."""
    return [rest_row(columns, i, names) for i in range(len(columns["ad_id"]))]


def in_process(path: str, signature: str, columns: dict[str, np.ndarray], names) -> dict[str, np.ndarray]:
    fn = tf.saved_model.load(path).signatures[signature]
    specs = fn.structured_input_signature[1]
    feeds = {}
    for k in names:
        if specs[k].dtype == tf.string and columns[k].dtype == object and isinstance(columns[k][0], (list, np.ndarray)):
            feeds[k] = tf.constant([list(r) for r in columns[k]], tf.string)
        else:
            feeds[k] = tf.constant(list(columns[k]) if columns[k].dtype == object else columns[k], specs[k].dtype)
    return {k: v.numpy() for k, v in fn(**feeds).items()}


def test_dev_server_serves_a_real_export_like_the_in_process_savedmodel(tiny, exported):  # noqa: F811
    config = tiny["config"]
    cols = sample_rows(config, tiny["data"], 12)
    names = list(input_specs(config))
    image_names = list(input_specs(config, with_image=True))
    cols["ad_id"] = cols["ad_id"].copy()
    cols["ad_id"][1] = b"never-seen-ad"  # unknown: the category's mean row
    server = DevServer(["--model-base", os.path.dirname(os.path.dirname(exported["path"])), "--model-name", config.name])
    try:
        client = ServingClient(server.url, config.name, timeout=60)
        rows = client.predict(rest_rows(cols, names))
        columnar = client.predict_columns({k: [r[k] for r in rest_rows(cols, names)] for k in names})
        ref = in_process(exported["path"], DEFAULT_SIGNATURE, cols, names)
        for out in ("ctr", "logit"):
            got = np.float32([r[out] for r in rows])
            np.testing.assert_allclose(got, ref[out], rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(got, np.float32(columnar[out]))
        assert [r["in_table"] for r in rows] == list(ref["in_table"])
        assert rows[0]["in_table"] is True and rows[1]["in_table"] is False
        assert all(0.0 < r["ctr"] < 1.0 and math.isfinite(r["logit"]) for r in rows)

        # A new ad with its image through score_with_image: the tower runs on the b64 bytes.
        cols["ad_id"][:] = b"created-after-the-table"
        with_image = client.predict(rest_rows(cols, image_names), signature_name=IMAGE_SIGNATURE)
        ref_image = in_process(exported["path"], IMAGE_SIGNATURE, cols, image_names)
        np.testing.assert_allclose(np.float32([r["ctr"] for r in with_image]), ref_image["ctr"], rtol=1e-6, atol=1e-7)
        assert not any(r["in_table"] for r in with_image)

        meta = client.metadata()["metadata"]["signature_def"]["signature_def"]
        assert set(meta[DEFAULT_SIGNATURE]["inputs"]) == set(names)
        assert set(meta[IMAGE_SIGNATURE]["inputs"]) == set(image_names)
    finally:
        assert server.stop() == 0
    # The export's warmup PredictionLogs were replayed at load, as TF Serving does.
    assert any(f"(5 warmup requests) from {exported['path']}" in line for line in server.stderr), server.stderr[-5:]


def test_demo_serving_step_asks_for_warm_cold_unknown_and_new_ads(tiny, exported, capsys):  # noqa: F811
    from serving import demo

    base = os.path.dirname(os.path.dirname(exported["path"]))
    assert demo.main(["--model-base", base, "--model-name", tiny["config"].name, "--model-dir", tiny["model"],
                      "--data", tiny["data"]]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ") and len(line.split()) >= 5}
    assert lines["warm"][-1] == "True" and lines["unknown"][-1] == "False" and lines["new"][-1] == "False"
    assert lines["cold"][-1] == "True"  # cold ads are in the table: embedded from their image
    assert all(0.0 < float(lines[k][-2]) < 1.0 for k in ("warm", "cold", "unknown", "new"))
    assert "dev server stopped (exit 0)" in out
