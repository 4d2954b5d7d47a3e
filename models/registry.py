"""Architecture registry (timm style): ``@register_model`` on a family, ``create_model(name, ...)``.

Torch-free on purpose: steps that only validate names import this without paying for torch.
Adding an architecture is adding one module to ``FAMILIES`` with a decorated class in it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from models import ModelError

__all__ = ["ModelError", "register_model", "unregister_model", "list_models", "get_model_class", "check_kwargs", "create_model"]

# One module per family; imported on first use so that importing the registry stays cheap.
FAMILIES = ("models.mlp", "models.cnn", "models.resnet", "models.tabular", "models.sequence", "models.autoencoder",
            "models.gan")

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister_model(name: str) -> None:
    """Forget an architecture (tests that register their own clean up with this)."""
    _REGISTRY.pop(name, None)


def _load_families() -> None:
    for module in FAMILIES:
        importlib.import_module(module)


def list_models() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> Callable[..., Any]:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"model.name: unknown architecture {name!r} (valid: {', '.join(sorted(_REGISTRY))})") from None


# Arguments that come from the data (model_spec.json / the checkpoint), never from params.
DATA_ARGS = frozenset({"input_shape", "num_outputs", "cardinalities", "vocab_size"})


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ModelError`` naming ``model.kwargs.<key>`` if the architecture does not take it."""
    sig = inspect.signature(get_model_class(name))
    fixed = DATA_ARGS
    accepted = [p for p in sig.parameters if p not in fixed]
    for key in kwargs:
        if key in fixed:
            raise ModelError(f"model.kwargs.{key}: set from the data, not from params")
        if key not in accepted:
            raise ModelError(
                f"model.kwargs.{key}: {name!r} takes no such argument (valid: {', '.join(accepted)})"
            )


def create_model(name: str, input_shape: Sequence[int], num_outputs: int,
                 data_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Build architecture ``name`` for inputs of ``input_shape`` (no batch axis).

    ``data_args`` are other facts about the data (e.g. ``cardinalities`` of categorical columns,
    ``vocab_size`` of a tokenized text);
    each is passed only to architectures whose constructor takes it.
    """
    check_kwargs(name, kwargs)
    cls = get_model_class(name)
    accepted = inspect.signature(cls).parameters
    extra = {k: v for k, v in (data_args or {}).items() if k in accepted}
    needed = [k for k, p in accepted.items() if k in DATA_ARGS - {"input_shape", "num_outputs"}
              and p.default is inspect.Parameter.empty and k not in extra]
    if needed:
        raise ModelError(f"model.name: {name!r} needs {', '.join(needed)} from the data, which this data does not "
                         f"have (it gives: {', '.join(sorted(data_args or {})) or 'only its input shape'})")
    # RuntimeError: torch's own refusals, e.g. a negative layer size ("negative dimension -5")
    try:
        return cls(input_shape=tuple(input_shape), num_outputs=num_outputs, **extra, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        error = exc
    try:  # with its defaults: if it fails too, the data is at fault, not the kwargs
        cls(input_shape=tuple(input_shape), num_outputs=num_outputs, **extra)
    except (TypeError, ValueError, RuntimeError):
        raise ModelError(f"model.name: {name!r} cannot take this data: {error}") from None
    raise ModelError(f"model.kwargs: {name!r} rejected {kwargs}: {error}") from None


def load_network(checkpoint: Any) -> Any:
    """Rebuild the plain ``nn.Module`` from a training checkpoint that carries arch + kwargs (no pickles:
    ``torch.load(weights_only=True)``), in eval mode."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = create_model(ckpt["arch"], ckpt["input_shape"], ckpt["num_outputs"], data_args=ckpt.get("data_args"),
                       **ckpt["kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
