"""Contract tests over every registered modality x task x compatible architecture (timm's
``test_model_forward`` idea, applied to the whole pipeline).

For each combination: forward + backward on two rows of real model inputs; design -> configure ->
train (one epoch, tiny kwargs) -> evaluate -> deploy with the parity gate; then a request round
trip: three raw test rows -> the modality's request schema (pydantic, from JSON) -> graph inputs
built the way the service builds them -> ``model.onnx`` -> the same outputs as the PyTorch network
on those rows.

Compatibility rule. An architecture declares the inputs it takes by how its family's classes are
written in ``models/*.py``; ``FAMILY_INPUTS`` records that per family module:

* ``models.cnn``: ``image``: float ``[C, H, W]`` (the class refuses any other rank).
* ``models.mlp``: ``float``: any float array, flattened; so it fits images and tables alike.
* ``models.tabular``: ``tabular``: flat float ``[F]`` whose trailing columns are category indices;
  the constructor takes ``cardinalities`` (a data arg only the tabular modality provides).
* ``models.sequence``: ``tokens``: int64 token ids ``[L]``; the constructor takes ``vocab_size``.

A modality accepts the kinds in ``MODALITY_ACCEPTS`` (image: image/float, tabular: tabular/float,
text: tokens). The parameter list is built at collection time from ``DATASETS`` (one tiny dataset
per modality x task) x ``models.registry.list_models()``; a new architecture in an undeclared
family, or a new modality or task without a dataset here, fails ``test_contract_tables_cover_...``
instead of going untested. Incompatible combinations are not skipped: design must refuse them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.registry import create_model, get_model_class, list_models
from pipelines.data import load_split, preprocess_state
from pipelines.files import read_json
from pipelines.plugins import get_modality, get_task, list_modalities, list_tasks
from tests.conftest import make_params

FAMILY_INPUTS = {"models.cnn": "image", "models.resnet": "image", "models.mlp": "float",
                 "models.tabular": "tabular", "models.sequence": "tokens", "models.gan": "image"}
# families whose architectures take different inputs: per architecture
ARCH_INPUTS = {"tab_autoencoder": "tabular", "conv_autoencoder": "image", "autoencoder": "float"}
MODALITY_ACCEPTS = {"image": {"image", "float"}, "tabular": {"tabular", "float"}, "text": {"tokens"}}
# the data arg a family's constructors must take (and the others must not)
KIND_DATA_ARG = {"tabular": "cardinalities", "tokens": "vocab_size"}

# Small enough that one epoch plus export takes seconds; an architecture not listed uses its defaults.
TINY_KWARGS: dict[str, dict[str, Any]] = {
    "cnn": {"channels": [4, 8], "hidden": 16, "dropout": 0.0},
    "resnet_small": {"channels": [4, 8], "dropout": 0.0},
    "fasttext": {"embed_dim": 8, "buckets": 101, "dropout": 0.0},
    "textcnn": {"embed_dim": 8, "channels": 4, "kernel_sizes": [2, 3], "dropout": 0.0},
    "mlp": {"hidden": [16], "dropout": 0.0},
    "tab_mlp": {"hidden": [16], "dropout": 0.0, "max_emb_dim": 4},
    "res_mlp": {"width": 16, "n_blocks": 1, "dropout": 0.0, "max_emb_dim": 4},
    "ft_transformer": {"d_token": 8, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
    "lstm": {"embed_dim": 8, "hidden_size": 8},
    "gru": {"embed_dim": 8, "hidden_size": 8},
    "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "ffn_dim": 32, "dropout": 0.0, "max_len": 32},
    "tab_autoencoder": {"latent": 2, "hidden": [8]},
    "conv_autoencoder": {"latent": 4, "channels": [4, 8]},
    "autoencoder": {"latent": 2, "hidden": [8]},
    "dcgan": {"noise_dim": 8, "width": 8},
}
ROWS = 3  # request rows per round trip


# ---------------------------------------------------------------- tiny datasets, one per modality x task


def _tabular_frame(n: int, regression: bool, seed: int = 0) -> pd.DataFrame:
    """Numeric and categorical columns with some missing values; the target depends on both kinds."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.choice(["S", "M", "L", "XL"], n)
    x1, x2 = rng.normal(0, 1, n), rng.uniform(0, 10, n)
    signal = x1 + 0.2 * x2 + (color == "red") * 1.5 - (size == "S")
    df = pd.DataFrame({"x1": x1.round(4), "x2": x2.round(4), "color": color, "size": size})
    df.loc[rng.random(n) < 0.1, "x2"] = np.nan  # imputed: the request sends null
    df.loc[rng.random(n) < 0.1, "color"] = None
    df["y"] = (100 + 20 * signal + rng.normal(0, 2, n)).round(3) if regression else \
        np.where(signal + rng.normal(0, 0.5, n) > np.median(signal), "yes", "no")
    return df


