"""Stage: the end-of-sweep report: ``summary.txt`` opening with the verdict, the frontier and KL plots, Table
1, the forgetting meter's forecasts against the measurements, and rollout videos of the best checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from razor_robot.rollout.actor import VLAActor
from razor_robot.report.bases import by_base, pooled_verdict_lines, rereferenced
from razor_robot.experiment.schema import METHODS, SweepConfig
from razor_robot.report.summary import frontier_outputs
from razor_robot.measure.meter import fit_from_records, meter_summary
from razor_robot.io import atomic_path
from razor_robot.report.records import completed_records, read_records
from razor_robot.rollout.episodes import EpisodeRequest
from razor_robot.experiment.loading import adapter_factory_for, load_for_inference
from razor_robot.report.video import write_comparison_video, write_rollout_video


def best_checkpoint(records: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """Highest new-task success, then highest prior-task success (distill-sft distils RL's best by this
    rule)."""
    own = [r for r in records if r["method"] == method]
    return max(own, key=lambda r: (r["new_task"], r["prior_task"])) if own else None


def matched_pair(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The SFT and RL checkpoints closest in new-task success (ties: the higher success), or None."""
    sft = [r for r in records if r["method"] == "sft"]
    rl = [r for r in records if r["method"] == "rl"]
    if not sft or not rl:
        return None
    return min(((s, r) for s in sft for r in rl),
               key=lambda pair: (abs(pair[0]["new_task"] - pair[1]["new_task"]),
                                 -(pair[0]["new_task"] + pair[1]["new_task"])))


def _rate(record: dict[str, Any], key: str, name: str) -> str:
    if f"{key}/ci95" not in record:
        return f"{name} {record[key]:.1f}%"
    lo, hi = record[f"{key}/ci95"]
    return (f"{name} {record[key]:.1f}% ({record[f'{key}/successes']}/{record[f'{key}/n']}, "
            f"95% CI {lo:.1f}-{hi:.1f})")


def caption(record: dict[str, Any], config: SweepConfig) -> list[str]:
    """A checkpoint's caption: its run and step, its evaluated rates with episode counts and 95% intervals."""
    return [f"{record['method']}: {record['run_id']} step {record['step']}",
            _rate(record, "new_task", config.eval.new_task), _rate(record, "prior_task", "prior")]


def write_videos(config: SweepConfig, records: list[dict[str, Any]], out_dir: Path, *,
                 progress: bool = True) -> list[Path]:
    """MP4s of each method's best checkpoint on the new task and the first prior task, and ``sft-vs-rl.mp4``:
    SFT and RL at matched new-task success side by side on the same new-task episodes."""
    positions = config.plan.eval_positions
    episodes = config.report.video_episodes
    tasks = [config.eval.new_task] + list(config.eval.prior_tasks[:1])
    camera = ({"viewer_size": config.report.video_camera}
              if config.report.video_camera and config.backend == "metaworld" else None)
    def requests(task: str) -> list[EpisodeRequest]:
        return [EpisodeRequest(task, config.eval.episode_seed + i, tuple(map(float, positions[i % len(positions)]))
                               if task == config.eval.new_task else None, env_options=camera)
                for i in range(episodes)]

    def episodes_of(record: dict[str, Any], task: str, pool: Any) -> list[Any]:
        actor = VLAActor(load_for_inference(record["checkpoint"], config), unnorm_key=config.unnorm_key,
                         temperature=config.eval.temperature, adapter_factory=adapter_factory_for(config.backend))
        return pool.rollout(requests(task), actor, progress=False)

    written = []
    tile = config.report.video_tile
    with config.env_pool() as pool:
        for method in METHODS:
            best = best_checkpoint(records, method)
            if best is None:
                continue
            for task in tasks:
                trajectories = episodes_of(best, task, pool)
                label = f"{method} {task}"
                written.append(write_rollout_video(trajectories, out_dir / f"best-{method}-{task}.mp4",
                                                   tile_size=tile, labels=[label] * len(trajectories)))
        pair = matched_pair(records)
        if pair is not None:
            columns = [(caption(r, config), episodes_of(r, config.eval.new_task, pool)) for r in pair]
            written.append(write_comparison_video(columns, out_dir / "sft-vs-rl.mp4", tile_size=tile))
    return written


def write_report(config: SweepConfig, results: Path, out_dir: Path, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> str:
    """``summary.txt`` (opening with the ``verdict:`` line), the plots, Table 1, ``meter_fit.json`` and the
    videos; returns the summary text."""
    all_records = read_records(results)
    records = completed_records(results)
    failed = [r for r in all_records if r.get("status") == "failed"]
    groups = by_base(records)
    if len(groups) > 1:  # several bases: pooled verdicts first, fits over every base's checkpoints
        headline = pooled_verdict_lines(records)
        report = frontier_outputs(rereferenced(records), out_dir, headline=headline)
        per_base = "reports, plots and videos" if config.report.videos else "reports and plots"
        report += ("\n\nbases: " + ", ".join(groups) + f" (per-base {per_base} in their folders); "
                   "fits and Table 1 above pool every base's checkpoints, forgetting against each one's own base")
    else:
        report = frontier_outputs(records, out_dir)
    n_bases = len(groups)
    lines = [report, "", meter_summary(records),
             f"{config.name}: {len(records) - n_bases} fine-tuned checkpoints of {n_bases} base(s), "
             f"{len(failed)} failed runs; evaluation: {config.plan.counts.note}"]
    lines += [f"failed run {r['run_id']} ({r['hparams']}): {r['reason']}" for r in failed]
    fit = fit_from_records(records)
    if fit is not None:
        with atomic_path(out_dir / "meter_fit.json") as tmp:
            tmp.write_text(fit.to_json())
    if config.report.videos and n_bases == 1:
        videos = write_videos(config, records, out_dir, progress=progress)
        lines.append("videos: " + ", ".join(p.name for p in videos))
    text = "\n".join(lines).rstrip() + "\n"
    with atomic_path(out_dir / "summary.txt") as tmp:
        tmp.write_text(text)
    log(text)
    return text
