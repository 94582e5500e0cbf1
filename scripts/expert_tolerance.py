"""How precise must a pick-can policy be? The scripted expert with its actions binned, its view of the can shifted,
or noise on its actions (issue 18's ceiling: docs/benchmarks.md).

Runs the Meta-World pick-can expert in this process on the evaluation positions and prints its success with the
episode count and 95% Wilson interval for each variant:
- as is;
- every action through the policy's 256-bin action tokenizer and back (norm stats of the expert's own actions);
- the can's x, y in the expert's observation shifted by a fixed distance in a random direction per episode
  (a policy that misjudges the can's position by that much);
- Gaussian noise of a given std on every action (in the [-1, 1] action box).

    python scripts/expert_tolerance.py --episodes 64 --offsets 0.005 0.01 0.015 0.02 --noise 0.1 0.3
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=64, help="evaluation positions (eval_positions seed 0)")
    parser.add_argument("--offsets", type=float, nargs="*", default=[0.005, 0.01, 0.015, 0.02],
                        help="perceived can offsets in metres")
    parser.add_argument("--noise", type=float, nargs="*", default=[0.1, 0.3], help="action noise stds")
    args = parser.parse_args()
    if args.episodes < 1 or any(o < 0 for o in args.offsets) or any(s < 0 for s in args.noise):
        parser.error("need --episodes >= 1 and non-negative offsets and noise")

    from razor_robot.envs import eval_positions, make_env
    from razor_robot.policies.action_tokenizer import (ActionTokenizer, compute_norm_stats, normalize_actions,
                                                       unnormalize_actions)
    from razor_robot.policies.demonstrators import make_demonstrator
    from razor_robot.report.stats import rate_summary

    env = make_env("pick-can", "metaworld", image_size=64)
    positions = eval_positions(args.episodes, seed=0)
    tokenizer = ActionTokenizer(vocab_size=320)

    def run(offset: float = 0.0, stats: dict | None = None, noise: float = 0.0) -> tuple[list[int], np.ndarray]:
        rng = np.random.default_rng(0)
        outcomes, actions = [], []
        for i, xy in enumerate(positions):
            obs, _ = env.reset(seed=1000 + i, options={"object_xy": tuple(xy)})
            expert = make_demonstrator("pick-can", "metaworld")
            angle = rng.uniform(0, 2 * np.pi)
            shift = offset * np.array([np.cos(angle), np.sin(angle)])
            while True:
                state = obs["state"].copy()
                state[4:6] += shift  # Meta-World's state: the can's x, y at indices 4, 5
                action = expert.act({"state": state, "image": obs["image"]})
                actions.append(action.copy())
                if noise:
                    action = np.clip(action + rng.normal(0, noise, action.shape), -1, 1).astype(np.float32)
                if stats is not None:
                    binned = tokenizer.decode(tokenizer.encode(normalize_actions(action[None], stats)))
                    action = unnormalize_actions(binned, stats)[0].astype(np.float32)
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            outcomes.append(int(info["episode_success"]))
        return outcomes, np.asarray(actions)

    def line(label: str, outcomes: list[int]) -> None:
        rate = rate_summary(outcomes)
        print(f"{label}: {rate['rate']:.1f}% ({rate['successes']}/{rate['n']}, 95% CI {rate['ci95'][0]:.1f}-"
              f"{rate['ci95'][1]:.1f})", flush=True)

    outcomes, actions = run()
    line("expert", outcomes)
    stats = compute_norm_stats(actions, [True, True, True, False])  # the gripper stays un-normalised, as in pretraining
    line("actions binned (256 bins)", run(stats=stats)[0])
    for offset in args.offsets:
        line(f"can perceived {100 * offset:.1f} cm off", run(offset=offset)[0])
    for noise in args.noise:
        line(f"action noise std {noise}", run(noise=noise)[0])


if __name__ == "__main__":
    main()