def tabular_data(tmp: Path, task: str) -> dict[str, Any]:
    path = tmp / f"table-{task}.csv"
    _tabular_frame(200, task == "regression").to_csv(path, index=False)
    return {"source": f"csv:{path}", "target": "y", "task": task}


EN = {"good": ["great", "loved", "excellent", "superb"], "bad": ["awful", "boring", "hated", "dreadful"]}
ZH = {"good": ["很好看", "推荐"], "bad": ["很无聊", "失望"]}
FILL_EN, FILL_ZH = ["the", "film", "was", "really", "plot", "and", "music"], ["这部电影", "剧情", "真的", "音乐"]


def text_data(tmp: Path, task: str) -> dict[str, Any]:
    """120 short English and Chinese texts, two labels carried by sentiment words."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        label = ("good", "bad")[i % 2]
        if i % 3 == 2:
            words = [*rng.choice(FILL_ZH, 2), rng.choice(ZH[label])]
            rows.append({"text": "".join(rng.permutation(words)), "label": label})
        else:
            words = [*rng.choice(FILL_EN, int(rng.integers(2, 7))), rng.choice(EN[label])]
            rows.append({"text": " ".join(rng.permutation(words)), "label": label})
    path = tmp / "texts.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return {"source": f"csv:{path}", "text": "text", "target": "label"}


@dataclass(frozen=True)
class Case:
    modality: str
    task: str
    build: Callable[[Path, str], dict[str, Any]]  # tmp dir, task -> the data params section

    @property
    def id(self) -> str:
        return f"{self.modality}-{self.task}"


def digits(tmp: Path, task: str) -> dict[str, Any]:
    return {"source": "sklearn:digits", "task": task}


DATASETS = (
    Case("image", "classification", digits),
    Case("tabular", "classification", tabular_data),
    Case("tabular", "regression", tabular_data),
    Case("text", "classification", text_data),
    Case("image", "anomaly", digits),
    Case("tabular", "anomaly", tabular_data),
    Case("image", "embedding", digits),
    Case("tabular", "embedding", tabular_data),
    Case("image", "generation", digits),
)


def input_kind(arch: str) -> str | None:
    return ARCH_INPUTS.get(arch) or FAMILY_INPUTS.get(get_model_class(arch).__module__)


def arch_kind(arch: str) -> str:
    """What an architecture learns (``kind``: predictor, autoencoder, gan); tasks train one kind."""
    return getattr(get_model_class(arch), "kind", "predictor")


def compatible(case: Case, arch: str) -> bool:
    return (input_kind(arch) in MODALITY_ACCEPTS.get(case.modality, ())
            and arch_kind(arch) == get_task(case.task).model_kind)


COMBOS = [pytest.param(c, a, id=f"{c.id}-{a}") for c in DATASETS for a in list_models() if compatible(c, a)]
MISFITS = [pytest.param(c, a, id=f"{c.id}-{a}") for c in DATASETS for a in list_models() if not compatible(c, a)]


@pytest.fixture(scope="module")
def mlflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sqlite MLflow store for the module (train logs every run there)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case], tuple[dict[str, Any], Path]]:
    """Collect + split each dataset once (on first use): ``case -> (data params, split dir)``."""
    from pipelines import collect, split

    cache: dict[str, tuple[dict[str, Any], Path]] = {}

    def get(case: Case) -> tuple[dict[str, Any], Path]:
        if case.id not in cache:
            base = tmp_path_factory.mktemp(case.id)
            data = case.build(base, case.task)
            params = make_params(data=data, text={"max_len": 16, "min_frequency": 1})
            collect.run(params, base / "collect")
            split.run(params, base / "collect", base / "split")
            cache[case.id] = (data, base / "split")
        return cache[case.id]

    return get


def params_for(data: dict[str, Any], arch: str, name: str) -> Any:
    return make_params(
        data=data, text={"max_len": 16, "min_frequency": 1},
        model={"name": arch, "kwargs": TINY_KWARGS.get(arch, {})},
        train={"epochs": 1, "batch_size": 64, "patience": 1},
        optim={"optimizer": "adam"} if data.get("task") == "generation" else {},
        generation={"samples": 40, "judge_epochs": 1},
        embedding={"clusters": 3},
        evaluate={"baselines": [], "min_score": -1e9},
        deploy={"build_bento": False, "register": False, "model_name": name, "parity_batch_sizes": [7]},
    )


def _net_for(split_dir: Path, arch: str) -> tuple[Any, int]:
    split = read_json(split_dir / "split.json")
    data_args = get_modality(split["kind"]).data_args(preprocess_state(split_dir))
    num_outputs = get_task(split["task"]).num_outputs(split)
    return create_model(arch, split["input_shape"], num_outputs, data_args=data_args,
                        **TINY_KWARGS.get(arch, {})), num_outputs


# ---------------------------------------------------------------- the tables themselves


def test_contract_tables_cover_every_plugin_and_architecture() -> None:
    """A new modality, task or architecture family must join these tables to be covered."""
    assert {c.modality for c in DATASETS} == set(list_modalities())
    assert {c.task for c in DATASETS} == set(list_tasks())
    assert set(MODALITY_ACCEPTS) == set(list_modalities())
    undeclared = {a: get_model_class(a).__module__ for a in list_models() if input_kind(a) is None}
    assert not undeclared, f"declare the input kind of these families in FAMILY_INPUTS: {undeclared}"
    for arch in list_models():  # the declaration agrees with the constructor's data args
        takes = set(inspect.signature(get_model_class(arch)).parameters)
        expected = KIND_DATA_ARG.get(input_kind(arch))
        assert takes & set(KIND_DATA_ARG.values()) == ({expected} if expected else set()), arch
    assert {a for c in DATASETS for a in list_models() if compatible(c, a)} == set(list_models())


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("case,arch", COMBOS)
def test_forward_backward(case: Case, arch: str, prepared: Callable) -> None:
    import torch

    _, split_dir = prepared(case)
    net, num_outputs = _net_for(split_dir, arch)
    X = torch.from_numpy(load_split(split_dir, "train")[0][:2])
    net.train()
    kind = arch_kind(arch)
    if kind == "autoencoder":
        out = net.errors(X)
        assert out.shape[0] == 2 and out.ndim == 2 and (out >= 0).all()
    elif kind == "gan":
        labels = torch.zeros(2, dtype=torch.long)
        fake = net.generate(torch.randn(2, net.noise_dim), labels)
        assert fake.shape == X.shape
        out = net.discriminate(fake, labels) + net.discriminate(X, labels)
    else:
        out = net(X)
        assert tuple(out.shape) == (2, num_outputs) and out.dtype == torch.float32
    out.square().sum().backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(X) if kind == "predictor" else out).all()


@pytest.mark.parametrize("case,arch", MISFITS)
def test_design_refuses_incompatible(case: Case, arch: str, prepared: Callable, tmp_path: Path) -> None:
    """An architecture that does not take this modality's inputs fails at design with one line naming
    model.name (ft_transformer once read token ids as numbers and passed silently)."""
    from models import ModelError
    from pipelines import design

    data, split_dir = prepared(case)
    with pytest.raises(ModelError, match=rf"^model\.name: '{arch}' (needs|cannot take|is a)"):
        design.run(params_for(data, arch, "misfit"), split_dir, tmp_path / "design")
    assert not (tmp_path / "design").exists()


# ---------------------------------------------------------------- one epoch -> deploy -> request round trip


def image_items(split_dir: Path, rows: np.ndarray) -> list[Any]:
    """Raw pixel values, no client-side scaling: single-channel images as nested lists."""
    raw = load_split(split_dir, "test", preprocess=False)[0][rows]
    return [image[0].tolist() for image in raw]


def _plain(value: Any) -> Any:
    """A parquet cell as JSON sends it: null for missing, Python float/str otherwise."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value if isinstance(value, str) else float(value)


