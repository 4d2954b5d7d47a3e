"""Build the Bento (``bentoml build -f serving/bentofile.yaml <project_root>``) and return its tag.

The service is the one that speaks the packaged model (its manifest's ``kind``): the digits
classifier, or the tabular predictor or text classifier, built from a copy of the bentofile with its
service and name.

    python -m serving.build [--bentoml-home DIR]
    python -m serving.build --print-service     # the service for the model DLOPS_MODEL_* names (make serve)
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BENTOFILE = Path("serving") / "bentofile.yaml"
MODEL_DIR = Path("artifacts") / "deploy"
MODEL_FILES = (MODEL_DIR / "model.onnx", MODEL_DIR / "manifest.json")
TOKENIZER_FILE = MODEL_DIR / "tokenizer.json"  # a text model's tokenizer: the bentofile ships it
# bento name and description per service; the bentofile's own service needs no rewrite
BENTOS = {
    "serving.tabular:TabularPredictor": (
        "dlops-tabular", "dlops tabular predictor: ONNX Runtime behind a BentoML 1.4 service "
                         "(POST /predict with JSON records, GET /metadata)"),
    "serving.text:TextClassifier": (
        "dlops-text", "dlops text classifier: tokenizer + ONNX Runtime behind a BentoML 1.4 service "
                      "(POST /predict with JSON texts, GET /metadata)"),
}


SOURCES = ("serving", "pipelines")  # the bentofile's includes pick the service's files from these


def copy_sources(root: Path, dest: Path) -> None:
    """Copy the packages the service's code lives in into a build context ``dest``."""
    import shutil

    for name in SOURCES:
        shutil.copytree(Path(root) / name, Path(dest) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_bento(project_root: Path, bentoml_home: Path | None = None, timeout: float = 600,
                service: str | None = None) -> str:
    """Run ``bentoml build`` in a subprocess (its import and logging stay out of the caller) and
    return the Bento tag, e.g. ``dlops-digits:3f2k4xq6ucsbgaav``.

    Args:
        project_root: the build context: holds serving/ and artifacts/deploy/.
        bentoml_home: the Bento store; ``BENTOML_HOME`` / ``~/bentoml`` when None.
        service: ``module:Class`` to package; None: the one for artifacts/deploy/manifest.json.
    """
    from serving.model import is_text, read_manifest, service_for

    project_root = Path(project_root).resolve()
    missing = [str(project_root / f) for f in (BENTOFILE, *MODEL_FILES) if not (project_root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot build the bento, missing: {', '.join(missing)}")
    manifest = read_manifest(project_root / MODEL_DIR)
    if is_text(manifest):
        _check_tokenizer(project_root, manifest)
    service = service or service_for(manifest)
    # `bentoml build` imports the service, and the tabular one builds its schema from the packaged model
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "DLOPS_MODEL_DIR": str(project_root / MODEL_DIR)}
    env.pop("DLOPS_MODEL_URI", None)
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    with tempfile.TemporaryDirectory(prefix="dlops-bentofile-") as tmp:
        bentofile = _bentofile_for(project_root / BENTOFILE, service, manifest, Path(tmp))
        proc = _run_build(bentofile, project_root, env, timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build of {service} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    # `--output tag` prints `__tag__:<name>:<version>` among any other lines
    tags = [line.split("__tag__:", 1)[1].strip() for line in proc.stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise RuntimeError(f"bentoml build printed no tag: {proc.stdout.strip()[-2000:]}")
    logger.info("built bento %s", tags[-1])
    return tags[-1]


def _check_tokenizer(project_root: Path, manifest: dict[str, Any]) -> None:
    """The text model's tokenizer is where the bentofile's include finds it."""
    if manifest["input"]["tokenizer"] != TOKENIZER_FILE.name:
        raise ValueError(f"the bento ships {TOKENIZER_FILE}, the manifest names {manifest['input']['tokenizer']!r}")
    if not (project_root / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"cannot build the bento, missing: {project_root / TOKENIZER_FILE}")


def _bentofile_for(bentofile: Path, service: str, manifest: dict[str, Any], tmp: Path) -> Path:
    """The bentofile itself for its own service, else a copy naming ``service`` (same includes)."""
    import yaml

    spec = yaml.safe_load(bentofile.read_text())
    if service == spec["service"]:
        return bentofile
    if service not in BENTOS:
        raise ValueError(f"no bento for service {service!r} (known: {spec['service']}, {', '.join(BENTOS)})")
    spec["service"] = service
    spec["name"], spec["description"] = BENTOS[service]
    spec.setdefault("labels", {})["task"] = manifest.get("task")
    path = tmp / "bentofile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_build(bentofile: Path, project_root: Path, env: dict[str, str], timeout: float) -> Any:
    bentoml = Path(sys.executable).parent / "bentoml"
    cmd = [str(bentoml) if bentoml.exists() else "bentoml", "build", "-f", str(bentofile),
           "--output", "tag", str(project_root)]
    return subprocess.run(cmd, cwd=project_root, env=env, capture_output=True, text=True, timeout=timeout)


def print_service() -> None:
    """Print the service for the model that DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy names."""
    from serving.model import ModelLoadError, read_manifest, resolve_model_dir, service_for

    try:
        print(service_for(read_manifest(resolve_model_dir()[0])))
    except ModelLoadError as exc:
        sys.exit(f"error: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-root", type=Path, default=Path.cwd())
    parser.add_argument("--bentoml-home", type=Path, default=None)
    parser.add_argument("--service", default=None, help="module:Class (default: chosen by the model's manifest)")
    parser.add_argument("--print-service", action="store_true", help="print the service for the model and exit")
    args = parser.parse_args()
    if args.print_service:
        print_service()
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_bento(args.project_root, args.bentoml_home, service=args.service))


if __name__ == "__main__":
    main()
