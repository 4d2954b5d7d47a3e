"""Test helpers: small untrained model directories that honour the deploy contract, and a served one.

Used by tests and benchmarks. Imports torch and the exporter, so it lives under tests/, outside the
bento (serving/bentofile.yaml includes only serving/ modules and the deploy artifacts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.model import MANIFEST, sha256_file


def build_demo_model(out_dir: Path, seed: int = 0) -> Path:
    """Export a tiny CNN (preprocessing baked in) and write its manifest.json; ~10 s."""
    import torch

    from models.registry import create_model
    from pipelines.export import Deployable, export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = create_model("cnn", (1, 8, 8), 10, channels=[8, 16], hidden=32)
    deployable = Deployable(net, {"kind": "standardize_global", "mean": 4.9, "std": 6.0}, [1, 8, 8])
    export_onnx(deployable, [1, 8, 8], out_dir / "model.onnx")
    manifest = {
        "model_name": "dlops-digits-demo", "version": "7", "alias": "champion",
        "alias_reason": "demo model for tests", "onnx_file": "model.onnx",
        "onnx_sha256": sha256_file(out_dir / "model.onnx"), "run_id": "demo-run", "data_hash": "demo-data",
        "git_sha": "demo-sha", "metrics": {"accuracy": 0.1, "macro_f1": 0.1}, "task": "classification",
        "input": {"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32", "value_range": [0.0, 16.0]},
        "output": {"name": "logits", "shape": [-1, 10], "dtype": "float32"},
        "classes": [str(i) for i in range(10)], "bento_tag": None, "created_at": "2025-01-01T00:00:00+00:00",
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def build_photo_model(out_dir: Path, channels: int = 3, size: tuple[int, int] = (32, 32),
                      classes: tuple[str, ...] = ("cat", "dog", "bird"), seed: int = 0,
                      arch: str = "cnn", kwargs: dict[str, Any] | None = None) -> Path:
    """A model of image *files* as deploy writes it: a tiny untrained CNN taking float32 raw 0..255
    values ``[-1, channels, H, W]`` (standardisation baked in) and a manifest whose input has
    ``"image": {"size", "channels"}``, the contract the service decodes uploads by; ~10 s."""
    import torch

    from models.registry import create_model
    from pipelines.export import Deployable, export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    shape = [channels, *size]
    net = create_model(arch, tuple(shape), len(classes),
                       **(kwargs if kwargs is not None else {"channels": [8, 16], "hidden": 32}))
    deployable = Deployable(net, {"kind": "standardize_global", "mean": 120.0, "std": 64.0}, shape)
    export_onnx(deployable, shape, out_dir / "model.onnx")
    manifest = {
        "model_name": "dlops-photos-demo", "version": "3", "alias": "champion",
        "alias_reason": "demo model for tests", "onnx_file": "model.onnx",
        "onnx_sha256": sha256_file(out_dir / "model.onnx"), "run_id": "demo-run", "data_hash": "demo-data",
        "git_sha": "demo-sha", "metrics": {"accuracy": 0.3, "macro_f1": 0.3}, "task": "classification",
        "input": {"name": "input", "shape": [-1, *shape], "dtype": "float32", "value_range": [0, 255],
                  "image": {"size": list(size), "channels": channels}},
        "output": {"name": "logits", "shape": [-1, len(classes)], "dtype": "float32"},
        "classes": list(classes), "bento_tag": None, "created_at": "2025-01-01T00:00:00+00:00",
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


# A small English + Chinese corpus for the text demo model's tokenizer (Chinese: one token a character).
TEXT_CORPUS = [
    "this movie was great and the acting was wonderful", "worst purchase ever , do not buy",
    "the food was good but the service was slow", "i love this phone , the battery lasts all day",
    "terrible customer support and a broken product", "an excellent book that i will read again",
    "这部电影太好看了", "服务很差，再也不来了", "质量很好，物流也很快", "价格便宜但是质量一般",
    "我非常喜欢这个手机", "太失望了，完全不值这个价",
]
CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]"


def build_text_tokenizer(out_path: Path, corpus: list[str] | None = None) -> Path:
    """Fit a WordLevel tokenizer (<pad> = 0, <unk> = 1; whitespace words, each CJK character alone)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
    # control characters are dropped (as BERT's clean_text does): a text of only those has no tokens
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                                 normalizers.Replace(Regex(r"[\x00-\x08\x0e-\x1f\x7f]"), "")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
                                                       pre_tokenizers.Whitespace()])
    tokenizer.train_from_iterator(corpus or TEXT_CORPUS, WordLevelTrainer(special_tokens=["<pad>", "<unk>"]))
    assert (tokenizer.token_to_id("<pad>"), tokenizer.token_to_id("<unk>")) == (0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_path))
    return out_path


