"""Embedding: an autoencoder's latent space, clustered with k-means.

The autoencoder learns to reconstruct the train split; its latent vectors are the embedding. k-means
(``embedding.clusters``, or ``auto``: the k in 2..``max_clusters`` with the best silhouette on the
validation vectors) is fitted on the train vectors; a row's cluster is its nearest centroid. The
baseline is the same procedure on PCA with the same dimension as the latent space (fitted on train).

Metrics on the test split: silhouette of the clustering (in each model's own space, so it compares
models only roughly) and, with labels, the adjusted Rand index and normalised mutual information
against them (primary: ARI with labels, silhouette without). ``embedding.csv`` holds a 2-D PCA
projection of the test vectors for ``dvc plots`` and ``embedding.png`` colours it by label.

Module-level imports are numpy only: the service imports ``respond``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.plugins import register_task
from pipelines.tasks.unsupervised import AutoencoderTask, encode_head, labelled

KMEANS_MAX_ROWS = 50_000  # k-means and silhouette on a seeded sample beyond this
SILHOUETTE_ROWS = 5_000
PLOT_ROWS = 5_000


@register_task
class Embedding(AutoencoderTask):
    name = "embedding"
    output_name = "latent"  # not "embedding": the exporter names aten.embedding values so
    route = "embed"
    metrics = ("ari", "nmi", "silhouette")
    scored_splits = ("train", "val", "test")
    outputs_in_train = False  # prepare reads the latent size off the head

    @property
    def p(self) -> Any:
        return self.section("embedding")

    @property
    def denoise(self) -> float:  # type: ignore[override]
        return float(self.p.denoise)

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.latent: int | None = None

    def dry_run(self, net: Any, batch: Any, split: dict[str, Any]) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            net.errors(batch)
            return self._dry_run(net.encode(batch), batch, "encode(x)")

    def output_spec(self, split: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.output_name, "shape": [-1, len(rule["centroids"][0])], "dtype": "float32",
                "clusters": len(rule["centroids"])}

    def head(self, net: Any, target_state: dict[str, Any]) -> Any:
        return encode_head(net)

    def prepare(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any],
                create_model: Any) -> None:
        self.latent = int(head.latent)

    def network_outputs(self, raw: np.ndarray, target_state: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"z": raw.astype(np.float64)}

    def estimator_outputs(self, estimator: Any, X: Any) -> dict[str, np.ndarray]:
        return {"z": np.asarray(estimator.transform(np.asarray(X, np.float64)), np.float64)}

    def score(self, y: dict[str, np.ndarray], out: dict[str, dict[str, np.ndarray]],
              p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        train, val, test = (out[s]["z"] for s in ("train", "val", "test"))
        k, why, tried = self._choose_k(train, val)
        km = _kmeans(train, k)
        clusters = km.predict(test)
        metrics: dict[str, Any] = {"clusters": float(k), "silhouette": _silhouette(test, clusters)}
        if labelled(y["test"]):
            metrics["ari"] = round(float(adjusted_rand_score(y["test"], clusters)), 6)
            metrics["nmi"] = round(float(normalized_mutual_info_score(y["test"], clusters)), 6)
        rule = {"k": k, "k_why": why, "centroids": km.cluster_centers_.round(6).tolist(), "fitted_on": "train"}
        if tried:
            rule["silhouette_by_k"] = tried
        return metrics, rule

    def _choose_k(self, train: np.ndarray, val: np.ndarray) -> tuple[int, str, dict[str, float]]:
        if self.p.clusters != "auto":
            return int(self.p.clusters), "set in params (embedding.clusters)", {}
        tried = {}
        for k in range(2, min(self.p.max_clusters, len(train) - 1) + 1):
            tried[str(k)] = _silhouette(val, _kmeans(train, k).predict(val))
        best = max(tried, key=lambda k: (tried[k], -int(k)))
        return int(best), f"auto: best silhouette on the validation vectors over k = 2..{max(map(int, tried))}", tried

    def primary_metric(self, requested: str, split: dict[str, Any]) -> tuple[str, str]:
        if requested != "auto":
            return requested, "set in params (evaluate.metric)"
        if split.get("labelled"):
            return "ari", "auto: labelled data: adjusted Rand index of the clusters against the labels"
        return "silhouette", "auto: no labels: silhouette of the clusters (each model in its own space)"

    def baseline_factories(self, categorical: list[int]) -> dict[str, Callable[[], Any]]:
        return {"pca_kmeans": lambda: PCAEmbedding(self.latent or 8, categorical)}

    def report(self, y: np.ndarray, test: dict[str, np.ndarray], rule: dict[str, Any], split: dict[str, Any],
               plots: Path) -> tuple[dict[str, Any], dict[str, list[tuple]]]:
        from sklearn.decomposition import PCA

        z = test["z"]
        centroids = np.asarray(rule["centroids"])
        clusters = ((z[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        rows = np.arange(len(z))
        if len(rows) > PLOT_ROWS:
            rows = np.sort(np.random.default_rng(0).choice(len(z), PLOT_ROWS, replace=False))
        if z.shape[1] > 2:
            xy = PCA(n_components=2, random_state=0).fit_transform(z)
        else:  # already 2-D, or 1-D drawn on a line
            xy = z if z.shape[1] == 2 else np.pad(z, ((0, 0), (0, 1)))
        names = self.report_labels(y, split)
        group = [names[i] for i in rows] if names else [f"cluster {clusters[i]}" for i in rows]
        sizes = np.bincount(clusters, minlength=len(centroids))
        report = {"clusters": int(len(centroids)), "cluster_sizes_test": sizes.tolist(), "k_why": rule["k_why"]}
        if names:  # the label mix of each cluster: what a cluster "is"
            report["cluster_labels_test"] = {
                str(c): {lab: int(n) for lab, n in zip(*np.unique([names[i] for i in np.flatnonzero(clusters == c)],
                                                                 return_counts=True))}
                for c in range(len(centroids)) if sizes[c]}
        _scatter_png(xy[rows], group, plots / "embedding.png")
        return report, {"embedding.csv": [("pc1", "pc2", "group"),
                                          *((round(float(a), 5), round(float(b), 5), g) for (a, b), g in
                                            zip(xy[rows], group))]}

    # ------------------------------------------------------------ serve

    def prediction_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from typing import Optional

        from pydantic import Field

        null = "; null when the network's outputs are not finite numbers"
        return {"embedding": (Optional[list[float]], Field(description="the latent vector" + null)),
                "cluster": (Optional[int], Field(description="index of the nearest k-means centroid" + null)),
                "distance": (Optional[float], Field(description="Euclidean distance to that centroid" + null))}

    def response_fields(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from pydantic import Field

        return {"clusters": (int, Field(description="number of k-means clusters"))}

    def respond(self, outputs: np.ndarray, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        centroids = np.asarray(manifest["rule"]["centroids"], np.float64)
        z = outputs.astype(np.float64)
        d = np.sqrt(((z[:, None, :] - centroids[None]) ** 2).sum(-1))
        rows = []
        for vec, dist in zip(z, d):
            if not np.isfinite(vec).all():
                rows.append({"embedding": None, "cluster": None, "distance": None})
                continue
            c = int(dist.argmin())
            rows.append({"embedding": vec.tolist(), "cluster": c, "distance": float(dist[c])})
        return rows, {"clusters": len(centroids)}


class PCAEmbedding:
    """The baseline's embedding: PCA with the network's latent dimension, fitted on train (categories
    one-hot); ``transform`` gives the vectors that k-means clusters like the network's."""

    def __init__(self, dim: int, categorical: list[int]) -> None:
        self.dim, self.categorical = dim, categorical

    def fit(self, X: Any, y: Any = None) -> PCAEmbedding:
        from sklearn.decomposition import PCA

        from pipelines.tasks.classification import one_hot

        X = np.asarray(X, np.float64)
        self.model = one_hot(PCA(n_components=min(self.dim, X.shape[1], len(X)), random_state=0),
                             self.categorical).fit(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        return self.model.transform(np.asarray(X, np.float64))


def _kmeans(z: np.ndarray, k: int) -> Any:
    from sklearn.cluster import KMeans

    if len(z) > KMEANS_MAX_ROWS:
        z = z[np.sort(np.random.default_rng(0).choice(len(z), KMEANS_MAX_ROWS, replace=False))]
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit(z)


def _silhouette(z: np.ndarray, clusters: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(clusters)) < 2:
        return 0.0
    n = min(len(z), SILHOUETTE_ROWS)
    return round(float(silhouette_score(z, clusters, sample_size=n if n < len(z) else None, random_state=0)), 6)


def _scatter_png(xy: np.ndarray, group: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    names = sorted(set(group))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, name in enumerate(names):
        sel = np.asarray([g == name for g in group])
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(i % 20), label=name)
    ax.set(xlabel="first principal component of the embedding", ylabel="second principal component",
           title="test embedding (PCA to 2-D)")
    if len(names) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
