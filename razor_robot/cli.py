"""``razor-robot``: plan, pretrain, collect, train, eval, sweep, frontier, video.

Every sub-command validates its input first and reports bad input as one line (exit code 2); set
RAZOR_ROBOT_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

EXAMPLES = """examples:
  razor-robot plan configs/paper_simpler_openvla.yaml
  razor-robot sweep configs/quickstart.yaml --out runs/quickstart
  razor-robot frontier runs/quickstart/results.jsonl --out runs/quickstart
  razor-robot video --task pick-can --policy scripted --episodes 4 --out pick-can.mp4
"""


def _parse_set(items: Sequence[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), yaml.safe_load(value)))
    return pairs


def _load_config(path: str, overrides: Sequence[str] = ()):
    from razor_robot.config import from_dict, set_dotted
    from razor_robot.experiment.schema import SweepConfig

    from razor_robot.config import ConfigError

    if not Path(path).exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(os.path.expandvars(Path(path).read_text())) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    for key, value in _parse_set(overrides):
        data = set_dotted(data, key, value)
    return from_dict(SweepConfig, data, Path(path).stem)


# ---------------------------------------------------------------------------------------------- commands


def cmd_sweep(args: argparse.Namespace) -> None:
    from razor_robot.rollout.pool import ROLLOUT_TOTALS
    from razor_robot.experiment.stages.report import write_report
    from razor_robot.experiment.sweep import run_sweep

    overrides = list(args.set) + ([f"engine={args.engine}"] if args.engine else [])
    config = _load_config(args.config, overrides)
    out = Path(args.out or Path("runs") / config.name)
    results = run_sweep(config, out, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch` the main process alone writes the report
        return
    bases = config.bases()
    if len(bases) > 1:  # each base's own report (videos of the first base only), then the pooled one
        for index, (label, single) in enumerate(bases):
            report = dataclasses.replace(single.report, videos=single.report.videos and index == 0)
            write_report(dataclasses.replace(single, report=report), out / label / "results.jsonl", out / label,
                         progress=not args.no_progress, log=lambda text: None)
    write_report(config, results, out, progress=not args.no_progress)
    print(ROLLOUT_TOTALS.line())


def cmd_train(args: argparse.Namespace) -> None:
    """One run = a sweep holding only this method, with an empty grid."""
    from razor_robot.experiment.stages.report import write_report
    from razor_robot.experiment.sweep import run_sweep

    key = args.method.replace("-", "_")
    if args.demos is not None:
        if args.method != "sft":
            raise ValueError(f"--demos is the SFT arm's data; {args.method} does not train on demonstrations")
        if not Path(args.demos).is_dir():
            raise FileNotFoundError(f"--demos: no directory {args.demos}")
    others = [m for m in ("sft", "rl", "oracle_sft", "distill_sft") if m != key]
    demos = [f"demos.path={json.dumps(str(Path(args.demos).resolve()))}"] if args.demos else []
    overrides = (list(args.set) + demos + [f"{other}.enabled=false" for other in others]
                 + [f"{key}.enabled=true", f"{key}.grid={{}}"])
    config = _load_config(args.config, overrides)
    out = Path(args.out or Path("runs") / f"{config.name}-{args.method}")
    results = run_sweep(config, out, progress=not args.no_progress)
    config.report.videos = False
    write_report(config, results, out, progress=not args.no_progress)


def cmd_pretrain(args: argparse.Namespace) -> None:
    """Build every base of the config from its recipe (a shipped base named by base.checkpoint is rebuilt,
    not loaded), evaluate it, and with --ship copy it into the package's shipped bases with its card."""
    from razor_robot.experiment.stages.base import base_checkpoint, base_evaluation, ship_base

    config = _load_config(args.config, args.set)
    if args.ship is not None and (not args.ship.strip() or "/" in args.ship or args.ship.startswith(".")):
        raise ValueError(f"--ship needs a plain folder name, e.g. tiny-metaworld-s{{seed}}, got {args.ship!r}")
    bases = config.bases()
    if args.ship and len(bases) > 1 and "{seed}" not in args.ship:
        raise ValueError(f"--ship {args.ship!r} names one base for {len(bases)} seeds: put {{seed}} in it")
    out_root = Path(args.out or Path("runs") / config.name)
    for label, single in bases:
        out = out_root / label if label else out_root
        with single.env_pool() as pool:  # from the recipe (or its cache), never the named checkpoint
            base_dir = base_checkpoint(single, pool, progress=not args.no_progress, rebuild=True)
            scores = base_evaluation(single, base_dir, out, pool, progress=not args.no_progress).scores()
        summary = {k: v for k, v in scores.items() if k not in ("per_position", "episodes")}
        shipped = {}
        if args.ship:
            seed = label[len("base-s"):] if label else ""
            shipped = {"shipped": str(ship_base(single, base_dir, scores, args.ship.replace("{seed}", seed)))}
        print(json.dumps({"base": label or "base", "base_checkpoint": str(base_dir), **shipped, **summary},
                         indent=2))


