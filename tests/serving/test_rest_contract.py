"""TF Serving's REST contract, checked against the dev server (or TFVCTR_SERVING_URL).

Expected codes and messages come from tensorflow/serving's own sources and tests
(`http_rest_api_handler_test.cc`, `json_tensor.cc`, `http_server.cc`); the reference
numbers come from the same SavedModel run in-process.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import time
import urllib.parse

import numpy as np
import pytest
import tensorflow as tf
from conftest import dev_server_only

ROWS = [
    {"ad_id": "ad1", "category": "shoes", "price": 1.5, "tags": ["a", "b"]},
    {"ad_id": "unknown-ad", "category": "bags", "price": 0.25, "tags": ["c", ""]},
    {"ad_id": "ad3", "category": "shoes", "price": -2.0, "tags": ["", ""]},
]


def call(url: str, method: str, path: str, body=None, headers=None) -> tuple[int, str, str]:
    """(status, content type, body text); body may be bytes, str or a JSON-able object."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    conn.close()
    return resp.status, resp.getheader("Content-Type", ""), text


def predict(url, body, path="/v1/models/ctr:predict"):
    status, _, text = call(url, "POST", path, body)
    assert status == 200, text
    return json.loads(text)


def columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def in_process(models_dir: str, version: int, signature: str, rows) -> dict[str, np.ndarray]:
    """The same SavedModel called in-process through `tf.saved_model.load` (the reference)."""
    loaded = tf.saved_model.load(os.path.join(models_dir, "ctr", str(version)))
    fn = loaded.signatures[signature]
    feeds = {}
    for name, spec in fn.structured_input_signature[1].items():
        vals = [r[name] for r in rows]
        if spec.dtype == tf.string:
            vals = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in vals]
        feeds[name] = tf.constant(vals, dtype=spec.dtype)
    return {k: v.numpy() for k, v in fn(**feeds).items()}


# ------------------------------------------------------------------ predictions
def test_row_and_columnar_give_the_in_process_numbers(server_url, test_models):
    rows = predict(server_url, {"instances": ROWS})["predictions"]
    cols = predict(server_url, {"inputs": columns(ROWS)})["outputs"]
    ref = in_process(test_models, 2, "serving_default", ROWS)
    assert [sorted(r) for r in rows] == [["ctr", "in_table", "logit"]] * 3
    for name in ("ctr", "logit", "in_table"):
        row_values = np.array([r[name] for r in rows], dtype=ref[name].dtype)
        np.testing.assert_array_equal(row_values, np.array(cols[name], dtype=ref[name].dtype))
        # Printed with enough digits to round-trip float32: the exact in-process values.
        np.testing.assert_array_equal(row_values, ref[name])
    assert [r["in_table"] for r in rows] == [True, False, True]


def test_versions_labels_and_signatures_select_what_they_name(server_url, test_models):
    v1 = predict(server_url, {"instances": ROWS}, "/v1/models/ctr/versions/1:predict")["predictions"]
    stable = predict(server_url, {"instances": ROWS}, "/v1/models/ctr/labels/stable:predict")["predictions"]
    latest = predict(server_url, {"instances": ROWS})["predictions"]
    assert v1 == stable
    np.testing.assert_array_equal(np.float32([r["logit"] for r in v1]), in_process(test_models, 1, "serving_default", ROWS)["logit"])
    assert [r["logit"] for r in v1] != [r["logit"] for r in latest]
    image_rows = [dict(r, image_bytes={"b64": base64.b64encode(b"\x89PNG" * (i + 1)).decode()}) for i, r in enumerate(ROWS)]
    with_image = predict(server_url, {"signature_name": "score_with_image", "instances": image_rows})["predictions"]
    ref = in_process(test_models, 2, "score_with_image", image_rows)
    np.testing.assert_array_equal(np.float32([r["ctr"] for r in with_image]), ref["ctr"])


