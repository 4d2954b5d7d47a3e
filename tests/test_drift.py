"""Drift (``pipelines/drift.py`` and the modalities' ``drift.py``): the statistics on generated numbers,
each modality's features and verdicts on generated shifted / unshifted items (no model), and two models
built in-process through the real steps (a digits CNN and a table MLP, 1 epoch): the reference deploy
writes, a drift run on recorded requests and on a training-format file, the report, the MLflow log.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import drift
from pipelines.drift import Categorical, Numeric, compare, profile
from tests.conftest import make_params, run_pipeline

ALPHA = 0.01


def reference_of(features: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reference as ``build_reference`` stores it, from features (no model)."""
    return {"format": drift.FORMAT, "features": profile(features, "input"), "context": context or {}}


def verdict(reference: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    return compare(reference, features, ALPHA)


# ---------------------------------------------------------------- statistics


def test_ks_on_the_sketch_finds_a_half_sd_shift_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    ref = profile({"x": Numeric(rng.normal(10, 2, 3000))}, "input")["x"]
    assert len(ref["sketch"]["x"]) == drift.SKETCH_POINTS  # continuous: a quantile sketch, not the data
    same = drift.ks_test(ref, Numeric(rng.normal(10, 2, 1000)))
    moved = drift.ks_test(ref, Numeric(rng.normal(11, 2, 1000)))
    assert same["p_value"] > 0.05 and moved["p_value"] < 1e-10
    assert moved["effect"]["mean_shift_sd"] == pytest.approx(0.5, abs=0.1)
    assert moved["effect"]["ks"] == pytest.approx(0.197, abs=0.05)  # Phi(0.25) - Phi(-0.25)


def test_one_value_in_float32_and_float64_is_one_value() -> None:
    """A median imputed on both sides (float32 from the graph, float64 from the request) must not look
    like a shift: values are compared in whole steps of the feature's grid."""
    rng = np.random.default_rng(1)
    base = rng.normal(5.3, 1, 2000)
    base[:400] = 5.3
    ref = profile({"x": Numeric(base.astype(np.float32).astype(np.float64))}, "input")["x"]
    current = rng.normal(5.3, 1, 1000)
    current[:200] = 5.3
    assert drift.ks_test(ref, Numeric(current))["p_value"] > 0.05


def test_values_beyond_the_reference_range_count() -> None:
    ref = profile({"x": Numeric(np.arange(100, dtype=float))}, "input")["x"]
    assert drift.ks_test(ref, Numeric(np.full(500, -5.0)))["statistic"] == 1.0
    assert drift.ks_test(ref, Numeric(np.full(500, 500.0)))["statistic"] == 1.0


def test_chi2_flags_a_new_dominant_category_and_pools_rare_cells() -> None:
    rng = np.random.default_rng(2)
    cats = ["a", "b", "c", *(f"rare{i}" for i in range(30))]
    p = np.r_[0.5, 0.3, 0.19, np.full(30, 0.01 / 30)]
    ref = profile({"c": drift.labels(rng.choice(cats, 3000, p=p))}, "input")["c"]
    same = drift.chi2_test(ref, drift.labels(rng.choice(cats, 1000, p=p)))
    new = rng.choice(cats, 1000, p=p).astype(object)
    new[:500] = "zzz"
    moved = drift.chi2_test(ref, drift.labels(new))
    assert same["p_value"] > 0.05 and moved["p_value"] < 1e-10
    assert moved["effect"]["unseen"]["zzz"] == 500
    assert moved["effect"]["top_changes"][0]["category"] in (drift.OTHER, drift.NEW)


def test_benjamini_hochberg() -> None:
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(4).uniform(0, 0.1, 20) ** 2
    np.testing.assert_allclose(drift.benjamini_hochberg(p), false_discovery_control(p))
    q = drift.benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_false_alarms_stay_under_alpha_over_many_features() -> None:
    """200 unshifted samples against one reference, 12 features of every kind: the share of samples
    with any drifting feature stays at about alpha (BH controls it over the family)."""
    rng = np.random.default_rng(3)

    def sample(n: int) -> dict[str, Any]:
        out: dict[str, Any] = {f"n{i}": Numeric(rng.normal(0, 1, n)) for i in range(4)}
        out.update({f"i{i}": Numeric(rng.poisson(2, n).astype(float)) for i in range(4)})
        out.update({f"c{i}": drift.labels(rng.choice(list("abcdef"), n, p=[.4, .2, .2, .1, .05, .05]))
                    for i in range(3)})
        w = rng.dirichlet([2, 1, 1], n)
        out["bag"] = Categorical(weights=w, columns=["x", "y", "z"])
        return out

    reference = reference_of(sample(5000))
    alarms = sum(compare(reference, sample(1000), 0.05)["drift"] for _ in range(200))
    assert alarms / 200 <= 0.08


# ---------------------------------------------------------------- tabular


TAB_COLUMNS = [{"name": "x", "type": "numeric", "fill": 50.0, "offset": 50.3, "scale": 0.1},
               {"name": "n", "type": "numeric", "fill": 3.0, "offset": 3.1, "scale": 0.5},
               {"name": "color", "type": "categorical", "categories": ["blue", "green", "red"]}]


def table_rows(n: int, seed: int, shift: float = 0.0, new_color: float = 0.0) -> list[dict[str, Any]]:
    """Records as a client or a CSV sends them: numbers as text sometimes, nulls, stray whitespace."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x = rng.normal(50, 10) + shift * 10
        color = "purple" if rng.random() < new_color else rng.choice(["red", "green", "blue", None], p=[.4, .3, .2, .1])
        rows.append({"x": None if rng.random() < 0.1 else (f" {x:.3f}" if rng.random() < 0.5 else x),
                     "n": int(rng.poisson(3)), "color": color})
    return rows


def test_tabular_features_read_raw_values_as_the_service_does() -> None:
    from pipelines.modalities.tabular import drift as tab

    rows = [{"x": " 42.5", "n": "7", "color": " red "}, {"x": None, "n": "NA", "color": None},
            {"x": 1, "n": 2.0, "color": "teal"}]
    got = tab.features(rows, None, None, {"columns": TAB_COLUMNS})
    np.testing.assert_allclose(got["x"].values, [42.5, 50.0, 1.0])  # null -> the imputed median
    np.testing.assert_allclose(got["n"].values, [7.0, 3.0, 2.0])
    assert got["color"].labels.tolist() == ["red", tab.MISSING, tab.UNKNOWN]
    assert got["color"].columns == ["blue", "green", "red", tab.MISSING, tab.UNKNOWN]


def test_tabular_reference_decoded_from_the_encoded_split_matches_raw_rows() -> None:
    """The reference side decodes ``val.npz`` (standardised numbers, category buckets) back to raw
    units: the same rows sent raw give no drift, the imputed median included."""
    from pipelines.modalities.tabular import drift as tab

    ctx = {"columns": TAB_COLUMNS}
    raw = table_rows(3000, 0)
    encoded = []
    for row in raw:
        values = tab.features([row], None, None, ctx)
        x, n = values["x"].values[0], values["n"].values[0]
        bucket = {"blue": 2, "green": 3, "red": 4, tab.MISSING: 1, tab.UNKNOWN: 0}[values["color"].labels[0]]
        encoded.append([(x - 50.3) * 0.1, (n - 3.1) * 0.5, bucket])
    decoded = tab._decoded_rows(np.asarray(encoded, np.float32), TAB_COLUMNS)
    reference = reference_of(tab.features(decoded, None, None, ctx), ctx)
    assert reference["features"]["x"]["n"] == 3000
    assert not verdict(reference, tab.features(raw[:1000], None, None, ctx))["drift"]
    assert not verdict(reference, tab.features(table_rows(1000, 1), None, None, ctx))["drift"]


@pytest.mark.parametrize(("shift", "new_color", "flagged"), [(0.5, 0.0, "x"), (0.0, 0.5, "color")])
def test_tabular_shifts_are_flagged(shift: float, new_color: float, flagged: str) -> None:
    from pipelines.modalities.tabular import drift as tab

    ctx = {"columns": TAB_COLUMNS}
    reference = reference_of(tab.features(table_rows(3000, 0), None, None, ctx), ctx)
    got = verdict(reference, tab.features(table_rows(1000, 2, shift, new_color), None, None, ctx))
    assert got["drift"] and got["drifted"] == [flagged]


# ---------------------------------------------------------------- text


WORDS = [f"w{i}" for i in range(300)]
OTHER_WORDS = [f"q{i}" for i in range(300)]


def corpus(n: int, seed: int, vocabulary: list[str] = WORDS, share: float = 1.0) -> list[str]:
    """``n`` texts of 3 to 24 Zipf-distributed words, each from ``vocabulary`` with probability ``share``
    (else from ``WORDS``)."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, 301)
    lengths = rng.integers(3, 25, n)
    ranks = rng.choice(300, lengths.sum(), p=zipf / zipf.sum())
    own = rng.random(lengths.sum()) < share
    words = np.where(own, np.asarray(vocabulary)[ranks], np.asarray(WORDS)[ranks])
    return [" ".join(part) for part in np.split(words, np.cumsum(lengths)[:-1])]


class TextSide:
    """What the text hooks use of ``TextRequests``: the tokenizer, ``max_len``, ``max_items``."""

    max_items, max_len = 128, 64

    def __init__(self, texts: list[str]) -> None:
        from pipelines.modalities.text.corpus import fit_tokenizer

        self.tokenizer = fit_tokenizer(texts, make_params().text, "word")


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextSide, dict[str, Any], dict[str, Any]]:
    from pipelines.modalities.text import drift as txt

    split_dir = tmp_path_factory.mktemp("text-split")
    train = corpus(3000, 0)
    pd.DataFrame({"text": train}).to_parquet(split_dir / "train.parquet")
    side = TextSide(train)
    ctx = txt.context(split_dir, {}, side)
    return side, ctx, reference_of(txt.features(corpus(2000, 1), None, side, ctx), ctx)


