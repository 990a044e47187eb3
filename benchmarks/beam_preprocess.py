"""The preprocess job (`beam_jobs.build_tfrecords`) against its floor, in the same run.

Generates the demo dataset at the requested size (JPEG images of `--image-size` px) and
appends `--bad-share` of bad impression rows (a label `yes`, an unknown ad, a line with
too few fields, in turn), then runs, one after another, each as its own process:

* `plain`: `benchmarks/plain_preprocess.py`, the same work in one plain Python process
  (read, validate, decode each image once, group, chunk by K, serialise, write): the floor;
* `beam 1p`: the job on DirectRunner `in_memory`;
* `beam 2p`: the job with `--direct_num_workers 2 --direct_running_mode multi_processing`.

For each: wall time (process start to exit, imports included, as a user sees it),
impressions/s, the ratio to the floor's time, the CPU time of the process tree (and its
ratio: steadier than wall time on a shared machine), and the peak RSS of the whole process tree
(the sum over the process and its children, sampled from /proc every 0.1 s). Then it
checks that every Beam output holds the same records as the floor's: per split the sorted
record bytes (so ad by ad, chunk by chunk), the impression counts by split, the
`ad_counts.jsonl` lines, the vocabularies and the dead letter (lines, by reason).

`--rounds R` runs the list R times, interleaved (round r starts at the r-th run of the
list, so each kind runs early and late), and prints a table per round, then per run kind
the median and min of CPU and wall seconds and its ratio to the floor computed round by
round (paired: each round's run over the same round's floor, so a slow stretch of the
shared machine that slows both cancels out; noise of each process on its own does not)
with the median, min and max. `--json` writes
`{"runs": [one per run and round], "summary": [one per run kind]}`.

Usage:
    python benchmarks/beam_preprocess.py                                   # 2,000 ads, 200,000 impressions
    nice python benchmarks/beam_preprocess.py --impressions 1000000 --json out.json
    python benchmarks/beam_preprocess.py --runs plain beam1 --impressions 100000
    python benchmarks/beam_preprocess.py --runs plain base1 beam1 --baseline /tmp/old   # before/after
    flock /tmp/heavy.lock nice -n 10 python benchmarks/beam_preprocess.py --impressions 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUNS = {
    "plain": [os.path.join(HERE, "plain_preprocess.py")],
    "beam1": ["-m", "beam_jobs.build_tfrecords"],
    "beam2": ["-m", "beam_jobs.build_tfrecords", "--direct_num_workers", "2", "--direct_running_mode",
              "multi_processing"],
}
RUNS["base1"], RUNS["base2"] = RUNS["beam1"], RUNS["beam2"]  # the same, with --baseline's code
LABELS = {"plain": "plain Python (floor)", "beam1": "Beam in_memory", "beam2": "Beam 2 processes",
          "base1": "baseline in_memory", "base2": "baseline 2 processes"}


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(entry))  # fields[1]: ppid
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # fields[21]: rss in pages
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(cmd: list[str], log: str, code: str = ROOT) -> tuple[float, float, int]:
    """Runs `cmd`; returns (wall seconds, CPU seconds, peak RSS bytes of its process tree).

    CPU seconds (user + system of the process and every descendant reaped) are the steadier
    figure on a shared, loaded machine: wall time there includes waiting for a core.
    """
    import resource

    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=code)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code != 0:
        with open(log) as f:
            raise SystemExit(f"{' '.join(cmd)} failed (exit {code}):\n{f.read()[-3000:]}")
    return seconds, cpu, peak


def add_bad_rows(path: str, share: float) -> int:
    """Appends `share` x rows bad impression rows (three kinds in turn); returns how many."""
    with open(path) as f:
        header = f.readline().rstrip("\n").split(",")
        good = f.readline().rstrip("\n")
        rows = 1 + sum(1 for _ in f)
    n = int(rows * share)
    fields = good.split(",")
    bad = []
    for i in range(n):
        row = list(fields)
        if i % 3 == 0:
            row[header.index("label")] = "yes"
        elif i % 3 == 1:
            row[header.index("ad_id")] = f"no_such_ad{i}"
        else:
            row = row[:3]
        bad.append(",".join(row))
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in bad))
    return n


def read_records(folder: str) -> list[bytes]:
    """Every record of the TFRecord shards under `folder`."""
    import struct

    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.tfrecord"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            out.append(data[pos + 12: pos + 12 + length])
            pos += 12 + length + 4
    return out


def fingerprint(out: str) -> dict:
    """What must agree between runs: records per split, counts, ad counts, vocabularies, dead letters."""
    fp: dict = {}
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    for split in ("train", "valid", "eval"):
        recs = sorted(read_records(os.path.join(out, split)))
        fp[f"{split} records"] = (len(recs), hashlib.sha256(b"".join(recs)).hexdigest()[:16])
        fp[f"{split} impressions"] = manifest["splits"][split]["impressions"]
    with open(os.path.join(out, "ad_counts.jsonl")) as f:
        lines = sorted(f.read().splitlines())
    fp["ad_counts lines"] = (len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16])
    for path in sorted(glob.glob(os.path.join(out, "vocab", "*.txt"))):
        with open(path, "rb") as f:
            fp[f"vocab {os.path.basename(path)}"] = hashlib.sha256(f.read()).hexdigest()[:16]
    dead = []
    for path in glob.glob(os.path.join(out, "dead_letter", "*.jsonl")):
        with open(path) as f:
            dead.extend(f.read().splitlines())
    fp["dead letter lines"] = (len(dead), hashlib.sha256("\n".join(sorted(dead)).encode()).hexdigest()[:16])
    fp["dead letter reasons"] = manifest["dead_letter"]["reasons"]
    fp["input impressions"] = manifest["input"]["impressions"]
    return fp


def prepare(size: int, args: argparse.Namespace, work: str) -> tuple[str, str]:
    """The input at `size` impressions (generated once under `work`) and the config; returns (raw dir, config)."""
    from tfvctr.demo_data.generate import generate

    raw = os.path.join(work, f"raw_{size}")
    if not os.path.exists(os.path.join(raw, "impressions.csv")):
        generate(raw, num_ads=args.ads, num_impressions=size, image_size=args.image_size, formats=("csv",))
        add_bad_rows(os.path.join(raw, "impressions.csv"), args.bad_share)
    config = os.path.join(work, "config.yaml")
    with open(args.config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace("image_size: 64", f"image_size: {args.image_size}"))
    return raw, config


def rotated(runs: list[str], round_index: int) -> list[str]:
    """Round r's order: the list started at its r-th run (each kind in turn first)."""
    k = round_index % len(runs)
    return runs[k:] + runs[:k]


