"""The export (docs/export.md): TF Serving layout, parity with training, fallback, image path, warmup, check."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfvctr import layout
from tfvctr.errors import TfvctrError
from tfvctr.export import check_export
from tfvctr.export.signature import DEFAULT_SIGNATURE, IMAGE_SIGNATURE, input_specs
from tfvctr.export.warmup import sample_rows, take


def _load(tiny):
    import keras

    import tfvctr.models  # noqa: F401
    from tfvctr.features import FeatureEncoder

    model = keras.saving.load_model(os.path.join(tiny["model"], layout.MODEL), compile=False)
    return model, FeatureEncoder.from_data_dir(tiny["config"].dataset, tiny["data"])


def _serve(export_dir: str, signature: str, inputs: dict) -> dict:
    fn = tf.saved_model.load(export_dir).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def test_export_has_tf_serving_layout_and_passed_the_fresh_process_check(exported):
    path = exported["path"]
    assert path.endswith(os.path.join("serving", "tiny", "1")) and exported["version"] == 1
    for name in ("saved_model.pb", "variables/variables.index", f"assets/{layout.EXPORT_AD_IDS}",
                 f"{layout.WARMUP_DIR}/{layout.WARMUP_FILE}", f"{layout.WARMUP_DIR}/{layout.EXPORT_INFO}"):
        assert os.path.exists(os.path.join(path, name)), name
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]  # staging folder renamed
    check = exported["check"]
    assert check["requests"] == 5 and check["rows"] == 1 + 10 + 100 + 100 + 10
    assert check["max_abs_diff_logit"] <= 1e-5 and check["max_abs_diff_ctr"] <= 1e-5
    with open(os.path.join(path, "assets", layout.EXPORT_AD_IDS)) as f:
        assert len(f.read().splitlines()) == exported["rows"] == 40


def test_signatures_take_raw_features_named_as_in_the_config(tiny, exported):
    loaded = tf.saved_model.load(exported["path"])
    for name, with_image in ((DEFAULT_SIGNATURE, False), (IMAGE_SIGNATURE, True)):
        fn = loaded.signatures[name]
        specs = fn.structured_input_signature[1]
        expected = input_specs(tiny["config"], with_image=with_image)
        assert sorted(specs) == sorted(expected)
        for key, spec in specs.items():
            assert spec.dtype == expected[key].dtype and spec.shape.as_list() == expected[key].shape.as_list(), key
        outputs = fn.structured_outputs
        assert sorted(outputs) == ["ctr", "in_table", "logit"]
        assert outputs["in_table"].dtype == tf.bool and outputs["ctr"].dtype == tf.float32


def test_raw_feature_parity_between_training_pipeline_and_export(tiny, exported):
    """The same eval rows: training's tf.data + FeatureEncoder + model(batch) vs the export on raw values."""
    from tfvctr import data as data_lib

    model, encoder = _load(tiny)
    inputs, labels = next(iter(data_lib.make_dataset(tiny["config"], tiny["data"], "eval", training=False,
                                                     encoder=encoder)))
    expected = np.asarray(model(inputs, training=False))
    rows = sample_rows(tiny["config"], tiny["data"], len(labels))
    np.testing.assert_array_equal(rows["label"], labels.numpy())  # the same rows, in the same order
    served = _serve(exported["path"], DEFAULT_SIGNATURE, {k: rows[k] for k in input_specs(tiny["config"])})
    assert served["in_table"].all()
    np.testing.assert_allclose(served["logit"], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served["ctr"], 1 / (1 + np.exp(-expected)), atol=1e-5, rtol=0)