def test_text_features_and_reference(text_setup: tuple) -> None:
    from pipelines.modalities.text import drift as txt

    side, ctx, reference = text_setup
    assert ctx["top_tokens"][:3] == ["w0", "w1", "w2"] and len(ctx["unigram"]["tokens"]) <= txt.UNIGRAM
    got = txt.features(["w0 w0 w1 zzz", "   "], None, side, ctx)
    assert got["text.tokens"].values.tolist() == [4, 0]
    assert got["text.unknown_share"].values.tolist() == [0.25, 1.0]  # no tokens: read as one <unk>
    shares = dict(zip(got["text.top_tokens"].columns, got["text.top_tokens"].weights[0]))
    assert shares["w0"] == 0.5 and shares["<unk>"] == 0.25
    assert {"text.chars", "text.surprisal", "text.top_tokens"} <= set(reference["features"])


def test_text_from_another_domain_drifts_and_more_of_the_same_does_not(text_setup: tuple) -> None:
    from pipelines.modalities.text import drift as txt

    side, ctx, reference = text_setup
    assert not verdict(reference, txt.features(corpus(1000, 2), None, side, ctx))["drift"]
    other = verdict(reference, txt.features(corpus(1000, 3, OTHER_WORDS, share=0.3), None, side, ctx))
    assert other["drift"] and {"text.unknown_share", "text.surprisal"} <= set(other["drifted"])