def cmd_collect(args: argparse.Namespace) -> None:
    from razor_robot.training.data import save_dataset
    from razor_robot.experiment.stages.demos import collect_demos
    from razor_robot.policies.action_tokenizer import compute_norm_stats

    config = _load_config(args.config, args.set)
    task = args.task or config.eval.new_task
    positions = config.plan.grid if task == config.eval.new_task else None
    with config.env_pool() as pool:
        dataset, cached = collect_demos(config, task, positions, config.demos.episodes_per_point, config.demos.seed,
                                        pool, progress=not args.no_progress)
    dataset.meta["norm_stats"] = {config.unnorm_key: _jsonable(compute_norm_stats(dataset.actions))}
    out = save_dataset(dataset, args.out)
    shortfall = dataset.meta.get("shortfall_per_point", {})
    print(f"{dataset.meta.get('n_episodes', '?')} episodes, {len(dataset)} steps -> {out} "
          f"(cache {cached}); grid points short of K: {len(shortfall)} {shortfall or ''}".rstrip())


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def cmd_eval(args: argparse.Namespace) -> None:
    from razor_robot.measure.evaluation import evaluate_policy, forgetting_fields
    from razor_robot.experiment.stages.base import base_checkpoint, base_evaluation
    from razor_robot.experiment.stages.evaluate import FixedSets, checkpoint_measurements
    from razor_robot.experiment.loading import adapter_factory_for, load_for_inference

    config = _load_config(args.config, args.set)
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    policy = load_for_inference(args.checkpoint, config)
    with config.env_pool() as pool:
        scores, _ = evaluate_policy(policy, config.plan.eval_positions, config.eval, pool,
                                    unnorm_key=config.unnorm_key, adapter_factory=adapter_factory_for(config.backend),
                                    progress=not args.no_progress)
        if not args.no_kl:  # distances, predictors and forgetting against the base (evaluated once, cached)
            out_dir = Path(args.out).parent if args.out else Path("runs") / config.name
            base_dir = base_checkpoint(config, pool, progress=not args.no_progress)
            base = base_evaluation(config, base_dir, out_dir, pool, progress=not args.no_progress)
            scores.update(forgetting_fields(base.scores()["episodes"], scores["episodes"], config.eval.prior_tasks))
            base_policy = load_for_inference(str(base_dir), config).eval()
            scores.update(checkpoint_measurements(config, policy, base_policy, FixedSets(base), seed=0))
    from razor_robot.io import dumps_strict

    text = dumps_strict(scores, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(f"evaluation: {config.plan.counts.note}")
    print(dumps_strict({k: v for k, v in scores.items() if k not in ("per_position", "episodes")}, indent=2))


def cmd_plan(args: argparse.Namespace) -> None:
    from razor_robot.experiment.cost import PlanAssumptions, plan_text

    assume = PlanAssumptions(tflops=args.tflops, processes=args.gpus, demonstrator_success=args.demonstrator_success)
    print(plan_text(_load_config(args.config, args.set), assume))


def cmd_frontier(args: argparse.Namespace) -> None:
    from razor_robot.report.summary import frontier_report

    if not Path(args.results).exists():
        raise FileNotFoundError(f"results file not found: {args.results}")
    out = Path(args.out or Path(args.results).parent)
    out.mkdir(parents=True, exist_ok=True)
    print(frontier_report(args.results, out, scale=args.scale, tolerance=args.tolerance))


def cmd_video(args: argparse.Namespace) -> None:
    from razor_robot.envs import require_backend, task_spec
    from razor_robot.rollout.demonstrator import DemonstratorPolicy
    from razor_robot.rollout.pool import rollout
    from razor_robot.report.video import write_rollout_video

    task_spec(args.task, args.backend)  # one-line error on an unknown task/backend
    require_backend(args.backend)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.tile % 16:
        raise ValueError(f"--tile must be a multiple of 16, got {args.tile}")
    for checkpoint in args.checkpoint:
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"--checkpoint: not found: {checkpoint}")
    if args.camera_size and args.backend != "metaworld":
        raise ValueError("--camera-size is a Meta-World camera; pass --camera-size 0 for the simpler backend")
    if args.checkpoint:
        return _comparison_video(args)
    if args.policy == "scripted":
        import functools

        from razor_robot.policies import make_demonstrator

        make_demonstrator(args.task, args.backend)
        policy: Any = DemonstratorPolicy(functools.partial(make_demonstrator, args.task, args.backend))
    else:
        if not Path(args.policy).exists():
            raise FileNotFoundError(f"--policy: checkpoint not found: {args.policy} (or use 'scripted')")
        policy = _checkpoint_actor(args, args.policy)
    trajectories = rollout(_video_requests(args), policy, backend=args.backend,
                           env_options=_video_env_options(args), num_workers=args.workers,
                           progress=not args.no_progress)
    path = write_rollout_video(trajectories, args.out, fps=args.fps, tile_size=args.tile)
    successes = sum(t.success for t in trajectories)
    print(f"{path}: {len(trajectories)} episodes of {args.task}, {successes} successful")


