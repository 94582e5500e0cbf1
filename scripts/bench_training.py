"""Training throughput of the tiny policy on CPU: SFT optimiser steps, RL updates, one real RL iteration.

    python scripts/bench_training.py --threads 2
    python scripts/bench_training.py --skip-env          # no Meta-World iteration
    python scripts/bench_training.py --skip-env --busy   # SFT alone and beside a busy-loop process
    python scripts/bench_training.py --skip-env --pretrain-recipe --sft-steps 40   # the base recipe vs plain SFT

Prints
  1. SFT: optimiser steps/s and samples/s of ``train_sft`` (batch 32, synthetic 64 px images, one-hot CE);
  2. RL update: ``minibatch_loss`` + backward at batch 256 with half the advantages zero (steps/s counts all 256
     steps of the minibatch; only the non-zero half runs through the model);
  3. one ``train_reinforce`` iteration on Meta-World pick-can (points x episodes rollouts, then the update), with
     wall time split into rollout and update. An untrained policy rarely succeeds, so every group would have zero
     advantage and the update would be empty; unless ``--real-advantages``, the iteration then gives half of the
     groups synthetic +-1 advantages (said in the output) so the update cost is that of a half-active iteration.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

import razor_robot  # noqa: F401  (sets OpenMP's spin count before torch loads it)
import torch  # noqa: E402


@dataclass
class BenchConfig:
    """Command-line options."""

    threads: int = 2
    """torch intra-op threads."""
    sft_batch: int = 32
    """SFT optimiser batch."""
    sft_steps: int = 12
    """Timed SFT optimiser steps (after 3 untimed warm-up steps)."""
    rl_batch: int = 256
    """RL minibatch (steps per optimiser step)."""
    rl_repeats: int = 5
    """Timed RL minibatch updates (after 1 warm-up)."""
    points: int = 9
    """Training grid points of the real RL iteration (a square number: 9 = 3 x 3)."""
    episodes: int = 5
    """Rollouts per point (G)."""
    workers: int = 2
    """Env worker processes for the rollouts."""
    skip_env: bool = False
    """Skip the Meta-World iteration."""
    real_advantages: bool = False
    """Keep all-zero advantages when the policy never succeeds (the update then does nothing)."""
    busy: bool = False
    """Also time SFT beside a busy-loop process (one core taken) and print the slow-down."""
    prompt_template: str = "simpler-env"
    """The policy's prompt: "simpler-env" (the bare instruction, as configs/quickstart.yaml) or "openvla"."""
    pretrain_recipe: bool = False
    """Also time SFT with the embedded base's pretraining recipe (configs/quickstart.yaml: batch 64, lr 1e-3,
    soft bin targets sigma 1.5, 4 px shifts) and print its samples/s as a ratio of plain SFT's."""


