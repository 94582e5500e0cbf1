"""Backend-independent task definitions: task specs, object-position ranges, training/eval position sets.

Nothing here imports a simulator: this module must import and run under gymnasium 0.29 + numpy 1.x (the
SimplerEnv world) as well as gymnasium 1.x + numpy 2.x (the Meta-World world).

Coordinates are the backend's own world frame in metres: SimplerEnv's Google-Robot table frame for
"simpler", Meta-World's table frame (robot base at the origin, table centre at y=0.6) for "metaworld".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

TASKS: Tuple[str, ...] = ("pick-can", "open-drawer", "close-drawer")
NEW_TASK = "pick-can"
PRIOR_TASKS: Tuple[str, ...] = ("open-drawer", "close-drawer")
BACKENDS: Tuple[str, ...] = ("metaworld", "simpler")
SUCCESS_MODES: Tuple[str, ...] = ("final", "any")

INSTRUCTIONS: Dict[str, str] = {
    "pick-can": "pick coke can",
    "open-drawer": "open drawer",
    "close-drawer": "close drawer",
}

# Fixed episode lengths in policy steps. SimplerEnv: the paper's horizons (80 for the can, 113 for drawers).
# Meta-World: each policy step repeats the action for METAWORLD_ACTION_REPEAT[task] physics control steps;
# the horizons are the smallest that leave the scripted experts slack on every eval position / seed
# (measured with scripts/bench_envs.py --experts; see the backend docstring for the numbers).
HORIZONS: Dict[Tuple[str, str], int] = {
    ("simpler", "pick-can"): 80,
    ("simpler", "open-drawer"): 113,
    ("simpler", "close-drawer"): 113,
    ("metaworld", "pick-can"): 30,
    ("metaworld", "open-drawer"): 30,
    ("metaworld", "close-drawer"): 30,
}
METAWORLD_ACTION_REPEAT: Dict[str, int] = {"pick-can": 4, "open-drawer": 4, "close-drawer": 4}

ACTION_DIMS: Dict[str, int] = {
    "metaworld": 4,  # (dx, dy, dz, gripper effort), each in [-1, 1]
    "simpler": 7,  # Google Robot: (dx, dy, dz, droll, dpitch, dyaw, gripper)
}

Range = Tuple[float, float]

# Can-position rectangles per (backend, name). "default" is what every function uses unless told otherwise.
# simpler/"paper-printed" is the x-range as printed in the RL's Razor paper (x up to +0.12), which reaches
# beyond the table area that SimplerEnv's own evaluation grid covers.
# metaworld/"default": the table rectangle in front of the robot where the scripted expert reliably lifts
# the can (checked on 100 eval positions, see scripts/bench_envs.py --experts).
POSITION_RANGES: Dict[Tuple[str, str], Tuple[Range, Range]] = {
    ("simpler", "default"): ((-0.35, -0.12), (-0.02, 0.42)),
    ("simpler", "paper-printed"): ((-0.35, 0.12), (-0.02, 0.42)),
    ("metaworld", "default"): ((-0.15, 0.15), (0.55, 0.75)),
}

VIEWER_KEY = "viewer"
"""Observation key of a video camera's frame (Meta-World's ``viewer_size``): rollouts keep it for videos, and
policies never see it."""


class MissingDependencyError(ImportError):
    """An optional backend's package is not installed; the message says how to install it."""

    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"{package} is not installed; {hint}")
        self.package = package
        self.hint = hint


@dataclass(frozen=True)
class TaskSpec:
    """Everything a caller needs to know about one task on one backend."""

    task: str
    """Task name, one of TASKS."""
    backend: str
    """Simulator backend, one of BACKENDS."""
    instruction: str
    """Language instruction given to the policy."""
    horizon: int
    """Fixed episode length in policy steps; the env truncates at this step."""
    action_dim: int
    """Length of the action vector the env's step() takes."""
    x_range: Range
    """(low, high) of the can's x position (the backend's default range; used by pick-can only)."""
    y_range: Range
    """(low, high) of the can's y position (the backend's default range; used by pick-can only)."""


def check_task(task: str) -> str:
    """Return task unchanged, or raise a one-line ValueError naming the valid tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def check_backend(backend: str) -> str:
    """Return backend unchanged, or raise a one-line ValueError naming the valid backends."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


def check_success_mode(success_mode: str) -> str:
    """Return success_mode unchanged, or raise a one-line ValueError."""
    if success_mode not in SUCCESS_MODES:
        raise ValueError(f"unknown success_mode {success_mode!r}; expected one of {', '.join(SUCCESS_MODES)}")
    return success_mode