def build_text_model(out_dir: Path, max_len: int = 16, threshold: float | None = 0.46, seed: int = 0) -> Path:
    """A text model dir as the deploy stage writes it: tokenizer.json, an untrained bag-of-embeddings
    classifier (masked mean pooling: padding does not change its output) exported with both input axes
    dynamic, and manifest.json; ~15 s."""
    import torch
    from tokenizers import Tokenizer

    tokenizer_path = build_text_tokenizer(out_dir / "tokenizer.json")
    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()

    class BagOfEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, 8, padding_idx=0)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            mask = (ids != 0).unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return self.head(pooled)

    torch.manual_seed(seed)
    net = BagOfEmbeddings().eval()
    example = torch.randint(1, vocab, (3, 5), dtype=torch.int64)  # size-1 axes would be frozen
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    program = torch.onnx.export(net, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=dims, external_data=False)
    program.save(str(out_dir / "model.onnx"))
    manifest = {
        "model_name": "dlops-text-demo", "version": "4", "alias": "champion", "alias_reason": "demo model for tests",
        "onnx_file": "model.onnx", "onnx_sha256": sha256_file(out_dir / "model.onnx"), "run_id": "demo-run",
        "data_hash": "demo-data", "git_sha": "demo-sha", "metrics": {"accuracy": 0.5, "macro_f1": 0.5},
        "task": "classification", "kind": "text", "classes": ["negative", "positive"],
        "decision_threshold": threshold,
        "input": {"kind": "texts", "name": "input", "dtype": "int64", "max_len": max_len,
                  "tokenizer": "tokenizer.json", "tokenizer_sha256": sha256_file(tokenizer_path)},
        "output": {"name": "logits", "shape": [-1, 2], "dtype": "float32"},
        "bento_tag": None, "created_at": "2025-01-01T00:00:00+00:00",
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path | None, port: int, bentoml_home: Path, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``bentoml serve`` of the one service over ``model_dir`` on 127.0.0.1:port (None: registry mode,
    ``DLOPS_MODEL_URI`` in ``extra_env``), in its own process group (for killpg)."""
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("DLOPS_MODEL_URI", None)  # the caller's shell: the model is what this call names
    env.pop("DLOPS_MODEL_DIR", None)
    if model_dir is not None:
        env["DLOPS_MODEL_DIR"] = str(model_dir)
    env.update(extra_env or {})
    root = Path(__file__).resolve().parents[1]
    from serving.model import SERVICE

    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE,
           "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> float:
    """Poll /readyz until 200; raise if the server exits or the timeout passes. Returns seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/readyz not ready after {timeout} s")


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the server's process group (arbiter + workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


@contextlib.contextmanager
def serving(model_dir: Path, work: Path, timeout: float = 90.0,
            extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """A ready ``bentoml serve`` of ``model_dir`` on a free 127.0.0.1 port, stopped on exit;
    yields ``{"url", "port", "log", "proc"}`` and prints the server log's tail if it never got ready.
    ``extra_env``: settings for the server (``DLOPS_MAX_INFLIGHT``, ``DLOPS_BODY_TIMEOUT_S``...)."""
    log = work / "serve.log"
    for attempt in range(3):  # free_port() can lose its port to another process before the server binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(model_dir, port, work / "bentoml_home", log, extra_env)
        try:
            wait_ready(proc, url, timeout=timeout)
            break
        except Exception:
            stop_server(proc)
            if attempt < 2 and "Address already in use" in log.read_text(errors="replace"):
                continue
            print(log.read_text()[-5000:])
            raise
    try:
        yield {"url": url, "port": port, "log": log, "proc": proc}
    finally:
        stop_server(proc)


# What `dvc repro` needs of the project, copied into a fresh git + DVC repo by the pipeline tests
PROJECT = ("pipelines", "models", "serving", "data", "dvc.yaml", ".gitignore", ".dvcignore")


def copy_project(dest: Path) -> None:
    """The project's code, dvc.yaml and data folder into ``dest`` (no caches, no artifacts)."""
    root = Path(__file__).resolve().parents[1]
    for name in PROJECT:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, dest / name)


STEPS = ("collect", "split", "design", "configure", "train", "evaluate", "deploy")


def run_steps(params: Any, work: Path, steps: tuple[str, ...] = STEPS) -> dict[str, Any]:
    """The steps' ``run`` functions in dvc.yaml's order into ``work/<step>`` (in-process, as the flow
    does): ``{"dirs": step -> folder, "out": step -> what its run returned, "seconds": step -> wall s}``."""
    from pipelines import collect, configure, deploy, design, evaluate, split, train

    d = {s: Path(work) / s for s in STEPS}
    calls = {
        "collect": lambda: collect.run(params, d["collect"]),
        "split": lambda: split.run(params, d["collect"], d["split"]),
        "design": lambda: design.run(params, d["split"], d["design"]),
        "configure": lambda: configure.run(params, d["split"], d["design"], d["configure"]),
        "train": lambda: train.run(params, d["split"], d["design"], d["configure"], d["train"]),
        "evaluate": lambda: evaluate.run(params, d["split"], d["train"], d["evaluate"]),
        "deploy": lambda: deploy.run(params, d["split"], d["train"], d["evaluate"], d["deploy"]),
    }
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for step in steps:
        started = time.perf_counter()
        out[step] = calls[step]()
        seconds[step] = round(time.perf_counter() - started, 1)
    return {"dirs": d, "out": out, "seconds": seconds}
