"""A tiny env that follows the razor-robot task contract, for backend-independent tests."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


INSTRUCTIONS = {"pick-can": "pick coke can", "open-drawer": "open drawer", "close-drawer": "close drawer"}


@dataclass(frozen=True)
class FakeSpec:
    task: str = "pick-can"
    instruction: str = "pick coke can"
    horizon: int = 5
    action_dim: int = 2


class ReachEnv(gym.Env):
    """The "can" sits at object_xy; each action moves a point by action * 0.1; success = within 0.05 of the can.

    image[0, 0, 0] is the step counter and image[0, 0, 1] the seed modulo 256, so tests can read back what the
    policy saw.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: str = "pick-can", horizon: int = 5, success_mode: str = "final"):
        self.task_spec = FakeSpec(task=task, instruction=INSTRUCTIONS[task], horizon=horizon)
        self.success_mode = success_mode
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0, 0] = self._t
        image[0, 0, 1] = self._seed % 256
        return {"image": image, "state": np.concatenate([self._point, self._can]).astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._seed = 0 if seed is None else int(seed)
        options = options or {}
        self._can = np.asarray(options.get("object_xy", self.np_random.uniform(-1, 1, 2)), dtype=np.float64)
        self._point = np.zeros(2)
        self._t = 0
        self._any_success = False
        return self._obs(), {"instruction": self.task_spec.instruction, "object_xy": self._can.copy(), "success": False}

    def step(self, action):
        self._point = self._point + 0.1 * np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        self._t += 1
        success = bool(np.linalg.norm(self._point - self._can) < 0.05)
        self._any_success |= success
        truncated = self._t >= self.task_spec.horizon
        info = {"success": success}
        if truncated:
            info["episode_success"] = self._any_success if self.success_mode == "any" else success
        return self._obs(), float(success), False, truncated, info


def make_reach_env(task: str = "pick-can", horizon: int = 5, success_mode: str = "final") -> ReachEnv:
    """The env factory of the rollout tests: ``factory(task, **options)``, as EnvPool calls it."""
    return ReachEnv(task, horizon=horizon, success_mode=success_mode)
