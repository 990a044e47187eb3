"""The tf.distribute strategy from the environment (docs/design.md "The stack, and why").

* TF_CONFIG naming several tasks → `MultiWorkerMirroredStrategy` (must be created before
  any other TensorFlow op runs in the process);
* several local GPUs → `MirroredStrategy`;
* otherwise the default strategy (one CPU or GPU).

Workers that die (docs/training.md "Workers that die"): with several workers, a worker that
cannot reach a peer stops with one line and exit status 2 within
`training.peer_timeout_seconds` instead of hanging. Measured on TF 2.21:

* the coordination service's leader (worker 0) waits forever for a peer that never starts,
  whatever the register timeout, holding the GIL (no Python thread runs) and ignoring
  SIGTERM. So the leader first waits in Python for every peer's port to accept connections
  (a peer opens it just before it registers), and a watchdog *process* guards the rest of
  joining: it prints the line and SIGKILLs the worker (exit status -9 / 137), the only way
  out of that wait;
* the other workers give up registering after the register timeout (DeadlineExceeded);
* a survivor learns of a dead peer from the coordination service's heartbeat (Unavailable
  after the heartbeat timeout; at once when the leader itself died mid-collective).

Both timeouts are the peer timeout. The line is printed and the process ended with
`os._exit`: a process whose collectives were aborted cannot train again (TensorFlow:
"restart your program to reset"), and its normal shutdown would wait on TensorFlow's threads
for nothing the checkpoints do not already hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from typing import Iterator, Optional

import tensorflow as tf

# training.peer_timeout_seconds when the caller passes none (tfvctr.config's default).
DEFAULT_PEER_TIMEOUT_SECONDS = 120.0
PEER_LOST_EXIT = 2  # the exit status of a worker that lost a peer (as any user error)

# The TF errors a lost peer surfaces as: the heartbeat's Unavailable, the register timeout's
# DeadlineExceeded, and the aborts and cancellations of collectives still in flight.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
               tf.errors.CancelledError)

_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")
# What the errors of a lost peer say (measured): "Collective ops is aborted by: ...", "...
# coordination service ...", "remote target /job:worker/replica:0/task:0".
_LOST_PEER = re.compile(r"[Cc]ollective|[Cc]oordination|/job:")
_state = {"command": "tfvctr", "timeout": DEFAULT_PEER_TIMEOUT_SECONDS}


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where this process stands in the cluster."""

    num_workers: int
    worker_index: int
    is_chief: bool
    local_replicas: int  # replicas (devices) in this worker


def _tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")


def _cluster_size(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _task_name(job: str, index: int, tf_config: dict) -> str:
    """`worker 1 (127.0.0.1:4321)` from TF_CONFIG."""
    addresses = tf_config.get("cluster", {}).get(job, [])
    where = f" ({addresses[index]})" if 0 <= index < len(addresses) else ""
    return f"{job} {index}{where}"


def _me(tf_config: dict) -> tuple[str, int]:
    task = tf_config.get("task", {})
    return str(task.get("type", "worker")), int(task.get("index", 0))


def _peers(tf_config: dict) -> list[tuple[str, int]]:
    me = _me(tf_config)
    cluster = tf_config.get("cluster", {})
    return [(job, i) for job in ("chief", "worker") for i in range(len(cluster.get(job, []))) if (job, i) != me]


def _fail(message: str) -> None:
    """Prints the one line and ends the process at once (a normal exit may hang, see above)."""
    print(f"{_state['command']}: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(PEER_LOST_EXIT)


def _unreachable_message(tf_config: dict, timeout: float, peers: Optional[list] = None) -> str:
    job, index = _me(tf_config)
    peers = ", ".join(_task_name(j, i, tf_config) for j, i in (_peers(tf_config) if peers is None else peers))
    return (f"{job} {index}: could not reach {peers} within training.peer_timeout_seconds = {timeout:g} s; "
            f"start every worker TF_CONFIG names (within that time of each other), or raise the timeout")


def lost_peer_message(error: BaseException, tf_config: Optional[dict] = None, timeout: Optional[float] = None) -> str:
    """One line naming the peer that `error` (a TF error of a collective) says is gone."""
    tf_config = _tf_config() if tf_config is None else tf_config
    timeout = _state["timeout"] if timeout is None else timeout
    me = _me(tf_config)
    text = str(getattr(error, "message", None) or error)
    # "The following tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1"
    # names the dead one after "unhealthy"; a reset connection names the remote target.
    tail = text.split("unhealthy", 1)[1] if "unhealthy" in text else text
    named = [(j, int(i)) for j, i in _TASK.findall(tail) if (j, int(i)) != me]
    peers = _peers(tf_config)
    if named:
        who = _task_name(*named[0], tf_config)
    elif len(peers) == 1:
        who = _task_name(*peers[0], tf_config)
    else:
        who = "a peer"
    return (f"{me[0]} {me[1]}: lost {who}: it stopped answering (killed, crashed or unreachable; "
            f"training.peer_timeout_seconds = {timeout:g} s); run every worker again to resume from the last checkpoint")


# The watchdog process: waits for its stdin to close (the worker joined, or died) or for the
# timeout, then prints the line and kills the worker. Plain Python, no TensorFlow import.
_WATCHDOG = """
import os, select, signal, sys
ready = select.select([sys.stdin], [], [], float(sys.argv[1]))[0]
if not ready:
    sys.stderr.write(sys.argv[3] + "\\n")
    sys.stderr.flush()
    os.kill(int(sys.argv[2]), signal.SIGKILL)
"""


@contextlib.contextmanager
def _watchdog(seconds: float, message: str) -> Iterator[None]:
    """Ends this process with `message` (SIGKILL) if the block takes longer than `seconds`."""
    line = f"{_state['command']}: error: {message}"
    guard = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(seconds), str(os.getpid()), line],
                             stdin=subprocess.PIPE)
    try:
        yield
    finally:
        guard.stdin.close()  # EOF: the watchdog exits quietly
        guard.wait()