def _video_env_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"image_size": args.image_size, **({"viewer_size": args.camera_size} if args.camera_size else {})}


def _checkpoint_actor(args: argparse.Namespace, checkpoint: str) -> Any:
    """A checkpoint as the video's BatchPolicy, with the backend's action statistics unless --unnorm-key."""
    from razor_robot.experiment.loading import adapter_factory_for, load_for_training
    from razor_robot.experiment.plan import default_unnorm_key
    from razor_robot.experiment.schema import PolicySpec
    from razor_robot.rollout.actor import VLAActor

    return VLAActor(load_for_training(checkpoint, PolicySpec()),
                    unnorm_key=args.unnorm_key or default_unnorm_key(args.backend),
                    temperature=args.temperature, seed=args.seed, adapter_factory=adapter_factory_for(args.backend))


def _video_requests(args: argparse.Namespace) -> list[Any]:
    from razor_robot.envs import eval_positions, position_ranges
    from razor_robot.rollout.episodes import EpisodeRequest

    xy = None
    if args.task == "pick-can":
        x_range, y_range = position_ranges(args.backend)
        xy = eval_positions(args.episodes, seed=args.seed, x_range=x_range, y_range=y_range, backend=args.backend)
    return [EpisodeRequest(args.task, args.seed + i, None if xy is None else tuple(map(float, xy[i])))
            for i in range(args.episodes)]


def _comparison_video(args: argparse.Namespace) -> None:
    """Checkpoints side by side on the same episodes, each captioned with its success on them (count, 95% CI)."""
    from razor_robot.report.stats import wilson_interval
    from razor_robot.report.video import write_comparison_video
    from razor_robot.rollout.pool import EnvPool

    requests = _video_requests(args)
    columns = []
    with EnvPool(args.backend, _video_env_options(args), num_workers=args.workers) as pool:
        for checkpoint in args.checkpoint:
            actor = _checkpoint_actor(args, checkpoint)
            trajectories = pool.rollout(requests, actor, progress=not args.no_progress)
            k, n = sum(t.success for t in trajectories), len(trajectories)
            lo, hi = wilson_interval(k, n)
            rate = f"{args.task} {100 * k / n:.1f}% ({k}/{n}, 95% CI {100 * lo:.1f}-{100 * hi:.1f})"
            name = Path(checkpoint).resolve()
            columns.append(([f"{name.parent.name}/{name.name}", rate], trajectories))
            print(f"{checkpoint}: {rate}")
    path = write_comparison_video(columns, args.out, fps=args.fps, tile_size=args.tile)
    print(f"{path}: {len(columns)} checkpoints side by side on the same {len(requests)} episodes")