def check_image_size(image_size: Any) -> int:
    """Return image_size as int, or raise a one-line ValueError (must be an int in [16, 1024])."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if not 16 <= int(image_size) <= 1024:
        raise ValueError(f"image_size must be in [16, 1024], got {image_size}")
    return int(image_size)


def position_ranges(backend: str = "metaworld", name: str = "default") -> Tuple[Range, Range]:
    """(x_range, y_range) of the named can-position rectangle of a backend."""
    check_backend(backend)
    if (backend, name) not in POSITION_RANGES:
        names = sorted(n for b, n in POSITION_RANGES if b == backend)
        raise ValueError(f"unknown position range {name!r} for backend {backend!r}; expected one of {names}")
    return POSITION_RANGES[(backend, name)]


def task_spec(task: str, backend: str = "metaworld") -> TaskSpec:
    """The TaskSpec of a task on a backend."""
    check_task(task)
    check_backend(backend)
    x_range, y_range = position_ranges(backend)
    return TaskSpec(
        task=task,
        backend=backend,
        instruction=INSTRUCTIONS[task],
        horizon=HORIZONS[(backend, task)],
        action_dim=ACTION_DIMS[backend],
        x_range=x_range,
        y_range=y_range,
    )


def _check_range(name: str, value: Sequence[float]) -> Range:
    """A (low, high) pair of finite floats with low < high, else a one-line ValueError."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"{name} must satisfy low < high (finite), got {value!r}")
    return low, high


def _resolve_ranges(
    x_range: Optional[Sequence[float]], y_range: Optional[Sequence[float]], backend: str, ranges: str
) -> Tuple[Range, Range]:
    """Explicit ranges win; missing ones come from the backend's named rectangle."""
    default_x, default_y = position_ranges(backend, ranges)
    x = _check_range("x_range", default_x if x_range is None else x_range)
    y = _check_range("y_range", default_y if y_range is None else y_range)
    return x, y


def _check_count(name: str, n: Any, minimum: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")
    return int(n)


def grid_positions(
    n: int = 10,
    x_range: Optional[Sequence[float]] = None,
    y_range: Optional[Sequence[float]] = None,
    backend: str = "metaworld",
    *,
    ranges: str = "default",
) -> np.ndarray:
    """The n x n training grid of can positions, (n*n, 2) float64, x-major; corners lie on the range ends.

    >>> grid_positions(2, x_range=(0, 1), y_range=(2, 3)).tolist()
    [[0.0, 2.0], [0.0, 3.0], [1.0, 2.0], [1.0, 3.0]]
    """
    n = _check_count("n", n, 2)
    (x0, x1), (y0, y1) = _resolve_ranges(x_range, y_range, backend, ranges)
    xs = np.linspace(x0, x1, n)  # (n,)
    ys = np.linspace(y0, y1, n)  # (n,)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")  # (n, n) each
    return np.stack([gx.ravel(), gy.ravel()], axis=1)  # (n*n, 2)


def eval_positions(
    n: int = 100,
    seed: int = 0,
    x_range: Optional[Sequence[float]] = None,
    y_range: Optional[Sequence[float]] = None,
    backend: str = "metaworld",
    *,
    ranges: str = "default",
) -> np.ndarray:
    """n can positions drawn uniformly from the rectangle, (n, 2) float64; the same seed gives the same set.

    Uses numpy's PCG64 generator, whose uniform stream is identical under numpy 1.x and 2.x.
    """
    n = _check_count("n", n, 1)
    (x0, x1), (y0, y1) = _resolve_ranges(x_range, y_range, backend, ranges)
    rng = np.random.default_rng(seed)
    unit = rng.random((n, 2))  # (n, 2) in [0, 1)
    return np.array([x0, y0]) + unit * np.array([x1 - x0, y1 - y0])


def check_object_xy(
    object_xy: Any, spec: TaskSpec, x_range: Optional[Range] = None, y_range: Optional[Range] = None
) -> Optional[np.ndarray]:
    """Validate a reset option object_xy for a task; None passes through, else a float64 (2,) array.

    Positions must lie inside the task's rectangle (spec ranges unless x_range/y_range are given), with a
    1e-9 m tolerance so grid corners computed in float arithmetic are accepted.
    """
    if object_xy is None:
        return None
    if spec.task != "pick-can":
        raise ValueError(f"object_xy is only supported for pick-can, not {spec.task!r}")
    xy = np.asarray(object_xy, dtype=np.float64)
    if xy.shape != (2,) or not np.all(np.isfinite(xy)):
        raise ValueError(f"object_xy must be a finite (x, y) pair, got {object_xy!r}")
    (x0, x1), (y0, y1) = x_range or spec.x_range, y_range or spec.y_range
    tol = 1e-9
    if not (x0 - tol <= xy[0] <= x1 + tol and y0 - tol <= xy[1] <= y1 + tol):
        raise ValueError(
            f"object_xy {tuple(xy.tolist())} is outside the {spec.backend} range x in [{x0}, {x1}], "
            f"y in [{y0}, {y1}]"
        )
    return xy
