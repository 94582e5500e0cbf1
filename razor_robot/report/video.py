"""Rollout videos: episodes tiled into a mosaic, each tile annotated with task, step and success.

Frames come from the video camera when the rollout kept one (Meta-World's ``viewer_size``: its own camera and
size, ``Trajectory.extras["viewer"]``), else from the policy's own observations.
:func:`write_comparison_video` puts checkpoints side by side on the same episodes, one column each under a
caption with its rates.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from razor_robot.io import atomic_path
from razor_robot.envs.core import VIEWER_KEY
from razor_robot.rollout.episodes import Trajectory

SUCCESS_COLOUR = (40, 200, 60)
FAILURE_COLOUR = (220, 40, 40)
TEXT_COLOUR = (255, 255, 255)


def annotate(frame: np.ndarray, lines: Sequence[str], tile_size: int, border: tuple[int, int, int] | None) -> np.ndarray:
    """Upscale ``frame`` (H, W, 3) to (tile_size, tile_size, 3) and draw ``lines`` over a dark band at the
    top."""
    image = Image.fromarray(frame).resize((tile_size, tile_size), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    line_height = 11
    draw.rectangle([0, 0, tile_size, line_height * len(lines) + 2], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((3, 1 + i * line_height), line, fill=TEXT_COLOUR, font=font)
    if border is not None:
        draw.rectangle([0, 0, tile_size - 1, tile_size - 1], outline=border, width=3)
    return np.asarray(image)


def mosaic(tiles: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized (S, S, 3) images row-major into a grid; empty cells are black."""
    rows = math.ceil(len(tiles) / columns)
    size = tiles[0].shape[0]
    canvas = np.zeros((rows * size, columns * size, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = tile
    return canvas


def episode_frames(trajectory: Trajectory, length: int, tile_size: int, label: str | None = None) -> list[np.ndarray]:
    """Annotated tiles for steps 0..length-1; an episode shorter than ``length`` holds its last frame."""
    frames = trajectory.extras.get(VIEWER_KEY, trajectory.images)  # (T, H, W, 3)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError("trajectory has no images; roll out with keep_images=True")
    horizon = len(frames)
    tiles = []
    for t in range(length):
        step = min(t, horizon - 1)
        succeeded = bool(trajectory.step_success[step - 1]) if step > 0 else False
        finished = t >= horizon - 1
        border = (SUCCESS_COLOUR if trajectory.success else FAILURE_COLOUR) if finished else None
        status = ("SUCCESS" if trajectory.success else "FAIL") if finished else ("success" if succeeded else "")
        lines = [label or trajectory.task, f"step {step + 1}/{horizon} {status}".rstrip()]
        tiles.append(annotate(frames[step], lines, tile_size, border))
    return tiles


def render_video_frames(trajectories: Sequence[Trajectory], tile_size: int = 256, columns: int | None = None,
                        labels: Sequence[str] | None = None, hold_last: int = 5) -> list[np.ndarray]:
    """Mosaic frames (one per step) of all ``trajectories``; the final frame is held ``hold_last`` extra
    times."""
    if not trajectories:
        raise ValueError("no trajectories to render")
    columns = columns or math.ceil(math.sqrt(len(trajectories)))
    length = max(len(t.extras.get(VIEWER_KEY, t.images)) for t in trajectories)
    per_episode = [episode_frames(t, length, tile_size, labels[i] if labels else None)
                   for i, t in enumerate(trajectories)]
    frames = [mosaic([tiles[t] for tiles in per_episode], columns) for t in range(length)]
    return frames + [frames[-1]] * hold_last


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 10) -> Path:
    """Write an H.264 MP4 atomically (razor_robot.io.atomic_path)."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".mp4") as tmp:
        # macro_block_size=16: tiles are multiples of 16 px, so ffmpeg never rescales.
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=16,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
    return path


def write_rollout_video(trajectories: Sequence[Trajectory], path: str | os.PathLike, fps: int = 10,
                        tile_size: int = 256, labels: Sequence[str] | None = None) -> Path:
    """One MP4 showing every trajectory side by side, annotated with task, step and success."""
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}")
    return write_video(render_video_frames(trajectories, tile_size, labels=labels), path, fps=fps)


CAPTION_LINE = 12
"""Pixel height of one caption line (PIL's default bitmap font is 11 px)."""


def caption_band(lines: Sequence[str], width: int, height: int) -> np.ndarray:
    """A black (height, width, 3) band with ``lines`` of white text."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * CAPTION_LINE), line, fill=TEXT_COLOUR, font=ImageFont.load_default())
    return np.asarray(image)


def render_comparison_frames(columns: Sequence[tuple[Sequence[str], Sequence[Trajectory]]], tile_size: int = 256,
                             hold_last: int = 5) -> list[np.ndarray]:
    """Side-by-side frames: one column per checkpoint (its caption lines above, its episodes stacked below),
    the same episodes in the same rows, every tile marked success or failure when its episode ends."""
    if not columns or any(not trajectories for _, trajectories in columns):
        raise ValueError("a comparison needs at least one checkpoint with episodes")
    rows = {len(trajectories) for _, trajectories in columns}
    if len(rows) != 1:
        raise ValueError(f"every checkpoint needs the same episodes, got {sorted(rows)} episodes")
    lines = max(len(caption) for caption, _ in columns)
    band = -(-(lines * CAPTION_LINE + 4) // 16) * 16  # a multiple of 16: ffmpeg never rescales
    length = max(len(t.extras.get(VIEWER_KEY, t.images)) for _, ts in columns for t in ts)
    stacks = []
    for caption, trajectories in columns:
        tiles = [episode_frames(t, length, tile_size, f"{t.task} seed {t.seed}") for t in trajectories]
        head = caption_band(caption, tile_size, band)
        stacks.append([np.concatenate([head] + [tiles[r][step] for r in range(len(tiles))]) for step in range(length)])
    frames = [np.concatenate([stack[step] for stack in stacks], axis=1) for step in range(length)]
    return frames + [frames[-1]] * hold_last


def write_comparison_video(columns: Sequence[tuple[Sequence[str], Sequence[Trajectory]]],
                           path: str | os.PathLike, fps: int = 10, tile_size: int = 256) -> Path:
    """One MP4 of checkpoints side by side on the same episodes (see :func:`render_comparison_frames`)."""
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}")
    return write_video(render_comparison_frames(columns, tile_size), path, fps=fps)
