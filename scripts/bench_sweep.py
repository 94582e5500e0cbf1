"""Wall-clock of a whole sweep (the README's main command) from a cold cache, split by stage.

    python scripts/bench_sweep.py configs/quickstart.yaml --out /tmp/bench-quickstart

Runs ``razor-robot sweep CONFIG`` with an empty cache directory (demonstrations and the base policy are built
from scratch) into a fresh output directory and prints: total wall-clock, peak resident memory of the sweep's
process tree (sampled every 50 ms), each run's records and training time, the files written and the summary.
Pass ``--kill-after SECONDS`` to SIGKILL the sweep once and re-run the same command (the resume check): it
then also prints whether every run's records are present exactly once.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sweep(config: str, out: Path, cache: Path, extra: list[str], kill_after: float | None) -> float:
    env = {**os.environ, "RAZOR_ROBOT_CACHE": str(cache)}
    command = [sys.executable, "-m", "razor_robot.cli", "sweep", config, "--out", str(out), "--no-progress", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its env workers, as a crash would
        process.wait()
        print(f"SIGKILLed the sweep after {kill_after:.0f} s")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--out", required=True, help="output directory (emptied first)")
    parser.add_argument("--cache", help="cache directory (default: a fresh temporary one, i.e. cold)")
    parser.add_argument("--kill-after", type=float, help="SIGKILL the first attempt after this many seconds")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = parser.parse_args()
    if not Path(args.config).is_file():
        parser.error(f"config file not found: {args.config}")
    if args.kill_after is not None and not args.kill_after > 0:
        parser.error(f"--kill-after must be > 0 seconds, got {args.kill_after}")

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="razor-robot-cache-"))
    extra = [item for pair in args.set for item in ("--set", pair)]
    from bench_rollout import PeakMemory  # scripts/ is on the path when this script runs

    with PeakMemory() as memory:
        seconds = _sweep(args.config, out, cache, extra, args.kill_after)
        if args.kill_after is not None:
            seconds += _sweep(args.config, out, cache, extra, None)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    per_run = collections.defaultdict(list)
    for record in records:
        per_run[record["run_id"]].append(record)
    print(f"\ntotal wall-clock: {seconds:.0f} s ({seconds / 60:.1f} min), peak memory of the process tree "
          f"{memory.peak / 2**30:.2f} GiB, cache {cache}")
    for run_id, run_records in per_run.items():
        steps = sorted(r.get("step", 0) for r in run_records)
        train = max((r.get("seconds", 0.0) for r in run_records), default=0.0)
        print(f"  {run_id:18s} {run_records[0]['method']:5s} records {len(run_records)} steps {steps} "
              f"train {train:.0f} s")
    runs = collections.Counter(r["run_id"] for r in records if r["run_id"] != "base")
    points = collections.Counter(r["method"] for r in records if r["method"] != "base" and "status" not in r)
    duplicated = [run_id for run_id, rs in per_run.items() if len({r.get('step') for r in rs}) != len(rs)]
    print(f"runs {len(runs)}, frontier points {dict(points)}, duplicated records: {duplicated or 'none'}")
    for name in ("frontier.png", "kl_forgetting.png", "summary.txt"):
        print(f"  {name}: {'written' if (out / name).exists() else 'MISSING'}")
    print(f"  videos: {sorted(p.name for p in out.glob('*.mp4'))}")
    if (out / "summary.txt").exists():
        print("\n" + (out / "summary.txt").read_text())


if __name__ == "__main__":
    main()