# ------------------------------------------------------------------------------------------------ parser


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The ``video`` command's options."""
    p.add_argument("--task", required=True, help="pick-can, open-drawer or close-drawer")
    p.add_argument("--policy", default="scripted", help="'scripted' (expert) or a checkpoint directory")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="repeat for a side-by-side video of checkpoints on the same episodes (replaces --policy)")
    p.add_argument("--camera-size", type=int, default=256,
                   help="Meta-World: the video's own camera at this size (the policy's input is unchanged); "
                   "0 shows the policy's frames")
    p.add_argument("--backend", default="metaworld", help="metaworld (default) or simpler")
    p.add_argument("--episodes", type=int, default=4, help="episodes in the mosaic")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--image-size", type=int, default=64, help="the policy's camera size in pixels (its input)")
    p.add_argument("--tile", type=int, default=256, help="tile size of each episode in the video")
    p.add_argument("--fps", type=int, default=10, help="frames per second")
    p.add_argument("--seed", type=int, default=0, help="episode seed (and eval-position seed)")
    p.add_argument("--workers", type=int, default=2, help="parallel env workers")
    p.add_argument("--temperature", type=float, default=0.0, help="decoding temperature for checkpoints")
    p.add_argument("--unnorm-key", help="action statistics key of a checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="razor-robot", description="Measure what fine-tuning costs a robot policy (RL's Razor): SFT vs RL "
        "sweeps, forgetting on prior tasks, action-token KL.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if config:
            p.add_argument("config", help="experiment YAML (e.g. configs/quickstart.yaml)")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value by dotted key, e.g. --set sft.config.epochs=2")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        return p

    p = add("sweep", "Run (or resume) a whole sweep: base, SFT and RL runs, evaluation, KL, plots, videos, "
            "summary.", cmd_sweep)
    p.add_argument("--out", help="output directory (default runs/<config name>)")
    p.add_argument("--engine", choices=["local", "ray"], help="override the config's engine")

    p = add("train", "Fine-tune the base with one method (the config's settings and --set overrides), "
            "evaluating each checkpoint.", cmd_train, config=False)
    p.add_argument("method", choices=["sft", "rl", "oracle-sft"],
                   help="sft (demonstrations), rl (REINFORCE) or oracle-sft (SFT on the base's own successes)")
    p.add_argument("config", help="experiment YAML (e.g. configs/quickstart.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. --set sft.config.optim.learning_rate=1e-4")
    p.add_argument("--out", help="output directory (default runs/<config name>-<method>)")
    p.add_argument("--demos", metavar="DIR", help="sft: train on this LeRobot v3.0 dataset (the package's own or "
                   "a foreign one; sets demos.path) instead of collecting demonstrations")

    p = add("pretrain", "Build (or reuse from cache) the base policy from its recipe (base.pretrain), also when "
            "base.checkpoint names a shipped base, and report its new- and prior-task success.", cmd_pretrain)
    p.add_argument("--out", help="where the base evaluation is cached (default runs/<config name>)")
    p.add_argument("--ship", metavar="NAME", help="rebuild from the recipe and ship the base(s) with the package as "
                   "builtin:NAME ({seed} in NAME for base.seeds), with a card")

    p = add("plan", "Before any work: runs, episodes per stage, optimiser steps, checkpoints and disk, memory "
            "per process and GPU-hours of a sweep (no simulator, no weights).", cmd_plan)
    p.add_argument("--tflops", type=float, default=400.0, help="sustained bf16 TFLOP/s per GPU (default 400)")
    p.add_argument("--gpus", type=int, help="processes sharing training (default: 8 under ddp/fsdp, else 1)")
    p.add_argument("--demonstrator-success", type=float, default=1.0,
                   help="fraction of demonstrator attempts that succeed (default 1)")

    p = add("collect", "Collect K successful demonstrations per training-grid point into a LeRobot v3.0 dataset.",
            cmd_collect)
    p.add_argument("--task", help="task to demonstrate (default: the new task)")
    p.add_argument("--out", required=True, help="dataset directory (LeRobotDataset v3.0: meta/, data/)")

    p = add("eval", "Evaluate a checkpoint: new-task success on the eval positions, prior-task success, "
            "per-position map and action-token distances to the base.", cmd_eval)
    p.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    p.add_argument("--out", help="write the full JSON (with the per-position map) here")
    p.add_argument("--no-kl", action="store_true", help="skip the distances to the base")

    p = add("frontier", "Pareto frontier, exponential fits and forgetting-vs-KL fit from results.jsonl.",
            cmd_frontier, config=False)
    p.add_argument("results", help="results.jsonl (records with method, new_task, prior_task, kl, ...)")
    p.add_argument("--out", help="directory for frontier.png and kl_forgetting.png (default: beside results)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply scores (100 if they are fractions)")
    p.add_argument("--tolerance", type=float, default=2.0, help="points from the frontier to keep (default 2)")

    add_video_arguments(add("video", "Roll out a policy and write an annotated MP4 mosaic of the episodes.",
                            cmd_video, config=False))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError, KeyError) as error:
        if os.environ.get("RAZOR_ROBOT_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"razor-robot {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
