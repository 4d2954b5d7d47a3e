"""Find and load the deployed model: an ONNX file plus its manifest.json and the files the manifest
names (a text model's tokenizer.json), checked by the modality's request side (no torch, no pickles).

Where the model comes from is configuration, never code:

- ``DLOPS_MODEL_URI`` (e.g. ``models:/dlops-digits@champion``): download from the MLflow Model
  Registry (mlflow is imported only in this mode);
- else ``DLOPS_MODEL_DIR``: a directory holding ``manifest.json`` and the ONNX file it names;
- else ``artifacts/deploy`` under the current directory (the project root, or a built bento).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.files import sha256_file

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("artifacts") / "deploy"
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("model_name", "version", "alias", "onnx_file", "onnx_sha256", "run_id", "data_hash",
                 "git_sha", "metrics", "input", "output", "classes")
SERVICE = "serving.service:Predictor"  # the one service, for every modality and task


class ModelLoadError(RuntimeError):
    """The model directory, manifest or ONNX file does not match the deploy contract."""


@dataclass(frozen=True)
class LoadedModel:
    session: Any  # onnxruntime.InferenceSession
    manifest: dict[str, Any]
    source: str  # where it was loaded from (a registry URI or a path), for logs and /metadata
    requests: Any  # the modality's RequestSide (pipelines/modalities/schema.py)
    task: Any  # the task plug-in: turns graph outputs into predictions

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def output_name(self) -> str:
        return self.manifest["output"]["name"]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output for one batch of inputs."""
        return self.session.run([self.output_name], feeds)[0]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch shaped like the manifest's single input."""
        from serving.runtime import softmax

        return softmax(self.run({self.input_name: images}).astype(np.float64)).astype(np.float32)


RESOLVED_DIR, RESOLVED_SOURCE = "DLOPS_RESOLVED_MODEL_DIR", "DLOPS_RESOLVED_MODEL_SOURCE"


def resolve_model_dir(env: dict[str, str] | None = None) -> tuple[Path, str]:
    """The directory to load from and a description of its source.

    Registry mode downloads once per service start: the first process that resolves the URI (the
    ``bentoml serve`` process, importing the service) downloads into a temp dir, removes it at exit,
    and leaves the result in ``DLOPS_RESOLVED_MODEL_*`` for the workers it starts (they inherit it).
    """
    env = os.environ if env is None else env
    uri = env.get("DLOPS_MODEL_URI")
    if uri:
        if env.get(RESOLVED_SOURCE) == uri and Path(env.get(RESOLVED_DIR, "")).is_dir():
            return Path(env[RESOLVED_DIR]), uri
        model_dir = _download_from_registry(uri)
        env[RESOLVED_DIR], env[RESOLVED_SOURCE] = str(model_dir), uri
        return model_dir, uri
    model_dir = Path(env.get("DLOPS_MODEL_DIR") or DEFAULT_MODEL_DIR).resolve()
    return model_dir, str(model_dir)


def deploy_files_path(model_name: str, version: str) -> str:
    """Where deploy puts a registered version's own files (``manifest.json``, the drift reference) in
    the artifacts of the model that train logged (one logged model can back versions of several names)."""
    import re

    return f"deploy/{re.sub(r'[^A-Za-z0-9._-]+', '-', model_name)}/v{version}"


def _download_from_registry(uri: str) -> Path:
    """Download a registered model version: train logged the graph with mlflow.onnx (``model.onnx`` at
    the root; text models: ``tokenizer.json`` as an extra file, in a subfolder) and deploy added the
    version's own ``manifest.json`` and drift reference under ``deploy_files_path``. Returns a dir
    holding the version's files, with the manifest's ``version``/``alias`` filled from the registry
    (unknown when it was logged)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # MLflow's fallback would create ./mlflow.db and answer "no such model"
        raise ModelLoadError(f"{uri}: set MLFLOW_TRACKING_URI to the registry's tracking server or database")
    import atexit
    import shutil

    # fail fast: MLflow's defaults retry an unreachable server for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import mlflow

    target = Path(tempfile.mkdtemp(prefix="dlops-model-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)  # what was downloaded goes at shutdown
    logger.info("downloading %s into %s", uri, target)
    try:
        tracking = os.environ["MLFLOW_TRACKING_URI"]  # explicit: a process-wide mlflow.set_tracking_uri must not win
        # a registered version: resolved first, so an alias that moves meanwhile changes nothing
        name, identity = _registry_identity(uri, tracking) if uri.startswith("models:/") else (None, {})
        pinned = f"models:/{name}/{identity['version']}" if name else uri  # else e.g. runs:/<id>/<folder>
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(target),
                                                        tracking_uri=tracking))
    except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors: one line, not a traceback
        shutil.rmtree(target, ignore_errors=True)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{uri}: cannot load from the MLflow registry at "
                             f"{os.environ['MLFLOW_TRACKING_URI']}: {first}") from None
    if name:
        own = root / deploy_files_path(name, identity["version"])
        if not (own / MANIFEST).is_file():
            raise ModelLoadError(f"{uri}: version {identity['version']} has no {deploy_files_path(name, identity['version'])}"
                                 f"/{MANIFEST} (its deploy did not finish: run the deploy stage again)")
    else:  # a folder holding a manifest (the shallowest one)
        manifests = sorted(root.rglob(MANIFEST), key=lambda p: len(p.parts)) if root.is_dir() else []
        if not manifests:
            raise ModelLoadError(f"{uri}: no {MANIFEST} in the downloaded artifacts ({root})")
        own = manifests[0].parent
    manifest = json.loads((own / MANIFEST).read_text())
    onnx_files = sorted((p for p in root.rglob(manifest.get("onnx_file", "model.onnx"))
                         if not (name and p.relative_to(root).parts[0] == "deploy")), key=lambda p: len(p.parts))
    if not onnx_files:
        raise ModelLoadError(f"{uri}: no {manifest.get('onnx_file')} in the downloaded artifacts ({root})")
    model_dir = onnx_files[0].parent
    _gather_named_files(uri, root, model_dir, manifest)
    if name:
        for path in own.iterdir():  # the version's drift reference beside the graph, where drift looks first
            if path.name != MANIFEST:
                shutil.copyfile(path, model_dir / path.name)
        shutil.rmtree(root / "deploy", ignore_errors=True)  # other versions' files must not be found below it
    manifest.update(identity)
    _fetch_card(manifest, model_dir, tracking)
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return model_dir


def _fetch_card(manifest: dict[str, Any], model_dir: Path, tracking_uri: str) -> None:
    """The version's model card (pipelines/card.py logs it to the run as ``model_card/v<version>/card.md``
    after registering, so it is not among the version's files); a version without one serves 404 at /card."""
    import mlflow

    run_id, version = manifest.get("run_id"), manifest.get("version")
    if not run_id or version is None:
        return
    try:
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"model_card/v{version}/card.md",
                                            dst_path=str(model_dir), tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - no card is not a reason to refuse serving the model
        logger.info("no model card for %s v%s: %s", manifest.get("model_name"), version,
                    str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__)


