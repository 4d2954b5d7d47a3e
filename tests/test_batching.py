"""Opportunistic batching (``DLOPS_BATCH_MAX_ROWS``): the Batcher on a slow fake model (a lone request
never waits; requests that queue behind a run share the next; each gets its own rows back), then a real
``bentoml serve`` with batching on, hit by concurrent clients: every answer equals ONNX Runtime's for its
own inputs, and /metrics shows runs that served more than one request."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.batching import Batcher
from tests.helpers import build_demo_model, serving
from tests.test_serving import check_predictions, onnx_reference


class SlowModel:
    """Doubles ``x``; each run takes ``seconds`` and is remembered (rows per run)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.runs = seconds, []

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.runs.append(len(feeds["x"]))
        time.sleep(self.seconds)
        if np.isnan(feeds["x"]).any():
            raise ValueError("nan in x")
        return feeds["x"] * 2


def feeds(value: float, rows: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, np.float32)}


def test_a_lone_request_runs_at_once() -> None:
    model = SlowModel(0.05)
    batcher = Batcher(model, max_rows=64)

    async def one() -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        out = await batcher.run(feeds(1.0))
        return out, time.perf_counter() - start

    out, took = asyncio.run(one())
    assert out.tolist() == [[2.0, 2.0, 2.0]]
    assert model.runs == [1]
    assert took < 0.05 + 0.04  # the run itself plus the thread hop: no wait for a batch to fill


def test_requests_queued_behind_a_run_share_the_next_and_get_their_own_rows() -> None:
    model = SlowModel(0.05)
    batches: list[tuple[int, int]] = []
    batcher = Batcher(model, max_rows=64, on_batch=lambda requests, rows: batches.append((requests, rows)))

    async def many() -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.run(feeds(0.0)))
        await asyncio.sleep(0.01)  # the first run is under way
        rest = [batcher.run(feeds(float(i), rows=i)) for i in range(1, 9)]
        return [await first, *await asyncio.gather(*rest)]

    outs = asyncio.run(many())
    assert model.runs == [1, sum(range(1, 9))]  # one alone, then the 8 queued ones together
    assert batches == [(1, 1), (8, 36)]
    for i, out in enumerate(outs):
        assert out.shape == (max(i, 1), 3) and (out == 2.0 * i).all()


def test_max_rows_and_shapes_split_runs_and_errors_reach_each_waiter() -> None:
    model = SlowModel(0.03)
    batcher = Batcher(model, max_rows=4)

    async def mixed() -> list[object]:
        first = asyncio.ensure_future(batcher.run(feeds(0.0)))
        await asyncio.sleep(0.01)
        rest = [batcher.run(feeds(1.0, rows=3)), batcher.run(feeds(2.0, rows=2)),  # 3 + 2 > 4 rows
                batcher.run(feeds(3.0, width=5)),  # another shape: a run of its own
                batcher.run(feeds(float("nan"))), batcher.run(feeds(4.0))]
        return [await first, *await asyncio.gather(*rest, return_exceptions=True)]

    outs = asyncio.run(mixed())
    assert model.runs == [1, 3, 2, 1, 2]
    assert (outs[1] == 2.0).all() and (outs[2] == 4.0).all() and outs[3].shape == (1, 5)
    assert isinstance(outs[4], ValueError) and isinstance(outs[5], ValueError)  # they shared the failed run
    with pytest.raises(ValueError, match="max_rows"):
        Batcher(model, max_rows=0)


def test_served_with_batching_every_answer_is_its_own(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    model_dir = build_demo_model(tmp_path / "model")
    digits = load_digits().images[:40]
    expected = onnx_reference(model_dir, digits)
    with serving(model_dir, tmp_path, extra_env={"DLOPS_BATCH_MAX_ROWS": "32"}) as info:
        with httpx.Client(base_url=info["url"], timeout=30, limits=httpx.Limits(max_connections=16)) as client, \
                ThreadPoolExecutor(16) as pool:
            one = client.post("/predict", json={"images": digits[:1].tolist()})
            responses = list(pool.map(
                lambda i: client.post("/predict", json={"images": digits[i % 40: i % 40 + 1 + i % 3].tolist()}),
                range(160)))
            metrics = client.get("/metrics").text
    assert one.status_code == 200
    check_predictions(one.json(), expected[:1])
    assert [r.status_code for r in responses] == [200] * 160
    for i, resp in enumerate(responses):
        check_predictions(resp.json(), expected[i % 40: i % 40 + 1 + i % 3])
    counts = {m[0]: float(m[1]) for m in re.findall(r'dlops_batch_requests_bucket\{le="([0-9.+Inf]+)"[^}]*\} ([0-9.e+]+)',
                                                    metrics)}
    assert counts, metrics[-2000:]
    assert counts["+Inf"] > counts["1.0"]  # some runs served more than one request
