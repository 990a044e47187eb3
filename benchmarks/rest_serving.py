"""REST serving cost: the dev server (`tfvctr serve`) against the same SavedModel in-process.

1. Latency. For 1, 100 and 1,000 candidates per request: p50/p99 of
   * in-process: `Session.run` of the signature through TF Serving's TF1 loader (the
     floor: what TF Serving's own compute costs, with no HTTP or JSON);
   * REST: one keep-alive HTTP connection on 127.0.0.1, the encoded body sent, the
     response parsed (what a caller sees); the two alternate call by call.
   The difference is what REST adds (issue goal: <= 2 ms at p50 for 100 candidates).
2. Load: `--clients` concurrent clients (default 50, asyncio + aiohttp, one connection
   each) send `--load-candidates`-row requests for `--seconds` (default 60): requests/s,
   p50/p99, status counts (5xx must be 0) and the server's resident memory at the start
   and the end of the load (it must stay flat).

Candidates are synthesised from the signature (SignatureDef dtypes and shapes): ad ids
from the export's `assets/ad_ids.txt` when present (so they hit the table), other
strings from a small pool, floats uniform in [0, 1), list features 4 values long.
Everything is bounded: `--repeats` requests per size, at most `--size-seconds` each.

Usage:
    python benchmarks/rest_serving.py --model-base BASE --model-name NAME [--seconds 60]
    python benchmarks/rest_serving.py --test-model          # the contract tests' small model
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synth_rows(signature, n: int, ad_ids: list[str], rng: random.Random) -> list[dict]:
    """`n` candidate rows matching the signature's inputs (row format)."""
    from serving import rest_api

    pool = [f"v{i}" for i in range(50)]
    rows = []
    for _ in range(n):
        row = {}
        for name, info in sorted(signature.inputs.items()):
            dims = [d.size for d in info.tensor_shape.dim][1:]
            if info.dtype == rest_api.DT_STRING:
                if name == "ad_id":
                    make = lambda: rng.choice(ad_ids)  # noqa: E731
                elif name.endswith("bytes"):
                    make = lambda: {"b64": "iVBORw0KGgo="}  # noqa: E731
                else:
                    make = lambda: rng.choice(pool)  # noqa: E731
            elif info.dtype in (rest_api.DT_FLOAT, rest_api.DT_DOUBLE):
                make = lambda: round(rng.random(), 4)  # noqa: E731
            elif info.dtype == rest_api.DT_BOOL:
                make = lambda: rng.random() < 0.5  # noqa: E731
            else:
                make = lambda: rng.randrange(100)  # noqa: E731
            row[name] = [make() for _ in range(dims[0] if dims and dims[0] > 0 else 4)] if dims else make()
        rows.append(row)
    return rows


def to_feeds(rows: list[dict], signature) -> dict[str, np.ndarray]:
    from serving import rest_api

    dtypes = {k: int(v.dtype) for k, v in signature.inputs.items()}
    return rest_api.tensors_from_instances(rows, dtypes)