# ---------------------------------------------------------------- images


def blobs(n: int, seed: int, bright: float = 0.0) -> np.ndarray:
    """8x8 digit-like images in 0..16: a vertical bar with a random offset and some noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2, (n, 1, 8, 8))
    cols = rng.integers(2, 6, n)
    for i, c in enumerate(cols):
        x[i, 0, 1:7, c:c + 2] += rng.uniform(8, 14)
    return np.clip(x + bright, 0, 16).astype(np.float32)


@pytest.fixture(scope="module")
def image_setup() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from pipelines.modalities.image import drift as img
    from pipelines.modalities.image.serve import ImageRequests

    side = ImageRequests({"input": {"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32",
                                    "value_range": [0, 16]}}, None)
    ctx = img.context(Path("."), {}, side)
    assert ctx == {"value_range": [0.0, 16.0]}
    return side, ctx, reference_of(img.features(None, {"input": blobs(2000, 0)}, side, ctx), ctx)


@pytest.mark.parametrize(("scenario", "flagged"), [("same", None), ("brighter", "image.brightness"),
                                                    ("rotated", "image.orientation")])
def test_image_verdicts(image_setup: tuple, scenario: str, flagged: str | None) -> None:
    from pipelines.modalities.image import drift as img

    side, ctx, reference = image_setup
    images = {"same": blobs(1000, 1), "brighter": blobs(1000, 1, bright=1.6),
              "rotated": np.ascontiguousarray(np.rot90(blobs(1000, 1), 1, axes=(2, 3)))}[scenario]
    got = verdict(reference, img.features(None, {"input": images}, side, ctx))
    assert got["drift"] is (flagged is not None)
    if flagged:
        assert flagged in got["drifted"]


def test_rgb_images_have_channel_features() -> None:
    from pipelines.modalities.image import drift as img

    class Side:
        input_name, accepts_files = "input", True

    x = np.zeros((2, 3, 4, 4), np.float32)
    x[:, 0] = 255
    got = img.features(None, {"input": x}, Side(), img.context(Path("."), {}, Side()))
    assert got["image.red"].values.tolist() == [1.0, 1.0] and got["image.blue"].values.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- recordings


def write_recordings(folder: Path, items: list[Any], per: int = 50, route: str = "/predict",
                     gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"requests-20250101-000000-1.jsonl{'.gz' if gz else ''}"
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for i in range(0, len(items), per):
            fh.write(json.dumps({"ts": 1_700_000_000.0 + i, "route": route, "items": items[i:i + per],
                                 "outputs": [{} for _ in items[i:i + per]]}) + "\n")
    return path


def test_read_recordings_filters_and_orders(tmp_path: Path) -> None:
    write_recordings(tmp_path / "m-v1", list(range(100)), per=10)
    write_recordings(tmp_path / "m-v1" / "old", list(range(100, 120)), per=10, route="/score", gz=True)
    with open(tmp_path / "m-v1" / "requests-20250101-000001-2.jsonl", "w") as fh:
        fh.write('{"ts": 1, "items": "nope"}\nnot json\n\n')
    files = drift.recording_files(tmp_path, {"model_name": "m", "version": "1"})
    assert len(files) == 3 and drift.is_recording(tmp_path)
    got = drift.read_recordings(files, "/predict")
    assert got.items == list(range(100)) and got.lines == 14 and len(got.bad_lines) == 2
    assert drift.read_recordings(files, "/predict", last=5).items == [95, 96, 97, 98, 99]
    assert drift.read_recordings(files, "/predict", since=1_700_000_090.0).items == list(range(90, 100))
    assert drift.read_recordings(files, "/score").items == list(range(100, 120))


def test_a_training_format_jsonl_is_not_a_recording(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"x": 1, "color": "red"}\n')
    assert not drift.is_recording(tmp_path / "t.jsonl")


def test_a_model_without_data_requests_is_refused() -> None:
    class Task:
        name, request_side = "generation", "pipelines.tasks.generation_serve:X"

    class Requests:
        field = "samples"

    class Model:
        task, requests = Task(), Requests()

    with pytest.raises(drift.DriftError, match="takes no data"):
        drift._check_speaks_data(Model())


# ---------------------------------------------------------------- end to end, models built in-process


def _deploy(work: Path, name: str, data: dict[str, Any], arch: str, kwargs: dict[str, Any]) -> Path:
    """All seven steps' ``run`` functions in-process (1 epoch, no registry, no bento), then the drift
    reference as deploy writes it."""

    params = make_params(
        data=data, model={"name": arch, "kwargs": kwargs}, train={"epochs": 1, "batch_size": 64, "patience": 1},
        evaluate={"baselines": [], "min_score": -1e9},
        deploy={"build_bento": False, "register": False, "model_name": f"dlops-test-{name}", "parity_batch_sizes": [7]})
    d = {s: work / s for s in ("collect", "split", "design", "configure", "train", "evaluate", "deploy")}
    run_pipeline(params, work)
    drift.build_reference(d["split"], d["deploy"])
    return work


@pytest.fixture(scope="module")
def mlflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sqlite MLflow store for the module, and a temp working dir for MLflow's artifact folder."""
    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(base)
        yield uri