def test_unknown_ad_uses_its_category_mean_row_or_the_overall_mean(tiny, exported):
    model, encoder = _load(tiny)
    rows = take(sample_rows(tiny["config"], tiny["data"], 4), slice(0, 4))
    rows["ad_id"] = np.array([b"brand-new-1", b"brand-new-2", b"brand-new-3", rows["ad_id"][3]], dtype=object)
    rows["category"][2] = b""  # unknown category: the mean of every row
    inputs = {k: rows[k] for k in input_specs(tiny["config"])}
    served = _serve(exported["path"], DEFAULT_SIGNATURE, inputs)
    assert served["in_table"].tolist() == [False, False, False, True]

    means = np.load(os.path.join(tiny["table"], layout.CATEGORY_MEANS))
    by_category = dict(zip(means["category"].tolist(), means["vectors"], strict=True))
    shard = np.load(os.path.join(tiny["table"], layout.table_shard(0)))
    x_v = np.stack([by_category[rows["category"][0].decode()], by_category[rows["category"][1].decode()],
                    shard["vectors"].astype(np.float64).mean(axis=0),
                    shard["vectors"][shard["ad_id"].tolist().index(rows["ad_id"][3].decode())]]).astype(np.float32)
    encoded = encoder({k: tf.constant(v) for k, v in inputs.items() if k != "ad_id"})
    features = {f.name: encoded[f.name] for f in tiny["config"].dataset.features}
    expected = np.asarray(model.head({"features": features, "x_v": x_v}, training=False))
    np.testing.assert_allclose(served["logit"], expected, atol=1e-5, rtol=0)


def test_score_with_image_runs_the_tower_for_a_new_ad(tiny, exported):
    """A new ad (not in the table) with its image: the served score equals tower + head in memory."""
    from tfvctr.data import decode_image

    model, encoder = _load(tiny)
    rows = sample_rows(tiny["config"], tiny["data"], 6)
    rows["ad_id"] = np.array([b"created-after-the-table"] * 6, dtype=object)
    inputs = {k: rows[k] for k in input_specs(tiny["config"], with_image=True)}
    served = _serve(exported["path"], IMAGE_SIGNATURE, inputs)
    assert not served["in_table"].any()

    encoded = encoder({k: tf.constant(v) for k, v in inputs.items() if k not in ("ad_id", "image_bytes")})
    features = {f.name: encoded[f.name] for f in tiny["config"].dataset.features}
    images = tf.stack([decode_image(tf.constant(b), tiny["config"].dataset.image_size) for b in rows["image_bytes"]])
    x_v = model.visual_tower({"image": images, "category": encoded["category"]}, training=False)
    expected = np.asarray(model.head({"features": features, "x_v": x_v}, training=False))
    np.testing.assert_allclose(served["logit"], expected, atol=1e-5, rtol=0)
    # Without the image the same rows fall back to their category's mean: another score.
    fallback = _serve(exported["path"], DEFAULT_SIGNATURE, {k: inputs[k] for k in input_specs(tiny["config"])})
    assert np.abs(fallback["logit"] - served["logit"]).max() > 1e-4  # 10x the tolerance above


def test_warmup_file_holds_prediction_logs_of_real_eval_rows(tiny, exported):
    from tfvctr.export.protos import prediction_log_class

    path = os.path.join(exported["path"], layout.WARMUP_DIR, layout.WARMUP_FILE)
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert 0 < len(records) <= 1000
    eval_ads = {r.decode() for r in sample_rows(tiny["config"], tiny["data"], 100)["ad_id"]}
    for record in records:
        log = prediction_log_class().FromString(record)
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        signature = request.model_spec.signature_name
        assert signature in (DEFAULT_SIGNATURE, IMAGE_SIGNATURE)
        assert sorted(request.inputs) == sorted(input_specs(tiny["config"], signature == IMAGE_SIGNATURE))
        ids = [v.decode() for v in request.inputs["ad_id"].string_val]
        assert ids and all(i.split("#")[0] in eval_ads for i in ids)


def test_check_reruns_through_the_tf1_loader_and_catches_a_tampered_export(tiny, exported, tmp_path, capsys):
    from tfvctr import cli

    assert cli.main(["export", "--check", exported["path"]]) == 0
    assert "export --check: OK" in capsys.readouterr().out
    tampered = str(tmp_path / "tampered")
    shutil.copytree(exported["path"], tampered)
    ids_path = os.path.join(tampered, "assets", layout.EXPORT_AD_IDS)
    with open(ids_path) as f:
        ids = f.read().splitlines()
    with open(ids_path, "w") as f:
        f.write("\n".join(reversed(ids)) + "\n")  # every ad now reads another ad's row
    with pytest.raises(TfvctrError, match="differs by"):
        check_export(tampered)
    with open(os.path.join(tampered, layout.WARMUP_DIR, layout.EXPORT_INFO)) as f:
        assert json.load(f)["table"] == os.path.abspath(tiny["table"])
