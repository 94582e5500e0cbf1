"""Throughput of the tiny VLA policy on CPU: batched sampling (KV cache) and SFT-style forward+backward.

    python scripts/bench_policy.py --threads 2 --batch 32

Prints observations/s for `sample_actions` (temperature 1, the RL rollout path) and for greedy decoding, and
samples/s for a cross-entropy forward+backward on teacher-forced action logits (full fine-tuning and LoRA).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from razor_robot.policies import load_policy


@dataclass
class BenchConfig:
    threads: int = 2
    """torch intra-op threads."""
    batch: int = 32
    """Observations per sample_actions call / samples per training step."""
    repeats: int = 20
    """Timed calls per measurement (after 3 warm-up calls)."""
    config: str = "tiny"
    """Policy config or checkpoint dir."""


def _timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _inputs(policy, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    size = policy.config.towers[0].image_size
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    pool = ["pick coke can", "open drawer", "close drawer"]
    instructions = [pool[i % len(pool)] for i in range(batch)]
    tokens = (
        torch.from_numpy(rng.integers(0, policy.n_action_bins, (batch, policy.action_dim)))
        + policy.action_token_offset
    )
    return images, instructions, tokens


def _train_step(policy, optimizer, images, instructions, tokens) -> None:
    logits = policy.action_logits(images, instructions, tokens).float()  # (B, D, 256)
    loss = F.cross_entropy(logits.flatten(0, 1), (tokens - policy.action_token_offset).flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(BenchConfig()).items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    cfg = BenchConfig(**vars(parser.parse_args()))
    torch.set_num_threads(cfg.threads)
    policy = load_policy(cfg.config)
    images, instructions, tokens = _inputs(policy, cfg.batch)
    print(f"policy={cfg.config} params={policy.num_parameters():,} threads={cfg.threads} batch={cfg.batch}")

    generator = torch.Generator().manual_seed(0)
    for temp in (1.0, 0.0):
        sec = _timed(lambda t=temp: policy.sample_actions(images, instructions, t, generator), cfg.repeats)
        print(f"sample_actions T={temp:g}: {cfg.batch / sec:8.0f} obs/s ({1e3 * sec / cfg.batch:.2f} ms/obs)")

    policy.train()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    sec = _timed(lambda: _train_step(policy, optimizer, images, instructions, tokens), cfg.repeats)
    print(f"forward+backward (full): {cfg.batch / sec:8.0f} samples/s")
    policy.enable_lora(r=8, alpha=16)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    sec = _timed(lambda: _train_step(policy, optimizer, images, instructions, tokens), cfg.repeats)
    print(f"forward+backward (LoRA r=8): {cfg.batch / sec:8.0f} samples/s")


if __name__ == "__main__":
    main()