@pytest.fixture(scope="module")
def digits_work(tmp_path_factory: pytest.TempPathFactory, mlflow_env: str) -> Path:
    return _deploy(tmp_path_factory.mktemp("digits"), "digits", {"source": "sklearn:digits"}, "cnn",
                   {"channels": [8, 16], "hidden": 32, "dropout": 0.1})


def test_digits_reference(digits_work: Path) -> None:
    ref = json.loads((digits_work / "deploy" / drift.REFERENCE).read_text())
    manifest = json.loads((digits_work / "deploy" / "manifest.json").read_text())
    assert ref["format"] == drift.FORMAT and ref["onnx_sha256"] == manifest["onnx_sha256"]
    assert ref["splits"] == {"inputs": {"split": "val", "rows": 270}, "predictions": {"split": "test", "rows": 359}}
    assert ref["embedding"]["dim"] == 32 and ref["embedding"]["tensor"]
    features = ref["features"]
    assert {"image.brightness", "image.orientation", "embedding.pc1", "embedding.distance"} <= set(features)
    assert features["prediction.label"]["categories"][:10] == [str(k) for k in range(10)]
    assert sum(features["prediction.label"]["counts"]) == 359 and features["image.brightness"]["n"] == 270
    assert (digits_work / "deploy" / drift.REFERENCE).stat().st_size < 200_000


