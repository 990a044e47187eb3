"""A REST client for TF Serving and the tfvctr dev server alike (stdlib only, no TensorFlow).

    client = ServingClient("http://127.0.0.1:8501", "ctr")
    client.predict([{"ad_id": "a1", "category": "shoes", ...}])
    # [{'ctr': 0.031, 'in_table': True, 'logit': -3.4}]   (tests/serving/ runs this against a server)

It speaks only TF Serving's documented REST API (`g3doc/api_rest.md`), so it cannot
tell the two servers apart. Retries: a 503 (UNAVAILABLE: a version is loading, the
server is starting) and refused connections are retried with exponential backoff up to
`retries` times; anything else fails at once with `ServingError` carrying the HTTP
status and TF Serving's `error` message. Each attempt has a `timeout` in seconds.
Bytes values (`bytes`) are sent as `{"b64": ...}`, as TF Serving expects for binary
strings (images).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterable


class ServingError(Exception):
    """A request TF Serving (or the network) refused: `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(f"{url}: HTTP {status}: {message}" if status else f"{url}: {message}")
        self.status = status
        self.message = message
        self.url = url


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _encode(value.tolist())
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("b64"), str):
            return base64.b64decode(value["b64"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class ServingClient:
    """One model on one server: `predict`, `predict_columns`, `status`, `metadata`."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both (TF Serving rejects both)")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"timeout must be > 0, retries and backoff >= 0; got {timeout}, {retries}, {backoff}")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._model_path = "/v1/models/" + urllib.parse.quote(model, safe="")
        if version is not None:
            self._model_path += f"/versions/{int(version)}"
        elif label is not None:
            self._model_path += "/labels/" + urllib.parse.quote(label, safe="")

    # ---------------------------------------------------------------- requests
    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        url = self.url + path
        data = None if body is None else json.dumps(_encode(body), allow_nan=True).encode("utf-8")
        last: ServingError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                raw = e.read().decode("utf-8", "replace")
                try:
                    message = json.loads(raw).get("error", raw)
                except (ValueError, AttributeError):
                    message = raw.strip() or e.reason
                last = ServingError(e.code, message, url)
                if e.code != 503:
                    raise last from None
            except urllib.error.URLError as e:
                reason = e.reason
                last = ServingError(0, f"cannot connect ({reason})", url)
                if not isinstance(reason, ConnectionRefusedError):
                    raise last from None
            except (TimeoutError, http.client.HTTPException, ConnectionError) as e:
                # A timeout is not retried: the server may still be working on it.
                raise ServingError(0, f"{type(e).__name__}: {e or 'timed out'}", url) from None
        assert last is not None
        raise last

    def predict(self, rows: Iterable[dict], signature_name: str | None = None) -> list:
        """Row format (`instances`): one prediction per row, outputs by name (or a bare value
        when the signature has one output), bytes outputs (`*_bytes`) decoded."""
        rows = list(rows)
        if not rows:
            raise ValueError("predict needs at least one row (TF Serving rejects an empty `instances` list)")
        body: dict = {"instances": rows}
        if signature_name:
            body["signature_name"] = signature_name
        return _decode(self._request("POST", self._model_path + ":predict", body)["predictions"])

    def predict_columns(self, columns: dict, signature_name: str | None = None) -> Any:
        """Columnar format (`inputs`): one list per input; returns `outputs`."""
        body: dict = {"inputs": columns}
        if signature_name:
            body["signature_name"] = signature_name
        return _decode(self._request("POST", self._model_path + ":predict", body)["outputs"])

    def status(self) -> dict:
        return self._request("GET", self._model_path)

    def metadata(self) -> dict:
        return self._request("GET", self._model_path + "/metadata")

    def wait_until_available(self, timeout: float = 60.0) -> int:
        """Polls the status until a version is AVAILABLE; returns it (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.status()["model_version_status"]
                up = [int(s["version"]) for s in states if s["state"] == "AVAILABLE"]
                if up:
                    return max(up)
            except ServingError as e:
                if e.status not in (0, 404, 503):
                    raise
            if time.monotonic() > deadline:
                raise ServingError(0, f"no version of {self.model} available after {timeout:.0f} s", self.url)
            time.sleep(0.2)


def predict(rows: Iterable[dict], url: str = "http://127.0.0.1:8501", model: str = "ctr", **kwargs) -> list:
    """One-shot `ServingClient(url, model, **kwargs).predict(rows)`; `signature_name=` passes through."""
    signature_name = kwargs.pop("signature_name", None)
    return ServingClient(url, model, **kwargs).predict(rows, signature_name=signature_name)

