"""Pick-can success of checkpoints decoded four ways on the same episodes: is a greedy/sampled gap in the motion
tokens or in the gripper token?

    python scripts/decoding_gap.py CHECKPOINT [CHECKPOINT ...] [--positions 128] [--position-seed 7]

RL fine-tunes from sampled rollouts (T = 1) while evaluation decodes greedily (argmax per token, as OpenVLA's
``predict_action``), so a run can raise the one and lower the other (docs/benchmarks.md, session 14). Each
checkpoint runs on the same episodes (Meta-World pick-can, ``--positions`` can positions of ``--position-seed``,
episode seeds from 2,000,000: none of the sweep's) four times: greedy; sampled at T = 1; greedy motion tokens with
a sampled gripper token (the last); sampled motion tokens with a greedy gripper token. Every rate with its count
and 95% Wilson interval. A checkpoint is a directory or ``builtin:<name>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

DECODINGS = ("greedy", "sampled", "greedy motion, sampled gripper", "sampled motion, greedy gripper")


class GripperDecodedApart:
    """A policy whose last action token (the gripper) is decoded the other way from its motion tokens.

    Stands in for the policy inside a ``VLAActor`` at temperature 1 (which supplies the per-episode uniforms):
    with ``sampled_motion`` the motion tokens are sampled and the gripper is the argmax given them; without, the
    motion tokens are greedy and the gripper is sampled (inverse CDF) given them.
    """

    def __init__(self, policy: Any, sampled_motion: bool):
        self.policy = policy
        self.sampled_motion = sampled_motion

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def sample_actions(self, images, instructions, temperature, greedy_over, uniforms):
        offset = self.policy.action_token_offset
        if self.sampled_motion:
            tokens, logits = self.policy.sample_actions(images, instructions, temperature=1.0, uniforms=uniforms,
                                                        return_logits=True)  # (B, D), (B, D, 256)
            tokens[:, -1] = logits[:, -1].argmax(-1) + offset
            return tokens
        tokens, logits = self.policy.sample_actions(images, instructions, temperature=0.0, return_logits=True)
        cdf = torch.softmax(logits[:, -1].double(), -1).cumsum(-1)  # (B, 256)
        u = torch.as_tensor(uniforms[:, -1], dtype=torch.float64)[:, None]  # (B, 1)
        tokens[:, -1] = (cdf <= u).sum(-1).clamp(max=cdf.shape[-1] - 1) + offset
        return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint directories or builtin:<name>")
    parser.add_argument("--positions", type=int, default=128, help="pick-can episodes (can positions)")
    parser.add_argument("--position-seed", type=int, default=7, help="seed of the can positions")
    parser.add_argument("--workers", type=int, default=2, help="env worker processes")
    args = parser.parse_args()
    if args.positions < 1:
        parser.error("--positions must be >= 1")
    missing = [c for c in args.checkpoints if not c.startswith("builtin:") and not Path(c).is_dir()]
    if missing:
        parser.error(f"checkpoint not found: {', '.join(missing)}")

    from razor_robot.envs import eval_positions, position_ranges
    from razor_robot.experiment.loading import adapter_factory_for, load_for_training
    from razor_robot.experiment.plan import default_unnorm_key
    from razor_robot.experiment.schema import PolicySpec
    from razor_robot.measure.evaluation import EvalConfig, new_task_requests
    from razor_robot.report.stats import rate_summary
    from razor_robot.rollout.actor import VLAActor
    from razor_robot.rollout.pool import EnvPool

    x_range, y_range = position_ranges("metaworld")
    positions = eval_positions(args.positions, seed=args.position_seed, x_range=x_range, y_range=y_range,
                               backend="metaworld")
    config = EvalConfig(new_task_positions=args.positions, prior_tasks=(), prior_episodes=0,
                        position_seed=args.position_seed, episode_seed=2_000_000)
    requests = new_task_requests(config, positions)
    try:  # every checkpoint loads before any rollout
        policies = [load_for_training(c, PolicySpec()).eval() for c in args.checkpoints]
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print("| checkpoint | " + " | ".join(DECODINGS) + " |\n|---|" + "---|" * len(DECODINGS))
    with EnvPool("metaworld", {"image_size": 64}, num_workers=args.workers, envs_per_worker=32) as pool:
        for checkpoint, policy in zip(args.checkpoints, policies):
            cells = []
            for decoding in DECODINGS:
                decoded = policy if decoding in ("greedy", "sampled") else GripperDecodedApart(
                    policy, sampled_motion=decoding.startswith("sampled"))
                actor = VLAActor(decoded, unnorm_key=default_unnorm_key("metaworld"),
                                 temperature=0.0 if decoding == "greedy" else 1.0, seed=config.episode_seed,
                                 adapter_factory=adapter_factory_for("metaworld"))
                s = rate_summary([t.success for t in pool.rollout(requests, actor, progress=False)])
                cells.append(f"{s['rate']:.1f}% ({s['successes']}/{s['n']}, {s['ci95'][0]:.1f}-{s['ci95'][1]:.1f})")
            print(f"| {checkpoint} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