def _wait_for_ports(tf_config: dict, timeout: float) -> None:
    """The leader's wait for its peers: until every peer's port accepts a connection, or `_fail`."""
    deadline = time.monotonic() + timeout
    waiting = list(_peers(tf_config))
    while waiting:
        job, index = waiting[0]
        host, _, port = tf_config["cluster"][job][index].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                waiting.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            _fail(_unreachable_message(tf_config, timeout, waiting))
        time.sleep(0.2)


def _configure_coordination(tf_config: dict, timeout: float) -> None:
    """The coordination service as MultiWorkerMirroredStrategy would set it up, with our timeouts."""
    from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = tf_config.get("cluster", {})
    millis = int(timeout * 1000)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster),
        # A worker whose peers do not all register in time fails (only the non-leaders do:
        # the leader waits on; the watchdog covers it).
        cluster_register_timeout_in_ms=millis,
        # A peer silent this long is dead: every survivor's collectives are aborted (Unavailable).
        heartbeat_timeout_in_ms=millis,
        coordinated_jobs=[CoordinatedJob(name=job, num_tasks=len(cluster[job])) for job in ("chief", "worker")
                          if cluster.get(job)],
    )


def _first_all_reduce(strategy: tf.distribute.Strategy) -> None:
    """An all-reduce over every replica: returns once every worker has joined."""

    @tf.function
    def ping():
        ctx = tf.distribute.get_replica_context
        return strategy.run(lambda: ctx().all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0)))

    strategy.experimental_local_results(ping())[0].numpy()


def make_strategy(peer_timeout_seconds: Optional[float] = None, command: str = "tfvctr") -> tf.distribute.Strategy:
    """Chooses the strategy from TF_CONFIG and the visible GPUs.

    With several workers it returns once every worker has joined and answered an all-reduce;
    if a peer is not there within `peer_timeout_seconds` (default 120) it prints
    `COMMAND: error: worker 0: could not reach ...` and ends the process with exit status 2
    (-9, from the watchdog, if joining hangs after the peers' ports answered: at worst after
    twice the timeout plus 30 s).
    Later, a peer silent for that long (or gone) ends every survivor the same way (inside
    `exit_on_lost_peer`).
    """
    tf_config = _tf_config()
    if _cluster_size(tf_config) > 1:
        timeout = float(peer_timeout_seconds or DEFAULT_PEER_TIMEOUT_SECONDS)
        _state.update(command=command, timeout=timeout)
        message = _unreachable_message(tf_config, timeout)
        _configure_coordination(tf_config, timeout)
        from tensorflow.python.distribute import multi_worker_util

        job, index = _me(tf_config)
        if multi_worker_util.coordination_leader(tf_config.get("cluster", {})) == f"/job:{job}/replica:0/task:{index}":
            _wait_for_ports(tf_config, timeout)
        # Joining after the ports answered takes seconds; a non-leader's register timeout
        # fired 1.5-2.2x the timeout after its start (measured: 15 s for 10, 11 s for 5); the
        # watchdog is for what is left.
        with _watchdog(2 * timeout + 30.0, message):
            try:
                strategy = tf.distribute.MultiWorkerMirroredStrategy()
                _first_all_reduce(strategy)
            except PEER_ERRORS:
                _fail(message)
        return strategy
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def exit_on_lost_peer() -> Iterator[None]:
    """With several workers, a peer's death inside the block ends this process with one line
    (`lost_peer_message`) and exit status 2; with one worker it does nothing."""
    tf_config = _tf_config()
    if _cluster_size(tf_config) <= 1:
        yield
        return
    try:
        yield
    except PEER_ERRORS as e:
        text = str(getattr(e, "message", None) or e)
        if not _LOST_PEER.search(text):
            raise  # e.g. a storage timeout: not a peer's fault
        _fail(lost_peer_message(e, tf_config))


def worker_info(strategy: tf.distribute.Strategy) -> WorkerInfo:
    """Worker count, this worker's index, whether it is the chief, and its local replicas."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        tf_config = _tf_config()
        num_workers = _cluster_size(tf_config)
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        has_chief = bool(tf_config.get("cluster", {}).get("chief"))
        # With a chief task the chief is worker 0 and workers follow it.
        index = 0 if task_type == "chief" else task_id + (1 if has_chief else 0)
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
        local = max(1, strategy.num_replicas_in_sync // num_workers)
        return WorkerInfo(num_workers, index, is_chief, local)
    return WorkerInfo(1, 0, True, strategy.num_replicas_in_sync)