def tabular_items(split_dir: Path, rows: np.ndarray) -> list[Any]:
    """Raw test rows as records keyed by column (the target left out)."""
    raw = pd.read_parquet(split_dir / "test.parquet").iloc[rows]
    target = json.loads((split_dir / "split.json").read_text())["target"]
    return [{c: _plain(rec[c]) for c in raw.columns if c != target} for _, rec in raw.iterrows()]


def text_items(split_dir: Path, rows: np.ndarray) -> list[Any]:
    texts = pd.read_parquet(split_dir / "test.parquet")["text"].tolist()
    return [texts[i] for i in rows]


# raw test items per modality, as a client holds them (the request's one field comes from the request side)
ITEMS: dict[str, Callable[[Path, np.ndarray], list[Any]]] = {
    "image": image_items, "tabular": tabular_items, "text": text_items}


def served_feeds(deploy_dir: Path, items: list[Any]) -> dict[str, np.ndarray]:
    """The service's own path: the deployed model's request side validates the JSON body's items
    and turns them into graph inputs (serving/service.py does exactly this per request)."""
    from pydantic import TypeAdapter

    from serving.model import load_model_from

    model = load_model_from(deploy_dir, "contract-test")
    body = json.loads(json.dumps({model.requests.field: items}, ensure_ascii=False))
    items = TypeAdapter(model.requests.items_type()).validate_python(body[model.requests.field])
    return model.requests.to_inputs(items).feeds


