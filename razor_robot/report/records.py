"""The sweep's records, written atomically (razor_robot.io.atomic_path): an interrupted sweep never leaves
half a file, and re-running it resumes from what is complete.

``OUT/results.jsonl`` holds one JSON record per evaluated checkpoint (the base policy is the record with
``method == "base"``); a run's records are appended together, only once the run has finished, so the file
never holds half a run. A run that raised is recorded as ``{"run_id", "status": "failed", "reason"}``.

Records are strict JSON (razor_robot.io.dumps_strict): a non-finite number is ``null``, named in the record's
``null_reasons``, and :func:`read_records` puts the numbers back, so the code that reads a record sees what
was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from razor_robot.io import atomic_path, dumps_strict, loads_strict

RESULTS_FILE = "results.jsonl"
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
    """Append whole records atomically: the old lines and the new ones into a temp file, then a rename."""
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(existing + "".join(dumps_strict(r) + "\n" for r in records))


def finished_run_ids(records: list[dict[str, Any]]) -> set[str]:
    return {r["run_id"] for r in records if "run_id" in r}
