"""Benchmark the Meta-World backend and (optionally) measure the scripted experts' success rates.

    python scripts/bench_envs.py                      # raw step+render and vector-env throughput
    python scripts/bench_envs.py --experts 100        # + expert success on 100 positions / seeds per task

Raw figures time env.step() (action_repeat physics control steps + one rendered frame) with random
actions. Vector-env figures time gymnasium AsyncVectorEnv rollouts with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchConfig:
    """Command-line options."""

    task: str = "pick-can"
    """Task timed for throughput."""
    steps: int = 200
    """Env steps timed per raw measurement."""
    vector_steps: int = 150
    """Vector steps (each steps every worker) per vector-env measurement."""
    experts: int = 0
    """Episodes per task for the expert success measurement (0 = skip)."""
    seed: int = 0
    """Seed for actions, resets and eval positions."""


def parse_args() -> BenchConfig:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    for name, default in vars(BenchConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return BenchConfig(**vars(parser.parse_args()))


def bench_raw(task: str, image_size: int, steps: int, seed: int) -> None:
    from razor_robot.envs import make_env

    env = make_env(task, image_size=image_size)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    times = []
    for _ in range(steps):
        action = env.action_space.sample()
        start = time.perf_counter()
        _, _, _, truncated, _ = env.step(action)
        times.append(time.perf_counter() - start)
        if truncated:
            env.reset()
    env.close()
    median_ms = 1000 * float(np.median(times))
    rate = len(times) / sum(times)
    print(f"raw   {task:<12} {image_size:>4}px  {rate:7.1f} steps/s  median {median_ms:5.2f} ms")


def _make_env_fn(task: str):
    def make():
        from razor_robot.envs import make_env

        return make_env(task)

    return make


def bench_vector(task: str, workers: int, steps: int, seed: int) -> None:
    import gymnasium as gym

    # spawn, not fork: a forked worker inherits this process's EGL display (bench_raw rendered) and hangs.
    envs = gym.vector.AsyncVectorEnv([_make_env_fn(task) for _ in range(workers)], context="spawn")
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(envs.action_space.sample())  # workers autoreset at the horizon
    elapsed = time.perf_counter() - start
    envs.close()
    print(f"vector {task:<12} {workers} worker(s)  {workers * steps / elapsed:7.1f} env steps/s (64px)")


def expert_success(task: str, episodes: int, seed: int) -> float:
    from razor_robot.envs import eval_positions, make_env
    from razor_robot.policies.demonstrators import make_demonstrator

    env, expert = make_env(task, image_size=16), make_demonstrator(task)
    positions = eval_positions(episodes, seed=seed)
    wins, first_steps = 0, []
    for episode in range(episodes):
        options = {"object_xy": positions[episode]} if task == "pick-can" else None
        obs, _ = env.reset(seed=seed + episode, options=options)
        truncated, step, first = False, 0, None
        while not truncated:
            obs, _, _, truncated, info = env.step(expert.act(obs))
            step += 1
            if info["success"] and first is None:
                first = step
        wins += bool(info["episode_success"])
        first_steps.append(first if first is not None else np.inf)
    env.close()
    done = np.array(first_steps)
    print(
        f"expert {task:<12} {wins}/{episodes} final-step success (horizon {env.task_spec.horizon}); "
        f"first success at step median {np.median(done):.0f}, max {done.max():.0f}"
    )
    return wins / episodes


def main() -> None:
    cfg = parse_args()
    for size in (64, 128):
        bench_raw(cfg.task, size, cfg.steps, cfg.seed)
    for workers in (1, 2):
        bench_vector(cfg.task, workers, cfg.vector_steps, cfg.seed)
    if cfg.experts:
        for task in ("pick-can", "open-drawer", "close-drawer"):
            expert_success(task, cfg.experts, cfg.seed)


if __name__ == "__main__":
    main()
