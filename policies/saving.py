"""Writing a project checkpoint directory (``policy.save_pretrained``); ``loading`` reads it back.

Its own module so that the model (modeling_vla) can save itself without importing the loaders, which import
the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

PROJECT_CONFIG_NAME = "config.json"
PROJECT_FORMAT = "razor-vla/1"


def save_policy(
    policy: Any, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Write model.safetensors, config.json, tokenizer.json and norm_stats.json into `directory`.

    `state_dict` replaces the policy's own weights (e.g. gathered from FSDP shards).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = policy.config.to_dict()
    norm_stats = config.pop("norm_stats")
    meta = {"format": PROJECT_FORMAT, "config": config, "lora": policy.lora_config}
    (directory / PROJECT_CONFIG_NAME).write_text(json.dumps(meta, indent=2, allow_nan=False))
    (directory / "norm_stats.json").write_text(json.dumps(norm_stats, indent=2, allow_nan=False))
    policy.processor.tokenizer.save(str(directory / "tokenizer.json"))
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in (state_dict or policy.state_dict()).items()},
        str(directory / "model.safetensors"),
    )