def test_digits_recorded_requests_drift_when_brighter(digits_work: Path, tmp_path: Path, mlflow_env: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    """The CLI on recordings of the test split's images: no drift; the same images brighter: drift,
    with the report written and logged to the training run."""
    from pipelines.files import load_arrays

    images = load_arrays(digits_work / "split" / "test.npz", "X")["X"][:, 0]
    write_recordings(tmp_path / "same" / "dlops-test-digits-vNone", images.tolist())
    write_recordings(tmp_path / "bright" / "dlops-test-digits-vNone", np.clip(images + 4, 0, 16).tolist(), gz=True)
    model = str(digits_work / "deploy")
    drift.main(["--input", str(tmp_path / "same"), "--model", model, "--out", str(tmp_path / "r1"), "--no-mlflow"])
    assert json.loads(capsys.readouterr().out)["drift"] is False
    with pytest.raises(SystemExit) as stop:
        drift.main(["--input", str(tmp_path / "bright"), "--model", model, "--out", str(tmp_path / "r2"),
                    "--fail-on-drift"])
    assert stop.value.code == 1
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["drift"] and report["input_drift"] and "image.brightness" in report["drifted"]
    assert report["current"]["items"] == 359 and report["current"]["format"] == "recordings"
    row = next(f for f in report["features"] if f["name"] == "image.brightness")
    assert row["q_value"] <= ALPHA and row["effect"]["mean_shift_sd"] > 1
    page = (tmp_path / "r2" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == report["tests"] and "<script" not in page
    from pipelines import tracking

    run_id = json.loads((digits_work / "deploy" / "manifest.json").read_text())["run_id"]
    logged = {a.path for a in tracking.get_client().list_artifacts(run_id, "drift")}
    assert logged == {"drift/report.json", "drift/report.html"}


def test_digits_image_folder_in_the_training_format(digits_work: Path, tmp_path: Path) -> None:
    """A folder of image files, read as batch prediction reads it (8x8 gray, 0..255 -> 0..16)."""
    from PIL import Image

    from pipelines.files import load_arrays
    from serving.model import load_model_from

    images = load_arrays(digits_work / "split" / "test.npz", "X")["X"][:, 0]
    for i, img in enumerate(images):
        Image.fromarray(np.round(np.rot90(img) * 255 / 16).astype(np.uint8)).save(tmp_path / f"{i}.png")
    model = load_model_from(digits_work / "deploy", "test")
    report = drift.run(model, digits_work / "deploy", tmp_path, None)
    assert report["current"]["format"] == "folder" and report["current"]["items"] == len(images)
    assert report["drift"] and "image.orientation" in report["drifted"]


@pytest.fixture(scope="module")
def table_work(tmp_path_factory: pytest.TempPathFactory, mlflow_env: str) -> Path:
    work = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"x1": rng.normal(0, 1, n).round(4), "x2": rng.uniform(0, 10, n).round(4),
                       "color": rng.choice(["red", "green", "blue"], n), "size": rng.choice(["S", "M", "L"], n)})
    df.loc[rng.random(n) < 0.15, "x2"] = np.nan
    df.loc[rng.random(n) < 0.1, "color"] = None
    df["y"] = np.where(df.x1 + (df.color == "red") + rng.normal(0, 0.5, n) > 0.8, "yes", "no")
    df.to_csv(work / "table.csv", index=False)
    return _deploy(work, "table", {"source": f"csv:{work / 'table.csv'}", "target": "y"}, "tab_mlp", {})


