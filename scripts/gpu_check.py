"""The paper path's learner on one GPU, without SimplerEnv, in under 8 minutes; its CPU part runs in CI.

    python scripts/gpu_check.py                                  # CUDA: tiny smoke + the 7B architecture
    python scripts/gpu_check.py --device cpu --arch tiny         # the CPU part (tests/test_gpu_check.py)

1. smoke: the tiny policy on the device runs what the smoke sweep's learner does between simulator calls: SFT
   steps (``train_sft``) on synthetic demonstrations, greedy decoding over the action logits and over the whole
   vocabulary, sampled decoding, and one REINFORCE update (``minibatch_loss``) on the sampled tokens.
2. the paper policy's architecture (``--arch``, random init) in the config's precision (``policy.dtype``, and bf16
   compute when ``distributed.mixed_precision`` is bf16), with gradient checkpointing: one SFT step (the config's
   SFT loss) and one REINFORCE step at ``--batch``; peak GPU memory and training tokens/s, printed beside
   ``razor-robot plan``'s estimate for one process at that micro-batch and its assumed throughput.

Exit status 0 when every step ran and gave finite losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import razor_robot  # noqa: F401  (sets OpenMP's spin count before torch loads it)

ROOT = Path(__file__).resolve().parents[1]


def synthetic_dataset(n: int, action_dim: int, image_size: int, seed: int = 0):
    import numpy as np

    from razor_robot.training.dataset import DemoDataset

    rng = np.random.default_rng(seed)
    return DemoDataset(images=rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
                       states=np.zeros((n, 1), np.float32), actions=rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
                       instructions=["pick coke can"] * n, tasks=["pick-can"] * n, episode_ids=np.arange(n),
                       grid_index=np.zeros(n, np.int64))


def reinforce_step(policy, images, accelerator, optimizer) -> float:
    """One REINFORCE update on tokens the policy sampled, advantages +-1 (half the batch each)."""
    import numpy as np
    import torch

    from razor_robot.training.reinforce import RLConfig, StepBatch, minibatch_loss
    from razor_robot.training.optim import OptimConfig

    tokens = policy.sample_actions(images, ["pick coke can"] * len(images), temperature=1.0,
                                   generator=torch.Generator(device=policy.device).manual_seed(0))
    advantages = torch.tensor([1.0, -1.0] * (len(images) // 2) + [1.0] * (len(images) % 2))
    batch = StepBatch(images=images, instructions=["pick coke can"] * len(images), tokens=tokens.cpu(),
                      advantages=advantages)
    config = RLConfig(OptimConfig(learning_rate=1e-5, batch_size=len(images)))
    policy.train()
    optimizer.zero_grad(set_to_none=True)
    loss, _ = minibatch_loss(policy, batch, np.arange(len(images)), config, None)
    accelerator.backward(loss)
    optimizer.step()
    policy.eval()
    return float(loss.detach())


def smoke(device: str) -> list[str]:
    """Part 1: the tiny policy through the learner's code on ``device``."""
    import torch

    from razor_robot.training.distributed import make_accelerator
    from razor_robot.policies import load_policy
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.training.sft import SFTConfig, train_sft
    from razor_robot.training.optim import OptimConfig

    policy = load_policy("tiny", action_dim=7, device=device, dtype=torch.float32)
    data = synthetic_dataset(64, 7, 64)
    policy.set_norm_stats("check", compute_norm_stats(data.actions))
    accelerator = make_accelerator(cpu=device == "cpu")
    sft = train_sft(policy, data, SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=16), max_steps=8,
                                            checkpoints=1), unnorm_key="check", progress=False,
                    accelerator=accelerator)
    images = data.images[:8]
    greedy = policy.sample_actions(images, ["pick coke can"] * 8, temperature=0.0)
    whole = policy.sample_actions(images, ["pick coke can"] * 8, temperature=0.0, greedy_over="vocabulary")
    actions = policy.tokens_to_actions(whole, "check")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    rl_loss = reinforce_step(policy, images, accelerator, optimizer)
    if not (math.isfinite(sft["train/loss"]) and math.isfinite(rl_loss) and actions.shape == (8, 7)):
        raise RuntimeError(f"smoke: non-finite loss or bad actions (SFT {sft['train/loss']}, RL {rl_loss})")
    return [f"smoke ({device}, tiny): SFT 8 steps, loss {sft['train/loss']:.3f}, {sft['train/samples_per_s']:.0f} "
            f"samples/s; greedy tokens {tuple(greedy.shape)}, whole-vocabulary greedy {tuple(whole.shape)}; "
            f"REINFORCE step loss {rl_loss:+.4f}"]


