"""Workers that die (issue 13, docs/training.md "Workers that die"): two real worker processes
over TF_CONFIG on 127.0.0.1.

* SIGKILL one worker mid-run: the survivor stops with one line and exit 2 within
  `training.peer_timeout_seconds`; running both again resumes from the last checkpoint and
  ends at `training.steps` with every step run once.
* A worker that hangs (SIGSTOP): the other gives up after the heartbeat timeout.
* A worker whose peer never starts: `tfvctr train` stops with one line and exit 2 after the
  timeout instead of waiting forever.

`python test_worker_failure.py SPEC.json` is the worker of the first test (as
train_worker.py, with the strategy's peer timeout from the config).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests import recordio_fixtures as rf
from tests.training import test_distributed as td
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 8  # training.peer_timeout_seconds of these tests


def _worker_main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    config = config_from_dict(spec["config"])  # no TensorFlow op: the strategy comes first
    from tfvctr.training.strategy import make_strategy

    strategy = make_strategy(config.training.peer_timeout_seconds, command="worker")
    from tfvctr.training import train

    def log(line):
        print(line, flush=True)
        time.sleep(spec["sleep_per_block"])  # leaves the test time to kill between checkpoints

    result = train(config, spec["data"], spec["model_dir"], strategy=strategy, log=log)
    with open(spec["out"], "w") as f:
        json.dump({"step": result["step"], "batches_consumed": result["batches_consumed"],
                   "steps_run": [h["step"] for h in result["history"]]}, f)


def _env(tf_config):
    env = td._env(tf_config)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def _cluster():
    return {"worker": [f"127.0.0.1:{p}" for p in td._free_ports(2)]}


def _task(cluster, i):
    return {"cluster": cluster, "task": {"type": "worker", "index": i}}


def _start_workers(tmp_path, name, data, model_dir, config, sleep):
    """Both workers of a fresh cluster (new ports: the killed run's may linger)."""
    cluster, procs, outs = _cluster(), [], []
    for i in range(2):
        out = tmp_path / f"{name}{i}.out.json"
        spec = tmp_path / f"{name}{i}.spec.json"
        spec.write_text(json.dumps({"config": config, "data": str(data), "model_dir": str(model_dir),
                                    "out": str(out), "sleep_per_block": sleep}))
        procs.append(subprocess.Popen([PYTHON, os.path.abspath(__file__), str(spec)], env=_env(_task(cluster, i)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs.append(out)
    return cluster, procs, outs


def _wait_for(path, procs, seconds=420):
    """Until `path` exists; fails with the workers' output if one ends or time runs out."""
    deadline = time.time() + seconds
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            _fail_with_output(procs, f"no {path.name} after {time.time() - deadline + seconds:.0f} s")
        time.sleep(0.05)


def _fail_with_output(procs, why):
    for p in procs:
        if p.poll() is None:
            p.kill()
    outputs = [p.communicate() for p in procs]
    pytest.fail(why + "".join(f"\n--- worker {i} (exit {p.returncode}):\n{out[-1500:]}\n{err[-1500:]}"
                              for i, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True))))


def _error_lines(stderr):
    """The lines a user reads (TF's C++ log lines start with a letter and a timestamp: E0000 ...)."""
    return [line for line in stderr.splitlines() if line.startswith(("tfvctr", "worker", "Traceback"))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    rf.write_dataset(str(root), num_ads=16, num_shards=2)
    return root


@pytest.mark.slow
def test_sigkill_one_worker_survivor_stops_in_time_and_both_resume_without_double_counting(data_dir, tmp_path):
    steps = 8
    config = rf.tiny_config_dict(steps=steps, ads_per_batch=4, checkpoint_every=2, log_every=1,
                                 peer_timeout_seconds=TIMEOUT)
    model_dir = tmp_path / "model"
    cluster, (chief, victim), outs = _start_workers(tmp_path, "first", data_dir, model_dir, config, sleep=1.0)
    _wait_for(model_dir / "checkpoints" / "ckpt-4.index", [chief, victim])
    # The non-chief: the chief (the coordination service's leader) learns of it only from the
    # missed heartbeats, i.e. after the configured timeout (a dead leader is noticed at once).
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.time()
    victim.communicate()
    try:
        _, err = chief.communicate(timeout=TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        chief.kill()
        pytest.fail(f"the surviving worker still runs {TIMEOUT + 30} s after its peer was killed")
    waited = time.time() - killed
    print(f"the survivor stopped {waited:.1f} s after the kill (timeout {TIMEOUT} s)")
    assert chief.returncode == 2, err[-3000:]
    assert waited < TIMEOUT + 20  # the heartbeat timeout, plus the time to reach the next collective
    lines = _error_lines(err)
    assert lines == [
        f"worker: error: worker 0: lost worker 1 ({cluster['worker'][1]}): it stopped answering (killed, crashed or "
        f"unreachable; training.peer_timeout_seconds = {TIMEOUT} s); run every worker again to resume from the last "
        f"checkpoint"
    ], err[-3000:]
    killed_at = td._latest_step(model_dir)
    assert killed_at in (4, 6)  # 4 unless the 1 s pause per step was not enough for the poll
    assert not outs[0].exists() and not outs[1].exists()

    _, procs, outs = _start_workers(tmp_path, "again", data_dir, model_dir, config, sleep=0.0)
    logs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            _fail_with_output(procs, "the restarted workers did not finish in 420 s")
        assert p.returncode == 0, err[-3000:]
        logs.append(out)
    w0, w1 = (json.loads(o.read_text()) for o in outs)
    assert "resumed from" in logs[0] and f"at step {killed_at}" in logs[0]
    # Every step after the checkpoint ran once on both workers, none before it ran again.
    assert w0["step"] == w1["step"] == steps
    assert w0["steps_run"] == w1["steps_run"] == list(range(killed_at + 1, steps + 1))
    assert [line.split(" step ")[1].split("/")[0] for line in logs[0].splitlines() if "/8 " in line] == [
        str(s) for s in range(killed_at + 1, steps + 1)
    ]
    # Restored + new: each worker consumed one batch per step, so none twice.
    assert w0["batches_consumed"] == w1["batches_consumed"] == steps
    # The optimizer applied exactly `steps` updates (a step run twice would count twice).
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints" / f"ckpt-{steps}"))
    names = reader.get_variable_to_shape_map()
    counts = {n: int(reader.get_tensor(n)) for n in names if "iterations" in n or n.startswith("step/")}
    assert counts and set(counts.values()) == {steps}, counts


@pytest.mark.slow
def test_a_hung_worker_is_given_up_after_the_peer_timeout(data_dir, tmp_path):
    # SIGSTOP: the connections stay open, so only the missed heartbeats tell (a SIGKILL resets
    # them and the survivor stops at once, as in the test above).
    config = rf.tiny_config_dict(steps=40, ads_per_batch=4, checkpoint_every=2, log_every=1,
                                 peer_timeout_seconds=TIMEOUT)
    model_dir = tmp_path / "model"
    cluster, (chief, hung), _ = _start_workers(tmp_path, "hung", data_dir, model_dir, config, sleep=0.5)
    _wait_for(model_dir / "checkpoints" / "ckpt-2.index", [chief, hung])
    os.kill(hung.pid, signal.SIGSTOP)
    stopped = time.time()
    try:
        _, err = chief.communicate(timeout=TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        chief.kill()
        pytest.fail(f"the chief still waits {TIMEOUT + 60} s after its peer hung")
    finally:
        hung.kill()
        hung.communicate()
    waited = time.time() - stopped
    print(f"the chief gave up on the hung worker {waited:.1f} s after it stopped (timeout {TIMEOUT} s)")
    assert chief.returncode == 2, err[-3000:]
    # Not at once (the heartbeats were missed for about the timeout), and not much later.
    assert TIMEOUT / 2 <= waited < TIMEOUT + 30
    assert _error_lines(err) == [
        f"worker: error: worker 0: lost worker 1 ({cluster['worker'][1]}): it stopped answering (killed, crashed or "
        f"unreachable; training.peer_timeout_seconds = {TIMEOUT} s); run every worker again to resume from the last "
        f"checkpoint"
    ], err[-3000:]


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_fails_with_one_line_after_the_timeout(data_dir, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(rf.tiny_config_dict(steps=2)))
    cluster = _cluster()
    # Worker 0 hosts the coordination service: TF 2.21 lets it wait for worker 1 forever.
    started = time.time()
    proc = subprocess.run(
        [PYTHON, "-m", "tfvctr.cli", "train", "--config", str(config_path), "--data", str(data_dir),
         "--model-dir", str(tmp_path / "model"), "--set", f"training.peer_timeout_seconds={TIMEOUT}"],
        env=_env(_task(cluster, 0)), capture_output=True, text=True, timeout=TIMEOUT + 120,
    )
    elapsed = time.time() - started
    print(f"worker 0 alone stopped {elapsed:.1f} s after its start (timeout {TIMEOUT} s, TensorFlow's import included)")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _error_lines(proc.stderr) == [
        f"tfvctr train: error: worker 0: could not reach worker 1 ({cluster['worker'][1]}) within "
        f"training.peer_timeout_seconds = {TIMEOUT} s; start every worker TF_CONFIG names (within that time of each "
        f"other), or raise the timeout"
    ], proc.stderr[-3000:]
    assert elapsed >= TIMEOUT  # it did wait for the peer
    assert not (tmp_path / "model" / "checkpoints").exists()


# TensorFlow's texts as measured on TF 2.21 (heartbeat loss; a reset connection to the leader).
_HEARTBEAT = ("Graph execution error:\n\nDetected at node CollectiveReduceV2\nCollective ops is aborted by: Error "
              "reported from /job:worker/task:0: The following tasks are unhealthy (stopped sending heartbeats):\n"
              "/job:worker/replica:0/task:2\nThe tasks have crashed.")
_RESET = ("Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error information from "
          "remote target /job:worker/replica:0/task:0 while calling /tensorflow.WorkerService/RecvBuf")


@pytest.mark.parametrize("me, text, lost", [(0, _HEARTBEAT, "worker 2 (h:3)"), (2, _RESET, "worker 0 (h:1)"),
                                             (1, "Collective ops is aborted by: cancelled", "a peer")])
def test_the_lost_peer_is_named_from_tensorflows_error(me, text, lost):
    import tensorflow as tf

    from tfvctr.training.strategy import lost_peer_message

    tf_config = {"cluster": {"worker": ["h:1", "h:2", "h:3"]}, "task": {"type": "worker", "index": me}}
    line = lost_peer_message(tf.errors.UnavailableError(None, None, text), tf_config, 8)
    assert line.startswith(f"worker {me}: lost {lost}: it stopped answering") and "peer_timeout_seconds = 8 s" in line
    assert "\n" not in line


def test_a_timeout_that_is_not_a_peers_passes_through(monkeypatch):
    import tensorflow as tf

    from tfvctr.training.strategy import exit_on_lost_peer

    monkeypatch.setenv("TF_CONFIG", json.dumps(_task({"worker": ["h:1", "h:2"]}, 0)))
    with pytest.raises(tf.errors.DeadlineExceededError, match="storage read"):
        with exit_on_lost_peer():
            raise tf.errors.DeadlineExceededError(None, None, "storage read timed out")


@pytest.mark.parametrize("value", [0, 0.5, -3, float("nan")])
def test_a_peer_timeout_below_one_second_is_refused(value):
    config = rf.tiny_config_dict(peer_timeout_seconds=value)
    with pytest.raises(ConfigError, match=r"training\.peer_timeout_seconds: expected a number of seconds >= 1"):
        config_from_dict(config)


def test_the_default_peer_timeout_is_two_minutes():
    assert config_from_dict(rf.tiny_config_dict()).training.peer_timeout_seconds == 120.0


if __name__ == "__main__":
    _worker_main(sys.argv[1])
