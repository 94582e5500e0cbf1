"""Every checkpoint of a sweep, base by base, as a Markdown table: each success rate with its count and interval.

    python scripts/checkpoint_table.py runs/reproduce

Reads ``results.jsonl`` under SWEEP_DIR (one per base, ``base-s<seed>/``, or the sweep's own for one base) and
prints one row per checkpoint (the base, then each method's runs by learning rate and step) and, per base, a
new-task and a prior-task column. A cell reads ``rate [lo, hi] n=episodes`` as in every summary.txt: the success
rate in points, its 95% Wilson interval and the episode count (docs/benchmarks.md takes its tables from here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METHOD_ORDER = ("base", "sft", "rl", "oracle-sft", "distill-sft")


def checkpoint_key(record: dict[str, Any]) -> tuple[int, str, float, float]:
    """(method rank, method, learning rate, fraction of training): the row a record fills, in reading order.
    Keyed by fraction, not step, because oracle- and distill-SFT train on datasets whose size differs by base."""
    method = record["method"]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    learning_rate = record.get("hparams", {}).get("optim.learning_rate", 0.0)
    return rank, method, float(learning_rate), round(float(record.get("fraction", 0.0)), 6)


def row_label(key: tuple[int, str, float, float], steps: set[int]) -> str:
    """``RL lr 3e-4 @12``; ``oracle-sft @50%`` where the bases' steps differ."""
    _, method, learning_rate, fraction = key
    if method == "base":
        return "base"
    name = method.upper() if method in ("sft", "rl") else method
    if learning_rate:
        name += f" lr {learning_rate:.0e}".replace("e-0", "e-")
    return f"{name} @{steps.pop()}" if len(steps) == 1 else f"{name} @{fraction:.0%}"


def load_bases(root: Path) -> dict[str, dict[tuple, dict[str, Any]]]:
    """base label -> row key -> record, for every evaluated checkpoint under ``root``."""
    files = sorted(root.glob("base-*/results.jsonl")) or [root / "results.jsonl"]
    bases: dict[str, dict[tuple, dict[str, Any]]] = {}
    for path in files:
        if not path.is_file():
            raise SystemExit(f"checkpoint_table: no results.jsonl in {root}")
        label = path.parent.name if path.parent != root else "base"
        rows = bases.setdefault(label, {})
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "new_task" in record and "method" in record:
                rows[checkpoint_key(record)] = record
    return bases


def markdown_table(bases: dict[str, dict[tuple, dict[str, Any]]]) -> str:
    from razor_robot.report.summary import format_rate  # the summaries' own cell: rate [lo, hi] n=episodes

    keys = sorted({key for rows in bases.values() for key in rows})
    header = ["checkpoint"] + [f"{label} {column}" for label in bases for column in ("new task", "prior tasks")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        cells = [row_label(key, {rows[key]["step"] for rows in bases.values() if key in rows})]
        for rows in bases.values():
            record = rows.get(key)
            cells += ["", ""] if record is None else [format_rate(record, field) for field in ("new_task", "prior_task")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="output directory of `razor-robot sweep` or `razor-robot train`")
    args = parser.parse_args()
    print(markdown_table(load_bases(Path(args.sweep_dir))))


if __name__ == "__main__":
    main()
