"""The service's per-request timeout (``serving.common.RequestTimeout``, in place of BentoML's
TimeoutMiddleware, which left a live timer + future per request for the whole timeout and made the
garbage collector's full passes grow under load): 504 with one error string when no response starts in
time, no timer left behind by answered requests, and the real ``bentoml serve`` answering with it."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from pathlib import Path

from serving.common import RequestTimeout
from tests.helpers import build_demo_model, serving


async def call(app, path: str = "/predict") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "path": path}, receive, send)
    return sent


async def fast(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow(scope, receive, send) -> None:
    await asyncio.sleep(10)
    await fast(scope, receive, send)


def live_timers() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is asyncio.TimerHandle and not o.cancelled())


def test_answered_requests_leave_no_timer_behind() -> None:
    async def many() -> int:
        app = RequestTimeout(fast, timeout=30)
        for _ in range(500):
            assert [m.get("status") for m in await call(app)][0] == 200
        return live_timers()

    assert asyncio.run(many()) == 0


def test_no_response_in_time_is_504_with_one_error_string() -> None:
    async def one() -> tuple[list[dict], float]:
        start = time.monotonic()
        sent = await call(RequestTimeout(slow, timeout=0.2))
        return sent, time.monotonic() - start

    sent, took = asyncio.run(one())
    assert sent[0]["status"] == 504
    assert sent[1]["body"] == b'{"error": "not able to process the request in 0.2 seconds"}'
    assert took < 2


def test_the_served_app_uses_it(tmp_path: Path) -> None:
    """A body that never finishes, a request timeout (1 s) shorter than the body timeout (10 s): the
    504 is RequestTimeout's, and the server answers the next request."""
    import httpx

    model_dir = build_demo_model(tmp_path / "model")
    with serving(model_dir, tmp_path, extra_env={"DLOPS_REQUEST_TIMEOUT_S": "1"}) as info:
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"images\": [")
            start = time.monotonic()
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            took = time.monotonic() - start
        assert data.startswith(b"HTTP/1.1 504"), data[:300]
        assert b'{"error": "not able to process the request in 1 seconds"}' in data
        assert took < 5
        with httpx.Client(base_url=info["url"], timeout=10) as client:
            assert client.post("/predict", json={"images": [[[0] * 8] * 8]}).status_code == 200
