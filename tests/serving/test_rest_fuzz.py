"""Mangled requests never become a 500: every client mistake is a 4xx with a JSON error.

Runs `serving.rest_api.process` in-process on a stand-in servable (a real SignatureDef,
a NumPy `run`), thousands of deterministic mutations of valid bodies and paths.
"""

from __future__ import annotations

import contextlib
import json
import random

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import rest_api


def _signature() -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, dtype, rank in (("ad_id", types_pb2.DT_STRING, 1), ("price", types_pb2.DT_FLOAT, 1),
                              ("tags", types_pb2.DT_STRING, 2), ("n", types_pb2.DT_INT64, 1),
                              ("flag", types_pb2.DT_BOOL, 1)):
        info = sig.inputs[name]
        info.name, info.dtype = f"{name}:0", dtype
        for _ in range(rank):
            info.tensor_shape.dim.add(size=-1)
    for name, dtype in (("ctr", types_pb2.DT_FLOAT), ("in_table", types_pb2.DT_BOOL), ("id_bytes", types_pb2.DT_STRING)):
        sig.outputs[name].name, sig.outputs[name].dtype = f"{name}:0", dtype
    return sig


class StandIn:
    name, version = "m", 1
    signature_defs = {"serving_default": _signature()}

    def run(self, signature_name, feeds, timeout_ms):
        shapes = {k: v.shape for k, v in feeds.items()}
        ranks = {k: len(s) for k, s in shapes.items()}
        if ranks != {"ad_id": 1, "price": 1, "tags": 2, "n": 1, "flag": 1} or len({s[0] for s in shapes.values()}) != 1:
            # What TF reports for inputs of inconsistent shapes: a client's mistake.
            raise rest_api.invalid(f"incompatible shapes {shapes}")
        return {"ctr": feeds["price"].astype(np.float32) / 3, "in_table": feeds["flag"], "id_bytes": feeds["ad_id"]}


class Manager:
    @contextlib.contextmanager
    def acquire(self, name, version, label):
        if name != "m" or version not in (None, 1) or label not in (None, "stable"):
            raise rest_api.RestError("NOT_FOUND", "Servable not found for request: Latest(x)")
        yield StandIn()

    def version_states(self, name, version, label):
        return [(1, "AVAILABLE", "OK", "")]


ROW = {"ad_id": "a1", "price": 1.5, "tags": ["x", "y"], "n": 3, "flag": True}
ODD_VALUES = [None, True, False, 0, -1, 2**53 + 1, 2**70, 1e39, -1e-320, float("nan"), "", "\ud800", "é",
              [], [[]], [1, [2]], {}, {"b64": "!!"}, {"b64": "aGk="}, {"b64": 1}, {"x": 1}, [None], "NaN"]


def _mutations(rng: random.Random):
    base_bodies = [{"instances": [dict(ROW), dict(ROW, ad_id="b")]},
                   {"inputs": {k: [v, v] for k, v in ROW.items()}},
                   {"signature_name": "serving_default", "instances": [dict(ROW)]}]
    for _ in range(1500):
        body = json.loads(json.dumps(rng.choice(base_bodies)))
        target = body.get("instances") or body["inputs"]
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(6)
            rows = [r for r in target if isinstance(r, dict) and r] if isinstance(target, list) else []
            if kind == 0 and rows:
                row = rng.choice(rows)
                row[rng.choice(list(row))] = rng.choice(ODD_VALUES)
            elif kind == 1 and rows:
                row = rng.choice(rows)
                row.pop(rng.choice(list(row)))
            elif kind == 2 and isinstance(target, dict) and target:
                target[rng.choice(list(target))] = rng.choice(ODD_VALUES)
            elif kind == 3:
                body[rng.choice(["instances", "inputs", "signature_name", "extra"])] = rng.choice(ODD_VALUES)
            elif kind == 4 and isinstance(target, list):
                target.append(rng.choice(ODD_VALUES))
            elif body:
                body.pop(rng.choice(list(body)))
        text = json.dumps(body, allow_nan=True)
        if rng.random() < 0.2:  # byte-level damage too
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(["", "{", "]", '"', "\\", ",", "\x00", "\ud800"]) + text[i + rng.randrange(3):]
        yield text.encode("utf-8", "surrogatepass")


def test_mangled_bodies_are_answered_with_4xx_json_never_500():
    rng = random.Random(0)
    seen = {}
    for body in _mutations(rng):
        status, text = rest_api.process("POST", "/v1/models/m:predict", body, Manager())
        assert status in (200, 400, 404, 501), (status, body, text)
        doc = json.loads(text)
        if status != 200:
            assert isinstance(doc["error"], str) and doc["error"]
        seen[status] = seen.get(status, 0) + 1
    assert seen.get(200, 0) > 50 and seen.get(400, 0) > 500  # both paths exercised


def test_mangled_paths_and_methods_are_400_or_404_json():
    rng = random.Random(1)
    pieces = ["/v1", "/models", "/m", "/versions", "/1", "/labels", "/stable", ":predict", ":classify", "/metadata",
              "/%6D", "/99999999999999999999", ":", "/", "/v2", "/x:y"]
    good = json.dumps({"instances": [ROW]}).encode()
    for _ in range(1500):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        if not rest_api.is_rest_path(path):
            continue
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
        status, text = rest_api.process(method, path, good, Manager())
        assert status in (200, 400, 404, 501), (method, path, status, text)
        assert json.loads(text) is not None
