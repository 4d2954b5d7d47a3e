"""Find and load the deployed model: an ONNX file plus its manifest.json, and for a text model the
tokenizer.json the manifest names (no torch, no pickles).

Where the model comes from is configuration, never code:

- ``DLOPS_MODEL_URI`` (e.g. ``models:/dlops-digits@champion``): download from the MLflow Model
  Registry (mlflow is imported only in this mode);
- else ``DLOPS_MODEL_DIR``: a directory holding ``manifest.json`` and the ONNX file it names;
- else ``artifacts/deploy`` under the current directory (the project root, or a built bento).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("artifacts") / "deploy"
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("model_name", "version", "alias", "onnx_file", "onnx_sha256", "run_id", "data_hash",
                 "git_sha", "metrics", "input", "output", "classes")


# ONNX input type of each tabular column type (NaN / "" mean missing)
TABULAR_TYPES = {"numeric": "tensor(float)", "categorical": "tensor(string)"}
TOKENIZER = "tokenizer.json"  # a text model's tokenizer, beside its manifest


class ModelLoadError(RuntimeError):
    """The model directory, manifest or ONNX file does not match the deploy contract."""


@dataclass(frozen=True)
class LoadedModel:
    session: Any  # onnxruntime.InferenceSession
    manifest: dict[str, Any]
    source: str  # where it was loaded from, for logs and /metadata
    tokenizer_path: Path | None = None  # text models: the verified tokenizer.json

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for a float32 batch shaped like the manifest's input."""
        from serving.runtime import softmax

        (logits,) = self.session.run([self.manifest["output"]["name"]], {self.input_name: images})
        return softmax(logits.astype(np.float64)).astype(np.float32)


def resolve_model_dir(env: dict[str, str] | None = None) -> tuple[Path, str]:
    """The directory to load from and a description of its source (downloads in registry mode)."""
    env = dict(os.environ) if env is None else env
    uri = env.get("DLOPS_MODEL_URI")
    if uri:
        return _download_from_registry(uri), uri
    model_dir = Path(env.get("DLOPS_MODEL_DIR") or DEFAULT_MODEL_DIR).resolve()
    return model_dir, str(model_dir)


def _download_from_registry(uri: str) -> Path:
    """Download a registered model version; deploy logged it with mlflow.onnx (``model.onnx`` at
    the root) and ``manifest.json`` (text models: also ``tokenizer.json``) as extra files, which land
    in a subfolder. Returns a dir holding them all, with the manifest's ``version``/``alias`` filled
    from the registry (unknown when it was logged)."""
    import mlflow

    target = Path(tempfile.mkdtemp(prefix="dlops-model-"))
    logger.info("downloading %s into %s", uri, target)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    manifests = sorted(root.rglob(MANIFEST), key=lambda p: len(p.parts)) if root.is_dir() else []
    if not manifests:
        raise ModelLoadError(f"{uri}: no {MANIFEST} in the downloaded artifacts ({root})")
    manifest = json.loads(manifests[0].read_text())
    onnx_files = sorted(root.rglob(manifest.get("onnx_file", "model.onnx")), key=lambda p: len(p.parts))
    if not onnx_files:
        raise ModelLoadError(f"{uri}: no {manifest.get('onnx_file')} in the downloaded artifacts ({root})")
    model_dir = onnx_files[0].parent
    if is_text(manifest):
        _gather_tokenizer(uri, root, model_dir, manifest)
    manifest.update(_registry_identity(uri))
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return model_dir


def _gather_tokenizer(uri: str, root: Path, model_dir: Path, manifest: dict[str, Any]) -> None:
    """Copy the text model's tokenizer file (an MLflow extra file) next to the ONNX file."""
    import shutil

    name = manifest.get("input", {}).get("tokenizer") or TOKENIZER
    found = sorted(root.rglob(Path(name).name), key=lambda p: len(p.parts))
    if not found:
        raise ModelLoadError(f"{uri}: no {name} in the downloaded artifacts ({root})")
    if found[0].resolve() != (model_dir / name).resolve():
        shutil.copyfile(found[0], model_dir / name)