def start_server(model_base: str, model_name: str, threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tfvctr.cli", "serve", "--model-base", model_base, "--model-name", model_name,
           "--port", "0", "--threads", str(threads), "--max-body-mb", "64"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    log = open(os.path.join(tempfile.gettempdir(), "rest_serving_bench_server.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "REST API on http://" in line:
            return proc, line.split("REST API on ")[1].split("/v1/")[0]
    proc.kill()
    raise SystemExit(f"the dev server did not start; see {log.name}")


async def load(url: str, path: str, body: bytes, clients: int, seconds: float, pid: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    rss_samples = [rss_mb(pid)]

    async def client(session):
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                async with session.post(url + path, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
                    if r.status == 200:
                        latencies.append((time.perf_counter() - t) * 1000)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    async def sample_rss():
        while time.monotonic() < stop_at:
            await asyncio.sleep(max(0.0, min(5.0, stop_at - time.monotonic())))
            rss_samples.append(rss_mb(pid))

    timeout = aiohttp.ClientTimeout(total=60)
    conn = aiohttp.TCPConnector(limit=clients)
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)), sample_rss())
    elapsed = time.monotonic() - start
    rss_samples.append(rss_mb(pid))
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": sum(codes.values()),
        "requests_per_s": round(sum(codes.values()) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
        "status_counts": codes, "5xx": sum(v for k, v in codes.items() if k >= 500), "connection_errors": len(errors),
        "rss_mb_start": round(rss_samples[0], 1), "rss_mb_end": round(rss_samples[-1], 1),
        "rss_mb_max": round(max(rss_samples), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-base", help="folder holding NAME/VERSION/ (a `tfvctr export --out`)")
    p.add_argument("--model-name")
    p.add_argument("--test-model", action="store_true", help="build and serve the contract tests' small model")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--candidates", default="1,100,1000", help="request sizes for the latency table")
    p.add_argument("--repeats", type=int, default=200, help="requests per size (bounded by --size-seconds)")
    p.add_argument("--size-seconds", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the concurrent load")
    p.add_argument("--load-candidates", type=int, default=100)
    p.add_argument("--threads", type=int, default=8, help="the dev server's request threads")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from serving.servables import SavedModelServable, list_versions

    if args.test_model:
        sys.path.insert(0, os.path.join(REPO, "tests", "serving"))
        import model_factory

        args.model_base = tempfile.mkdtemp(prefix="rest_bench_")
        args.model_name = "ctr"
        model_factory.build(os.path.join(args.model_base, "ctr"), 1)
    if not (args.model_base and args.model_name):
        p.error("give --model-base and --model-name, or --test-model")
    versions = list_versions(os.path.join(args.model_base, args.model_name))
    if not versions:
        p.error(f"no versions under {os.path.join(args.model_base, args.model_name)}")
    version = max(versions)
    path = versions[version]
    servable = SavedModelServable(args.model_name, version, path)
    sig = servable.signature_defs[args.signature]
    ad_ids_file = os.path.join(path, "assets", "ad_ids.txt")
    ad_ids = open(ad_ids_file).read().split() if os.path.exists(ad_ids_file) else [f"ad{i}" for i in range(1000)]
    rng = random.Random(0)
    sizes = [int(s) for s in args.candidates.split(",")]
    print(f"model {args.model_name} version {version} ({path}), signature {args.signature}: "
          f"{len(sig.inputs)} inputs; ad ids: {len(ad_ids)}", flush=True)

    proc, url = start_server(args.model_base, args.model_name, args.threads)
    results: dict = {"model": path, "signature": args.signature, "latency": [], "cpus": os.cpu_count()}
    try:
        rest_path = f"/v1/models/{args.model_name}:predict"
        for n in sizes:
            rows = synth_rows(sig, n, ad_ids, rng)
            body = json.dumps({"signature_name": args.signature, "instances": rows}).encode()
            feeds = to_feeds(rows, sig)
            # Interleaved, one in-process call then one REST request, so that both see the
            # same machine (other processes' load changes by the second on a shared host).
            inproc, rest = [], []
            host, port = url.split("//")[1].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            deadline = time.monotonic() + args.size_seconds
            for i in range(args.repeats + 3):
                t = time.perf_counter()
                servable.run(args.signature, feeds, 60_000)
                t_in = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                conn.request("POST", rest_path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"REST request failed: {resp.status} {data[:300]!r}")
                json.loads(data)
                t_rest = (time.perf_counter() - t) * 1000
                if i >= 3:  # the first calls build the session callables
                    inproc.append(t_in)
                    rest.append(t_rest)
                if time.monotonic() > deadline:
                    break
            conn.close()
            row = {
                "candidates": n, "body_kb": round(len(body) / 1024, 1),
                "in_process_p50_ms": round(percentile(inproc, 50), 2), "in_process_p99_ms": round(percentile(inproc, 99), 2),
                "rest_p50_ms": round(percentile(rest, 50), 2), "rest_p99_ms": round(percentile(rest, 99), 2),
                "rest_adds_p50_ms": round(percentile(rest, 50) - percentile(inproc, 50), 2),
                "requests": len(rest),
            }
            results["latency"].append(row)
            print(json.dumps(row), flush=True)
        rows = synth_rows(sig, args.load_candidates, ad_ids, rng)
        body = json.dumps({"signature_name": args.signature, "instances": rows}).encode()
        print(f"load: {args.clients} clients x {args.seconds:.0f} s, {args.load_candidates} candidates a request", flush=True)
        results["load"] = asyncio.run(load(url, rest_path, body, args.clients, args.seconds, proc.pid))
        results["load"]["candidates"] = args.load_candidates
        print(json.dumps(results["load"]), flush=True)
    finally:
        proc.terminate()
        try:
            results["server_exit"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            results["server_exit"] = "killed"

    print("\n| candidates | in-process p50 / p99 (ms) | REST p50 / p99 (ms) | REST adds at p50 (ms) |")
    print("|---:|---:|---:|---:|")
    for r in results["latency"]:
        print(f"| {r['candidates']} | {r['in_process_p50_ms']} / {r['in_process_p99_ms']} | "
              f"{r['rest_p50_ms']} / {r['rest_p99_ms']} | {r['rest_adds_p50_ms']} |")
    ld = results["load"]
    print(f"\nload: {ld['clients']} clients, {ld['seconds']} s, {ld['candidates']} candidates: {ld['requests_per_s']} req/s, "
          f"p50 {ld['p50_ms']} ms, p99 {ld['p99_ms']} ms, 5xx {ld['5xx']}, connection errors {ld['connection_errors']}, "
          f"RSS {ld['rss_mb_start']} -> {ld['rss_mb_end']} MB (max {ld['rss_mb_max']})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
