"""How far can SFT take this policy on the new task? (issue 18's ceiling measurement)

SFT from scratch on plentiful new-task demonstrations at uniform random can positions (forgetting ignored: no
prior-task data), greedy evaluation on the config's evaluation positions after every checkpoint. Prints each
checkpoint's new-task success with its episode count and 95% Wilson interval, the demonstrations' count and the
training time, so the ceiling of a policy/env setting can be compared with another's in one line each.

    python scripts/ceiling.py configs/quickstart.yaml --demos 640 --epochs 8 --checkpoints 4
    python scripts/ceiling.py configs/quickstart.yaml --demos 640 --set policy.overrides.patch_size=8
    python scripts/ceiling.py configs/quickstart.yaml --demos 640 --schedule cosine
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--demos", type=int, default=640, help="new-task demonstrations (one per random position)")
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="constant", help="learning-rate schedule after warmup: constant, cosine")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7_000_000, help="first demonstration seed (disjoint from eval)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    if args.demos < 2 or args.epochs <= 0 or args.checkpoints < 1:
        parser.error("need --demos >= 2, --epochs > 0, --checkpoints >= 1")

    from razor_robot.cli import _load_config
    from razor_robot.envs import eval_positions, position_ranges
    from razor_robot.policies.action_tokenizer import compute_norm_stats
    from razor_robot.training.sft import SFTConfig, train_sft
    from razor_robot.experiment.stages.demos import collect_demos
    from razor_robot.experiment.loading import adapter_factory_for, load_for_training
    from razor_robot.measure.evaluation import evaluate_policy
    from razor_robot.config import from_dict
    from razor_robot.report.stats import rate_summary

    config = _load_config(args.config, args.set)
    x_range, y_range = position_ranges(config.backend, config.position_range)
    points = eval_positions(args.demos, seed=args.seed, x_range=x_range, y_range=y_range, backend=config.backend)
    eval_cfg = dataclasses.replace(config.eval, prior_tasks=())
    positions = config.plan.eval_positions
    with config.env_pool() as pool:
        start = time.perf_counter()
        data, _ = collect_demos(config, config.eval.new_task, points, 1, args.seed, pool)
        print(f"demos: {len(data)} steps of {args.demos} episodes in {time.perf_counter() - start:.0f} s", flush=True)
        pool.release()
        policy = load_for_training(config.policy.name, dataclasses.replace(config.policy, lora=None),
                                   action_dim=int(data.actions.shape[1]))
        mask = [True] * (data.actions.shape[1] - 1) + [False]
        policy.set_norm_stats(config.unnorm_key, compute_norm_stats(data.actions, mask))
        sft = from_dict(SFTConfig, {
            "optim": {"learning_rate": args.lr, "batch_size": args.batch_size, "warmup_steps": 100,
                      "schedule": args.schedule},
            "epochs": args.epochs, "checkpoints": args.checkpoints, "label_sigma_bins": 1.5,
            "shift_augment_px": 4}, "ceiling")
        start = time.perf_counter()

        def evaluate(step: int, fraction: float, model) -> None:
            trained = time.perf_counter() - start
            scores, _ = evaluate_policy(policy, positions, eval_cfg, pool, unnorm_key=config.unnorm_key,
                                        adapter_factory=adapter_factory_for(config.backend), progress=False)
            pool.release()
            rate = rate_summary(scores["episodes"][config.eval.new_task])
            print(f"step {step} ({fraction:.2f} of training, {trained:.0f} s): {config.eval.new_task} "
                  f"{rate['rate']:.1f}% ({rate['successes']}/{rate['n']}, 95% CI {rate['ci95'][0]:.1f}-"
                  f"{rate['ci95'][1]:.1f})", flush=True)

        train_sft(policy, data, sft, unnorm_key=config.unnorm_key, on_checkpoint=evaluate, progress=False)


if __name__ == "__main__":
    main()
