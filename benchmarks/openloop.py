"""An open-loop HTTP load generator: requests arrive as a Poisson process at a fixed rate, whatever the
server answers (what "2x capacity" means for a service that many independent clients call), unlike a
closed loop of N clients, which slows down with the server, or ``hey -q``, whose rate-limited workers
tick in phase and arrive in bursts of N.

Each arrival takes an idle keep-alive connection (a new one when none is idle, up to ``max_conns``;
beyond that the arrival is counted as ``client-limited``, never silently delayed). Latency is measured
from the arrival's scheduled time, so a generator that falls behind shows in the numbers (its own lag
is reported too). asyncio + uvloop, raw protocol, one process: ~10,000 req/s on one core.

    python benchmarks/openloop.py http://127.0.0.1:3000/predict body.json --rate 3000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Result:
    """What one run saw: per status, latencies in ms (from the scheduled arrival); the generator's lag."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # s since the start, beside latencies
    lag_ms: list[float] = field(default_factory=list)
    client_limited: int = 0
    errors: int = 0
    elapsed_s: float = 0.0

    def add(self, status: str, ms: float, at: float) -> None:
        self.latencies.setdefault(status, []).append(ms)
        self.arrivals.setdefault(status, []).append(at)


class _Conn(asyncio.Protocol):
    def __init__(self, pool: _Pool) -> None:
        self.pool, self.buf, self.transport = pool, bytearray(), None
        self.started: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, request: bytes, scheduled: float) -> None:
        self.started = scheduled
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.started is None:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.buf) < end + 4 + length:
            return
        status = head[9:12].decode()
        closing = b"connection: close" in head
        del self.buf[:end + 4 + length]
        started, self.started = self.started, None
        self.pool.done(self, status, started, closing)  # may send the next request (closed loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class _Pool:
    def __init__(self, host: str, port: int, max_conns: int, result: Result) -> None:
        self.host, self.port, self.max_conns, self.result = host, port, max_conns, result
        self.idle: deque[_Conn] = deque()
        self.open = 0
        self.outstanding = 0
        self.start = time.perf_counter()
        self.closed_loop: tuple[bytes, float] | None = None  # (request, until): resend at once on an answer

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        self.open += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.open -= 1
            raise
        return conn

    async def fire(self, request: bytes, scheduled: float) -> None:
        if self.idle:
            self.outstanding += 1
            self.idle.popleft().send(request, scheduled)
            return
        if self.open >= self.max_conns:
            self.result.client_limited += 1
            return
        self.outstanding += 1
        try:
            conn = await self.connect()
        except OSError:
            self.outstanding -= 1
            self.result.errors += 1
            return
        conn.send(request, scheduled)

    def done(self, conn: _Conn, status: str, scheduled: float, closing: bool) -> None:
        self.outstanding -= 1
        self.result.add(status, (time.perf_counter() - scheduled) * 1e3, scheduled - self.start)
        if closing:
            conn.transport.close()
        elif self.closed_loop is not None and time.perf_counter() < self.closed_loop[1]:
            self.outstanding += 1
            conn.send(self.closed_loop[0], time.perf_counter())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.started is not None:  # closed with a request in flight
            self.outstanding -= 1
            self.result.errors += 1


def _request(url: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, the bytes of one keep-alive JSON POST of ``body`` to ``url``)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return host, port, head.encode() + body


async def _run(url: str, body: bytes, rate: float, seconds: float, max_conns: int, seed: int,
               warm_conns: int, drain_s: float, settle_s: float = 0.0) -> Result:
    host, port, request = _request(url, body)
    result = Result()
    pool = _Pool(host, port, max_conns, result)
    for conn in await asyncio.gather(*(pool.connect() for _ in range(min(warm_conns, max_conns)))):
        pool.idle.append(conn)
    await asyncio.sleep(settle_s)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()
    start = pool.start = time.perf_counter()
    t = start
    end = start + seconds
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        now = time.perf_counter()
        if t > now:
            await asyncio.sleep(t - now)
            now = time.perf_counter()
        result.lag_ms.append((now - t) * 1e3)
        if pool.idle:  # the common case without a task
            pool.outstanding += 1
            pool.idle.popleft().send(request, t)
        else:
            task = loop.create_task(pool.fire(request, t))
            pending.add(task)
            task.add_done_callback(pending.discard)
    result.elapsed_s = time.perf_counter() - start
    deadline = time.perf_counter() + drain_s
    while (pool.outstanding or pending) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    result.errors += pool.outstanding  # no answer within drain_s
    for conn in list(pool.idle):
        conn.transport.close()
    return result


async def _run_closed(url: str, body: bytes, clients: int, seconds: float) -> Result:
    host, port, request = _request(url, body)
    result = Result()
    pool = _Pool(host, port, clients, result)
    conns = await asyncio.gather(*(pool.connect() for _ in range(clients)))
    start = pool.start = time.perf_counter()
    pool.closed_loop = (request, start + seconds)
    for conn in conns:
        pool.outstanding += 1
        conn.send(request, time.perf_counter())
    while pool.outstanding and time.perf_counter() < start + seconds + 15:
        await asyncio.sleep(0.01)
    result.elapsed_s = time.perf_counter() - start
    for conn in list(pool.idle):
        conn.transport.close()
    return result


def _runner():  # noqa: ANN202
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run


def run_closed(url: str, body: bytes, clients: int, seconds: float) -> Result:
    """``clients`` keep-alive clients, each sending its next request when the last is answered."""
    return _runner()(_run_closed(url, body, clients, seconds))


def run(url: str, body: bytes, rate: float, seconds: float, max_conns: int = 1024, seed: int = 0,
        warm_conns: int = 64, drain_s: float = 15.0, settle_s: float = 0.0) -> Result:
    """Offer ``rate`` req/s (Poisson) for ``seconds``; wait up to ``drain_s`` for the last answers."""
    return _runner()(_run(url, body, rate, seconds, max_conns, seed, warm_conns, drain_s, settle_s))


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("body", type=Path)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--max-conns", type=int, default=1024)
    args = ap.parse_args()
    res = run(args.url, args.body.read_bytes(), args.rate, args.seconds, args.max_conns)
    for status, ts in sorted(res.latencies.items()):
        print(f"{status}: {len(ts)} ({len(ts) / res.elapsed_s:.0f}/s) p50 {quantile(ts, 0.5):.1f} ms "
              f"p99 {quantile(ts, 0.99):.1f} ms max {max(ts):.1f} ms")
    print(f"generator lag p99 {quantile(res.lag_ms, 0.99):.2f} ms; client-limited {res.client_limited}; "
          f"errors {res.errors}")


if __name__ == "__main__":
    main()
