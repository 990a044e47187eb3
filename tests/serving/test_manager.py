"""Version policy and swaps of `ModelManager`, with a stand-in loader (no TensorFlow graphs)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from serving.model_config import ModelSpecConfig
from serving.rest_api import RestError
from serving.servables import ModelManager


class FakeServable:
    """Loads any folder holding saved_model.pb unless it says "broken"; records its closing."""

    def __init__(self, name, version, path):
        with open(os.path.join(path, "saved_model.pb")) as f:
            if "broken" in f.read():
                raise ValueError("not a SavedModel")
        self.name, self.version, self.path = name, version, path
        self.signature_defs = {}
        self.warmup_requests = 0
        self.closed = False
        self._refs = 0
        self._idle = threading.Condition()

    def _acquire(self):
        with self._idle:
            self._refs += 1

    def _release(self):
        with self._idle:
            self._refs -= 1
            self._idle.notify_all()

    def close(self, timeout=60.0):
        with self._idle:
            self._idle.wait_for(lambda: self._refs == 0, timeout=timeout)
        self.closed = True


def write_version(base, version, content="ok"):
    d = os.path.join(base, str(version))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "saved_model.pb"), "w") as f:
        f.write(content)
    os.utime(os.path.join(d, "saved_model.pb"), ns=(time.time_ns(), time.time_ns()))


def manager(base, **spec):
    return ModelManager([ModelSpecConfig(name="m", base_path=str(base), **spec)], loader=FakeServable)


def states(m, name="m"):
    return {v: (state, code) for v, state, code, _ in m.version_states(name, None, None)}


def wait_closed(servable, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not servable.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    return servable.closed


@pytest.mark.parametrize("spec,on_disk,served", [
    ({}, [1, 2, 3], [3]),
    ({"num_latest": 2}, [1, 2, 3], [2, 3]),
    ({"policy": "all"}, [1, 2, 3], [1, 2, 3]),
    ({"policy": "specific", "versions": (1, 3, 7)}, [1, 2, 3], [1, 3]),
])
def test_policy_picks_the_versions_tf_serving_would(tmp_path, spec, on_disk, served):
    for v in on_disk:
        write_version(tmp_path, v)
    os.makedirs(tmp_path / "not-a-version")  # ignored, as by TF Serving
    m = manager(tmp_path, **spec)
    m.poll_once()
    assert m.available_versions("m") == served
    with m.acquire("m", None, None) as s:
        assert s.version == max(served)
    assert [v for v, _, _, _ in m.version_states("m", None, None)] == sorted(served, reverse=True)


def test_swap_waits_for_in_flight_requests_and_a_broken_version_never_replaces_a_working_one(tmp_path):
    write_version(tmp_path, 1)
    m = manager(tmp_path)
    m.poll_once()
    with m.acquire("m", None, None) as old:
        write_version(tmp_path, 2)
        m.poll_once()
        with m.acquire("m", None, None) as new:
            assert new.version == 2
        time.sleep(0.1)
        assert not old.closed  # still answering the request that holds it
    assert wait_closed(old)
    assert states(m) == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}

    write_version(tmp_path, 3, "broken")
    m.poll_once()
    m.poll_once()  # unchanged: not retried
    assert states(m)[3] == ("END", "UNKNOWN") and m.available_versions("m") == [2]
    assert "not a SavedModel" in m.version_states("m", 3, None)[0][3]
    write_version(tmp_path, 3, "ok")  # rewritten: retried and swapped in
    m.poll_once()
    assert m.available_versions("m") == [3]


def test_lookups_fail_as_tf_serving_does(tmp_path):
    write_version(tmp_path, 1)
    m = ModelManager([ModelSpecConfig(name="m", base_path=str(tmp_path), labels={"stable": 1, "gone": 9})], loader=FakeServable)
    m.poll_once()
    with m.acquire("m", None, "stable") as s:
        assert s.version == 1
    cases = [(("x", None, None), "NOT_FOUND", "Servable not found for request: Latest(x)"),
             (("m", 5, None), "NOT_FOUND", "Servable not found for request: Specific(m, 5)"),
             (("m", None, "beta"), "INVALID_ARGUMENT", "Unrecognized servable version label: beta"),
             (("m", None, "gone"), "NOT_FOUND", "Servable not found for request: Specific(m, 9)")]
    for args, code, message in cases:
        with pytest.raises(RestError) as e:
            with m.acquire(*args):
                pass
        assert (e.value.code, e.value.message) == (code, message)
    with pytest.raises(RestError, match="Could not find version 5 of model m"):
        m.version_states("m", 5, None)
    with pytest.raises(RestError, match="Could not find any versions of model x"):
        m.version_states("x", None, None)


def test_versions_gone_from_disk_are_unloaded(tmp_path):
    write_version(tmp_path, 1)
    m = manager(tmp_path)
    m.poll_once()
    with m.acquire("m", None, None) as s:
        pass
    os.rename(tmp_path / "1", tmp_path / "old")
    m.poll_once()
    assert m.available_versions("m") == [] and wait_closed(s)
    with pytest.raises(RestError, match="Latest"):
        with m.acquire("m", None, None):
            pass
