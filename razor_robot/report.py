"""End-of-sweep report: frontier and KL plots, rollout videos of the best checkpoints, a text summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from razor_robot.acting import VLAActor
from razor_robot.experiment import SweepConfig, adapter_factory_for, load_for_training
from razor_robot.frontier import frontier_outputs
from razor_robot.rollout import EpisodeRequest
from razor_robot.sweep import read_records
from razor_robot.video import write_rollout_video


def completed_records(results: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(results) if r.get("status") != "failed"]


def best_checkpoint(records: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """Highest new-task success, then highest prior-task success."""
    own = [r for r in records if r["method"] == method]
    return max(own, key=lambda r: (r["new_task"], r["prior_task"])) if own else None


def write_videos(config: SweepConfig, records: list[dict[str, Any]], out_dir: Path, *,
                 progress: bool = True) -> list[Path]:
    """MP4s of the best SFT and best RL checkpoints on the new task and the first prior task."""
    _, positions = config.positions()
    episodes = config.report.video_episodes
    tasks = [config.eval.new_task] + list(config.eval.prior_tasks[:1])
    written = []
    with config.env_pool() as pool:
        for method in ("sft", "rl"):
            best = best_checkpoint(records, method)
            if best is None:
                continue
            spec = dataclasses.replace(config.inference_policy(), lora=None)
            policy = load_for_training(best["checkpoint"], spec)
            actor = VLAActor(policy, unnorm_key=config.unnorm_key, temperature=config.eval.temperature,
                             adapter_factory=adapter_factory_for(config.backend))
            for task in tasks:
                requests = [EpisodeRequest(task, config.eval.episode_seed + i,
                                           tuple(map(float, positions[i % len(positions)]))
                                           if task == config.eval.new_task else None) for i in range(episodes)]
                trajectories = pool.rollout(requests, actor, progress=False)
                label = f"{method} {task}"
                path = write_rollout_video(trajectories, out_dir / f"best-{method}-{task}.mp4",
                                           tile_size=config.report.video_tile, labels=[label] * len(trajectories))
                written.append(path)
    return written


def write_report(config: SweepConfig, results: Path, out_dir: Path, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> str:
    """Plots, Table 1, videos and ``summary.txt`` (which opens with the ``verdict:`` line); returns its text."""
    all_records = read_records(results)
    records = completed_records(results)
    failed = [r for r in all_records if r.get("status") == "failed"]
    lines = [frontier_outputs(records, out_dir), "",
             f"{config.name}: {len(records) - 1} fine-tuned checkpoints, {len(failed)} failed runs; "
             f"evaluation: {config.eval.plan()[2]}"]
    lines += [f"failed run {r['run_id']} ({r['hparams']}): {r['reason']}" for r in failed]
    if config.report.videos:
        videos = write_videos(config, records, out_dir, progress=progress)
        lines.append("videos: " + ", ".join(p.name for p in videos))
    text = "\n".join(lines).rstrip() + "\n"
    (out_dir / "summary.txt").write_text(text)
    log(text)
    return text
