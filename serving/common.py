"""Pieces of the service that are not about the model: admission control and the error body."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("bentoml.dlops")  # under bentoml: its logging config shows it

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def error_body(message: str) -> dict[str, str]:
    """Every 4xx/5xx the service writes itself: one string, naming what is wrong."""
    return {"error": message}


class AdmissionControl:
    """Answer 503 + ``Retry-After`` at once while ``max_inflight`` requests are already in the service.

    Without it, overload queues without limit (every request accepted, latency growing to the client
    timeout). A shed request costs microseconds and is never read, parsed or logged one by one: a
    summary line per second says how many were shed.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_inflight: int, paths: tuple[str, ...] = (),
                 retry_after_s: int = 1, on_shed: Callable[[], None] | None = None) -> None:
        self.app, self.max_inflight, self.paths, self.on_shed = app, max_inflight, paths, on_shed
        self.retry_after = str(retry_after_s).encode()
        self.inflight = 0
        self._shed, self._last_log = 0, time.monotonic()
        body = json.dumps(error_body(f"overloaded: more than {max_inflight} requests in progress; retry after "
                                     f"{retry_after_s} s")).encode()
        self._body = body
        self._headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"retry-after", self.retry_after)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.paths and scope.get("path") not in self.paths):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            await self._shed_one(send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            if self._shed:  # the summary of the last shedding, also when the overload has ended
                self._log_shed()

    async def _shed_one(self, send: Send) -> None:
        self._shed += 1
        if self.on_shed is not None:
            self.on_shed()
        self._log_shed()
        await send({"type": "http.response.start", "status": 503, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})

    def _log_shed(self) -> None:
        """At most one line a second, counting the requests shed since the last one."""
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            logger.warning("overloaded: shed %d request(s) with 503 in the last %.1f s (in flight: %d)",
                           self._shed, now - self._last_log, self.inflight)
            self._shed, self._last_log = 0, now


class RequestTimeout:
    """504 with ``{"error": ...}`` when a request has no response started within ``timeout`` seconds.

    Replaces BentoML's ``TimeoutMiddleware`` (same behaviour), which schedules a timer per request and
    never cancels it: each request left a live timer and future for the whole timeout (30 s), ~40,000
    objects at 1,300 req/s, and the garbage collector's full passes grew from 5 to 90+ ms within a minute
    of load (benchmarks/overload_bench.py). This one cancels its timer when the response starts.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], timeout: float) -> None:
        self.app, self.timeout = app, timeout
        body = json.dumps(error_body(f"not able to process the request in {timeout:g} seconds")).encode()
        self._start = {"type": "http.response.start", "status": 504,
                       "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, waiter)

        async def started(message: dict[str, Any]) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, started))
        task.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        except asyncio.TimeoutError:
            if task.cancel():
                await send(self._start)
                await send(self._body)
                return
        finally:
            timer.cancel()
        await task


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())
