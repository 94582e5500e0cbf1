"""SFT on the same demonstrations, before and after the dataset format changed to LeRobot v3.0: same weights?

Collects Meta-World pick-can demonstrations with the scripted expert, writes them with the previous format's
writer (``razor_robot/data.py`` at ``--rev``, read from git: steps.parquet + meta.json) and with today's LeRobot
v3.0 writer, reads each back with its own reader, trains the tiny policy with the same seed on each and compares
every tensor of the two trained policies bit for bit.

    python scripts/check_sft_format.py --rev 97fbdda
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def old_data_module(rev: str):
    """razor_robot/data.py as it was at ``rev`` (a revision before the house of issue 20, when the module
    lived there; its imports, razor_robot.rollout's episode types, are still exported by
    razor_robot.rollout)."""
    source = subprocess.run(["git", "show", f"{rev}:razor_robot/data.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "old_data.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_data"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="97fbdda", help="git revision of the previous format's writer")
    parser.add_argument("--grid", type=int, default=3, help="n x n grid of can positions, one demo each")
    parser.add_argument("--steps", type=int, default=30, help="SFT optimiser steps")
    args = parser.parse_args()

    from razor_robot.training.data import CollectionPlan, collect, load_dataset, save_dataset, trajectories_to_dataset
    from razor_robot.envs import grid_positions
    from razor_robot.policies import load_policy, make_demonstrator
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.rollout.demonstrator import DemonstratorPolicy
    from razor_robot.training.sft import SFTConfig, train_sft
    from razor_robot.training.optim import OptimConfig

    torch.set_num_threads(1)
    plan = CollectionPlan("pick-can", 1, grid_positions(args.grid), seed=0)
    kept = collect(plan, DemonstratorPolicy(functools.partial(make_demonstrator, "pick-can", "metaworld")),
                   num_workers=1, progress=False)
    demos = trajectories_to_dataset(kept.trajectories, kept.grid_index)
    old = old_data_module(args.rev)
    with tempfile.TemporaryDirectory() as tmp:
        old.save_dataset(old.DemoDataset(demos.images, demos.states, demos.actions, demos.instructions,
                                         demos.tasks, demos.episode_ids, demos.grid_index), Path(tmp, "old"))
        save_dataset(demos, Path(tmp, "new"))
        before, after = old.load_dataset(Path(tmp, "old")), load_dataset(Path(tmp, "new"))
        formats = sorted(p.name for p in Path(tmp, "old").iterdir()), sorted(
            str(p.relative_to(Path(tmp, "new"))) for p in Path(tmp, "new").rglob("*.*"))
    torch.manual_seed(0)
    start = load_policy("tiny", action_dim=4)
    start.set_norm_stats("demo", compute_norm_stats(demos.actions, [True, True, True, False]))
    config = SFTConfig(OptimConfig(learning_rate=1e-3, batch_size=16, warmup_steps=2), epochs=100,
                       max_steps=args.steps, checkpoints=1, shift_augment_px=2)
    states = []
    for data in (before, after):
        policy = copy.deepcopy(start)
        summary = train_sft(policy, data, config, unnorm_key="demo", progress=False)
        states.append(policy.state_dict())
        print(f"{type(data).__module__:18} {len(data)} steps of {len(np.unique(data.episode_ids))} episodes, "
              f"final loss {summary['train/loss']:.6f}, weights sha256 {digest(states[-1])}")
    print(f"previous format ({args.rev}): {formats[0]}; LeRobot v3.0: {formats[1]}")
    same = all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    moved = sum(not torch.equal(states[0][k], start.state_dict()[k]) for k in states[0])
    print(f"{len(states[0])} tensors ({moved} changed by training): "
          f"{'identical, bit for bit' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
