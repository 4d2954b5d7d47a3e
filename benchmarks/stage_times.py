"""Wall time of each DVC stage's command (as dvc.yaml writes it) and of a full forced `dvc repro`.

    PATH=.venv/bin:$PATH python benchmarks/stage_times.py

Prints a table: per-stage seconds, the share of the sum, and the full repro time for comparison
(the difference is DVC's own hashing/lock overhead).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml


def timed(cmd: str | list[str], shell: bool) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    full = timed([str(Path(sys.executable).parent / "dvc"), "repro", "--force"], shell=False)
    per_stage = {name: timed(stage["cmd"], shell=True) for name, stage in stages.items()}
    total = sum(per_stage.values())
    print("| stage | seconds | share |")
    print("|---|---|---|")
    for name, secs in per_stage.items():
        print(f"| {name} | {secs:.1f} | {secs / total:.0%} |")
    print(f"| sum of stage commands | {total:.1f} | 100% |")
    print(f"| `dvc repro --force` (all stages + DVC overhead) | {full:.1f} | {full / total:.2f}x the sum |")


if __name__ == "__main__":
    main()
