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
    with pytest.raises(ModelError, match=r"model\.name: unknown architecture 'resnet9000' \(valid: .*cnn, .*mlp"):
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


# ---- issue 11: every bad value fails before any work, with one line naming the key ---------------

BAD_VALUES = [
    ({"optim": {"lr": float("inf")}}, "optim.lr: expected float or 'auto', got inf"),
    ({"optim": {"weight_decay": -0.1}}, "optim.weight_decay: must be >= 0"),
    ({"optim": {"momentum": 1.5}}, "optim.momentum: must be in"),
    ({"optim": {"gamma": 0}}, "optim.gamma: must be in"),
    ({"optim": {"step_size": 0}}, "optim.step_size: must be >= 1"),
    ({"optim": {"label_smoothing": float("nan")}}, "optim.label_smoothing: must be a finite number"),
    ({"train": {"batch_size": -64}}, "train.batch_size: must be >= 1"),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1"),
    ({"split": {"val_fraction": float("-inf")}}, "split.val_fraction: must be a finite number"),
    ({"text": {"max_len": -1}}, "text.max_len: must be >= 1"),
    ({"deploy": {"parity_atol": float("inf")}}, "deploy.parity_atol: must be a finite number"),
    ({"evaluate": {"min_score": float("nan")}}, "evaluate.min_score: must be a finite number"),
    ({"data": {"task": "clustering"}}, "data.task: expected auto or a registered task"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES])
def test_out_of_range_values_name_the_key(raw, message):
    import re

    with pytest.raises(ParamsError, match=f"^{re.escape(message)}"):
        parse_params(raw)


def _write(tmp_path, edit):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: raw["train"].pop("epochs"), r"train\.epochs: missing \(params\.yaml lists every key; the default would be 20\)"),
    (lambda raw: raw.update(trian=raw.pop("train")), r"trian: unknown section"),
    (lambda raw: raw.pop("deploy"), r"deploy: missing section"),
], ids=["deleted key", "typo'd section", "deleted section"])
def test_a_params_file_must_list_every_key(tmp_path, edit, message):
    """A deleted line must not silently become the code's default (parse_params on a dict still fills them)."""
    with pytest.raises(ParamsError, match=f"params.yaml: {message}"):
        load_params(_write(tmp_path, edit))


def test_negative_layer_size_names_model_kwargs():
    from models.registry import create_model

    with pytest.raises(ModelError, match=r"^model\.kwargs: 'cnn' rejected \{'hidden': -5\}: .*negative dimension"):
        create_model("cnn", (1, 8, 8), 10, hidden=-5)


def test_gpu_accelerator_without_a_gpu_fails_before_any_work(tmp_path):
    import torch

    from pipelines import train
    from tests.conftest import make_params

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(ParamsError, match=r"^train\.accelerator: 'gpu' but no CUDA device is visible"):
        train.run(make_params(train={"accelerator": "gpu"}), tmp_path / "missing", tmp_path, tmp_path, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_stage_reports_bad_params_in_one_line_without_traceback(tmp_path):
    """What `dvc repro` shows: the stage's main() prints one line naming the key and exits 2."""
    import subprocess
    import sys

    path = _write(tmp_path, lambda raw: raw["optim"].update(weight_decay=-0.5))
    out = subprocess.run([sys.executable, "-m", "pipelines.collect", "--params", str(path), "--out-dir",
                          str(tmp_path / "c")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    lines = [ln for ln in out.stderr.splitlines() if "optim.weight_decay" in ln]
    assert len(lines) == 1 and "must be >= 0, got -0.5" in lines[0], out.stderr
    assert not (tmp_path / "c").exists()
