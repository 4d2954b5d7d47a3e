"""Build the Bento (``bentoml build -f serving/bentofile.yaml <project_root>``) and return its tag.

    python -m serving.build [--bentoml-home DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

BENTOFILE = Path("serving") / "bentofile.yaml"
MODEL_FILES = (Path("artifacts") / "deploy" / "model.onnx", Path("artifacts") / "deploy" / "manifest.json")


def build_bento(project_root: Path, bentoml_home: Path | None = None, timeout: float = 600) -> str:
    """Run ``bentoml build`` in a subprocess (its import and logging stay out of the caller) and
    return the Bento tag, e.g. ``dlops-digits:3f2k4xq6ucsbgaav``.

    Args:
        project_root: the build context: holds serving/ and artifacts/deploy/.
        bentoml_home: the Bento store; ``BENTOML_HOME`` / ``~/bentoml`` when None.
    """
    project_root = Path(project_root).resolve()
    missing = [str(project_root / f) for f in (BENTOFILE, *MODEL_FILES) if not (project_root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot build the bento, missing: {', '.join(missing)}")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    bentoml = Path(sys.executable).parent / "bentoml"
    cmd = [str(bentoml) if bentoml.exists() else "bentoml", "build", "-f", str(project_root / BENTOFILE),
           "--output", "tag", str(project_root)]
    proc = subprocess.run(cmd, cwd=project_root, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    # `--output tag` prints `__tag__:<name>:<version>` among any other lines
    tags = [line.split("__tag__:", 1)[1].strip() for line in proc.stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise RuntimeError(f"bentoml build printed no tag: {proc.stdout.strip()[-2000:]}")
    logger.info("built bento %s", tags[-1])
    return tags[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-root", type=Path, default=Path.cwd())
    parser.add_argument("--bentoml-home", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_bento(args.project_root, args.bentoml_home))


if __name__ == "__main__":
    main()
