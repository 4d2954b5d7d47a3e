from pathlib import Path

import pytest

from models.registry import ModelError, check_kwargs, list_models
from pipelines.params import ParamsError, load_params, parse_params, section_dict

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_file_loads_and_is_frozen():
    p = load_params(ROOT / "params.yaml")
    assert p.data.source == "sklearn:digits"
    assert p.model.name in list_models()
    check_kwargs(p.model.name, p.model.kwargs)
    assert isinstance(p.evaluate.baselines, tuple)
    with pytest.raises(AttributeError):
        p.train.epochs = 3  # frozen dataclass


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"trian": {}}, "trian"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"augment": "yes"}}, "train.augment"),
        ({"split": {"seed": True}}, "split.seed"),
        ({"optim": {"optimizer": "rmsprop"}}, "optim.optimizer"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"split": {"test_fraction": 1.5}}, "split.test_fraction"),
        ({"evaluate": {"baselines": ["logreg", "forest"]}}, "evaluate.baselines[1]"),
        ({"model": {"kwargs": [1, 2]}}, "model.kwargs"),
        ({"data": "digits"}, "data"),
    ],
)
def test_bad_params_name_the_key(raw, named):
    with pytest.raises(ParamsError, match=f"^{named.replace('[', '.').replace(']', '.')}"):
        parse_params(raw)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: train\.epochs: expected int"):
        load_params(path)
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_int_is_accepted_for_float_and_lr_auto():
    p = parse_params({"optim": {"lr": "auto", "weight_decay": 0}})
    assert p.optim.lr == "auto" and p.optim.weight_decay == 0.0
    assert parse_params({"optim": {"lr": 1}}).optim.lr == 1.0


def test_unknown_architecture_and_kwarg_are_named():
    with pytest.raises(ModelError, match=r"model\.name: unknown architecture 'resnet9000' \(valid: cnn, .*mlp"):
        check_kwargs("resnet9000", {})
    with pytest.raises(ModelError, match=r"model\.kwargs\.widht: 'cnn' takes no such argument"):
        check_kwargs("cnn", {"widht": 3})
    with pytest.raises(ModelError, match=r"model\.kwargs\.num_outputs: set from the data"):
        check_kwargs("mlp", {"num_outputs": 3})


def test_section_dict_is_plain_json():
    d = section_dict(parse_params({}).evaluate)
    assert d["baselines"] == ["logreg", "svc"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "presets").glob("*.yaml")))
def test_presets_are_valid_params(preset):
    p = load_params(ROOT / "presets" / f"{preset}.yaml")
    check_kwargs(p.model.name, p.model.kwargs)
    assert p.deploy.model_name.startswith("dlops-")