def paper_architecture(config_path: str, arch: str, device: str, batch: int) -> list[str]:
    """Part 2: one SFT and one REINFORCE step of ``arch`` in the config's precision; memory and tokens/s."""
    import torch

    from razor_robot.cli import _load_config
    from razor_robot.training.distributed import DistributedSpec, make_accelerator
    from razor_robot.experiment.cost import PlanAssumptions, _gib, memory_estimate, policy_shape
    from razor_robot.policies import load_policy
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.training.sft import SFTConfig, train_sft
    from razor_robot.experiment.loading import resolve_device
    from razor_robot.training.optim import OptimConfig

    config = _load_config(config_path, [f"policy.name={arch}", f"policy.device={device}",
                                        "distributed.strategy=none", "base.checkpoint=null"])
    _, dtype = resolve_device(config.policy)
    mixed = config.distributed.mixed_precision if device != "cpu" else "no"
    shape = policy_shape(config)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    policy = load_policy(arch, action_dim=shape.action_dim, device=device, dtype=getattr(torch, dtype),
                         **config.policy.overrides)
    policy.gradient_checkpointing_enable()
    image_size = policy.config.towers[0].image_size
    data = synthetic_dataset(batch, shape.action_dim, image_size)
    policy.set_norm_stats("check", compute_norm_stats(data.actions))
    accelerator = make_accelerator(DistributedSpec(mixed_precision=mixed), cpu=device == "cpu")
    loss = config.sft.config.get("loss", "action")
    start = time.perf_counter()
    sft = train_sft(policy, data, SFTConfig(OptimConfig(learning_rate=1e-6, batch_size=batch), max_steps=1,
                                            checkpoints=1, loss=loss), unnorm_key="check", progress=False,
                    accelerator=accelerator)
    if cuda:
        torch.cuda.synchronize()
    sft_seconds = time.perf_counter() - start
    accelerator.free_memory()  # drop SFT's optimiser (accelerate keeps a reference): 4 bytes x 7.5 B of states
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    start = time.perf_counter()
    rl_loss = reinforce_step(policy, data.images, accelerator, optimizer)
    if cuda:
        torch.cuda.synchronize()
    rl_seconds = time.perf_counter() - start
    if not (math.isfinite(sft["train/loss"]) and math.isfinite(rl_loss)):
        raise RuntimeError(f"{arch}: non-finite loss (SFT {sft['train/loss']}, RL {rl_loss})")
    tokens = batch * (shape.prompt_tokens + shape.action_dim)
    assumed = PlanAssumptions()
    per_token = (8 if config.policy.gradient_checkpointing else 6) * shape.parameters
    planned_rate = assumed.tflops * 1e12 / per_token
    planned = memory_estimate(dataclasses.replace(config, rl=dataclasses.replace(config.rl, enabled=False)), shape,
                              1, micro=batch)
    peak = torch.cuda.max_memory_allocated() if cuda else float("nan")
    return [f"{arch} ({device}, {dtype} weights, mixed precision {mixed}, gradient checkpointing, batch {batch} x "
            f"{shape.prompt_tokens + shape.action_dim} tokens): SFT step ({loss} loss) {sft_seconds:.1f} s, loss "
            f"{sft['train/loss']:.3f}; REINFORCE step {rl_seconds:.1f} s, loss {rl_loss:+.4f}",
            f"  training tokens/s: SFT {tokens / sft_seconds:,.0f} (first step, warm-up included); plan assumes "
            f"{planned_rate:,.0f} ({assumed.tflops:g} TFLOP/s)",
            f"  peak GPU memory: {_gib(peak) if cuda else 'n/a on CPU'}; plan's estimate for one process at "
            f"micro-batch {batch}: {_gib(planned['gpu'])}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "paper_simpler_openvla.yaml"))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the CI part)")
    parser.add_argument("--arch", default="openvla-7b", help="architecture of part 2 (tiny on a CPU)")
    parser.add_argument("--batch", type=int, default=2, help="samples per step in part 2")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here (use --device cpu --arch tiny for the CPU part)")
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    start = time.perf_counter()
    for line in smoke(args.device) + paper_architecture(args.config, args.arch, args.device, args.batch):
        print(line, flush=True)
    print(f"gpu_check: all steps ran in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