def _registry_identity(uri: str) -> dict[str, Any]:
    """``version``/``alias`` of a ``models:/name@alias`` or ``models:/name/version`` URI."""
    if not uri.startswith("models:/"):
        return {}
    from mlflow.tracking import MlflowClient

    ref = uri.removeprefix("models:/").rstrip("/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return {"version": str(client.get_model_version_by_alias(name, alias).version), "alias": alias}
    name, _, version = ref.partition("/")
    aliases = client.get_model_version(name, version).aliases
    return {"version": version, "alias": aliases[0] if aliases else None}


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: not found (run the deploy stage, or set DLOPS_MODEL_DIR / "
                             "DLOPS_MODEL_URI)") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelLoadError(f"{path}: missing keys {missing}")
    if is_tabular(manifest):
        _check_tabular_manifest(path, manifest)
        return manifest
    if is_text(manifest):
        _check_text_manifest(path, manifest)
        return manifest
    shape = manifest["input"].get("shape")
    if manifest["input"].get("dtype") != "float32" or not isinstance(shape, list) or len(shape) < 2:
        raise ModelLoadError(f"{path}: input must be float32 with a batch axis, got {manifest['input']}")
    return manifest


def is_tabular(manifest: dict[str, Any]) -> bool:
    return manifest.get("kind") == "tabular"


def is_text(manifest: dict[str, Any]) -> bool:
    return manifest.get("kind") == "text"


def service_for(manifest: dict[str, Any]) -> str:
    """The service that speaks the model's modality (``make serve`` and serving.build pick it)."""
    from pipelines.plugins import PluginError, get_modality

    try:
        service = get_modality(manifest.get("kind") or "image").service
    except PluginError as exc:
        raise ModelLoadError(f"manifest kind: {exc}") from None
    if service is None:
        raise ModelLoadError(f"no service serves {manifest.get('kind')!r} models yet")
    return service


def _check_tabular_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Records in (one typed ONNX input per column); logits [n, classes] or a value [n, 1] out, under the
    name the manifest gives (the contract says "prediction" for regression; the graph is checked)."""
    spec, out = manifest["input"], manifest["output"]
    columns = spec.get("columns") if isinstance(spec, dict) else None
    if spec.get("kind") != "records" or not isinstance(columns, list) or not columns:
        raise ModelLoadError(f"{path}: tabular input must be {{'kind': 'records', 'columns': [...]}}, got {spec}")
    for i, col in enumerate(columns):
        ok = isinstance(col, dict) and isinstance(col.get("name"), str) and col.get("type") in TABULAR_TYPES
        if ok and col["type"] == "categorical":
            ok = isinstance(col.get("categories"), list) and all(isinstance(c, str) for c in col["categories"])
        if not ok:
            raise ModelLoadError(f"{path}: input.columns[{i}] must be {{name, type: numeric|categorical, "
                                 f"categories (categorical)}}, got {col}")
    if len({c["name"] for c in columns}) != len(columns):
        raise ModelLoadError(f"{path}: input.columns has duplicate names")
    if manifest.get("task") not in ("classification", "regression") or not isinstance(out.get("name"), str):
        raise ModelLoadError(f"{path}: need task classification|regression and output.name, got "
                             f"{manifest.get('task')!r}, {out}")
    classes = manifest["classes"]
    width = 1 if manifest["task"] == "regression" else len(classes) if isinstance(classes, list) else 0
    if width < 1 or (manifest["task"] == "classification" and width < 2) or out.get("shape", [-1, width])[-1] != width:
        raise ModelLoadError(f"{path}: output.shape {out.get('shape')} does not fit task {manifest['task']!r} "
                             f"with classes {classes}")


def _check_text_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Token ids in (int64 [batch, seq], 0 = pad), class logits [batch, K] out, a tokenizer file named."""
    spec, out, classes = manifest["input"], manifest["output"], manifest["classes"]
    max_len = spec.get("max_len") if isinstance(spec, dict) else None
    if (not isinstance(spec, dict) or spec.get("kind") != "texts" or spec.get("dtype") != "int64"
            or not isinstance(spec.get("name"), str) or type(max_len) is not int or max_len < 1
            or not isinstance(spec.get("tokenizer"), str) or not isinstance(spec.get("tokenizer_sha256"), str)):
        raise ModelLoadError(f"{path}: text input must be {{'kind': 'texts', 'name', 'dtype': 'int64', "
                             f"'max_len' >= 1, 'tokenizer', 'tokenizer_sha256'}}, got {spec}")
    if manifest.get("task") != "classification" or not isinstance(classes, list) or len(classes) < 2:
        raise ModelLoadError(f"{path}: a text model is a classifier with >= 2 classes, got task "
                             f"{manifest.get('task')!r}, classes {classes}")
    if not isinstance(out.get("name"), str) or out.get("shape", [-1, len(classes)])[-1] != len(classes):
        raise ModelLoadError(f"{path}: output {out} does not fit {len(classes)} classes")


def _check_text_graph(onnx_path: Path, session: Any, model_dir: Path, manifest: dict[str, Any]) -> Path:
    """The graph takes int64 ids with both axes dynamic (the service trims padding columns) and the
    tokenizer file is the one the manifest names; returns its path."""
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    spec = manifest["input"]
    if ([i.name for i in inputs] != [spec["name"]] or inputs[0].type != "tensor(int64)"
            or manifest["output"]["name"] not in outputs):
        raise ModelLoadError(f"{onnx_path}: graph inputs {[(i.name, i.type) for i in inputs]} / outputs {outputs} "
                             f"do not match the manifest's int64 {spec['name']!r} / {manifest['output']['name']!r}")
    shape = inputs[0].shape
    if len(shape) != 2 or any(isinstance(d, int) for d in shape):
        raise ModelLoadError(f"{onnx_path}: input shape {shape}: both axes (batch, seq) must be dynamic")
    tokenizer = model_dir / spec["tokenizer"]
    if not tokenizer.is_file():
        raise ModelLoadError(f"{tokenizer}: tokenizer named by {model_dir / MANIFEST} not found")
    digest = sha256_file(tokenizer)
    if digest != spec["tokenizer_sha256"]:
        raise ModelLoadError(f"{tokenizer}: sha256 {digest} != manifest tokenizer_sha256 {spec['tokenizer_sha256']}")
    return tokenizer


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(env: dict[str, str] | None = None) -> LoadedModel:
    """Resolve, verify (manifest keys, ONNX sha256, input/output names) and open a session."""
    model_dir, source = resolve_model_dir(env)
    return load_model_from(model_dir, source)


def load_model_from(model_dir: Path, source: str) -> LoadedModel:
    """``load_model`` on an already resolved directory (``source`` says where it came from)."""
    from serving.runtime import make_session

    manifest = read_manifest(model_dir)
    onnx_path = model_dir / manifest["onnx_file"]
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: ONNX file named by {model_dir / MANIFEST} not found")
    digest = sha256_file(onnx_path)
    if digest != manifest["onnx_sha256"]:
        raise ModelLoadError(f"{onnx_path}: sha256 {digest} != manifest onnx_sha256 {manifest['onnx_sha256']}")
    session = make_session(onnx_path)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    tokenizer = None
    if is_text(manifest):
        tokenizer = _check_text_graph(onnx_path, session, model_dir, manifest)
    elif is_tabular(manifest):
        got = {i.name: i.type for i in session.get_inputs()}
        want = {c["name"]: TABULAR_TYPES[c["type"]] for c in manifest["input"]["columns"]}
        if got != want or manifest["output"]["name"] not in outputs:
            raise ModelLoadError(f"{onnx_path}: graph inputs {got} / outputs {outputs} do not match the "
                                 f"manifest's columns {want} / output {manifest['output']['name']!r}")
    elif inputs != [manifest["input"]["name"]] or manifest["output"]["name"] not in outputs:
        raise ModelLoadError(f"{onnx_path}: graph inputs {inputs} / outputs {outputs} do not match the manifest")
    logger.info("loaded %s version %s (%s) from %s", manifest["model_name"], manifest["version"],
                manifest["alias"], source)
    return LoadedModel(session=session, manifest=manifest, source=source, tokenizer_path=tokenizer)
