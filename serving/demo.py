"""The serving step of `make demo`: the dev server on the demo export, four real REST requests.

    python -m serving.demo --model-base EXPORTS --model-name NAME --model-dir M --data D

Starts `tfvctr serve` on 127.0.0.1 (a free port), and asks it, over REST, for the CTR of
four eval-day impressions: a *warm* ad (trained on, in the table), a *cold* ad (first
seen on the eval day; in the table, its image embedded by `tfvctr embed`), an *unknown*
ad (an id the table lacks: its category's mean row) and a *new* ad sent with its image
through `score_with_image` (the visual tower runs in the server). Prints each ad's CTR
and `in_table`, then stops the server with SIGTERM. Input names come from the server's
own metadata, as a client would read them.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import time

import numpy as np

from serving.client import ServingClient


def _json_value(name: str, v):
    if name == "image_bytes":
        return {"b64": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_value(name, x) for x in v]
    return float(v)


def rest_row(columns: dict, i: int, names) -> dict:
    """Row `i` of signature inputs as numpy columns (`sample_rows`) as a REST instance with the inputs `names`:
    text as strings, numbers as floats, multi-valued features as lists, `image_bytes` as `{"b64": ...}`."""
    return {k: _json_value(k, columns[k][i]) for k in names}


def start_server(model_base: str, model_name: str, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    tfvctr = os.path.join(os.path.dirname(sys.executable), "tfvctr")
    cmd = [tfvctr, "serve", "--model-base", model_base, "--model-name", model_name, "--port", "0"]
    print("$ " + " ".join(["tfvctr", *cmd[1:]]), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        print("  " + line.rstrip(), flush=True)
        if "REST API on http://" in line:
            return proc, line.split("REST API on ")[1].split("/v1/")[0]
    proc.kill()
    raise SystemExit("demo: the dev server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-base", required=True, help="`tfvctr export --out` folder")
    p.add_argument("--model-name", required=True)
    p.add_argument("--model-dir", required=True, help="the trained model dir (its config)")
    p.add_argument("--data", required=True, help="the preprocess output (eval rows, cold ads)")
    args = p.parse_args(argv)

    from tfvctr import layout
    from tfvctr.config import load_config
    from tfvctr.evaluation import read_cold_ads
    from tfvctr.export.warmup import sample_rows

    config = load_config(os.path.join(args.model_dir, layout.CONFIG))
    cold = read_cold_ads(args.data) or set()
    for n in (2000, 20000):  # eval shards are grouped by ad: a cold ad may come late
        cols = sample_rows(config, args.data, n)
        ids = [a.decode() for a in cols["ad_id"]]
        cold_i = next((i for i, a in enumerate(ids) if a in cold), None)
        if cold_i is not None:
            break
    warm_i = next(i for i, a in enumerate(ids) if a not in cold)
    if cold_i is None:
        print("demo: no cold ad among the eval rows read; the 'cold' row repeats the warm ad", flush=True)
        cold_i = warm_i

    proc, url = start_server(args.model_base, args.model_name)
    try:
        client = ServingClient(url, args.model_name, timeout=60)
        sigs = client.metadata()["metadata"]["signature_def"]["signature_def"]
        plain = sorted(sigs["serving_default"]["inputs"])
        with_image = sorted(sigs["score_with_image"]["inputs"])
        unknown = dict(rest_row(cols, warm_i, plain), ad_id="ad-not-in-the-table")
        new = dict(rest_row(cols, cold_i, with_image), ad_id="ad-created-after-the-table")
        asked = [("warm", ids[warm_i], "serving_default"), ("cold", ids[cold_i], "serving_default"),
                 ("unknown", unknown["ad_id"], "serving_default"), ("new + image", new["ad_id"], "score_with_image")]
        answers = client.predict([rest_row(cols, warm_i, plain), rest_row(cols, cold_i, plain), unknown])
        answers += client.predict([new], signature_name="score_with_image")
        print(f"\nPOST {url}/v1/models/{args.model_name}:predict (row format), eval-day impressions:")
        print(f"  {'ad':12s} {'ad_id':28s} {'signature':18s} {'ctr':>8s}  in_table")
        for (kind, ad, sig), a in zip(asked, answers, strict=True):
            print(f"  {kind:12s} {ad:28s} {sig:18s} {a['ctr']:8.4f}  {a['in_table']}")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"dev server stopped (exit {code})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
