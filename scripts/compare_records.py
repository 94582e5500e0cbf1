"""Compare two sweep output directories record for record, timings aside.

    python scripts/compare_records.py BEFORE AFTER [--alias BEFORE_PATH AFTER_PATH ...]

The check behind a refactor that must not change a number: run the same config (configs/ci-equality.yaml) at
two commits and compare what the sweeps wrote. JSON and JSON Lines files (results.jsonl, every run's
metrics.jsonl, meter_fit.json, the cached evaluations) are compared field for field; text and CSV files
(summary.txt, table1.csv) line for line; weights (*.safetensors) and datasets (*.parquet) byte for byte.
Fields that measure time (wall-clock, seconds, rates per second, dates) are left out, and each directory's own
path is replaced by a placeholder so that paths compare. Plots and videos (PNG, MP4) carry encoder metadata
and are only counted. Exit status 0 when everything compared is equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterator

# Keys whose values are timings, not results: wall-clock durations, throughputs, dates, timestamps.
TIMING_KEY = re.compile(
    r"(^|[/_.])(time|times|seconds|secs|elapsed|wall|wall_s|duration|date|timestamp|created|started|finished"
    r"|per_second|per_s|sps|steps_per_s|env_steps_per_s|it_per_s|s)($|[/_.])|_seconds$|_time$|_s$|seconds",
    re.IGNORECASE,
)
# Text lines that report timings (summary.txt's wall-clock lines and the like).
TIMING_LINE = re.compile(r"\b(\d+(\.\d+)?\s*(s|min|sec|seconds)\b|wall|elapsed|env-steps/s|steps/s)", re.IGNORECASE)
STRUCTURED = {".json", ".jsonl"}
TEXT = {".txt", ".csv", ".md", ".yaml"}
BYTES = {".safetensors", ".parquet", ".npz", ".npy", ".pt"}
MEDIA = {".png", ".mp4", ".gif", ".jpg"}


def is_timing(key: str) -> bool:
    return bool(TIMING_KEY.search(key))


def normalise(value: Any, roots: list[tuple[str, str]]) -> Any:
    """Drop timing fields and replace each directory's own path with a placeholder, recursively."""
    if isinstance(value, dict):
        return {k: normalise(v, roots) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [normalise(v, roots) for v in value]
    if isinstance(value, str):
        for root, placeholder in roots:
            value = value.replace(root, placeholder)
    return value


def differences(a: Any, b: Any, where: str = "") -> Iterator[str]:
    """Every place where a and b differ, as 'json/pointer: a != b' (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}/{key}: {'missing' if key not in a else repr(a[key])[:80]} != " \
                      f"{'missing' if key not in b else repr(b[key])[:80]}"
            else:
                yield from differences(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}/{i}")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif type(a) is not type(b) or a != b:
        yield f"{where}: {repr(a)[:80]} != {repr(b)[:80]}"


def read_structured(path: Path) -> list[Any]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(text)]


def compare_file(rel: Path, a: Path, b: Path, roots_a, roots_b) -> list[str]:
    if a.suffix in STRUCTURED:
        left = normalise(read_structured(a), roots_a)
        right = normalise(read_structured(b), roots_b)
        return list(differences(left, right))
    if a.suffix in TEXT:
        def lines(path, roots):
            text = normalise(path.read_text(), roots)
            return [line for line in text.splitlines() if not TIMING_LINE.search(line)]
        left, right = lines(a, roots_a), lines(b, roots_b)
        out = [f"line {i + 1}: {x!r} != {y!r}" for i, (x, y) in enumerate(zip(left, right)) if x != y]
        if len(left) != len(right):
            out.append(f"{len(left)} != {len(right)} lines (timing lines aside)")
        return out
    if a.suffix in BYTES:
        digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
        return [] if digest(a) == digest(b) else ["bytes differ"]
    return []


def files(root: Path) -> set[Path]:
    """Every file under ``root`` but temporaries and wandb's offline runs (named by their start time; the
    metrics they hold are the runs' metrics.jsonl, compared here)."""
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and ".tmp" not in p.name and p.relative_to(root).parts[0] != "wandb"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--alias", nargs=2, action="append", default=[], metavar=("BEFORE_PATH", "AFTER_PATH"),
                        help="two paths that name the same thing (each run's cache_dir, the package's "
                             "checkout); repeatable")
    parser.add_argument("--show", type=int, default=5, help="differences shown per file (default 5)")
    args = parser.parse_args(argv)
    roots_a = [(str(args.before.resolve()), "<OUT>")]
    roots_b = [(str(args.after.resolve()), "<OUT>")]
    for i, (path_a, path_b) in enumerate(args.alias):  # before the out dirs: an alias may lie inside one
        roots_a.insert(i, (str(Path(path_a).resolve()), f"<ALIAS{i}>"))
        roots_b.insert(i, (str(Path(path_b).resolve()), f"<ALIAS{i}>"))
    left, right = files(args.before), files(args.after)
    only = sorted(left ^ right)
    compared = equal = media = 0
    different: list[tuple[Path, list[str]]] = []
    for rel in sorted(left & right):
        if rel.suffix in MEDIA:
            media += 1
            continue
        if rel.suffix not in STRUCTURED | TEXT | BYTES:
            continue
        compared += 1
        found = compare_file(rel, args.before / rel, args.after / rel, roots_a, roots_b)
        if found:
            different.append((rel, found))
        else:
            equal += 1
    print(f"before: {args.before}\nafter:  {args.after}")
    print(f"compared {compared} files ({equal} equal, {len(different)} different); "
          f"{media} plots/videos not compared; {len(only)} files in one directory only")
    for rel in only:
        print(f"  only in {'before' if rel in left else 'after'}: {rel}")
    for rel, found in different:
        print(f"  DIFFERENT {rel}: {len(found)} difference(s)")
        for line in found[: args.show]:
            print(f"    {line}")
    verdict = "EQUAL" if not different and not only else "DIFFERENT"
    print(f"{verdict} (timing fields and lines aside)")
    return 0 if verdict == "EQUAL" else 1


if __name__ == "__main__":
    sys.exit(main())
