"""Pieces of the serving stack without a server: number formatting, models.config, the client."""

from __future__ import annotations

import doctest
import http.server
import json
import threading

import numpy as np
import pytest

import serving.model_config
from serving import rest_api
from serving.client import ServingClient, ServingError
from serving.model_config import parse_model_config_text, read_model_config_file
from tfvctr.errors import ConfigError


@pytest.mark.parametrize("value,text", [
    (0.5, "0.5"), (1.0, "1.0"), (-0.0, "-0.0"), (3.0, "3.0"), (9000000.0, "9e+06"), (0.00003, "3e-05"),
    (0.1, "0.1"), (123456789.0, "123456792.0"), (1 / 3, "0.333333343"), (float("nan"), "NaN"),
    (float("inf"), "Infinity"), (float("-inf"), "-Infinity"),
])
def test_float32_outputs_print_as_tf_servings_write_decimal(value, text):
    assert rest_api.format_float(float(np.float32(value))) == text


def test_printed_float32_round_trips_exactly():
    values = np.random.default_rng(0).standard_normal(2000).astype(np.float32) * np.float32(1e3)
    assert all(np.float32(float(rest_api.format_float(float(v)))) == v for v in values)


def test_doubles_print_with_17_digits_when_needed():
    assert rest_api.format_double(0.1) == "0.1"
    assert rest_api.format_double(1 / 3) == "0.33333333333333331"
    assert rest_api.format_double(2.0) == "2.0"


def test_model_config_docstring_example_runs():
    assert doctest.testmod(serving.model_config).failed == 0


def test_model_config_defaults_policies_and_labels():
    specs = parse_model_config_text("""
      model_config_list {
        config { name: "a" base_path: "/m/a" }
        config { name: "b" base_path: "/m/b" model_version_policy { latest { num_versions: 2 } } }
        config { name: "c" base_path: "/m/c" model_version_policy { all {} } version_labels { key: "x" value: 4 } }
      }""")
    assert [(s.name, s.policy, s.num_latest) for s in specs] == [("a", "latest", 1), ("b", "latest", 2), ("c", "all", 1)]
    assert specs[2].labels == {"x": 4}


@pytest.mark.parametrize("text,message", [
    ('model_config_list { config { name: "a" base_path: "/x" logging_config {} } }', 'no field named "logging_config"'),
    ('model_config_list { config { name: "a" } }', "needs a `base_path`"),
    ('model_config_list { config { base_path: "/x" } }', "needs a `name`"),
    ('model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }', "appears twice"),
    ('model_config_list { config { name: "a" base_path: "/x" model_platform: "pytorch" } }', "is not served"),
    ('model_config_list { config { name: "a" base_path: "/x" model_version_policy { specific {} } } }', "lists no versions"),
    ("model_config_list { }", "has no `config` entries"),
    ("", "no `model_config_list`"),
])
def test_model_config_errors_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_model_config_text(text)


def test_docker_base_paths_rebase_onto_a_local_folder(tmp_path):
    cfg = tmp_path / "models.config"
    cfg.write_text('model_config_list { config { name: "ctr" base_path: "/models/ctr" } config { name: "o" base_path: "/srv/o" } }')
    specs = read_model_config_file(str(cfg), rebase_models_dir=str(tmp_path / "exports"))
    assert [s.base_path for s in specs] == [str(tmp_path / "exports" / "ctr"), "/srv/o"]


def test_the_shipped_models_config_parses():
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    specs = read_model_config_file(os.path.join(here, "..", "..", "serving", "models.config"))
    assert specs[0].name == "ctr" and specs[0].base_path == "/models/ctr"


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 `fail` times, then 200 (a fake server for the client's retry logic only)."""

    fail = 2
    calls = 0

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = (503, {"error": "loading"}) if type(self).calls <= type(self).fail else (200, {"predictions": [{"x_bytes": {"b64": "aGk="}}]})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    _Flaky.calls = 0
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_client_retries_503_then_decodes_bytes(flaky_server):
    client = ServingClient(flaky_server, "m", retries=3, backoff=0.01)
    assert client.predict([{"x": b"\x00"}]) == [{"x_bytes": b"hi"}]
    assert _Flaky.calls == 3


def test_client_gives_up_after_its_retries_with_the_servers_message(flaky_server):
    _Flaky.fail = 10
    try:
        with pytest.raises(ServingError, match="HTTP 503: loading") as e:
            ServingClient(flaky_server, "m", retries=1, backoff=0.01).predict([{"x": 1}])
        assert e.value.status == 503 and _Flaky.calls == 2
    finally:
        _Flaky.fail = 2


def test_client_reports_a_refused_connection_clearly():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ServingError, match="cannot connect") as e:
        ServingClient(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0.01).predict([{"x": 1}])
    assert e.value.status == 0


def test_client_rejects_what_tf_serving_would():
    with pytest.raises(ValueError, match="not both"):
        ServingClient("http://x", "m", version=1, label="a")
    with pytest.raises(ValueError, match="at least one row"):
        ServingClient("http://x", "m").predict([])


def test_vectorised_float_formatting_matches_the_scalar_rule():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.integers(-8, 9, 3000),
                             [0.0, -0.0, 1.0, 3.0, 9e6, 3e-5, 0.1, np.nan, np.inf, -np.inf]])
    for dtype, scalar in ((np.float32, rest_api.format_float), (np.float64, rest_api.format_double)):
        arr = values.astype(dtype)
        assert rest_api.format_floats(arr) == [scalar(float(v)) for v in arr]


def test_fast_row_parsing_gives_the_exact_paths_arrays(monkeypatch):
    dtypes = {"s": rest_api.DT_STRING, "f": rest_api.DT_FLOAT, "l": rest_api.DT_STRING, "b": rest_api.DT_BOOL,
              "i": rest_api.DT_INT64, "d": rest_api.DT_DOUBLE}
    rows = [{"s": f"ad{i}", "f": [0.5, 2, float("nan"), -1e30][i % 4], "l": ["a", str(i)], "b": i % 2 == 0,
             "i": i * 10**12, "d": 0.1 * i} for i in range(9)]
    fast = rest_api.tensors_from_instances(rows, dtypes)
    monkeypatch.setattr(rest_api, "_fast_instances", lambda *a: None)
    exact = rest_api.tensors_from_instances(rows, dtypes)
    for k in dtypes:
        assert fast[k].dtype == exact[k].dtype and fast[k].shape == exact[k].shape, k
        np.testing.assert_array_equal(fast[k], exact[k])
