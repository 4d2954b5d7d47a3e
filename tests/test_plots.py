"""`dvc plots show`: an offline page, and only the plots that apply to the task, without a warning."""

from __future__ import annotations

import configparser
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipelines.evaluate import PLOT_HEADERS
from pipelines.tasks.classification import Classification
from pipelines.tasks.regression import Regression
from pipelines.train import _write_curves
from tests.conftest import ROOT

TEMPLATE = ROOT / "infra" / "plots" / "vega.html"
METRIC = "task metric per epoch (accuracy; MAE in standard deviations for regression)"
CLASSIFICATION_PLOTS = {"loss per epoch", METRIC, "test confusion matrix", "ROC (test)", "precision-recall (test)"}
REGRESSION_PLOTS = {"loss per epoch", METRIC, "predicted vs actual (regression, test)"}


def test_dvc_config_points_at_the_vendored_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    # DVC resolves a relative plots.html_template against .dvc/
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE.resolve()


def test_template_needs_no_network():
    page = TEMPLATE.read_text(encoding="utf8")
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    # dvc-render fills a {scripts} placeholder with its CDN <script src> tags
    assert "{scripts}" not in page
    markup = re.sub(r"(<script\b[^>]*>).*?</script>", r"\1</script>", page, flags=re.S)  # the tags, not the JS
    assert markup.count("<script") == 4 and not re.search(r"\b(src|href)\s*=", markup), "everything is inlined"
    assert TEMPLATE.stat().st_size < 2_000_000


def test_template_inlines_the_versions_dvc_render_loads():
    from dvc_render import VegaRenderer

    wanted = set(re.findall(r"npm/([a-z-]+@[\d.]+)", VegaRenderer.SCRIPTS))
    inlined = set(re.findall(r'data-package="([a-z-]+@[\d.]+)"', TEMPLATE.read_text(encoding="utf8")))
    assert wanted == inlined, "dvc-render moved: update the versions in infra/plots/vendor.sh and rerun it"


def _write_csv(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _artifacts(root: Path, task) -> None:
    """curves.csv + metric_curves.csv as the train step writes them (metric columns from ``task.step``), the
    evaluate plot files from the task's own ``report``."""
    rng = np.random.default_rng(0)
    if isinstance(task, Classification):
        y = np.arange(40) % 3
        proba = rng.dirichlet(np.ones(3), size=40)
        test, split = {"proba": proba, "pred": proba.argmax(1)}, {"classes": ["a", "b", "c"]}
        out, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    else:
        y = rng.normal(size=40)
        test, split = {"pred": y + rng.normal(scale=0.1, size=40)}, {}
        out, target = torch.randn(4, 1), torch.randn(4)
    _, step_metrics = task.step(out, target, torch.nn.functional.mse_loss if out.shape[1] == 1 else
                                torch.nn.functional.cross_entropy)
    names = sorted([f"{s}_{m}" for s in ("train", "val") for m in step_metrics] + ["train_loss", "val_loss", "lr"])
    (root / "artifacts/train").mkdir(parents=True)
    history = [{"epoch": e, **dict(zip(names, rng.random(len(names)).round(4)))} for e in range(3)]
    _write_curves(history, root / "artifacts/train/curves.csv")  # the train step's own writer
    plots = root / "artifacts/evaluate/plots"
    plots.mkdir(parents=True)
    _, files = task.report(y, test, {}, split, plots)
    for name, header in PLOT_HEADERS.items():  # as evaluate writes them: the other tasks' plots, header only
        files.setdefault(name, [header])
    for name, rows in files.items():
        _write_csv(plots / name, rows)


def _plots_show(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", "plots", "show", *args], cwd=root,
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.parametrize("task", [Classification(), Regression()], ids=["classification", "regression"])
def test_only_the_plots_of_the_task_and_no_warning(tmp_path, task):
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=60)
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    _artifacts(tmp_path, task)

    shown = _plots_show(tmp_path, "--json")
    result = json.loads(shown.stdout)
    drawn = {name for name, renders in result["data"].items() if renders}
    assert drawn == (CLASSIFICATION_PLOTS if isinstance(task, Classification) else REGRESSION_PLOTS)
    labels = {name: (props["x_label"], props["y_label"]) for plot in plots for name, props in plot.items()}
    for name, renders in result["data"].items():
        for render in renders:  # the axes carry dvc.yaml's labels (DVC's default for a list of fields is "y")
            titles = set(re.findall(r'"title": "([^"]*)"', json.dumps(render["content"])))
            assert set(labels[name]) <= titles and "y" not in titles, (name, titles)
    assert "errors" not in result and "WARNING" not in shown.stderr and "failed" not in shown.stderr, shown.stderr

    page = _plots_show(tmp_path, "--html-template", str(TEMPLATE), "-o", "out")
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf8")
    assert "cdn.jsdelivr" not in html and not re.search(r"<script\b[^>]*\bsrc\s*=", html)
    assert "vega@5" in html and "{plot_divs}" not in html
    assert html.count("vegaEmbed('#") == len(plots) and "WARNING" not in page.stderr
