"""Build the Bento (``bentoml build -f serving/bentofile.yaml <project_root>``) and return its tag.

One service (``serving.service:Predictor``) speaks every model; the bento is named after the model
(``deploy.model_name``) and labelled with its kind and task, built from a copy of the bentofile.

    python -m serving.build [--bentoml-home DIR]
    python -m serving.build --print-service     # the service for the model DLOPS_MODEL_* names (make serve)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
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
SOURCES = ("serving", "pipelines")  # the bentofile's includes pick the service's files from these


def copy_sources(root: Path, dest: Path) -> None:
    """Copy the packages the service's code lives in into a build context ``dest``."""
    import shutil

    for name in SOURCES:
        shutil.copytree(Path(root) / name, Path(dest) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_bento(project_root: Path, bentoml_home: Path | None = None, timeout: float = 600) -> str:
    """Run ``bentoml build`` in a subprocess (its import and logging stay out of the caller) and
    return the Bento tag, e.g. ``dlops-digits:3f2k4xq6ucsbgaav``.

    Args:
        project_root: the build context: holds serving/, pipelines/ and artifacts/deploy/.
        bentoml_home: the Bento store; ``BENTOML_HOME`` / ``~/bentoml`` when None.
    """
    project_root = Path(project_root).resolve()
    manifest = _checked_context(project_root)
    env = build_env(project_root, bentoml_home)  # `bentoml build` imports the service, which loads the packaged model
    with tempfile.TemporaryDirectory(prefix="dlops-bentofile-") as tmp:
        bentofile = _bentofile_for(project_root / BENTOFILE, manifest, Path(tmp))
        proc = _run_build(bentofile, project_root, env, timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    # `--output tag` prints `__tag__:<name>:<version>` among any other lines
    tags = [line.split("__tag__:", 1)[1].strip() for line in proc.stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise RuntimeError(f"bentoml build printed no tag: {proc.stdout.strip()[-2000:]}")
    logger.info("built bento %s", tags[-1])
    return tags[-1]


# What a build imports before it knows the model: BentoML's build and service SDK, what the service's
# ASGI set-up imports, and the service's own modules short of serving.service (importing that one
# loads the model DLOPS_MODEL_DIR names).
WARM_MODULES = ("bentoml.bentos", "_bentoml_sdk", "_bentoml_impl.server.app", "fastapi", "onnxruntime",
                "serving.batching", "serving.common", "serving.limits", "serving.model", "serving.record",
                "pipelines.modalities.schema")


def warm() -> None:
    """Import ``WARM_MODULES`` (deploy's BentoML worker runs it first, beside the registry's work)."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)


def build_here(project_root: str) -> str:
    """``build_bento``'s build in this process, for a warm child of deploy (``pipelines.worker``): its
    environment names the model dir (``DLOPS_MODEL_DIR``, set when it was started, as the CLI's is)
    and the service is imported from it. Never call it in a process that serves or tests a model."""
    import bentoml

    root = Path(project_root).resolve()
    if Path(os.environ.get("DLOPS_MODEL_DIR", "")).resolve() != root / MODEL_DIR:
        raise RuntimeError(f"build_here: DLOPS_MODEL_DIR must be {root / MODEL_DIR} in this process")
    manifest = _checked_context(root)
    with tempfile.TemporaryDirectory(prefix="dlops-bentofile-") as tmp:
        bentofile = _bentofile_for(root / BENTOFILE, manifest, Path(tmp))
        bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(root))
    logger.info("built bento %s", bento.tag)
    return str(bento.tag)


def build_env(project_root: Path, bentoml_home: Path | None = None) -> dict[str, str]:
    """The environment of a build: the packaged model is the one the service loads while it is checked."""
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "DLOPS_MODEL_DIR": str(Path(project_root).resolve() / MODEL_DIR)}
    env.pop("DLOPS_MODEL_URI", None)
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    return env


def _checked_context(project_root: Path) -> dict[str, Any]:
    """The manifest of the model in the build context, refused if it cannot be served or files are missing."""
    from serving.model import load_model_from

    missing = [str(project_root / f) for f in (BENTOFILE, *MODEL_FILES) if not (project_root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot build the bento, missing: {', '.join(missing)}")
    manifest = load_model_from(project_root / MODEL_DIR, str(MODEL_DIR)).manifest  # refuse a model it cannot serve
    _check_named_files(project_root, manifest)
    return manifest


def _check_named_files(project_root: Path, manifest: dict[str, Any]) -> None:
    """Files the manifest's input names (a tokenizer) are where the bentofile's includes find them."""
    name = manifest["input"].get("tokenizer")
    if name is None:
        return
    if name != TOKENIZER_FILE.name:
        raise ValueError(f"the bento ships {TOKENIZER_FILE}, the manifest names {name!r}")
    if not (project_root / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"cannot build the bento, missing: {project_root / TOKENIZER_FILE}")


def bento_name(manifest: dict[str, Any]) -> str:
    """The model's registered name as a bento name (lower case, ``[a-z0-9._-]``)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", str(manifest["model_name"]).lower()).strip("-._")
    return name or "dlops"


def _bentofile_for(bentofile: Path, manifest: dict[str, Any], tmp: Path) -> Path:
    """A copy of the bentofile named after the model, labelled with its kind and task (same includes)."""
    import yaml

    spec = yaml.safe_load(bentofile.read_text())
    spec["name"] = bento_name(manifest)
    kind = manifest.get("kind") or "image"
    spec["description"] = (f"dlops {kind} {manifest.get('task')} model {manifest['model_name']}: ONNX Runtime "
                           "behind one BentoML 1.4 service (POST /predict, GET /metadata)")
    spec.setdefault("labels", {}).update(task=manifest.get("task"), kind=kind)
    path = tmp / "bentofile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_build(bentofile: Path, project_root: Path, env: dict[str, str], timeout: float) -> Any:
    bentoml = Path(sys.executable).parent / "bentoml"
    cmd = [str(bentoml) if bentoml.exists() else "bentoml", "build", "-f", str(bentofile),
           "--output", "tag", str(project_root)]
    return subprocess.run(cmd, cwd=project_root, env=env, capture_output=True, text=True, timeout=timeout)


def print_service() -> None:
    """Check the model that DLOPS_MODEL_URI / DLOPS_MODEL_DIR / artifacts/deploy names loads, and print
    the service (``make serve``): a model the service cannot load stops here with one line."""
    from serving.model import SERVICE, ModelLoadError, load_model

    try:
        load_model()
    except ModelLoadError as exc:
        sys.exit(f"error: cannot serve the model: {exc}")
    print(SERVICE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-root", type=Path, default=Path.cwd())
    parser.add_argument("--bentoml-home", type=Path, default=None)
    parser.add_argument("--print-service", action="store_true", help="print the service for the model and exit")
    args = parser.parse_args()
    if args.print_service:
        print_service()
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_bento(args.project_root, args.bentoml_home))


if __name__ == "__main__":
    main()