def test_one_input_one_output_signature_is_unnamed_and_whole_floats_keep_their_point(server_url):
    status, ctype, text = call(server_url, "POST", "/v1/models/ctr/versions/1:predict",
                               {"signature_name": "half_plus_two", "instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert (status, ctype) == (200, "application/json")
    assert json.loads(text) == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    assert "3.0" in text and "4.0" in text  # WriteDecimal appends ".0" to whole numbers
    cols = predict(server_url, {"signature_name": "half_plus_two", "inputs": [[1, 2]]}, "/v1/models/ctr/versions/1:predict")
    assert cols == {"outputs": [[2.5, 3.0]]}


def test_bytes_outputs_are_base64_only_when_the_name_ends_in_bytes(server_url):
    body = {"signature_name": "echo", "instances": [{"payload": {"b64": base64.b64encode(b"hi\x00").decode()}, "n": 3},
                                                    {"payload": "plain", "n": -1}]}
    got = predict(server_url, body)["predictions"]
    assert got[0] == {"payload_bytes": {"b64": base64.b64encode(b"hi\x00").decode()}, "text": "hi\u0000", "n2": 6, "ok": True}
    assert got[1] == {"payload_bytes": {"b64": base64.b64encode(b"plain").decode()}, "text": "plain", "n2": -2, "ok": False}


# ------------------------------------------------------------------ status and metadata
def _state(version):
    return {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def test_status_document_has_tf_servings_layout(server_url):
    def get(path):
        status, ctype, text = call(server_url, "GET", path)
        assert (status, ctype) == (200, "application/json"), text
        return json.loads(text)

    everything = get("/v1/models/ctr")
    assert sorted(everything["model_version_status"], key=lambda s: s["version"]) == [_state(1), _state(2)]
    assert list(everything) == ["model_version_status"]
    assert get("/v1/models/ctr/versions/1") == {"model_version_status": [_state(1)]}
    # GetModelStatusImpl reads the name and version only: a label, known or not, lists all.
    assert get("/v1/models/ctr/labels/canary") == everything
    assert get("/v1/models/ctr/labels/no-such-label") == everything


def test_metadata_document_has_tf_servings_layout(server_url):
    status, _, text = call(server_url, "GET", "/v1/models/ctr/versions/1/metadata")
    assert status == 200, text
    doc = json.loads(text)
    assert list(doc) == ["model_spec", "metadata"]
    assert doc["model_spec"] == {"name": "ctr", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]  # the doubled key is TF Serving's
    assert {"serving_default", "score_with_image", "half_plus_two", "echo"} <= set(sigs)
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert set(default) == {"inputs", "outputs", "method_name", "defaults"}
    assert set(default["inputs"]) == {"ad_id", "category", "price", "tags"}
    assert set(default["outputs"]) == {"ctr", "logit", "in_table"}
    ad_id = default["inputs"]["ad_id"]
    assert ad_id["dtype"] == "DT_STRING" and ad_id["name"].endswith(":0")
    assert ad_id["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}  # int64 as strings
    assert default["outputs"]["in_table"]["dtype"] == "DT_BOOL"
    assert sigs["half_plus_two"]["inputs"]["x"]["tensor_shape"]["dim"][1] == {"size": "2", "name": ""}


# ------------------------------------------------------------------ errors
GOOD = {"instances": ROWS[:1]}
BAD_REQUESTS = {
    # name: (method, path, body, expected status, substring of the error message)
    "malformed_json": ("POST", "/v1/models/ctr:predict", b'{"instances": [1,', 400, "JSON Parse error"),
    "empty_body": ("POST", "/v1/models/ctr:predict", b"", 400, "JSON Parse error: The document is empty"),
    "top_level_not_object": ("POST", "/v1/models/ctr:predict", b"[1, 2]", 400, "Is not object"),
    "both_instances_and_inputs": ("POST", "/v1/models/ctr:predict", {"instances": ROWS, "inputs": columns(ROWS)}, 400,
                                  "expecting only one of 'inputs' or 'instances' keys to exist"),
    "neither_instances_nor_inputs": ("POST", "/v1/models/ctr:predict", {"signature_name": "serving_default"}, 400,
                                     "Missing 'inputs' or 'instances' key"),
    "empty_instances": ("POST", "/v1/models/ctr:predict", {"instances": []}, 400, "No values in 'instances' array"),
    "instances_not_a_list": ("POST", "/v1/models/ctr:predict", {"instances": {"a": 1}}, 400, "to be an list/array"),
    "missing_feature": ("POST", "/v1/models/ctr:predict", {"instances": [{k: v for k, v in ROWS[0].items() if k != "price"}]},
                        400, "must only have keys: ad_id,category,price,tags"),
    "missing_column": ("POST", "/v1/models/ctr:predict", {"inputs": {k: v for k, v in columns(ROWS).items() if k != "tags"}},
                       400, "Missing named input: tags in 'inputs' object."),
    "extra_feature_in_row": ("POST", "/v1/models/ctr:predict", {"instances": [dict(ROWS[0], color="red")]}, 400,
                             "does not have named input: color"),
    "wrong_type": ("POST", "/v1/models/ctr:predict", {"instances": [dict(ROWS[0], price="cheap")]}, 400,
                   'JSON Value: "cheap" Type: String is not of expected type: float'),
    "bool_for_float": ("POST", "/v1/models/ctr:predict", {"instances": [dict(ROWS[0], price=True)]}, 400,
                       "Type: True is not of expected type: float"),
    "lossy_integer": ("POST", "/v1/models/ctr:predict", {"instances": [dict(ROWS[0], price=16777217)]}, 400,
                      "to float without loss of precision"),
    "ragged_rows": ("POST", "/v1/models/ctr:predict", {"instances": [ROWS[0], dict(ROWS[1], tags=["x"])]}, 400,
                    "Expecting tensor size: 2 but got: 1"),
    "ragged_list_in_a_row": ("POST", "/v1/models/ctr/versions/1:predict",
                             {"signature_name": "half_plus_two", "instances": [[[1.0, 2.0], [3.0]]]}, 400,
                             "Encountered list at unexpected size"),
    "bad_base64": ("POST", "/v1/models/ctr:predict", {"instances": [dict(ROWS[0], ad_id={"b64": "!!!"})]}, 400,
                   "Unable to base64 decode"),
    "plain_list_for_many_inputs": ("POST", "/v1/models/ctr:predict", {"instances": ["ad1"]}, 400,
                                   "instances is a plain list, but expecting list of objects"),
    "signature_name_not_a_string": ("POST", "/v1/models/ctr:predict", {"signature_name": 100, **GOOD}, 400,
                                    "'signature_name' key must be a string value."),
    "unknown_signature": ("POST", "/v1/models/ctr:predict", {"signature_name": "nope", **GOOD}, 400,
                          'Serving signature name: "nope" not found in signature def'),
    "unknown_model": ("POST", "/v1/models/nope:predict", GOOD, 404, "Servable not found for request: Latest(nope)"),
    "unknown_version": ("POST", "/v1/models/ctr/versions/7:predict", GOOD, 404, "Servable not found for request: Specific(ctr, 7)"),
    "unknown_label": ("POST", "/v1/models/ctr/labels/beta:predict", GOOD, 400, "Unrecognized servable version label: beta"),
    "version_overflows_int64": ("POST", "/v1/models/ctr/versions/18446744073709551615:predict", GOOD, 400,
                                "Failed to convert version: 18446744073709551615 to numeric."),
    "status_unknown_model": ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    "status_unknown_version": ("GET", "/v1/models/ctr/versions/7", None, 404, "Could not find version 7 of model ctr"),
    "metadata_unknown_label": ("GET", "/v1/models/ctr/labels/beta/metadata", None, 400, "Unrecognized servable version label: beta"),
    "metadata_unknown_model": ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"),
    "missing_model_name": ("GET", "/v1/models", None, 400, "Missing model name in request."),
    "bad_path": ("GET", "/v1/models/ctr/foo", None, 400, "Malformed request: GET /v1/models/ctr/foo"),
    "bad_path_root": ("POST", "/v1/foo", GOOD, 400, "Malformed request: POST /v1/foo"),
    "bad_path_version_word": ("POST", "/v1/models/ctr/version/1:predict", GOOD, 400, "Malformed request"),
    "version_and_label": ("POST", "/v1/models/ctr/versions/1/labels/stable:predict", GOOD, 400, "Malformed request"),
    "unknown_verb": ("POST", "/v1/models/ctr:explain", GOOD, 400, "Malformed request: POST /v1/models/ctr:explain"),
    "get_predict": ("GET", "/v1/models/ctr:predict", None, 400, "Malformed request: GET /v1/models/ctr:predict"),
    "post_metadata": ("POST", "/v1/models/ctr/metadata", GOOD, 400, "Malformed request: POST /v1/models/ctr/metadata"),
    "put_status": ("PUT", "/v1/models/ctr", GOOD, 400, "Malformed request: PUT /v1/models/ctr"),
    "delete_model": ("DELETE", "/v1/models/ctr", None, 400, "Malformed request: DELETE /v1/models/ctr"),
    "classify_without_classify_signature": ("POST", "/v1/models/ctr:classify", {"examples": [{"price": 1.0}]}, 400,
                                            "Expected one input Tensor."),
    "regress_without_regress_signature": ("POST", "/v1/models/ctr:regress", {"examples": [{"price": 1.0}]}, 400,
                                          "Expected one input Tensor."),
    "classify_without_examples": ("POST", "/v1/models/ctr:classify", {"instances": ROWS}, 400,
                                  "key 'examples' is expected and was not found"),
    "classify_unknown_signature": ("POST", "/v1/models/ctr:classify", {"signature_name": "nope", "examples": [{}]}, 400,
                                   "No signature was found with the name: nope"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_tf_servings_code_and_a_json_error_and_the_server_keeps_serving(server_url, case):
    method, path, body, want_status, want_message = BAD_REQUESTS[case]
    status, ctype, text = call(server_url, method, path, body)
    assert status == want_status, text
    assert ctype == "application/json"
    error = json.loads(text)["error"]
    assert isinstance(error, str) and want_message in error
    assert predict(server_url, GOOD)["predictions"][0]["in_table"] is True


@dev_server_only
def test_body_over_the_limit_is_a_json_413_and_the_server_keeps_serving(server_url):
    # TF Serving has no body limit of its own; the dev server's (1 MiB in this fixture) answers 413.
    big = {"instances": [dict(ROWS[0], ad_id="x" * 2_000_000)]}
    status, ctype, text = call(server_url, "POST", "/v1/models/ctr:predict", big)
    assert (status, ctype) == (413, "application/json")
    assert "larger than the limit of 1048576 bytes" in json.loads(text)["error"]
    assert predict(server_url, GOOD)["predictions"][0]["in_table"] is True


def test_paths_outside_v1_are_not_the_rest_api(server_url):
    status, ctype, _ = call(server_url, "GET", "/v2/models/ctr")
    assert status == 404 and "json" not in ctype


def test_names_and_labels_are_url_decoded(server_url):
    status, _, text = call(server_url, "GET", "/v1/models/%63tr/labels/st%61ble/metadata")
    assert status == 200 and json.loads(text)["model_spec"] == {"name": "ctr", "signature_name": "", "version": "1"}


def test_concurrent_requests_all_succeed_with_their_own_answers(server_url):
    def one(i):
        row = dict(ROWS[0], price=float(i))
        return i, predict(server_url, {"instances": [row]})["predictions"][0]["logit"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(one, range(40)))
    # Version 2 scales price by 2: each answer belongs to its own request.
    logits = np.float32([results[i] for i in range(40)])
    np.testing.assert_allclose(np.diff(logits), 2.0, rtol=1e-5)


def test_a_request_past_the_timeout_gets_504_and_the_server_keeps_serving(server_url):
    # The fixture's server times requests out after 5 s (--timeout-ms; TF Serving's
    # --rest_api_timeout_in_ms); this one would loop for minutes.
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        spinning = pool.submit(call, server_url, "POST", "/v1/models/ctr/versions/1:predict",
                               {"signature_name": "spin", "instances": [10**11]})
        time.sleep(0.5)
        # Served in parallel: a normal request is answered while the long one still runs.
        t = time.monotonic()
        assert predict(server_url, GOOD)["predictions"][0]["in_table"] is True
        assert time.monotonic() - t < 3.0 and not spinning.done()
        status, ctype, text = spinning.result()
    assert (status, ctype) == (504, "application/json"), text
    assert json.loads(text)["error"]
    assert time.monotonic() - start < 30
    assert predict(server_url, GOOD)["predictions"][0]["in_table"] is True
    quick = predict(server_url, {"signature_name": "spin", "instances": [10]}, "/v1/models/ctr/versions/1:predict")
    assert len(quick["predictions"]) == 1
