"""Real multi-process tests: 2 workers over TF_CONFIG on 127.0.0.1, and SIGKILL + resume."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import recordio_fixtures as rf

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")
PYTHON = sys.executable


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _spec(tmp_path, name, data, model_dir, config, steps, sleep=0.0, local_cpus=0):
    out = tmp_path / f"{name}.out.json"
    spec = {"config": config, "data": str(data), "model_dir": str(model_dir), "steps": steps, "out": str(out),
            "sleep_per_block": sleep, "local_cpus": local_cpus}
    path = tmp_path / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    return path, out


def _latest_step(model_dir):
    """The step of the latest model checkpoint, from the manager's state file."""
    state = (model_dir / "checkpoints" / "checkpoint").read_text()
    return int(state.split('model_checkpoint_path: "ckpt-')[1].split('"')[0])


def _saved_step(model_dir):
    """`_latest_step`, or 0 before the first checkpoint. A kill test waits on this, not on
    `ckpt-N.index`: the index file appears before the manager's state file names it, and a
    kill in between (seen once under a loaded `make test`) resumes from the checkpoint before."""
    try:
        return _latest_step(model_dir)
    except (FileNotFoundError, IndexError):
        return 0


def _env(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(spec, tf_config=None):
    return subprocess.Popen([PYTHON, WORKER, str(spec)], env=_env(tf_config), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    rf.write_dataset(str(root), num_ads=24, num_shards=2)
    return root


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_and_falling_loss_like_one_process(data_dir, tmp_path):
    steps = 8
    config = rf.tiny_config_dict(steps=steps, ads_per_batch=8, checkpoint_every=4, learning_rate=0.01)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "mw"
    procs, outs = [], []
    for i in range(2):
        spec, out = _spec(tmp_path, f"w{i}", data_dir, model_dir, config, steps)
        procs.append(_start(spec, {"cluster": cluster, "task": {"type": "worker", "index": i}}))
        outs.append(out)
    spec, single_out = _spec(tmp_path, "single", data_dir, tmp_path / "single", config, steps)
    single = _start(spec)
    logs = [_finish(p) for p in procs]
    _finish(single)
    w0, w1, one = (json.loads(o.read_text()) for o in (*outs, single_out))

    assert w0["digest"] == w1["digest"], "workers diverged"
    assert w0["step"] == w1["step"] == steps
    # Each worker reads its own shard, one batch of ads_per_batch / 2 ads per step.
    assert w0["batches_consumed"] == w1["batches_consumed"] == steps
    assert w0["losses"] == w1["losses"]  # the reported loss is the all-reduced global one
    assert np.mean(w0["losses"][-3:]) < np.mean(w0["losses"][:3])
    assert np.mean(one["losses"][-3:]) < np.mean(one["losses"][:3])
    assert one["step"] == steps and one["batches_consumed"] == steps
    # Only the chief writes checkpoints into the real directory; no throw-away dir is left.
    ckpts = sorted(p.name for p in (model_dir / "checkpoints").iterdir())
    assert "ckpt-4.index" in ckpts and "ckpt-8.index" in ckpts
    assert not [p for p in ckpts if p.startswith("tmp-worker")]
    assert sorted(p.name for p in (model_dir / "checkpoints" / "data").iterdir()) == ["worker-0", "worker-1"]
    assert (model_dir / "model.keras").exists()
    assert "step 8/8" in logs[0] and "step 8/8" not in logs[1]  # progress lines from the chief only


@pytest.mark.slow
def test_sigkill_then_restart_reaches_final_step_like_an_uninterrupted_run(data_dir, tmp_path):
    steps = 8
    config = rf.tiny_config_dict(steps=steps, ads_per_batch=4, checkpoint_every=2, log_every=1)
    spec, ref_out = _spec(tmp_path, "ref", data_dir, tmp_path / "ref", config, steps)
    reference = _start(spec)

    model_dir = tmp_path / "killed"
    spec, out = _spec(tmp_path, "killed", data_dir, model_dir, config, steps, sleep=0.6)
    victim = _start(spec)
    deadline = time.time() + 240
    while _saved_step(model_dir) < 4:  # the manager's state file, not ckpt-4.index: see _saved_step
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        assert time.time() < deadline, "no second checkpoint"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not out.exists()
    # Usually 4; on a loaded machine the kill may land after the next checkpoint.
    killed_at = _latest_step(model_dir)
    assert 4 <= killed_at < steps

    spec, out = _spec(tmp_path, "resumed", data_dir, model_dir, config, steps)
    log = _finish(_start(spec))
    _finish(reference)
    resumed, ref = json.loads(out.read_text()), json.loads(ref_out.read_text())
    assert "resumed from" in log and f"at step {killed_at}" in log
    # The restart ran exactly the steps after the checkpoint: none twice, none skipped.
    assert resumed["steps_run"] == list(range(killed_at + 1, steps + 1))
    assert resumed["step"] == steps
    assert resumed["batches_consumed"] == steps  # restored + new: each batch consumed once
    # Same data order, same augmentation, same weights: the losses of the steps after it match.
    np.testing.assert_allclose(resumed["losses"], ref["losses"][killed_at:], rtol=1e-4, atol=1e-5)
    for a, b in zip(resumed["weights"], ref["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_two_local_replicas_match_one_replica_with_the_same_global_batch(data_dir, tmp_path):
    # Replica r gets the r-th consecutive batch of n/2 ads: together the same ads, in the same
    # order and with the same augmentation, as one batch of n. Their impression counts differ,
    # so only a loss divided by the all-reduced impression count gives the same updates. The
    # DCN head has no batch norm, whose per-replica statistics would differ legitimately.
    steps = 3
    config = rf.tiny_config_dict(steps=steps, ads_per_batch=4, checkpoint_every=3)
    config["model"]["architecture"] = "dcn"
    spec, two_out = _spec(tmp_path, "two", data_dir, tmp_path / "two", config, steps, local_cpus=2)
    two = _start(spec)
    spec, one_out = _spec(tmp_path, "one", data_dir, tmp_path / "one", config, steps)
    _finish(_start(spec))
    _finish(two)
    two, one = json.loads(two_out.read_text()), json.loads(one_out.read_text())
    assert two["batches_consumed"] == 2 * steps and one["batches_consumed"] == steps
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(two["weights"], one["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def valid_data_dir(tmp_path_factory):
    """The fixture dataset with a valid split (a copy of its eval shards, cold ads included)."""
    root = tmp_path_factory.mktemp("with_valid")
    rf.write_dataset(str(root), num_ads=16, num_shards=2)
    shutil.copytree(root / "eval", root / "valid")
    return root


def _planted_config(**training):
    """The learning rate blows up after step 2 (x100): with eval_every 2 and patience 2 the best
    step is 2 and training stops at the 2nd evaluation after it, step 6 of 20."""
    config = rf.tiny_config_dict(steps=20, checkpoint_every=100, log_every=100, eval_every=2, patience=2,
                                 selection_metric="valid_logloss", learning_rate=0.01, decay_steps=[2],
                                 decay_factor=100.0, **training)
    config["model"]["architecture"] = "dcn"
    return config


@pytest.mark.slow
def test_two_workers_agree_on_the_early_stop_and_keep_the_same_best_weights(valid_data_dir, tmp_path):
    # Only the chief scores the valid split; the others must leave the loop at the same step
    # (a worker that kept training would hang in the next all-reduce).
    data_dir = valid_data_dir
    config = _planted_config(ads_per_batch=8)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "mw"
    procs, outs = [], []
    for i in range(2):
        spec, out = _spec(tmp_path, f"w{i}", data_dir, model_dir, config, 20)
        procs.append(_start(spec, {"cluster": cluster, "task": {"type": "worker", "index": i}}))
        outs.append(out)
    logs = [_finish(p) for p in procs]
    w0, w1 = (json.loads(o.read_text()) for o in outs)
    assert w0["last_step"] == w1["last_step"] == 6 and w0["stopped_early"] and w1["stopped_early"]
    assert w0["best_step"] == w1["best_step"] == 2
    assert w0["valid_history"] == w1["valid_history"] and [h["step"] for h in w0["valid_history"]] == [2, 4, 6]
    assert w0["batches_consumed"] == w1["batches_consumed"] == 6
    assert w0["digest"] == w1["digest"]  # both hold the best step's weights
    assert "early stop at step 6" in logs[0] and "early stop" not in logs[1]  # the chief logs
    selection = json.loads((model_dir / "selection.json").read_text())
    assert selection["best_step"] == 2 and selection["last_step"] == 6
    best = model_dir / "checkpoints" / "best"
    assert sorted(p.name for p in best.iterdir()) == ["best-2.data-00000-of-00001", "best-2.index"]
    assert not [p for p in (model_dir / "checkpoints").iterdir() if p.name.startswith("tmp-")]


@pytest.mark.slow
def test_sigkill_after_an_evaluation_resumes_with_the_best_so_far(valid_data_dir, tmp_path):
    config = _planted_config(ads_per_batch=4)
    spec, ref_out = _spec(tmp_path, "ref", valid_data_dir, tmp_path / "ref", config, 20)
    reference = _start(spec)

    model_dir = tmp_path / "killed"
    spec, out = _spec(tmp_path, "killed", valid_data_dir, model_dir, config, 20, sleep=3.0)
    victim = _start(spec)
    deadline = time.time() + 240
    while _saved_step(model_dir) < 4:  # the checkpoint of the evaluation after the best (step 2)
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 4"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    # The 3 s pause after each progress line leaves the poll ample time; if a loaded machine
    # still let the evaluation of step 6 through, the stop was recorded: nothing to test.
    assert _latest_step(model_dir) == 4
    assert (model_dir / "checkpoints" / "best" / "best-2.index").exists()
    assert not (model_dir / "selection.json").exists()

    spec, out = _spec(tmp_path, "resumed", valid_data_dir, model_dir, config, 20)
    log = _finish(_start(spec))
    _finish(reference)
    resumed, ref = json.loads(out.read_text()), json.loads(ref_out.read_text())
    assert "resumed from" in log and "at step 4" in log
    assert resumed["steps_run"] == [6]  # one block after the checkpoint, then the stop
    assert resumed["best_step"] == ref["best_step"] == 2 and resumed["last_step"] == ref["last_step"] == 6
    assert [h["step"] for h in resumed["valid_history"]] == [2, 4, 6]  # the evaluations before the kill kept
    for got, want in zip(resumed["valid_history"], ref["valid_history"], strict=True):
        assert got["valid_logloss"] == pytest.approx(want["valid_logloss"], rel=1e-4)
    for a, b in zip(resumed["weights"], ref["weights"], strict=True):  # both: the weights of step 2
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
