"""Opportunistic batching for the service (``DLOPS_BATCH_MAX_ROWS`` > 0; off by default).

A request that finds the model idle runs at once, alone: it never waits for a batch to fill, and there
is no timer. Requests that arrive while the model is running queue up and go into the *next* run
together (up to ``max_rows`` rows, inputs concatenated along the first axis), so batches only form
under concurrency, exactly when they save time. The model runs in a thread (ONNX Runtime releases the
GIL), so the event loop keeps reading and validating requests meanwhile.

It pays off where one run of N rows costs clearly less than N runs of one row: convolutional networks
on photos (``benchmarks/serve_bench.py --batching``); for the small digit/table/text models a run
costs microseconds and the thread hop costs more than it saves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np

Feeds = dict[str, np.ndarray]


def _rows(feeds: Feeds) -> int:
    return len(next(iter(feeds.values())))


def _fits(first: Feeds, other: Feeds) -> bool:
    """Two requests' inputs can share a run: same names, dtypes and shapes past the first axis."""
    return first.keys() == other.keys() and all(
        first[k].dtype == other[k].dtype and first[k].shape[1:] == other[k].shape[1:] for k in first)


class Batcher:
    """``await batcher.run(feeds)`` -> the graph's output rows for these feeds (see the module doc)."""

    def __init__(self, run: Callable[[Feeds], np.ndarray], max_rows: int,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._run, self.max_rows, self.on_batch = run, max_rows, on_batch
        self._queue: deque[tuple[Feeds, asyncio.Future[np.ndarray]]] = deque()
        self._busy = False

    async def run(self, feeds: Feeds) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((feeds, future))
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Feeds, asyncio.Future[np.ndarray]]]:
        """The next run: the oldest request, then those behind it that fit, up to ``max_rows`` rows."""
        batch = [self._queue.popleft()]
        rows = _rows(batch[0][0])
        while self._queue:
            feeds, _ = self._queue[0]
            n = _rows(feeds)
            if rows + n > self.max_rows or not _fits(batch[0][0], feeds):
                break
            batch.append(self._queue.popleft())
            rows += n
        return [(f, fut) for f, fut in batch if not fut.cancelled()]  # a client that left costs nothing

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                feeds = batch[0][0] if len(batch) == 1 else {
                    k: np.concatenate([f[k] for f, _ in batch]) for k in batch[0][0]}
                try:
                    out = await asyncio.to_thread(self._run, feeds)
                except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(batch), _rows(feeds))
                start = 0
                for f, fut in batch:
                    n = _rows(f)
                    if not fut.done():
                        fut.set_result(out[start:start + n])
                    start += n
        finally:
            self._busy = False
