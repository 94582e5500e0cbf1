"""Fake ManiSkill2_real2sim envs rebuilt from layouts recorded on the real SimplerEnv stack.

``tests/data/simpler_layouts.json`` holds, per env id and setting, the nested key / dtype / shape layout of
the real env's observation, reset info and step info, its action box, the cabinet's link names and the
instruction (the settings differ in the reset info: no overlay path under variant aggregation), as
recorded by tests/test_simpler_real.py (``RAZOR_RECORD_SIMPLER_LAYOUTS=1`` rewrites the file; without it
that test checks the real envs still match it). The fakes below produce observations and infos of exactly
those layouts, so the fast tests keep encoding how the real envs behave: e.g. the drawer envs' ``extra`` is
empty and only the grasp env has ``extra.tcp_pose``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional

import gymnasium as gym
import numpy as np

LAYOUTS_PATH = Path(__file__).parent / "data" / "simpler_layouts.json"
ENV_IDS = {
    "pick-can": "GraspSingleOpenedCokeCanInScene-v0",
    "open-drawer": "OpenTopDrawerCustomInScene-v0",
    "close-drawer": "CloseTopDrawerCustomInScene-v0",
}


# ------------------------------------------------------------------ recording


def describe(value: Any) -> Any:
    """A JSON layout of a nested value: dicts recurse, arrays -> {"dtype", "shape"}, scalars -> type name."""
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return {"dtype": str(value.dtype), "shape": []}
    return type(value).__name__


def record_layout(inner: Any, task: str) -> Dict[str, Any]:
    """Layout of one real inner env (a ``gym.make`` of ManiSkill2_real2sim): reset, then one zero step."""
    base = inner.unwrapped
    obs, reset_info = inner.reset(seed=0, options={"obj_init_options": {}})
    step_obs, _, _, _, step_info = inner.step(np.zeros(7))
    layout = {
        "env_class": type(base).__name__,
        "obs": describe(obs),
        "step_obs": describe(step_obs),
        "reset_info": describe(reset_info),
        "step_info": describe(step_info),
        "action_low": np.asarray(inner.action_space.low, np.float64).tolist(),
        "action_high": np.asarray(inner.action_space.high, np.float64).tolist(),
        "instruction": str(base.get_language_instruction()),
    }
    if task != "pick-can":
        layout["cabinet_links"] = [link.name for link in base.art_obj.get_links()]
    return layout


def load_layouts() -> Dict[str, Any]:
    return json.loads(LAYOUTS_PATH.read_text())


# ------------------------------------------------------------------ building values from a layout

_DEFAULTS = {"bool": False, "int": 0, "float": 0.0, "str": "", "NoneType": None, "list": [], "tuple": ()}


def build(layout: Any, overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """A value of a recorded layout: zero arrays, default scalars (dict layouts become OrderedDicts)."""
    overrides = overrides or {}
    if isinstance(layout, dict) and set(layout) == {"dtype", "shape"}:
        array = np.zeros(layout["shape"], dtype=layout["dtype"])
        return array[()] if layout["shape"] == [] else array
    if isinstance(layout, dict):
        return OrderedDict((k, overrides[k] if k in overrides else build(v)) for k, v in layout.items())
    return _DEFAULTS.get(layout, SimpleNamespace(kind=layout))


def pose(p, q=(1.0, 0.0, 0.0, 0.0)) -> SimpleNamespace:
    return SimpleNamespace(p=np.array(p, np.float64), q=np.array(q, np.float64))


class FakeBaseEnv:
    """The parts of a ManiSkill2_real2sim Google-Robot env the backend reads, with the recorded link names."""

    def __init__(self, task: str, layout: Mapping[str, Any]):
        self.task = task
        self.drawer_id = "top"
        self.urdf_version = ""
        self.rgb_overlay_img = None
        self.configure_calls = 0
        self.tcp = SimpleNamespace(pose=pose([0.1, 0.2, 1.0], (0.0, 1.0, 0.0, 0.0)))
        self.obj_pose = pose([-0.2, 0.3, 0.9])
        names = layout.get("cabinet_links", [])
        drawers = [n for n in names if n.endswith("_drawer")]
        self.art_obj = SimpleNamespace(
            get_links=lambda: [
                SimpleNamespace(name=n, pose=pose([-0.1 * drawers.index(n) if n in drawers else 9.0, 0, 0.5]))
                for n in names
            ]
        )
        self._instruction = layout["instruction"]

    def _configure_agent(self):
        self.configure_calls += 1

    def get_language_instruction(self):
        if self.task == "pick-can":
            return self._instruction
        return self._instruction.replace("top", self.drawer_id)


class FakeManiSkillEnv:
    """A ManiSkill2 env of a recorded layout. Records reset options; success follows a schedule; the overhead
    image's [0, 0, 0] pixel counts steps."""

    def __init__(self, task: str, successes=(), layouts: Optional[Mapping[str, Any]] = None,
                 setting: str = "visual_matching"):
        self.layout = (layouts or load_layouts())[ENV_IDS[task]][setting]
        self.base = FakeBaseEnv(task, self.layout)
        self.successes = list(successes)
        self.resets: List[Any] = []
        self.actions: List[np.ndarray] = []
        self.closed = False
        rgb = self.layout["obs"]["image"]["overhead_camera"]["rgb"]
        camera = {"rgb": SimpleNamespace(shape=tuple(rgb["shape"]))}
        self.observation_space = {"image": {"overhead_camera": camera}}
        low, high = (np.array(self.layout[k], np.float32) for k in ("action_low", "action_high"))
        self.action_space = gym.spaces.Box(low, high, (7,), np.float32)

    @property
    def unwrapped(self):
        return self.base

    def _obs(self, key: str) -> Dict[str, Any]:
        obs = build(self.layout[key])
        rgb = obs["image"]["overhead_camera"]["rgb"]
        rgb[:] = 100
        rgb[0, 0, 0] = len(self.actions)
        return obs

    def reset(self, seed=None, options=None):
        self.resets.append((seed, options))
        self.actions = []
        xy = options["obj_init_options"].get("init_xy")
        if xy is not None:
            self.base.obj_pose = pose([xy[0], xy[1], 0.9])
        return self._obs("obs"), build(self.layout["reset_info"])

    def step(self, action):
        self.actions.append(action)
        t = len(self.actions) - 1
        success = self.successes[t] if t < len(self.successes) else False
        info = build(self.layout["step_info"], {"success": np.bool_(success), "elapsed_steps": t + 1})
        return self._obs("step_obs"), float(success), bool(success), False, info

    def close(self):
        self.closed = True
