"""Files a sweep writes, each written atomically (a temp file beside it, then a rename): an interrupted sweep
never leaves half a file, and re-running it resumes from what is complete.

``OUT/results.jsonl`` holds one JSON record per evaluated checkpoint (the base policy is the record with
``method == "base"``); a run's records are appended together, only once the run has finished, so the file
never holds half a run. A run that raised is recorded as ``{"run_id", "status": "failed", "reason"}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a results file (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed_records(path: Path) -> list[dict[str, Any]]:
    """The records of checkpoints (failed runs left out)."""
    return [r for r in read_records(path) if r.get("status") != "failed"]


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append whole records atomically: rewrite into a temp file, fsync, rename over the old file."""
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(existing + "".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def finished_run_ids(records: list[dict[str, Any]]) -> set[str]:
    return {r["run_id"] for r in records if "run_id" in r}


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save_npz(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
