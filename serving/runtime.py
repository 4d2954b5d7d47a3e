"""ONNX Runtime sessions for deploy's parity check and for the service (no torch, no pickles)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def cuda_really_available() -> bool:
    """True only when an NVIDIA driver is present: onnxruntime-gpu lists the CUDA provider on any
    machine, and asking for it without a GPU logs a loud CUDA load error."""
    return Path("/proc/driver/nvidia/version").exists() or os.environ.get("DLOPS_FORCE_CUDA") == "1"


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available and cuda_really_available():
        chosen.insert(0, "CUDAExecutionProvider")
    return chosen


def make_session(model_path: str | Path, intra_op_threads: int = 1) -> Any:
    """An ``InferenceSession`` tuned for a small shared CPU: 1 intra-op thread, no spinning
    (measured the fastest and steadiest on 2 cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(model_path), sess_options=so, providers=providers())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
