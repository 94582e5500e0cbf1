"""Base policies shipped with the package: the embedded default's given base, as OpenVLA-7B is the paper path's.

A config names one as ``base: {checkpoint: builtin:<name>}``. Each lives in ``builtin/<name>/``: a project
checkpoint (``config.json``, ``model.safetensors``, loadable by ``load_policy``) plus ``card.json``:

- ``recipe``: the pretraining recipe it was built from (backend, env, policy, ``base.pretrain``, position range,
  demonstrator), i.e. what ``razor-robot pretrain CONFIG`` rebuilds it from, and ``recipe_hash``, its hash;
- ``evaluation``: its new- and prior-task success, each with episode count and 95% Wilson interval;
- ``built_on``: the CPU, torch version and date of the build;
- ``files``: the sha256 of every checkpoint file, checked before the weights are used, so a corrupt or
  missing file is a one-line error naming it instead of a policy that silently differs.

This module is numpy/torch-free: resolving a name costs a hash of a few MB.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_PREFIX", "BUILTIN_ROOT", "CARD_FILE", "builtin_names", "file_digests", "is_builtin",
           "read_card", "resolve_builtin"]

BUILTIN_PREFIX = "builtin:"
"""A checkpoint reference starting with this names a shipped base."""
BUILTIN_ROOT = Path(__file__).resolve().parent / "builtin"
"""Where the shipped bases live (package data)."""
CARD_FILE = "card.json"
"""The card beside each shipped checkpoint."""


def is_builtin(reference: str | None) -> bool:
    """True for "builtin:<name>" references."""
    return isinstance(reference, str) and reference.startswith(BUILTIN_PREFIX)


def builtin_names() -> list[str]:
    """Names of the shipped bases (folders with a card)."""
    if not BUILTIN_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_ROOT.iterdir() if (p / CARD_FILE).is_file())


def file_digests(directory: str | Path, names: list[str]) -> dict[str, str]:
    """{file name: sha256 hex} of the named files in ``directory``."""
    return {name: hashlib.sha256((Path(directory) / name).read_bytes()).hexdigest() for name in names}


def _directory(reference: str) -> Path:
    name = reference[len(BUILTIN_PREFIX):] if is_builtin(reference) else reference
    directory = BUILTIN_ROOT / name
    if not name or "/" in name or not (directory / CARD_FILE).is_file():
        known = ", ".join(BUILTIN_PREFIX + n for n in builtin_names()) or "none"
        raise FileNotFoundError(f"unknown shipped base {reference!r}: no {directory / CARD_FILE} "
                                f"(shipped: {known})")
    return directory


def read_card(reference: str) -> dict[str, Any]:
    """The card of a shipped base ("builtin:<name>" or "<name>")."""
    path = _directory(reference) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"corrupt shipped-base card {path}: {error}; reinstall razor-robot") from None
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict) or "recipe_hash" not in card:
        raise ValueError(f"corrupt shipped-base card {path}: needs 'files' and 'recipe_hash'; reinstall razor-robot")
    return card


def resolve_builtin(reference: str) -> Path:
    """The checkpoint directory of a shipped base, after checking every file against the card's sha256."""
    directory = _directory(reference)
    card = read_card(reference)
    for name, digest in card["files"].items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"shipped base {reference!r} is missing {path}; reinstall razor-robot or "
                                    f"rebuild it with `razor-robot pretrain CONFIG --ship {directory.name}`")
        if file_digests(directory, [name])[name] != digest:
            raise ValueError(f"shipped base {reference!r}: {path} is corrupt (sha256 differs from "
                             f"{directory / CARD_FILE}); reinstall razor-robot or rebuild it with "
                             f"`razor-robot pretrain CONFIG --ship {directory.name}`")
    return directory
