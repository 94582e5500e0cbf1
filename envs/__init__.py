"""razor_robot.envs: the three tasks (pick-can, open-drawer, close-drawer) on two simulator backends.

make_env("pick-can") builds the embedded Meta-World default; make_env(task, backend="simpler") the
SimplerEnv adapter. Backends are imported lazily, so importing this package needs neither mujoco nor
simpler_env. Gymnasium ids: razor_robot/PickCan-v0, razor_robot/OpenDrawer-v0, razor_robot/CloseDrawer-v0
(keyword backend=... selects the backend).
"""

from __future__ import annotations

from typing import Any

from .core import (
    BACKENDS,
    INSTRUCTIONS,
    NEW_TASK,
    POSITION_RANGES,
    PRIOR_TASKS,
    SUCCESS_MODES,
    TASKS,
    MissingDependencyError,
    TaskSpec,
    check_backend,
    check_image_size,
    check_success_mode,
    check_task,
    eval_positions,
    grid_positions,
    position_ranges,
    task_spec,
)

__all__ = [
    "BACKENDS",
    "GYM_IDS",
    "INSTRUCTIONS",
    "NEW_TASK",
    "POSITION_RANGES",
    "PRIOR_TASKS",
    "SUCCESS_MODES",
    "TASKS",
    "MissingDependencyError",
    "TaskSpec",
    "eval_positions",
    "grid_positions",
    "make_env",
    "check_env_options",
    "require_backend",
    "position_ranges",
    "task_spec",
]

GYM_IDS = {
    "pick-can": "razor_robot/PickCan-v0",
    "open-drawer": "razor_robot/OpenDrawer-v0",
    "close-drawer": "razor_robot/CloseDrawer-v0",
}

_SIMPLER_HINT = (
    "install simpler_env and ManiSkill2_real2sim from their repositories in a Python <= 3.11 env, "
    "then pip install 'razor-robot[simpler]' (see README)"
)


def make_env(
    task: str,
    backend: str = "metaworld",
    *,
    image_size: int = 64,
    success_mode: str = "final",
    **backend_options: Any,
):
    """Build one task env (a gymnasium.Env following docs/ARCHITECTURE.md); bad input -> ValueError.

    ``image_size=None`` keeps SimplerEnv's native camera resolution (simpler backend only).
    """
    check_task(task)
    check_backend(backend)
    if not (backend == "simpler" and image_size is None):
        image_size = check_image_size(image_size)
    check_success_mode(success_mode)
    if backend == "metaworld":
        from .metaworld_backend import MetaWorldTaskEnv

        return MetaWorldTaskEnv(task, image_size=image_size, success_mode=success_mode, **backend_options)
    try:
        from .simpler_backend import make_simpler_env
    except MissingDependencyError:
        raise
    except ImportError as exc:
        raise MissingDependencyError("simpler_env", _SIMPLER_HINT) from exc
    return make_simpler_env(task, image_size=image_size, success_mode=success_mode, **backend_options)


_BACKEND_MODULES = {"metaworld": ("metaworld", 'pip install "razor-robot[metaworld]"'),
                    "simpler": ("simpler_env", _SIMPLER_HINT)}


def require_backend(backend: str) -> None:
    """Fail fast, without importing the simulator, when a backend's package is not installed."""
    import importlib.util

    module, hint = _BACKEND_MODULES[check_backend(backend)]
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, hint)


def check_env_options(backend: str, options: dict[str, Any]) -> None:
    """Fail fast on a backend option that would only fail once env workers start (a sweep's ``env:``)."""
    if check_backend(backend) == "metaworld" and options.get("camera") is not None:
        from .metaworld_backend import CameraView

        CameraView.of(options["camera"])


def _register_gym_ids() -> None:
    """Register the task ids with gymnasium (idempotent, so re-imports in vector-env workers are fine)."""
    import gymnasium

    for task, env_id in GYM_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="razor_robot.envs:make_env", kwargs={"task": task})


_register_gym_ids()