def bench(size: int, args: argparse.Namespace, work: str, round_index: int = 0) -> list[dict]:
    """One round at `size`: every run of `args.runs` (in `rotated` order), each checked against the floor."""
    raw, config = prepare(size, args, work)
    results, prints = [], {}
    for name in rotated(args.runs, round_index):
        out = os.path.join(work, f"out_{size}_{name}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, *RUNS[name], "--config", config, "--ads", os.path.join(raw, "ads.csv"),
               "--impressions", os.path.join(raw, "impressions.csv"), "--out", out]
        code = args.baseline if name.startswith("base") else ROOT
        if code is None:
            raise SystemExit(f"--runs {name} needs --baseline DIR")
        seconds, cpu, rss = run_measured(cmd, os.path.join(work, f"log_{size}_{name}.txt"), os.path.abspath(code))
        prints[name] = fingerprint(out)
        n = prints[name]["input impressions"]
        results.append({"run": name, "label": LABELS[name], "round": round_index + 1, "impressions": n,
                        "ads": args.ads, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                        "impressions_per_s": round(n / seconds),
                        "peak_rss_mb": round(rss / 2**20)})
        print(f"  {LABELS[name]:22s} {seconds:7.1f} s (CPU {cpu:6.1f} s) {n / seconds:9.0f} impressions/s  "
              f"peak RSS {rss / 2**20:6.0f} MB", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    floor = next((r["seconds"] for r in results if r["run"] == "plain"), None)
    floor_cpu = next((r["cpu_seconds"] for r in results if r["run"] == "plain"), None)
    base = prints.get("plain") or prints[args.runs[0]]
    for r in results:
        r["ratio_to_floor"] = round(r["seconds"] / floor, 2) if floor else None
        r["cpu_ratio_to_floor"] = round(r["cpu_seconds"] / floor_cpu, 2) if floor_cpu else None
        diffs = [key for key in base if prints[r["run"]].get(key) != base[key]]
        r["same_output"] = not diffs
        r["differs"] = diffs
    return results


def summarise(results: list[dict], runs: list[str]) -> list[dict]:
    """Per run kind over the rounds: median and min of wall and CPU seconds, and the ratios to
    the floor taken round by round (each run over its own round's floor) with median, min, max."""
    floors = {r["round"]: r for r in results if r["run"] == "plain"}
    out = []
    for name in runs:
        mine = [r for r in results if r["run"] == name]
        if not mine:
            continue
        row = {"run": name, "label": LABELS[name], "rounds": len(mine), "impressions": mine[0]["impressions"],
               "same_output": all(r["same_output"] for r in mine)}
        for key in ("seconds", "cpu_seconds", "peak_rss_mb"):
            values = [r[key] for r in mine]
            row[f"median_{key}"] = round(statistics.median(values), 2)
            row[f"min_{key}"] = min(values)
            row[f"max_{key}"] = max(values)
        for key, of in (("ratio_to_floor", "seconds"), ("cpu_ratio_to_floor", "cpu_seconds")):
            values = [r[of] / floors[r["round"]][of] for r in mine if r["round"] in floors]
            row[f"median_{key}"] = round(statistics.median(values), 2) if values else None
            row[f"min_{key}"] = round(min(values), 2) if values else None
            row[f"max_{key}"] = round(max(values), 2) if values else None
        out.append(row)
    return out


def print_round(results: list[dict]) -> None:
    print(f"{'round':>5s} {'run':22s} {'seconds':>8s} {'imps/s':>9s} {'x floor':>8s} {'CPU s':>7s} {'x floor':>8s} "
          f"{'peak RSS':>9s}  same output")
    for r in results:
        ratio = f"{r['ratio_to_floor']:.2f}" if r["ratio_to_floor"] else "-"
        cpu_ratio = f"{r['cpu_ratio_to_floor']:.2f}" if r["cpu_ratio_to_floor"] else "-"
        same = "yes" if r["same_output"] else "NO: " + ", ".join(r["differs"])
        print(f"{r['round']:5d} {r['label']:22s} {r['seconds']:8.1f} {r['impressions_per_s']:9d} {ratio:>8s} "
              f"{r['cpu_seconds']:7.1f} {cpu_ratio:>8s} {r['peak_rss_mb']:6d} MB  {same}", flush=True)


def print_summary(summary: list[dict]) -> None:
    def spread(row: dict, key: str) -> str:
        if row[f"median_{key}"] is None:
            return "-"
        return f"{row[f'median_{key}']:.2f} [{row[f'min_{key}']:.2f}-{row[f'max_{key}']:.2f}]"

    print(f"{'run':22s} {'CPU s med':>9s} {'min':>6s} {'wall s med':>10s} {'min':>6s} "
          f"{'CPU x floor, paired':>21s} {'wall x floor, paired':>21s} {'RSS med':>8s}  same output")
    for row in summary:
        print(f"{row['label']:22s} {row['median_cpu_seconds']:9.1f} {row['min_cpu_seconds']:6.1f} "
              f"{row['median_seconds']:10.1f} {row['min_seconds']:6.1f} {spread(row, 'cpu_ratio_to_floor'):>21s} "
              f"{spread(row, 'ratio_to_floor'):>21s} {row['median_peak_rss_mb']:5.0f} MB  "
              f"{'yes' if row['same_output'] else 'NO'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ads", type=int, default=2000)
    parser.add_argument("--impressions", type=int, nargs="+", default=[200_000], help="sizes to run (default: 200000)")
    parser.add_argument("--bad-share", type=float, default=0.005, help="bad impression rows appended (default: 0.005)")
    parser.add_argument("--image-size", type=int, default=64, help="source and training image side (default: 64)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["plain", "beam1", "beam2"],
                        help="what to run (default: plain beam1 beam2)")
    parser.add_argument("--baseline", default=None,
                        help="a checkout of another version (e.g. `git archive REV beam_jobs tfvctr | tar -x -C DIR`): "
                             "runs base1/base2 run its beam_jobs from there, for before/after figures")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    parser.add_argument("--work", default=None, help="keep inputs here (reused across calls) instead of a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (under --work)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the list this many times, interleaved, the order rotated each round; then the "
                             "medians and the per-round (paired) ratios to the floor (default: 1)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    work = args.work or tempfile.mkdtemp(prefix="beam_preprocess_")
    os.makedirs(work, exist_ok=True)
    all_results, summary = [], []
    try:
        for size in args.impressions:
            print(f"preprocess: {args.ads} ads, {size} impressions (+{args.bad_share:.1%} bad rows), "
                  f"{args.image_size} px, {os.cpu_count()} CPUs, {args.rounds} round(s)", flush=True)
            results = []
            for round_index in range(args.rounds):
                if args.rounds > 1:
                    print(f"round {round_index + 1}: {' '.join(rotated(args.runs, round_index))}", flush=True)
                results.extend(bench(size, args, work, round_index))
            print_round(results)
            all_results.extend(results)
            if args.rounds > 1:
                rows = summarise(results, args.runs)
                summary.extend(rows)
                print(f"over {args.rounds} rounds (ratios: each run over its own round's floor)")
                print_summary(rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"runs": all_results, "summary": summary}, f, indent=1)
        if not all(r["same_output"] for r in all_results):
            sys.exit(1)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