def parse_args() -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(BenchConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    cfg = BenchConfig(**vars(parser.parse_args()))
    side = int(round(np.sqrt(cfg.points)))
    if side < 2 or side * side != cfg.points:
        parser.error(f"--points must be a square number >= 4, got {cfg.points}")
    return cfg


def tiny_policy(cfg: BenchConfig, action_dim: int = 4):
    from razor_robot.policies import load_policy

    torch.manual_seed(0)
    policy = load_policy("tiny", action_dim=action_dim, prompt_template=cfg.prompt_template)
    # Identity statistics with the gripper (last dim) un-normalised, as the embedded base uses.
    policy.set_norm_stats("bench", {"action": {"q01": [-1.0] * action_dim, "q99": [1.0] * action_dim,
                                               "mask": [True] * (action_dim - 1) + [False]}})
    return policy


def _busy_loop() -> None:
    while True:
        pass


def bench_sft_beside_busy_process(cfg: BenchConfig) -> None:
    """SFT steps/s alone, then with a busy-loop process competing for one of the cores."""
    import multiprocessing as mp

    alone = bench_sft(cfg)
    busy = mp.get_context("spawn").Process(target=_busy_loop, daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        beside = bench_sft(cfg)
    finally:
        busy.kill()
        busy.join()
    print(f"SFT beside one busy process: {alone / beside:.2f}x slower ({alone:.2f} -> {beside:.2f} steps/s, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")


def bench_sft(cfg: BenchConfig, recipe: bool = False) -> float:
    """Optimiser steps/s of plain SFT at ``cfg.sft_batch``, or of the base's pretraining recipe (``recipe``)."""
    from razor_robot.training.dataset import DemoDataset
    from razor_robot.training.sft import SFTConfig, train_sft
    from razor_robot.training.optim import OptimConfig

    policy = tiny_policy(cfg)
    batch = 64 if recipe else cfg.sft_batch
    # Enough samples for every timed step: train_sft stops after one epoch whatever max_steps says.
    warmup, n = 3, batch * (cfg.sft_steps + 3)
    rng = np.random.default_rng(0)
    dataset = DemoDataset(images=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                          states=np.zeros((n, 4), np.float32),
                          actions=rng.uniform(-1, 1, (n, 4)).astype(np.float32),
                          instructions=["pick coke can"] * n, tasks=["pick-can"] * n,
                          episode_ids=np.arange(n) // 30, grid_index=np.zeros(n, np.int64))
    stamps: list[float] = []
    if recipe:
        config = SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=batch, warmup_steps=100),
                           max_steps=cfg.sft_steps + warmup, label_sigma_bins=1.5, shift_augment_px=4)
    else:
        config = SFTConfig(OptimConfig(learning_rate=1e-4, batch_size=batch), max_steps=cfg.sft_steps + warmup)
    train_sft(policy, dataset, config, unnorm_key="bench", progress=False,
              log=lambda metrics, step: stamps.append(time.perf_counter()))
    assert len(stamps) == cfg.sft_steps + warmup, "train_sft ran fewer steps than timed"
    seconds = (stamps[-1] - stamps[warmup - 1]) / cfg.sft_steps
    name = "pretraining recipe" if recipe else "SFT"
    print(f"{name:5} batch {batch}: {1 / seconds:6.2f} optimiser steps/s, {batch / seconds:7.1f} "
          f"samples/s ({1e3 * seconds:.0f} ms/step incl. clip + AdamW)")
    return 1 / seconds


def bench_rl_update(cfg: BenchConfig) -> None:
    from razor_robot.training.reinforce import RLConfig, StepBatch, minibatch_loss
    from razor_robot.training.optim import OptimConfig, make_optimizer

    policy = tiny_policy(cfg)
    rng = np.random.default_rng(0)
    n = cfg.rl_batch
    advantages = np.where(np.arange(n) % 2 == 0, rng.normal(size=n), 0.0)  # half the steps carry no signal
    tokens = torch.from_numpy(rng.integers(0, 256, (n, policy.action_dim))) + policy.action_token_offset
    batch = StepBatch(images=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                      instructions=["pick coke can"] * n, tokens=tokens.long(),
                      advantages=torch.from_numpy(advantages).float())
    config = RLConfig(OptimConfig(batch_size=n))
    optimizer, _ = make_optimizer(policy, config.optim)
    policy.train()

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = minibatch_loss(policy, batch, np.arange(n), config, None)
        loss.backward()
        optimizer.step()

    update()
    start = time.perf_counter()
    for _ in range(cfg.rl_repeats):
        update()
    seconds = (time.perf_counter() - start) / cfg.rl_repeats
    print(f"RL    batch {n} (half zero-advantage): {n / seconds:7.1f} steps/s, {n / 2 / seconds:7.1f} active "
          f"steps/s ({1e3 * seconds:.0f} ms per minibatch_loss + backward + AdamW)")


def bench_rl_iteration(cfg: BenchConfig) -> None:
    import razor_robot.training.reinforce as reinforce
    from razor_robot.rollout.pool import EnvPool
    from razor_robot.envs import grid_positions, task_spec
    from razor_robot.training.reinforce import RLConfig, train_reinforce
    from razor_robot.experiment.loading import adapter_factory_for
    from razor_robot.training.optim import OptimConfig

    side = int(round(np.sqrt(cfg.points)))
    positions = grid_positions(side)
    policy = tiny_policy(cfg)
    timings: dict[str, float] = {}
    notes: list[str] = []
    real_advantages = reinforce.group_advantages

    def advantages_or_synthetic(rewards, groups, variant="reinforce", eps=1e-6):
        adv = real_advantages(rewards, groups, variant, eps)
        if cfg.real_advantages or np.any(adv != 0):
            return adv
        notes.append(f"success {np.mean(rewards):.2f}: no group had contrast, half the groups got synthetic "
                     "+-1 advantages to time a half-active update")
        synthetic = np.where(np.arange(len(rewards)) % 2 == 0, 1.0, -1.0)
        return np.where(np.asarray(groups) % 2 == 0, synthetic, 0.0)

    class TimedPool(EnvPool):
        def rollout(self, *args, **kwargs):
            begin = time.perf_counter()
            try:
                return super().rollout(*args, **kwargs)
            finally:
                timings["rollout"] = timings.get("rollout", 0.0) + time.perf_counter() - begin

    reinforce.group_advantages = advantages_or_synthetic
    pool = TimedPool("metaworld", {"image_size": 64}, num_workers=cfg.workers or None)
    try:
        pool.start()  # start the workers outside the timed iteration
        config = RLConfig(OptimConfig(learning_rate=1e-4, batch_size=256), iterations=1,
                          rollouts_per_point=cfg.episodes, checkpoints=1, diagnostic_steps=0)
        start = time.perf_counter()
        logs = []
        train_reinforce(policy, positions, config, task="pick-can", unnorm_key="bench", pool=pool,
                        adapter_factory=adapter_factory_for("metaworld"), progress=False,
                        log=lambda stats, it: logs.append(stats))
        total = time.perf_counter() - start
    finally:
        reinforce.group_advantages = real_advantages
        pool.release()
    episodes = len(positions) * cfg.episodes
    steps = episodes * task_spec("pick-can", "metaworld").horizon
    stats = logs[-1]
    print(f"RL iteration on metaworld pick-can: {len(positions)} points x {cfg.episodes} episodes = {episodes} "
          f"episodes, {steps} steps, {pool.num_workers} workers x {pool.envs_per_worker} envs")
    print(f"  wall {total:.1f} s = rollout {timings['rollout']:.1f} s ({steps / timings['rollout']:.0f} env steps/s)"
          f" + update {total - timings['rollout']:.1f} s (active fraction {stats['rl/active_fraction']:.2f})")
    for note in notes:
        print(f"  note: {note}")


def main() -> None:
    cfg = parse_args()
    torch.set_num_threads(cfg.threads)
    print(f"tiny policy, {cfg.threads} torch threads")
    if cfg.busy:
        bench_sft_beside_busy_process(cfg)
    else:
        plain = bench_sft(cfg)
        if cfg.pretrain_recipe:
            recipe = bench_sft(cfg, recipe=True)
            print(f"pretraining recipe / plain SFT, samples/s: {recipe * 64 / (plain * cfg.sft_batch):.2f}")
    bench_rl_update(cfg)
    if not cfg.skip_env:
        bench_rl_iteration(cfg)


if __name__ == "__main__":
    main()
