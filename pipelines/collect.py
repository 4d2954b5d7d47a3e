"""Step 1 — collect: load the configured source, validate it, write the dataset and its profile.

The modality that claims ``data.source`` (``pipelines.plugins.modality_for``) reads, validates and
writes the dataset in its own format (arrays: ``data.npz``; tables and texts: ``data.parquet``) and
returns the profile; this step adds ``kind`` (the modality's name) and writes ``profile.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.cli import step_main
from pipelines.files import staged_outputs, write_json
from pipelines.params import Params
from pipelines.plugins import get_task, modality_for

log = logging.getLogger(__name__)


def run(params: Params, out_dir: Path) -> dict[str, Any]:
    """Load ``data.source``, validate it and write the dataset + ``profile.json`` to ``out_dir``."""
    modality = modality_for(params.data)
    with staged_outputs(out_dir) as tmp:
        prof = {"kind": modality.name, **modality.collect(params, tmp)}
        get_task(prof["task"])  # a modality must resolve the task to a registered one
        write_json(tmp / "profile.json", prof)
    log.info("collected %d rows from %s: %s data, task %s (%s)", prof["rows"], prof["source"], prof["kind"],
             prof["task"], ", ".join(prof.get("checks_passed", [])))
    return {"rows": prof["rows"], "data_hash": prof["data_hash"]}


def main() -> None:
    step_main(run, ["out_dir"])


if __name__ == "__main__":
    main()
