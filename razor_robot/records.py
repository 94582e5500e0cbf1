"""Files a sweep writes, each written atomically (a temp file beside it, then a rename): an interrupted sweep
never leaves half a file, and re-running it resumes from what is complete.

``OUT/results.jsonl`` holds one JSON record per evaluated checkpoint (the base policy is the record with
``method == "base"``); a run's records are appended together, only once the run has finished, so the file
never holds half a run. A run that raised is recorded as ``{"run_id", "status": "failed", "reason"}``.

Every JSON file the package writes is strict JSON (RFC 8259: no bare ``NaN``/``Infinity``), so ``jq``, pandas and
browsers read it: :func:`dumps_strict` writes a non-finite number as ``null`` and names it, with the reason, in the
object's ``null_reasons`` (JSON pointer -> "NaN", "Infinity" or "-Infinity"); :func:`loads_strict` puts the numbers
back, so the code that reads a record sees what was measured.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.jsonl"
NULL_REASONS = "null_reasons"
"""Key of the map JSON pointer -> why the value there is null (a number that was NaN or infinite)."""
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _pointer_part(key: Any) -> str:
    # RFC 6901 escaping: record keys hold "/" ("kl/forward").
    return str(key).replace("~", "~0").replace("/", "~1")


def _finite_copy(value: Any, pointer: str, reasons: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by None; ``reasons[pointer]`` says what it was."""
    if isinstance(value, dict):
        return {k: _finite_copy(v, f"{pointer}/{_pointer_part(k)}", reasons) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_copy(v, f"{pointer}/{i}", reasons) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _finite_copy(value.tolist(), pointer, reasons)
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        reasons[pointer] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return None
    if isinstance(value, np.generic):  # numpy scalars: json.dumps refuses them
        return value.item()
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` as strict JSON: non-finite numbers become ``null``, named in ``null_reasons``
    (top-level objects; elsewhere a non-finite number is an error rather than a silent null)."""
    reasons: dict[str, str] = {}
    clean = _finite_copy(value, "", reasons)
    if reasons:
        if not isinstance(clean, dict):
            raise ValueError(f"non-finite numbers at {sorted(reasons)} outside a JSON object: no place for "
                             f"their {NULL_REASONS}")
        clean[NULL_REASONS] = {**clean.get(NULL_REASONS, {}), **reasons}
    return json.dumps(clean, allow_nan=False, **kwargs)


def _restore(record: Any) -> Any:
    """Put back the non-finite numbers :func:`dumps_strict` wrote as null (the in-memory record as measured)."""
    if not isinstance(record, dict) or not isinstance(record.get(NULL_REASONS), dict):
        return record
    for pointer, reason in record.pop(NULL_REASONS).items():
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        target = record
        for part in parts[:-1]:
            target = target[int(part) if isinstance(target, list) else part]
        target[int(parts[-1]) if isinstance(target, list) else parts[-1]] = _NON_FINITE[reason]
    return record


def loads_strict(text: str) -> Any:
    """Parse what :func:`dumps_strict` wrote (and older files with bare NaN), non-finite numbers restored."""
    return _restore(json.loads(text))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a results file (none when it does not exist yet).

    A line that is not JSON (a torn write, a hand edit) is a one-line ValueError naming the file, the line and
    how to recover, before anything runs on half the results.
    """
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(loads_strict(line))
        except (KeyError, IndexError, TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
            what = "not valid JSON" if isinstance(error, json.JSONDecodeError) else "a corrupt null_reasons"
            raise ValueError(
                f"{path}:{number}: {what} ({error}); to recover, delete line {number} (or restore the "
                f"file) and re-run: runs without a record are run again") from None
    return records


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
        handle.write(existing + "".join(dumps_strict(r) + "\n" for r in records))
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
