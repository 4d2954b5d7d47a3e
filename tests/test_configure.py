import json

import numpy as np
import pytest

from pipelines import configure, design
from pipelines.configure import choose_loss
from pipelines.params import ParamsError, parse_params
from pipelines.plugins import get_task
from tests.conftest import make_params


def test_loss_is_task_aware():
    p = parse_params({}).optim
    assert choose_loss(p, get_task("classification"), np.array([0, 1]), 2)["name"] == "cross_entropy"
    assert choose_loss(p, get_task("regression"), np.array([0.5]), 1)["name"] == "mse"
    huber = parse_params({"optim": {"loss": "huber"}}).optim
    assert choose_loss(huber, get_task("regression"), np.array([0.5]), 1)["name"] == "huber"
    with pytest.raises(ParamsError, match=r"optim\.loss: 'mse' does not fit a classification task \(valid: auto, cross_entropy\)"):
        choose_loss(parse_params({"optim": {"loss": "mse"}}).optim, get_task("classification"), np.array([0, 1]), 2)


def test_balanced_class_weights_from_train_split():
    p = parse_params({"optim": {"class_weights": "balanced"}}).optim
    y = np.array([0] * 90 + [1] * 10)
    loss = choose_loss(p, get_task("classification"), y, 2)
    assert loss["class_weights"] == pytest.approx([100 / (2 * 90), 100 / (2 * 10)], rel=1e-5)
    with pytest.raises(ParamsError, match=r"absent from the train split"):
        choose_loss(p, get_task("classification"), np.array([0, 0, 2]), 3)


def test_recipe_records_choices(tmp_path, digits_split):
    params = make_params(optim={"optimizer": "sgd", "scheduler": "step", "step_size": 3, "class_weights": "balanced"})
    design.run(params, digits_split, tmp_path / "design")
    spec = json.loads((tmp_path / "design" / "model_spec.json").read_text())
    assert spec["input"]["shape"] == [-1, 1, 8, 8] and spec["num_outputs"] == 10
    assert spec["param_count"] > 0 and spec["dry_run"]["output_shape"] == [2, 10]
    configure.run(params, digits_split, tmp_path / "design", tmp_path / "configure")
    recipe = json.loads((tmp_path / "configure" / "recipe.json").read_text())
    assert recipe["optimizer"] == {"name": "sgd", "lr": 0.003, "lr_source": "params", "weight_decay": 0.0, "momentum": 0.9}
    assert recipe["scheduler"] == {"name": "step", "step_size": 3, "gamma": 0.5}
    assert len(recipe["loss"]["class_weights"]) == 10


def test_lr_auto_runs_lightning_lr_finder(tmp_path, digits_split):
    params = make_params(optim={"lr": "auto"})
    design.run(params, digits_split, tmp_path / "design")
    configure.run(params, digits_split, tmp_path / "design", tmp_path / "configure")
    opt = json.loads((tmp_path / "configure" / "recipe.json").read_text())["optimizer"]
    assert opt["lr_source"] == "lr_finder" and 1e-5 <= opt["lr"] <= 1.0


def test_design_rejects_unknown_architecture_before_writing(tmp_path, digits_split):
    from models.registry import ModelError

    with pytest.raises(ModelError, match="model.name: unknown architecture 'vgg'"):
        design.run(make_params(model={"name": "vgg", "kwargs": {}}), digits_split, tmp_path / "design")
    assert not (tmp_path / "design").exists()
