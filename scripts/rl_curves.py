"""Learning curves of on-policy RL runs, to choose the embedded configs' RL update (issue 18).

Reads a sweep directory's ``runs/<run_id>/metrics.jsonl`` and ``results.jsonl`` and prints, per RL run, its
update (variant, learning rate, optimiser steps per iteration, passes per batch, seed), its rollout success per
iteration (sampled episodes, with counts) and the rule's score: the pooled rollout success of its last
``--last`` iterations with a 95% Wilson interval. Candidates are then ranked by the mean of that score over
their seeds, at equal episode budgets (the script refuses runs whose budgets differ).

    razor-robot train rl configs/quickstart.yaml --out runs/rl-select --set seeds=[0,1] --set rl.config.lr=...
    python scripts/rl_curves.py runs/rl-select --last 4
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="output directory of `razor-robot train rl` / `sweep`")
    parser.add_argument("--last", type=int, default=4, help="iterations at the end that score a run")
    args = parser.parse_args()
    root = Path(args.sweep_dir)
    results = root / "results.jsonl"
    if not results.is_file():
        parser.error(f"no results.jsonl in {root}")
    if args.last < 1:
        parser.error("--last must be >= 1")

    from razor_robot.report.stats import rate_summary

    configs = {}  # run_id -> first record (the run's checkpoints share it)
    for line in results.read_text().splitlines():
        record = json.loads(line)
        if record.get("method") == "rl" and record.get("run_id") not in configs:
            configs[record["run_id"]] = record
    candidates: dict[str, list[tuple[int, float]]] = defaultdict(list)  # update -> [(seed, last success)]
    budgets = set()
    for run_id in sorted(configs):
        path = root / "runs" / run_id / "metrics.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        iterations = [r for r in rows if "rl/success" in r]
        if not iterations:
            continue
        saved = root / "runs" / run_id / "config.json"
        if not saved.is_file() or "rl/episodes" not in iterations[0]:
            print(f"{run_id}: no config.json or episode counts (an older run); skipped")
            continue
        run = json.loads(saved.read_text())
        label = _label(run["config"])
        curve = " ".join(f"{100 * r['rl/success']:.0f}" for r in iterations)
        print(f"{run_id} [{label}, seed {run['seed']}]: rollout success % by iteration ({iterations[0]['rl/episodes']} "
              f"episodes each): {curve}")
        last = iterations[-args.last:]
        successes, episodes = sum(r["rl/successes"] for r in last), sum(r["rl/episodes"] for r in last)
        rate = rate_summary([1] * successes + [0] * (episodes - successes))
        print(f"    last {len(last)} iterations: {rate['rate']:.1f}% ({successes}/{episodes}, 95% CI "
              f"{rate['ci95'][0]:.1f}-{rate['ci95'][1]:.1f}); episodes spent {sum(r['rl/episodes'] for r in iterations)}")
        budgets.add(sum(r["rl/episodes"] for r in iterations))
        candidates[label].append((run["seed"], successes / episodes))
    if len(budgets) > 1:
        raise SystemExit(f"runs spent different episode budgets {sorted(budgets)}: not comparable")
    print("\ncandidates by mean last-iterations rollout success over seeds:")
    ranked = sorted(candidates.items(), key=lambda kv: -sum(s for _, s in kv[1]) / len(kv[1]))
    for label, scores in ranked:
        mean = 100 * sum(s for _, s in scores) / len(scores)
        seeds = ", ".join(f"seed {seed}: {100 * s:.1f}" for seed, s in sorted(scores))
        print(f"  {mean:5.1f}%  {label}  ({seeds})")


def _label(rl: dict) -> str:
    """The update a run used: variant, learning rate, optimiser steps per iteration, passes per batch."""
    steps = rl["optimizer_steps_per_iteration"]
    return (f"{rl['variant']}, lr {rl['optim']['learning_rate']:g}, "
            f"steps/iter {'paper (batch %d)' % rl['optim']['batch_size'] if steps is None else steps}, "
            f"passes {rl['epochs_per_batch']}")


if __name__ == "__main__":
    main()
