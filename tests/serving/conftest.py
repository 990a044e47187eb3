"""Servers for the serving tests: the dev server by default, any TF Serving in TFVCTR_SERVING_URL.

Against real TF Serving (docs/serving.md, "Contract tests against real TF Serving"):

    python tests/serving/model_factory.py /tmp/tfs            # writes ctr/1, ctr/2, models.config
    docker run --rm -p 8501:8501 -v /tmp/tfs:/models tensorflow/serving \\
        --model_config_file=/models/models.config --rest_api_timeout_in_ms=5000
    TFVCTR_SERVING_URL=http://127.0.0.1:8501 TFVCTR_SERVING_MODELS=/tmp/tfs pytest tests/serving

TFVCTR_SERVING_MODELS is the same folder, read in-process for the reference numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTERNAL_URL = os.environ.get("TFVCTR_SERVING_URL")
dev_server_only = pytest.mark.skipif(bool(EXTERNAL_URL), reason="exercises the dev server's own process (TFVCTR_SERVING_URL is set)")


class DevServer:
    """`tfvctr serve ...` in a subprocess on 127.0.0.1 and an ephemeral port."""

    def __init__(self, args: list[str], start_timeout: float = 120.0):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfvctr.cli", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True).start()
        deadline = time.monotonic() + start_timeout
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout.append(line)
            if "REST API on http://" in line:
                self.url = line.split("REST API on ")[1].split("/v1/")[0]
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError("dev server did not start:\n" + "".join(self.stdout) + "".join(self.stderr[-30:]))
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True).start()

    @staticmethod
    def _drain(stream, sink):
        for line in stream:
            sink.append(line)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as a process manager would; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> str:
    """Folder with ctr/1, ctr/2 and models.config (see model_factory.write_test_models)."""
    if os.environ.get("TFVCTR_SERVING_MODELS"):
        return os.environ["TFVCTR_SERVING_MODELS"]
    import model_factory

    out = str(tmp_path_factory.mktemp("served"))
    model_factory.write_test_models(out)
    return out


@pytest.fixture(scope="session")
def server_url(test_models):
    """Base URL of the server under test; a dev server with a 1 MiB body limit by default."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL.rstrip("/")
        return
    server = DevServer(["--model-config-file", os.path.join(test_models, "models.config"), "--max-body-mb", "1",
                        "--timeout-ms", "5000"])
    yield server.url
    assert server.stop() == 0, "".join(server.stderr[-20:])
