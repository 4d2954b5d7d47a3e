"""CI check: the committed dvc.lock matches the committed code and params (run on a fresh clone).

    .venv/bin/python tests/check_dvc_lock.py

`dvc status --json` maps each stage to what changed since dvc.lock: ``{stage: [{"changed deps":
{path: status, params_file: {section: status}}}, {"changed outs": {...}}, "changed command"]}``.
On a clone without artifacts it also reports missing outputs ("changed outs", and "deleted" deps
that are an earlier stage's outputs): those only mean nothing was pulled, not a stale lock. What
fails is a dep that is not a stage output and whose hash differs from dvc.lock (code, data), or
changed params: `dvc repro` would rerun that stage, so the committed metrics no longer describe
the committed code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"  # the venv's dvc, next to the python running this


def stage_outputs(dvc_yaml: Path) -> set[str]:
    """Every path a stage in dvc.yaml writes (outs, metrics, plots)."""
    outs = set()
    for stage in yaml.safe_load(dvc_yaml.read_text())["stages"].values():
        for entry in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            outs.add(entry if isinstance(entry, str) else next(iter(entry)))
    return outs


def stale_reasons(status: dict[str, list[Any]], outputs: set[str]) -> dict[str, list[str]]:
    """Per stage, the changed deps and params that make its dvc.lock entry stale."""
    def is_output(path: str) -> bool:
        return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)

    stale: dict[str, list[str]] = {}
    for stage, changes in status.items():
        reasons = []
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "always changed": not counted
                continue
            for path, state in change.get("changed deps", {}).items():
                if isinstance(state, dict):  # a params file: {section or key: status}
                    reasons += [f"param {key} {what} ({path})" for key, what in state.items()]
                elif not (state == "deleted" and is_output(path)):  # an unpulled upstream output is fine
                    reasons.append(f"dep {path} {state}")
            for path, state in change.get("changed params", {}).items():  # in case dvc reports them apart
                items = state.items() if isinstance(state, dict) else [(path, state)]
                reasons += [f"param {key} {what}" for key, what in items]
        if reasons:
            stale[stage] = reasons
    return stale


def main() -> int:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([str(DVC), "status", "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"check_dvc_lock: `dvc status --json` failed (exit {proc.returncode}):\n{proc.stderr}", file=sys.stderr)
        return 1
    status = json.loads(proc.stdout or "{}")
    stale = stale_reasons(status, stage_outputs(ROOT / "dvc.yaml"))
    if stale:
        lines = [f"  {stage}: {'; '.join(reasons)}" for stage, reasons in stale.items()]
        print("check_dvc_lock: dvc.lock is stale, `dvc repro` would rerun stage(s) "
              f"{', '.join(stale)} because their code or params changed since it was written:\n"
              + "\n".join(lines)
              + "\nRun `dvc repro` and commit dvc.lock (or `dvc commit <stage>` if the change cannot "
                "affect the stage's outputs).", file=sys.stderr)
        return 1
    print("check_dvc_lock: dvc.lock matches the committed code and params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