def test_table_reference_takes_the_graphs_imputation(table_work: Path) -> None:
    ref = json.loads((table_work / "deploy" / drift.REFERENCE).read_text())
    columns = {c["name"]: c for c in ref["context"]["columns"]}
    raw = pd.read_csv(table_work / "table.csv")
    # the imputed value is the train median, read from preprocess.onnx
    assert abs(columns["x2"]["fill"] - raw["x2"].median()) < 0.2
    assert columns["color"]["categories"] == ["blue", "green", "red"]
    color = ref["features"]["color"]
    assert color["categories"] == ["blue", "green", "red", "(missing)", "(unknown)"] and color["counts"][3] > 0
    assert ref["embedding"] is None and ref["splits"]["inputs"]["rows"] == 450


def test_table_file_verdicts(table_work: Path, tmp_path: Path) -> None:
    """The test split's raw rows as a CSV: no drift; x1 moved by 0.5 SD: x1 drifts; half the colors new:
    color drifts."""
    from serving.model import load_model_from

    model = load_model_from(table_work / "deploy", "test")
    test = pd.read_parquet(table_work / "split" / "test.parquet")
    test.to_csv(tmp_path / "same.csv", index=False)
    test.assign(x1=test.x1 + 0.5 * test.x1.std()).to_csv(tmp_path / "moved.csv", index=False)
    recolored = test.assign(color=np.where(np.arange(len(test)) % 2 == 0, "purple", test.color))
    recolored.to_json(tmp_path / "recolored.jsonl", orient="records", lines=True)
    same = drift.run(model, table_work / "deploy", tmp_path / "same.csv", tmp_path / "out")
    assert not same["drift"] and same["current"]["items"] == len(test)
    assert (tmp_path / "out" / "report.html").exists()
    assert "x1" in drift.run(model, table_work / "deploy", tmp_path / "moved.csv")["drifted"]
    got = drift.run(model, table_work / "deploy", tmp_path / "recolored.jsonl")
    assert "color" in got["drifted"]
    color = next(f for f in got["features"] if f["name"] == "color")
    assert color["effect"]["top_changes"][0] == {"category": "(unknown)", "reference": 0.0, "current": 0.5}


def test_table_recorded_records_match_the_file(table_work: Path, tmp_path: Path) -> None:
    """Recorded ``{"records": [...]}`` items and the same rows as a CSV give the same features."""
    from serving.model import load_model_from

    model = load_model_from(table_work / "deploy", "test")
    test = pd.read_parquet(table_work / "split" / "test.parquet").drop(columns=["y"])
    records = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in test.to_dict("records")]
    write_recordings(tmp_path / "rec", records)
    test.to_csv(tmp_path / "rows.csv", index=False)
    a = drift.run(model, table_work / "deploy", tmp_path / "rec")
    b = drift.run(model, table_work / "deploy", tmp_path / "rows.csv")
    assert [(f["name"], f["statistic"]) for f in a["features"]] == [(f["name"], f["statistic"]) for f in b["features"]]


def test_missing_reference_is_one_line(tmp_path: Path, table_work: Path) -> None:
    with pytest.raises(drift.DriftError, match="no drift reference"):
        drift.load_reference(tmp_path)
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"format": "x"}))
    with pytest.raises(drift.DriftError, match="not a dlops-drift-reference"):
        drift.load_reference(tmp_path, bad)
