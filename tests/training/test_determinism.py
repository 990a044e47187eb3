"""`training.deterministic: true`: two training runs with the same seed give identical weights (CPU).

Op determinism is a process-wide TensorFlow switch, so the runs happen in a child process:
the rest of the suite keeps TensorFlow's default kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = r"""
import json, sys, time
import numpy as np
from tests import recordio_fixtures as rf
from tfvctr.config import config_from_dict
from tfvctr.training.trainer import train

root = sys.argv[1]
rf.write_dataset(root + "/data", num_ads=16, num_shards=2)
weights, seconds = [], []
for run in range(2):
    config = config_from_dict(rf.tiny_config_dict(steps=4, checkpoint_every=4, deterministic=True))
    start = time.time()
    result = train(config, root + "/data", f"{root}/m{run}", log=None)
    seconds.append(time.time() - start)
    weights.append([np.asarray(w) for w in result["model"].weights])
same = len(weights[0]) == len(weights[1]) and all(np.array_equal(a, b) for a, b in zip(*weights))
changed = any(not np.array_equal(a, b) for a, b in zip(weights[0], [np.zeros_like(w) for w in weights[0]]))
print(json.dumps({"identical": bool(same), "trained": bool(changed), "seconds": seconds}))
"""


def test_two_deterministic_runs_give_identical_weights(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["trained"] and report["identical"], report