def request_rows(case: Case, split_dir: Path) -> np.ndarray:
    """The first ``ROWS`` test rows; for tables the last is the first row with a missing value, so
    the request carries a null (imputed inside the graph)."""
    rows = np.arange(ROWS)
    if case.modality == "tabular":
        missing = np.flatnonzero(pd.read_parquet(split_dir / "test.parquet").isna().any(axis=1).to_numpy())
        assert missing.size, "the tabular contract data should have missing values"
        rows = np.unique(np.r_[rows[:-1], missing[0]])
    return rows


def test_every_served_modality_has_a_round_trip() -> None:
    assert set(ITEMS) == {m for m in list_modalities() if get_modality(m).request_side}


@pytest.mark.parametrize("case,arch", COMBOS)
def test_one_epoch_to_deployed_round_trip(case: Case, arch: str, prepared: Callable, mlflow_env: str,
                                          tmp_path: Path) -> None:
    from pipelines import configure, deploy, design, evaluate, train
    from pipelines.plugins import predict_outputs
    from pipelines.evaluate import load_network
    from serving.runtime import make_session

    data, split_dir = prepared(case)
    params = params_for(data, arch, f"contract-{case.id}-{arch}")
    w = {s: tmp_path / s for s in ("design", "configure", "train", "evaluate", "deploy")}
    design.run(params, split_dir, w["design"])
    configure.run(params, split_dir, w["design"], w["configure"])
    train.run(params, split_dir, w["design"], w["configure"], w["train"])
    evaluate.run(params, split_dir, w["train"], w["evaluate"])
    deploy.run(params, split_dir, w["train"], w["evaluate"], w["deploy"])

    parity = read_json(w["deploy"] / "parity.json")
    assert parity["passed"], parity
    manifest = read_json(w["deploy"] / "manifest.json")
    assert (manifest["kind"], manifest["task"]) == (case.modality, case.task)
    assert read_json(w["train"] / "run.json")["epochs_run"] == 1

    # request -> graph inputs -> ONNX Runtime == the PyTorch network on the same test rows
    rows = request_rows(case, split_dir)
    task = get_task(case.task)
    if task.request_side:  # generation: a request asks for classes and seeds, not for data
        classes = manifest["input"]["label"]["classes"]
        items = [{"label": classes[int(i) % len(classes)] if classes else None, "seed": int(i)} for i in rows]
    else:
        items = ITEMS[case.modality](split_dir, rows)
    feed = served_feeds(w["deploy"], items)
    if case.modality == "text":  # the service's tokens are the training split's tokens
        from pipelines.modalities.text.serve import trim_padding

        saved = load_split(split_dir, "test", preprocess=False)[0][rows]
        np.testing.assert_array_equal(feed[manifest["input"]["name"]], trim_padding(saved))
    served = make_session(w["deploy"] / manifest["onnx_file"]).run([manifest["output"]["name"]], feed)[0]
    state = preprocess_state(split_dir)
    head = task.export_head(load_network(w["train"] / "model.pt"), state["target"])
    if task.request_side:
        expected = generated(head, feed, manifest)
    else:
        expected = predict_outputs(head, load_split(split_dir, "test")[0][rows])
    assert served.shape == (len(rows), *manifest["output"]["shape"][1:]) == expected.shape
    # parity_scale: regression answers in target units, compared in target standard deviations
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-4 * task.parity_scale(state["target"]))
    if task.compares_labels:
        assert (served.argmax(1) == expected.argmax(1)).all()


def generated(net: Any, feed: dict[str, np.ndarray], manifest: dict[str, Any]) -> np.ndarray:
    """The PyTorch generator on the service's noise and labels, in the data's raw units."""
    import torch

    lo, hi = manifest["input"]["image"]["value_range"]
    with torch.no_grad():
        unit = net.eval().generate(torch.from_numpy(feed["noise"]), torch.from_numpy(feed["label"]))
    return (lo + (unit + 1) / 2 * (hi - lo)).numpy()
