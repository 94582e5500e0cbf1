"""Benchmark the rollout engine against the machine's simulation bound, measured in the same run.

    python scripts/bench_rollout.py                       # 2 workers x 32 envs (this machine's CPUs), 64 px
    python scripts/bench_rollout.py --lockstep-workers 6  # also the lockstep engine (AsyncVectorEnv, 6 envs)

It prints, for the embedded default (Meta-World pick-can, 64 px, the tiny policy):
  * raw: one process stepping and rendering one env with random actions (env-steps/s, resets included);
  * bound = usable CPUs x raw: what the simulator alone could do on this machine;
  * eval (greedy decoding) and rl (sampling at T=1) through EnvPool.rollout: env-steps/s and their ratio to
    the bound (the policy's own compute shares the same cores, so 1.0 is out of reach);
  * all of that ``--rounds`` times, each round against its own raw reading, and the median ratios;
  * peak resident memory of this process and its workers (psutil, sampled every 50 ms).
Absolute rates vary several-fold between machines; the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchConfig:
    """Command-line options."""

    workers: int = 0
    """Env worker processes (0: one per usable CPU)."""
    envs_per_worker: int = 32
    """Env slots per worker (configs/quickstart.yaml's 32)."""
    episodes: int = 192
    """Episodes per measurement (30 steps each); 192 = one quickstart checkpoint's evaluation (64 pick-can + 2 x 64
    drawer episodes), three waves of the 2 x 32 slots."""
    raw_steps: int = 1200
    """Env steps of the raw single-process measurement."""
    lockstep_workers: int = 0
    """Also time the lockstep engine over an AsyncVectorEnv of this many workers (0 = skip)."""
    image_size: int = 64
    """Camera resolution."""
    seed: int = 0
    """Seed of positions, actions and the policy's initialisation."""
    prompt_template: str = "simpler-env"
    """The policy's prompt: "simpler-env" (the bare instruction, as configs/quickstart.yaml) or "openvla"."""
    rounds: int = 3
    """Rounds of (raw, eval, rl), each ratio against the raw rate measured just before it: these machines drift
    by tens of percent within minutes, so one raw reading can be off for the whole run. The median is reported."""


def parse_args() -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(BenchConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    config = BenchConfig(**vars(parser.parse_args()))
    if min(config.episodes, config.raw_steps, config.envs_per_worker, config.rounds) < 1 or config.workers < 0:
        parser.error("episodes, raw-steps, envs-per-worker and rounds must be >= 1, workers >= 0")
    return config


def _raw_rate(image_size: int, steps: int, seed: int, queue) -> None:
    from razor_robot.envs import make_env

    env = make_env("pick-can", image_size=image_size)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(30):  # warm up the renderer
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    env.reset(seed=seed + 1)
    start, done = time.perf_counter(), 0
    while done < steps:
        _, _, _, truncated, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        done += 1
        if truncated:
            env.reset(seed=seed + done)
    queue.put(done / (time.perf_counter() - start))
    env.close()


def raw_rate(config: BenchConfig) -> float:
    """Env-steps/s of one process (a spawned child, so no renderer ever runs in this process)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_raw_rate, args=(config.image_size, config.raw_steps, config.seed, queue))
    process.start()
    rate = queue.get()
    process.join()
    return rate


class PeakMemory:
    """Peak summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._process, self._interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self._process, *self._process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    config = parse_args()
    import torch

    from razor_robot.rollout.actor import VLAActor
    from razor_robot.rollout.pool import EnvPool, usable_cpus
    from razor_robot.envs import eval_positions
    from razor_robot.policies import load_policy
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.rollout.episodes import EpisodeRequest
    from razor_robot.rollout.lockstep import default_env_factory, lockstep_rollout, make_vector_env

    cpus = usable_cpus()
    workers = config.workers or cpus
    torch.manual_seed(config.seed)
    policy = load_policy("tiny", device="cpu", dtype=torch.float32, prompt_template=config.prompt_template).eval()
    policy.set_norm_stats("bench", compute_norm_stats(np.random.default_rng(0).uniform(-1, 1, (256, 4))))
    positions = eval_positions(config.episodes, seed=config.seed)
    requests = [EpisodeRequest("pick-can", 10_000 + i, tuple(map(float, xy))) for i, xy in enumerate(positions)]
    ratios: dict[str, list[float]] = {"eval": [], "rl": []}
    with PeakMemory() as memory, EnvPool("metaworld", {"image_size": config.image_size}, num_workers=workers,
                                         envs_per_worker=config.envs_per_worker) as pool:
        pool.rollout(requests[: workers * config.envs_per_worker], VLAActor(policy, unnorm_key="bench"),
                     progress=False)  # start the workers and build their envs
        for round_index in range(config.rounds):
            rate = raw_rate(config)  # the pool's workers wait idle meanwhile
            bound = cpus * rate
            print(f"round {round_index + 1}: raw 1 process {rate:7.1f} env-steps/s ({1000 / rate:.2f} ms per "
                  f"step+render), bound for {cpus} CPUs {bound:7.1f}")
            for label, temperature in (("eval", 0.0), ("rl", 1.0)):
                actor = VLAActor(policy, unnorm_key="bench", temperature=temperature, seed=config.seed)
                start = time.perf_counter()
                trajectories = pool.rollout(requests, actor, progress=False)
                steps = sum(t.length for t in trajectories)
                achieved = steps / (time.perf_counter() - start)
                ratios[label].append(achieved / bound)
                print(f"  {label:<6} {workers} x {config.envs_per_worker:<2} envs  {achieved:7.1f} env-steps/s   "
                      f"ratio to bound {achieved / bound:.3f}")
    for label, values in ratios.items():
        print(f"{label:<8} ratio to bound: median {np.median(values):.3f} over {len(values)} rounds "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    print(f"peak memory (this process + workers): {memory.peak / 2**30:.2f} GiB")
    if config.lockstep_workers:
        factory = default_env_factory("pick-can", "metaworld", image_size=config.image_size)
        vector_env = make_vector_env(factory, config.lockstep_workers)
        try:
            bound = cpus * raw_rate(config)
            actor = VLAActor(policy, unnorm_key="bench", temperature=1.0, seed=config.seed)
            lockstep_rollout(vector_env, requests[: config.lockstep_workers], actor)
            with torch.inference_mode():
                torch.set_num_threads(1)
                start = time.perf_counter()
                trajectories = lockstep_rollout(vector_env, requests, actor)
            achieved = sum(t.length for t in trajectories) / (time.perf_counter() - start)
            print(f"lockstep {config.lockstep_workers} envs      {achieved:7.1f} env-steps/s   "
                  f"ratio to bound {achieved / bound:.3f}")
        finally:
            vector_env.close()


if __name__ == "__main__":
    main()
