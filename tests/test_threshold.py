"""Threshold tuning from one sort equals the brute-force search it replaced (scikit-learn per threshold)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from pipelines.tasks.classification import (CURVE_POINTS, Classification, curve_points, threshold_candidates,
                                            tune_threshold)

OBJECTIVES = {"f1": f1_score, "balanced_accuracy": balanced_accuracy_score}


def brute_force(y: np.ndarray, p: np.ndarray, objective: str) -> tuple[float, float]:
    """The previous implementation: the metric recomputed for every candidate threshold."""
    score = OBJECTIVES[objective]
    results = [(float(score(y, (p >= t).astype(int))), -abs(t - 0.5), float(t)) for t in threshold_candidates(p)]
    best = max(results)  # best score; ties -> closest to 0.5, then the higher threshold
    return best[2], best[0]


def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(40):
        n = int(rng.integers(2, 300))
        y = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(np.int64)
        y[:2] = [0, 1]  # both classes (validation is stratified)
        if i % 4 == 0:  # coarse probabilities: many ties between rows and with the 0.05 grid
            p = rng.integers(0, 21, n) / 20
        elif i % 4 == 1:  # informative, float32 as a network could give
            p = np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1).astype(np.float32)
        elif i % 4 == 2:  # few distinct values: many thresholds share a score (ties in the objective)
            p = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0], n)
        else:
            p = rng.random(n)
        out.append((f"case{i}", y, p))
    out.append(("all-equal", np.array([0, 1, 0, 1]), np.full(4, 0.5)))
    out.append(("perfect", np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])))
    out.append(("inverted", np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])))
    return out


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("name,y,p", cases(), ids=[c[0] for c in cases()])
def test_tune_threshold_matches_brute_force(objective, name, y, p):
    assert tune_threshold(y, p, objective) == brute_force(y, p, objective)


def test_tune_threshold_is_fast_on_a_large_validation_split():
    rng = np.random.default_rng(1)
    y = (rng.random(300_000) < 0.1).astype(np.int64)
    p = np.clip(0.2 * y + rng.random(300_000) * 0.8, 0, 1)
    import time

    started = time.perf_counter()
    for objective in OBJECTIVES:
        t, score = tune_threshold(y, p, objective)
        assert 0.01 <= t <= 0.99 and 0 < score <= 1
    assert time.perf_counter() - started < 5  # ~0.3 s; per-threshold scikit-learn calls took hours


def test_curves_and_confusion_rows_are_capped(tmp_path):
    x = np.linspace(0, 1, 10_000)
    a, b = curve_points(x, x ** 2)
    assert len(a) == len(b) <= CURVE_POINTS and (a[0], a[-1]) == (0.0, 1.0) and np.allclose(b, a ** 2)
    short = np.arange(5.0)
    assert curve_points(short)[0] is short

    rng = np.random.default_rng(2)
    y = (rng.random(50_000) < 0.2).astype(np.int64)
    proba1 = np.clip(0.3 * y + rng.random(50_000) * 0.7, 0, 1)
    test = {"proba": np.stack([1 - proba1, proba1], axis=1)}
    report, files = Classification().report(y, test, {"value": 0.5}, {"classes": ["No", "Yes"]}, tmp_path)
    assert len(files["roc.csv"]) <= CURVE_POINTS + 1 and len(files["pr.csv"]) <= CURVE_POINTS + 1
    assert len(files["confusion.csv"]) == 20_000 + 1 and "sample" in report["plots_note"]
    sampled_yes = sum(r[0] == "Yes" for r in files["confusion.csv"][1:]) / 20_000
    assert abs(sampled_yes - y.mean()) < 0.01  # a uniform sample keeps the class shares
    assert report["Yes"]["support"] == int(y.sum())  # the report itself is on every row
