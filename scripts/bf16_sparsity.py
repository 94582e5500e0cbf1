"""RL's Razor §6 on the embedded default: is RL's sparse update a bf16 rounding artefact?

    python scripts/bf16_sparsity.py configs/quickstart.yaml --out runs/bf16-sparsity [--set KEY=VALUE ...]

Runs the config's RL run twice from the same base, seeds and episodes' seeds: with fp32 master weights and
with bf16 master weights, through ``policy.dtype``, the precision switch of the paper config (bfloat16 = the
paper's bf16 training, float32 = fp32 master weights; see the README's paper path), then prints for every checkpoint the fraction of parameters left
exactly unchanged (``pred/update_sparsity``: bitwise equality in the run's own dtype) and, for the fp32 run,
the fraction a bf16 copy of its weights would show unchanged (``pred/update_sparsity_bf16``). The paper found
RL's apparent sparsity to vanish in fp32: updates smaller than half a bf16 ulp round away.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import razor_robot  # noqa: F401  (sets OpenMP's spin count before torch loads it)

PRECISION_KEY = "policy.dtype"
"""The config key that switches master-weight precision, here and in configs/paper_simpler_openvla.yaml."""
MASTER_DTYPES = ("float32", "bfloat16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="sweep YAML whose rl settings are used (e.g. configs/quickstart.yaml)")
    parser.add_argument("--out", required=True, help="output directory (one sub-directory per dtype)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    if not Path(args.config).is_file():
        parser.error(f"config file not found: {args.config}")
    from razor_robot.cli import main as cli
    from razor_robot.report.records import completed_records

    rows = {}
    for dtype in MASTER_DTYPES:
        out = Path(args.out) / dtype
        argv = ["train", "rl", args.config, "--out", str(out), "--no-progress", "--set", f"{PRECISION_KEY}={dtype}",
                "--set", "report.videos=false", *[x for item in args.set for x in ("--set", item)]]
        if cli(argv) != 0:
            return 2
        rows[dtype] = [r for r in completed_records(out / "results.jsonl") if r["method"] == "rl"]
    print(f"{'master weights':<15} {'iteration':>9} {'new task':>22} {'unchanged (own dtype)':>22} "
          f"{'unchanged in bf16':>18}")
    for dtype, records in rows.items():
        for r in records:
            lo, hi = r["new_task/ci95"]
            print(f"{dtype:<15} {r['step']:>9} {r['new_task']:6.1f}% [{lo:4.1f}, {hi:4.1f}] n={r['new_task/n']:<3}"
                  f" {r['pred/update_sparsity']:22.4f} {r.get('pred/update_sparsity_bf16', float('nan')):18.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
