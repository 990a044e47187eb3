"""Versions appear under the base path while clients keep asking: no request fails.

Dev server only: the test writes version folders into the served base path and stops the
server with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import model_factory
import pytest
from conftest import DevServer, dev_server_only

from serving.client import ServingClient, ServingError

pytestmark = dev_server_only
ROWS = [
    {"ad_id": "ad1", "category": "shoes", "price": 0.0, "tags": ["a"]},
    {"ad_id": "ad1", "category": "shoes", "price": 1.0, "tags": ["a"]},
]


def served_scale(client: ServingClient) -> float:
    """logit(price=1) - logit(price=0): the test model's scale, i.e. its version number."""
    p = client.predict(ROWS)
    return round(p[1]["logit"] - p[0]["logit"], 3)


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def publish(base: str, version: int, tmp: str) -> None:
    """Writes a version elsewhere and renames it in: how exports should land (docs/serving.md)."""
    staged = model_factory.build(os.path.join(tmp, f"stage{version}"), version)
    os.rename(staged, os.path.join(base, str(version)))


def states(client: ServingClient) -> dict[int, tuple[str, str]]:
    return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in client.status()["model_version_status"]}


def test_new_version_swaps_in_under_load_broken_one_never_replaces_it_and_sigterm_is_clean(tmp_path):
    base = str(tmp_path / "models" / "ctr")
    os.makedirs(base)
    model_factory.build(base, 1)
    server = DevServer(["--model-base", str(tmp_path / "models"), "--model-name", "ctr", "--poll-seconds", "0.2"])
    client = ServingClient(server.url, "ctr", timeout=30, retries=0)  # no retries: any failure counts
    try:
        assert served_scale(client) == 1.0
        stop = threading.Event()
        seen: list[float] = []
        failures: list[str] = []

        def load():
            c = ServingClient(server.url, "ctr", timeout=30, retries=0)
            while not stop.is_set():
                try:
                    seen.append(served_scale(c))
                except (ServingError, OSError) as e:  # any failure at all is a bug here
                    failures.append(str(e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            publish(base, 2, str(tmp_path))
            wait_for(lambda: states(client).get(2) == ("AVAILABLE", "OK") and states(client).get(1) == ("END", "OK"),
                     "version 2 available and version 1 unloaded")
            assert served_scale(client) == 2.0

            # A broken version 3 (say, a copy cut short) is reported and never served.
            os.makedirs(os.path.join(base, "3"))
            with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
                f.write(b"not a SavedModel")
            state3 = wait_for(lambda: states(client).get(3, ("", ""))[0] == "END" and states(client)[3], "version 3 to fail")
            assert state3[1] != "OK"
            time.sleep(1.0)  # several polls: it must not be retried into service unchanged
            assert states(client)[2] == ("AVAILABLE", "OK")
            assert served_scale(client) == 2.0

            # Fixed in place: the changed folder is loaded and swapped in.
            shutil.rmtree(os.path.join(base, "3"))
            publish(base, 3, str(tmp_path))
            wait_for(lambda: states(client).get(3) == ("AVAILABLE", "OK"), "the fixed version 3")
            assert served_scale(client) == 3.0
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert failures == []
        assert {1.0, 2.0, 3.0} <= set(seen), sorted(set(seen))
        assert set(seen) <= {1.0, 2.0, 3.0}
        assert len(seen) > 20
    finally:
        code = server.stop()
    assert code == 0, "".join(server.stderr[-20:])
    access = [line for line in server.stderr if '"POST /v1/models/ctr:predict HTTP/1.1" 200' in line]
    assert len(access) >= len(seen)
    assert any("version 3 failed to load" in line for line in server.stderr)
    assert "tfvctr serve: stopped\n" in server.stdout


# The command's own checks run in-process (tfvctr.cli.main): no TensorFlow start-up per case.
@pytest.mark.parametrize("flags,message", [
    (["--model-base", "/nonexistent/base"], "no such folder"),
    (["--model-base", "MODELS", "--model-name", "nope"], "has no model folder 'nope'"),
    (["--model-config-file", "/nonexistent/models.config"], "cannot read the model config file"),
    (["--model-base", "MODELS", "--port", "70000"], "--port must be in 0..65535"),
])
def test_bad_flags_are_one_line_errors_with_exit_2(tmp_path, capsys, flags, message):
    from tfvctr.cli import main

    os.makedirs(tmp_path / "models" / "ctr" / "1")
    flags = [str(tmp_path / "models") if f == "MODELS" else f for f in flags]
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_has_help(capsys):
    from tfvctr.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--model-config-file" in out and "8501" in out


def test_a_label_on_a_version_that_is_not_loaded_is_refused_at_start_as_by_tf_serving(tmp_path, capsys):
    from tfvctr.cli import main

    model_factory.build(str(tmp_path / "ctr"), 1)
    cfg = tmp_path / "models.config"
    cfg.write_text(f'model_config_list {{ config {{ name: "ctr" base_path: "{tmp_path / "ctr"}" '
                   f'version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }} }}')
    assert main(["serve", "--model-config-file", str(cfg), "--port", "0"]) == 2
    assert "version label 'canary' points at version 2, which is not loaded (loaded: [1])" in capsys.readouterr().err


def test_a_port_in_use_is_a_one_line_error(tmp_path, capsys):
    import socket

    from tfvctr.cli import main

    model_factory.build(str(tmp_path / "ctr"), 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model-base", str(tmp_path / "ctr"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err and "Traceback" not in err