def _gather_named_files(uri: str, root: Path, model_dir: Path, manifest: dict[str, Any]) -> None:
    """Copy the files the manifest's input names (MLflow extra files, e.g. a tokenizer) next to the ONNX file."""
    import shutil

    name = manifest.get("input", {}).get("tokenizer")
    if not isinstance(name, str):
        return
    found = sorted(root.rglob(Path(name).name), key=lambda p: len(p.parts))
    if not found:
        raise ModelLoadError(f"{uri}: no {name} in the downloaded artifacts ({root})")
    if found[0].resolve() != (model_dir / name).resolve():
        shutil.copyfile(found[0], model_dir / name)


def _registry_identity(uri: str, tracking_uri: str) -> tuple[str, dict[str, Any]]:
    """The registered name and ``version``/``alias`` of a ``models:/name@alias`` or ``models:/name/version`` URI."""
    from mlflow.tracking import MlflowClient

    ref = uri.removeprefix("models:/").rstrip("/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, {"version": str(client.get_model_version_by_alias(name, alias).version), "alias": alias}
    name, _, version = ref.partition("/")
    aliases = client.get_model_version(name, version).aliases
    return name, {"version": version, "alias": aliases[0] if aliases else None}


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: not found (run the deploy stage, or set DLOPS_MODEL_DIR / "
                             "DLOPS_MODEL_URI)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable JSON manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelLoadError(f"{path}: missing keys {missing}")
    if not isinstance(manifest["input"], dict) or not isinstance(manifest["output"], dict) \
            or not isinstance(manifest["output"].get("name"), str):
        raise ModelLoadError(f"{path}: input and output must be objects, output with a name")
    return manifest


def service_for(manifest: dict[str, Any]) -> str:
    """The service for the model (one for every modality; ``make serve`` and serving.build ask)."""
    plugins_for(manifest)  # a kind no service speaks fails here, with the reason
    return SERVICE


def plugins_for(manifest: dict[str, Any]) -> tuple[Any, Any]:
    """The request-side class of the model (its task's own, else its modality's) and its task, from the
    plug-in registries."""
    import importlib

    from pipelines.plugins import PluginError, get_modality, get_task

    try:
        modality = get_modality(manifest.get("kind") or "image")
        task = get_task(manifest.get("task") or "classification")
    except PluginError as exc:
        raise ModelLoadError(f"manifest: {exc}") from None
    side = task.request_side or modality.request_side  # a task whose requests are not data (generation) has its own
    if side is None:
        raise ModelLoadError(f"no service speaks {modality.name!r} models yet")
    module, _, name = side.partition(":")
    return getattr(importlib.import_module(module), name), task


def load_model(env: dict[str, str] | None = None) -> LoadedModel:
    """Resolve, verify (manifest keys, ONNX sha256, input/output names) and open a session."""
    model_dir, source = resolve_model_dir(env)
    return load_model_from(model_dir, source)


def load_model_from(model_dir: Path, source: str) -> LoadedModel:
    """``load_model`` on an already resolved directory (``source`` says where it came from)."""
    from serving.runtime import make_session

    manifest = read_manifest(model_dir)
    requests_cls, task = plugins_for(manifest)
    onnx_path = model_dir / manifest["onnx_file"]
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: ONNX file named by {model_dir / MANIFEST} not found")
    digest = sha256_file(onnx_path)
    if digest != manifest["onnx_sha256"]:
        raise ModelLoadError(f"{onnx_path}: sha256 {digest} != manifest onnx_sha256 {manifest['onnx_sha256']}")
    try:
        session = make_session(onnx_path)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for a corrupt graph
        raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:300]}") from None
    try:
        requests = requests_cls(manifest, model_dir)
        requests.check(session)
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{model_dir / MANIFEST}: {exc}") from None
    outputs = [o.name for o in session.get_outputs()]
    if manifest["output"]["name"] not in outputs:
        raise ModelLoadError(f"{onnx_path}: graph outputs {outputs} lack the manifest's {manifest['output']['name']!r}")
    logger.info("loaded %s version %s (%s) from %s", manifest["model_name"], manifest["version"],
                manifest["alias"], source)
    return LoadedModel(session=session, manifest=manifest, source=source, requests=requests, task=task)
