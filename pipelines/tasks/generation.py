"""Generation: a GAN that draws new images like the training images (optionally of a requested class).

Training is a DCGAN-style generator against a discriminator (``models/gan.py``: Lightning manual
optimisation, two Adam optimisers); the weights of the last epoch are kept (a GAN's losses do not say
which epoch is best) and a grid of samples goes to the MLflow run (``epochs/``) about 25 times per run
and at the last epoch.

Evaluation needs a judge: a CNN trained in evaluate on the train split with the classification task's
loss (its test accuracy is reported; a judge that cannot read the real images cannot grade fakes), without
label smoothing, which would cap its probabilities below a 0.9 bar.
The generator draws ``generation.samples`` images (classes in turn when conditional); metrics:
``confident_share`` (primary) -- the share the judge classifies with probability >= ``confidence`` (as
the requested class when conditional); ``class_coverage`` -- the share of classes that are the judge's
answer for at least 1 % of the samples (mode collapse shows here); ``frechet_distance`` -- between the
judge's penultimate-layer features of the samples and of the test images (lower is better; the
distance between the train and the test images is given for scale); ``real_test_confident_share`` --
the confident share of the real test images (the ceiling a perfect generator reaches). The baseline ``gmm`` is a
Gaussian mixture per class on the pixels (scikit-learn), sampled and judged the same way.

The served graph is the generator alone: ``noise`` [N, noise_dim] and ``label`` [N] -> images in the
data's raw units (0..16 for the digits, 0..255 for photos); ``POST /generate`` takes
``{"samples": [{"label": "3", "seed": 7}, ...]}`` and answers PNGs (``generation_serve.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.plugins import Exported, ParityCase, Task, register_task

COVERAGE_SHARE = 0.01  # a class counts as covered when it is the judge's answer for >= 1 % of the samples
BASELINE_MAX_ROWS = 10_000  # rows per class the Gaussian mixture baseline fits on
FULL_COVARIANCE_MAX_DIMS = 1024
JUDGE_BATCH = 64


@register_task
class Generation(Task):
    name = "generation"
    output_name = "image"
    route = "generate"
    model_kind = "gan"
    request_side = "pipelines.tasks.generation_serve:SampleRequests"
    losses = ("adversarial",)
    default_loss = "adversarial"
    metrics = ("confident_share", "class_coverage")
    monitor = None
    scored_splits = ("test",)
    outputs_in_train = False  # evaluate draws samples and trains a judge: it runs the generator itself

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.judge: Any = None

    @property
    def p(self) -> Any:
        return self.section("generation")

    # ------------------------------------------------------------ collect / split (labels as classification)

    def target_profile(self, values: Any) -> dict[str, Any]:
        from pipelines.tasks.classification import Classification

        return Classification().target_profile(values)

    def encode_targets(self, values: Any, profile: dict[str, Any], where: str) -> np.ndarray:
        from pipelines.tasks.classification import Classification

        return Classification().encode_targets(values, profile, where)

    def strata(self, y: np.ndarray) -> tuple[np.ndarray, str]:
        return y, "classes"

    def split_summary(self, y: np.ndarray, parts: dict[str, np.ndarray], profile: dict[str, Any]) -> dict[str, Any]:
        k = len(profile["classes"])
        return {"classes": profile["classes"], "conditional": self.p.conditional,
                "class_counts": {name: np.bincount(y[rows], minlength=k).tolist() for name, rows in parts.items()}}

    # ------------------------------------------------------------ design / configure / train

    def num_outputs(self, split: dict[str, Any]) -> int:
        return len(split["classes"]) if split.get("conditional") else 0  # the classes the generator is told

    def dry_run(self, net: Any, batch: Any, split: dict[str, Any]) -> dict[str, Any]:
        import torch

        if batch.ndim != 4:
            raise ValueError(f"a GAN generates images (C, H, W), got inputs of shape {list(batch.shape[1:])}")
        z = torch.randn(len(batch), net.noise_dim, generator=torch.Generator().manual_seed(0))
        labels = torch.zeros(len(batch), dtype=torch.long)
        with torch.no_grad():
            fake = net.generate(z, labels)
            judged = net.discriminate(batch, labels)
        if tuple(fake.shape) != tuple(batch.shape) or tuple(judged.shape) != (len(batch),):
            raise ValueError(f"generator made {tuple(fake.shape)} and discriminator {tuple(judged.shape)} from a "
                             f"batch of {tuple(batch.shape)}")
        return {"output": self._output(list(batch.shape[1:])),
                "dry_run": {"batch": len(batch), "output_shape": list(fake.shape),
                            "finite": bool(torch.isfinite(fake).all()), "noise_dim": int(net.noise_dim)}}

    def _output(self, shape: list[int]) -> dict[str, Any]:
        return {"name": self.output_name, "shape": [-1, *shape], "dtype": "float32"}

    def output_spec(self, split: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
        return self._output(list(split["input_shape"]))

    def choose_loss(self, p: Any, y_train: np.ndarray, num_outputs: int) -> dict[str, Any]:
        from pipelines.params import ParamsError

        if p.class_weights != "none":
            raise ParamsError(f"optim.class_weights: {p.class_weights!r} does not apply to a generation task; "
                              "set it to none")
        if p.optimizer != "adam":
            raise ParamsError(f"optim.optimizer: a GAN trains with adam (betas 0.5, 0.999), got {p.optimizer!r}")
        return {"name": "adversarial", "why": "auto: the non-saturating GAN loss (binary cross-entropy on the "
                                              "discriminator's logits), generator and discriminator in turn"}

    def train_targets(self, y: np.ndarray, target_state: dict[str, Any]) -> Any:
        import torch

        return torch.as_tensor(y, dtype=torch.long)

    def module(self, net: Any, recipe: dict[str, Any], epochs: int, augment: Any, split_dir: Path) -> Any:
        from pipelines.data import preprocess_state
        from pipelines.files import read_json

        split = read_json(Path(split_dir) / "split.json")
        lo, hi = model_range(preprocess_state(split_dir), split)
        return net.training_module(lr=recipe["optimizer"]["lr"], lo=lo, hi=hi,
                                   weight_decay=recipe["optimizer"].get("weight_decay", 0.0),
                                   classes=split.get("classes"))

    def step(self, out: Any, y: Any, loss_fn: Any) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError("a GAN trains in its own LightningModule (models.gan.GanLitModule)")

    # ------------------------------------------------------------ evaluate

    def prepare(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any],
                create_model: Callable[..., Any]) -> None:
        """Train the judge on the train split; keep the test images' features for the Fréchet distance."""
        from pipelines.data import load_split

        self.split = split
        self.classes = split["classes"]
        self.shape = list(split["input_shape"])
        X_train, y_train = load_split(split_dir, "train")
        X_test, y_test = load_split(split_dir, "test")
        import torch

        torch.manual_seed(self.section("train").seed)  # the judge's initial weights
        self.judge = Judge(create_model("cnn", self.shape, len(self.classes)), self.p.judge_epochs,
                           self.section("train").seed)
        self.judge.fit(_array(X_train), y_train)
        test = _array(X_test)
        proba, self.test_features = self.judge.predict(test)
        self.judge_accuracy = float((proba.argmax(1) == y_test).mean())
        # the same bar applied to the real test images: the ceiling a perfect generator would reach
        self.real_confident_share = float(self._confident(proba, y_test).mean())
        train_features = self.judge.predict(_array(X_train)[:len(test) * 4])[1]
        self.train_test_fd = frechet_distance(train_features, self.test_features)

    def _confident(self, proba: np.ndarray, requested: np.ndarray) -> np.ndarray:
        """Per image: the judge's top probability reaches the bar (and, when conditional, for the requested class)."""
        confident = proba.max(1) >= self.p.confidence
        if self.p.conditional:
            confident &= proba.argmax(1) == requested
        return confident

    def requested(self) -> np.ndarray:
        k = len(self.classes) if self.p.conditional else 1
        return np.arange(self.p.samples, dtype=np.int64) % k

    def outputs(self, head: Any, inputs: Callable[[str], np.ndarray], name: str,
                state: dict[str, Any]) -> dict[str, np.ndarray]:
        import torch

        labels = self.requested()
        g = torch.Generator().manual_seed(self.section("train").seed)
        z = torch.randn(len(labels), head.noise_dim, generator=g)
        lo, hi = model_range(state, self.split)
        head.eval()
        with torch.no_grad():
            unit = torch.cat([head.generate(z[i:i + 512], torch.from_numpy(labels[i:i + 512]))
                              for i in range(0, len(labels), 512)])
            images = lo + (unit + 1) / 2 * (hi - lo)  # [-1, 1] -> the model-input space the judge reads
        return {"images": images.numpy().astype(np.float32), "requested": labels}

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        labels = self.requested()
        images = estimator.sample_classes(labels, seed=self.section("train").seed)
        return {"images": images.reshape(len(labels), *self.shape).astype(np.float32), "requested": labels}

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        images, requested = out["test"]["images"], out["test"]["requested"]
        proba, features = self.judge.predict(images)
        top, confident = proba.argmax(1), self._confident(proba, requested)
        shares = np.bincount(top, minlength=len(self.classes)) / len(top)
        metrics = {"confident_share": round(float(confident.mean()), 6),
                   "class_coverage": round(float((shares >= COVERAGE_SHARE).mean()), 6),
                   "frechet_distance": round(frechet_distance(features, self.test_features), 4),
                   "train_test_frechet_distance": round(self.train_test_fd, 4),
                   "judge_test_accuracy": round(self.judge_accuracy, 6),
                   "real_test_confident_share": round(self.real_confident_share, 6)}
        if self.p.conditional:
            per_class = [float(confident[requested == c].mean()) for c in range(len(self.classes))]
            metrics["worst_class_confident_share"] = round(min(per_class), 6)
        return metrics, {}

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        if requested != "auto":
            return requested, "set in params (evaluate.metric)"
        what = "as the requested class " if split.get("conditional") else ""
        return "confident_share", (f"auto: the share of generated images a classifier trained on the real ones "
                                   f"recognises {what}with high confidence")

    def baseline_factories(self, categorical: list[int]) -> dict[str, Callable[[], Any]]:
        return {"gmm": lambda: ClassGaussians(self.p.conditional)}

    def verdict_note(self, metrics: dict[str, Any]) -> str | None:
        """The confident share rewards typical samples, not variety: the Fréchet distance (lower is better)
        judges both, so the verdict names who is closer to the test images there."""
        key = "frechet_distance"
        scored = {n: b[key] for n, b in metrics["baselines"].items() if key in b}
        if key not in metrics or not scored:
            return None
        best = min(scored, key=scored.get)
        who = "the network is closer" if metrics[key] < scored[best] else f"the baseline ({best}) is closer"
        return (f"{key} to the test images (lower is better; variety as well as quality): {metrics[key]:.3f} vs "
                f"{scored[best]:.3f}, {who}")

    def baseline_inputs(self, modality: Any, split_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Whole images, flattened: the baseline samples images the judge reads (test: unused)."""
        from pipelines.data import load_split

        X = _array(load_split(split_dir, "train")[0])
        return {"train": X.reshape(len(X), -1), "test": X[:1].reshape(1, -1)}

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        images, requested = test["images"], test["requested"]
        proba, _ = self.judge.predict(images)
        per_class = {}
        for c, name in enumerate(self.classes):
            sel = requested == c if self.p.conditional else proba.argmax(1) == c
            if sel.any():
                per_class[name] = {"samples": int(sel.sum()),
                                   "judge_agrees": round(float((proba[sel].argmax(1) == c).mean()), 4),
                                   "mean_confidence": round(float(proba[sel].max(1).mean()), 4)}
        _sample_png(images, requested, self.classes if self.p.conditional else None, plots / "samples.png")
        return {"per_class": per_class, "judge": {"test_accuracy": self.judge_accuracy}}, {}

    # ------------------------------------------------------------ deploy

    def export(self, modality: Any, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any],
               out: Path) -> Exported:
        import torch

        lo, hi = raw_range(state, split)
        info = head.export_onnx(out / "model.onnx", lo, hi)
        k = max(head.num_classes, 1)
        g = torch.Generator().manual_seed(0)
        n = 256
        noise = torch.randn(n, head.noise_dim, generator=g)
        labels = torch.arange(n) % k
        with torch.no_grad():
            reference = (lo + (head.eval().generate(noise, labels) + 1) / 2 * (hi - lo)).numpy()
        schema = {"kind": "noise", "noise": {"name": "noise", "dim": int(head.noise_dim)},
                  "label": {"name": "label", "classes": split["classes"] if head.num_classes else None},
                  "image": {"shape": list(split["input_shape"]), "value_range": [float(lo.min()), float(hi.max())]}}
        feeds = {"noise": noise.numpy(), "label": labels.numpy().astype(np.int64)}
        return Exported(input_schema=schema, cases=[ParityCase(feeds, reference)], info=info,
                        example={k: v[:2] for k, v in feeds.items()})

    # ------------------------------------------------------------ serve

    def prediction_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from pydantic import Field

        return {"png": (str, Field(description="the generated image, a PNG file in base64")),
                "shape": (list[int], Field(description="[channels, height, width] of the image")),
                "pixels": (list[list[list[float]]], Field(description="the image's values in the data's raw units "
                                                                       "(`value_range`), [channel][row][column]"))}

    def response_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from pydantic import Field

        return {"value_range": (list[float], Field(description="[low, high] of `pixels`"))}

    def respond(self, outputs: np.ndarray, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from pipelines.tasks.generation_serve import png_base64

        lo, hi = manifest["input"]["image"]["value_range"]
        images = np.clip(np.nan_to_num(outputs.astype(np.float64), nan=lo), lo, hi)
        rows = [{"png": png_base64(img, lo, hi), "shape": list(img.shape), "pixels": img.round(4).tolist()}
                for img in images]
        return rows, {"value_range": [lo, hi]}


# ---------------------------------------------------------------- ranges, judge, baseline, plots


def raw_range(state: dict[str, Any], split: dict[str, Any]) -> tuple[Any, Any]:
    """``lo``, ``hi`` tensors of the raw pixel range, broadcastable to (C, H, W)."""
    import torch

    vr = split.get("value_range") or [0.0, 255.0]
    c = split["input_shape"][0]
    return (torch.full((c, 1, 1), float(vr[0])), torch.full((c, 1, 1), float(vr[1])))


def model_range(state: dict[str, Any], split: dict[str, Any]) -> tuple[Any, Any]:
    """The raw pixel range in the model-input space (standardised with the train mean/std)."""
    import torch

    lo, hi = raw_range(state, split)
    c = split["input_shape"][0]
    mean = torch.as_tensor(np.broadcast_to(np.asarray(state["mean"], np.float32).reshape(-1, 1, 1), (c, 1, 1)).copy())
    std = torch.as_tensor(np.broadcast_to(np.asarray(state["std"], np.float32).reshape(-1, 1, 1), (c, 1, 1)).copy())
    return (lo - mean) / std, (hi - mean) / std


def _array(X: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(X[0:len(X)] if not isinstance(X, np.ndarray) else X, np.float32))


class Judge:
    """A CNN (``cnn`` from the model registry) that grades generated images: trained on the train split with the
    classification task's cross-entropy, plain torch loop (seeded); ``predict`` gives probabilities and
    penultimate-layer features (the input of the last Linear)."""

    def __init__(self, net: Any, epochs: int, seed: int) -> None:
        self.net, self.epochs, self.seed = net, epochs, seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> Judge:
        import torch

        torch.manual_seed(self.seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=3e-3, weight_decay=1e-4)
        g = torch.Generator().manual_seed(self.seed)
        Xt, yt = torch.from_numpy(X), torch.as_tensor(y, dtype=torch.long)
        # no label smoothing: it caps the judge's probabilities near 0.91, so a 0.9 confidence bar would
        # reject about a third of the real test digits (measured: 68 % pass with smoothing 0.1, 97.8 % without)
        loss_fn = torch.nn.CrossEntropyLoss()
        self.net.train()
        for _ in range(self.epochs):
            for idx in torch.randperm(len(Xt), generator=g).split(JUDGE_BATCH):
                if len(idx) < 2:  # BatchNorm needs two rows
                    continue
                opt.zero_grad()
                loss_fn(self.net(Xt[idx]), yt[idx]).backward()
                opt.step()
        self.net.eval()
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        captured: list[Any] = []
        last = self.net.head[-1]
        hook = last.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach()))
        try:
            with torch.no_grad():
                logits = torch.cat([self.net(torch.from_numpy(np.ascontiguousarray(X[i:i + 512], np.float32)))
                                    for i in range(0, len(X), 512)])
        finally:
            hook.remove()
        return torch.softmax(logits, 1).numpy().astype(np.float64), torch.cat(captured).numpy().astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as FID does, other features)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    eye = np.eye(a.shape[1]) * 1e-6  # keeps sqrtm stable when features are (near) collinear
    cov_a, cov_b = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


class ClassGaussians:
    """The traditional generator: a Gaussian mixture (3 full-covariance components) per class on the
    flattened model inputs, sampled for the requested classes (one mixture when unconditional)."""

    def __init__(self, conditional: bool, components: int = 3) -> None:
        self.conditional, self.components = conditional, components

    def fit(self, X: Any, y: np.ndarray) -> ClassGaussians:
        from sklearn.mixture import GaussianMixture

        X = np.asarray(X, np.float64)
        groups = np.unique(y) if self.conditional else np.array([0])
        self.models = {}
        for c in groups:
            rows = X[y == c] if self.conditional else X
            if len(rows) > BASELINE_MAX_ROWS:
                rows = rows[np.random.default_rng(0).choice(len(rows), BASELINE_MAX_ROWS, replace=False)]
            n = max(1, min(self.components, len(rows) // 10))
            cov = "full" if rows.shape[1] <= FULL_COVARIANCE_MAX_DIMS else "diag"  # 64x64x3 pixels: 12288 dims
            self.models[int(c)] = GaussianMixture(n, covariance_type=cov, reg_covar=1e-3, random_state=0).fit(rows)
        return self

    def sample_classes(self, labels: np.ndarray, seed: int) -> np.ndarray:
        out = None
        for c in np.unique(labels):
            gm = self.models[int(c) if self.conditional else 0]
            rows = np.flatnonzero(labels == c)
            gm.random_state = seed + int(c)
            sample = gm.sample(len(rows))[0]
            sample = sample[np.random.default_rng(seed + int(c)).permutation(len(sample))]  # sample() sorts by component
            if out is None:
                out = np.zeros((len(labels), sample.shape[1]))
            out[rows] = sample
        return out


def _sample_png(images: np.ndarray, requested: np.ndarray, classes: list[str] | None, path: Path) -> None:
    from matplotlib.figure import Figure

    per_row = 10
    picks: list[int] = []
    groups = range(len(classes)) if classes else range(min(10, len(images) // per_row))
    for g in groups:
        rows = np.flatnonzero(requested == g)[:per_row] if classes else np.arange(g * per_row, (g + 1) * per_row)
        picks.extend(rows.tolist())
    n_rows = max(1, len(picks) // per_row)
    fig = Figure(figsize=(per_row * 0.8, n_rows * 0.8 + 0.4))
    axes = fig.subplots(n_rows, per_row, squeeze=False)
    for ax, i in zip(axes.ravel(), picks):
        img = images[i]
        ax.imshow(img[0] if img.shape[0] == 1 else np.clip((img.transpose(1, 2, 0) - img.min()) /
                                                           max(float(np.ptp(img)), 1e-6), 0, 1), cmap="gray")
    for j, ax in enumerate(axes.ravel()):
        ax.set_xticks([]), ax.set_yticks([])
        if classes and j % per_row == 0 and j // per_row < len(classes):
            ax.set_ylabel(classes[j // per_row], rotation=0, labelpad=12)
    fig.suptitle("generated test samples (rows: requested class)" if classes else "generated test samples")
    fig.savefig(path, dpi=100)
