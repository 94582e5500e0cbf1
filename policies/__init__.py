"""razor_robot.policies: the OpenVLA-architecture policy (7B, tiny), tokenizers, loaders, demonstrators.

Importing the package is light: the numpy-only action tokenizer is imported eagerly, everything that needs
torch/timm/transformers (or the demonstrators and action adapters written beside this package) is imported on
first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from .action_tokenizer import (
    FRACTAL_NORM_STATS,
    GOOGLE_ROBOT_UNNORM_KEY,
    ActionTokenizer,
    compute_norm_stats,
    normalize_actions,
    unnormalize_actions,
)

_LAZY = {
    "VLAConfig": ".configuration_vla",
    "VisionTowerConfig": ".configuration_vla",
    "LLMConfig": ".configuration_vla",
    "VLAPolicy": ".modeling_vla",
    "VLAProcessor": ".processing_vla",
    "load_policy": ".loading",
    "resolve_builtin": ".builtin",
    "read_card": ".builtin",
    "save_policy": ".saving",
    "make_demonstrator": ".demonstrators",
    "OpenVLAGoogleRobotAdapter": ".adapters",
    "MetaWorldActionAdapter": ".adapters",
}

__all__ = [
    "ActionTokenizer",
    "FRACTAL_NORM_STATS",
    "GOOGLE_ROBOT_UNNORM_KEY",
    "compute_norm_stats",
    "normalize_actions",
    "unnormalize_actions",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'razor_robot.policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
