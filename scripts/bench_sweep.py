"""Wall-clock of a whole sweep (the README's main command) from a cold cache, split by stage.

    python scripts/bench_sweep.py configs/quickstart.yaml --out /tmp/bench-quickstart

Runs ``razor-robot sweep CONFIG`` with an empty cache directory (demonstrations and the base policy are built
from scratch) into a fresh output directory and prints: total wall-clock, peak resident memory of the sweep's
process tree (sampled every 50 ms), each run's records and training time, the files written and the summary.
It then times one process's step+render (as scripts/bench_rollout.py) and splits the wall-clock into the
rollouts (against the simulation bound: the least time the config's env steps can take on this machine) and
the rest (training, KL, predictors, report). Pass ``--kill-after SECONDS`` to SIGKILL the sweep once and re-run
the same command (the resume check): it then also prints whether every run's records are present exactly once.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


ROLLOUTS_LINE = re.compile(r"^rollouts: (\d+) episodes, (\d+) env steps in (\d+) s")


def _sweep(config: str, out: Path, cache: Path, extra: list[str], kill_after: float | None,
           rollouts: list[tuple[int, float]]) -> float:
    """Run the sweep (killed after ``kill_after`` s if given); its output passes through, and its closing
    rollouts line (env steps, seconds) is appended to ``rollouts``."""
    env = {**os.environ, "RAZOR_ROBOT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "razor_robot.cli", "sweep", config, "--out", str(out), "--no-progress", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(kill_after, os.killpg, (process.pid, signal.SIGKILL)) if kill_after else None
    if timer is not None:  # the sweep and its env workers at once, as a crash would
        timer.start()
    for line in process.stdout:
        print(line, end="", flush=True)
        match = ROLLOUTS_LINE.match(line)
        if match:
            rollouts.append((int(match[2]), float(match[3])))
    process.wait()
    if timer is not None:
        timer.cancel()
        if process.returncode == -signal.SIGKILL:
            print(f"SIGKILLed the sweep after {kill_after:.0f} s")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--out", required=True, help="output directory (emptied first)")
    parser.add_argument("--cache", help="cache directory (default: a fresh temporary one, i.e. cold)")
    parser.add_argument("--kill-after", type=float, help="SIGKILL the first attempt after this many seconds")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--raw-steps", type=int, default=1200,
                        help="env steps of the single-process step+render rate measured after the sweep")
    args = parser.parse_args()
    if not Path(args.config).is_file():
        parser.error(f"config file not found: {args.config}")
    if args.raw_steps < 1:
        parser.error(f"--raw-steps must be >= 1, got {args.raw_steps}")
    if args.kill_after is not None and not args.kill_after > 0:
        parser.error(f"--kill-after must be > 0 seconds, got {args.kill_after}")

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="razor-robot-cache-"))
    extra = [item for pair in args.set for item in ("--set", pair)]
    from bench_rollout import PeakMemory  # scripts/ is on the path when this script runs

    rollouts: list[tuple[int, float]] = []
    with PeakMemory() as memory:
        seconds = _sweep(args.config, out, cache, extra, args.kill_after, rollouts)
        if args.kill_after is not None:
            seconds += _sweep(args.config, out, cache, extra, None, rollouts)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    per_run = collections.defaultdict(list)
    for record in records:
        per_run[record["run_id"]].append(record)
    print(f"\ntotal wall-clock: {seconds:.0f} s ({seconds / 60:.1f} min), peak memory of the process tree "
          f"{memory.peak / 2**30:.2f} GiB, cache {cache}")
    image_size = _image_size(args.config)
    if rollouts and args.kill_after is None and image_size is not None:
        print(_time_split(seconds, *rollouts[-1], image_size=image_size, raw_steps=args.raw_steps))
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


def _image_size(config_path: str) -> int | None:
    """The config's camera resolution on Meta-World; None for other backends (the raw rate is Meta-World's)."""
    from razor_robot.config import load_yaml
    from razor_robot.experiment.schema import SweepConfig

    config = load_yaml(SweepConfig, config_path)
    return int(config.env.get("image_size", 64)) if config.backend == "metaworld" else None


def _time_split(total: float, env_steps: int, rollout_seconds: float, image_size: int, raw_steps: int) -> str:
    """Where the wall-clock went: rollouts against the simulation bound measured now, and everything else."""
    from bench_rollout import BenchConfig, raw_rate

    from razor_robot.rollout.pool import usable_cpus

    cpus = usable_cpus()
    rate = raw_rate(BenchConfig(image_size=image_size, raw_steps=raw_steps))
    floor = env_steps / (cpus * rate)
    return (f"time split: rollouts {rollout_seconds:.0f} s for {env_steps} env steps "
            f"({env_steps / rollout_seconds:.0f} env-steps/s, {env_steps / rollout_seconds / (cpus * rate):.2f} of "
            f"the bound {cpus} x {rate:.0f} measured now); the simulation alone needs >= {floor:.0f} s "
            f"({floor / 60:.1f} min) at the bound; training and everything else {total - rollout_seconds:.0f} s")


if __name__ == "__main__":
    main()
