"""What a request body may be: its size, and the shape of a ``multipart/form-data`` body.

BentoML 1.4 has no body-size setting: the JSON serde reads the whole body into memory and parses it.
``BodySizeLimitMiddleware`` answers a declared ``Content-Length`` over the limit with 413 at once,
unread, and cuts a chunked body off with 413 as soon as it passes the limit.

``parse_multipart`` splits a body that was read under that limit into its parts. BentoML's own
multipart parser answers 500 to a missing, empty or wrong boundary or to more than 1,000 parts
(issue 10); this one is strict, bounded (at most ``max_parts`` parts, ``MAX_PART_HEADER_BYTES`` of
headers each) and turns every problem into a ``MultipartError`` that says what is wrong (400).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._reply(send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await self._reply(send, 413, self._message(size))
                return

        received = 0
        too_large = replied = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # BentoML turns any exception raised while reading the body into a 500: swap it for 413
            nonlocal replied
            if too_large:
                if not replied:
                    replied = True
                    await self._reply(send, 413, self._message(received, streamed=True))
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not replied:
                replied = True
                await self._reply(send, 413, self._message(received, streamed=True))

    def _message(self, size: int, streamed: bool = False) -> str:
        what = f"more than {size} bytes received" if streamed else f"{size} bytes"
        return f"request body too large: {what}; the limit is {self.max_bytes} bytes"

    @staticmethod
    async def _reply(send: Send, status: int, error: str) -> None:
        body = json.dumps({"error": error}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- multipart/form-data

MAX_BOUNDARY = 70  # RFC 2046
MAX_PART_HEADER_BYTES = 8 * 1024
# one `; key=value` parameter of a header, the value a token or a quoted string with \-escapes
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MultipartError(ValueError):
    """A ``multipart/form-data`` body that cannot be taken apart (answered 400 with this message)."""


@dataclass(frozen=True)
class Part:
    field: str  # the form field's name
    filename: str | None  # None: a plain form field, not a file
    data: bytes


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="file"; filename="cat.jpg"`` -> ``("form-data", {"name": "file", ...})``;
    ``filename*=UTF-8''...`` (RFC 5987) wins over ``filename``."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(";" + rest):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        key = key.lower()
        if key.endswith("*"):
            charset, _, encoded = raw.partition("''")
            key, raw = key[:-1], unquote(encoded, encoding=charset or "utf-8", errors="replace")
            params[key] = raw
        else:
            params.setdefault(key, raw)
    return main.strip().lower(), params


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """The parts of a ``multipart/form-data`` body (already read whole, under the size limit)."""
    boundary = header_params(content_type)[1].get("boundary", "")
    if not boundary:
        raise MultipartError("multipart/form-data without a boundary in its Content-Type header")
    if len(boundary) > MAX_BOUNDARY or not boundary.isascii():
        raise MultipartError(f"multipart boundary longer than {MAX_BOUNDARY} characters or not ASCII")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    data = b"\r\n" + body  # the first delimiter needs no line break before it
    count = data.count(delimiter)
    if count == 0:
        raise MultipartError(f"the body has no part starting with the boundary {boundary[:70]!r}")
    if count - 1 > max_parts:
        raise MultipartError(f"more than {max_parts} parts in the multipart body")
    chunks = data.split(delimiter)  # [preamble, part, ..., "--" closing + epilogue]
    if not chunks[-1].startswith(b"--"):
        raise MultipartError("the multipart body ends before its closing boundary (truncated?)")
    return [_part(chunk, i) for i, chunk in enumerate(chunks[1:-1], 1)]


def _part(chunk: bytes, number: int) -> Part:
    where = f"multipart part {number}"
    line_end = chunk.find(b"\r\n")
    if line_end < 0 or chunk[:line_end].strip(b" \t"):  # after a boundary: optional blanks, then CRLF
        raise MultipartError(f"{where}: its boundary line is followed by other text (a closing boundary "
                             "before the last part?)")
    head_end = chunk.find(b"\r\n\r\n", line_end)
    if head_end < 0 or head_end - line_end > MAX_PART_HEADER_BYTES:
        raise MultipartError(f"{where}: no end of its headers within {MAX_PART_HEADER_BYTES} bytes")
    disposition = None
    for line in chunk[line_end + 2:head_end].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise MultipartError(f"{where}: a header line without a colon")
        if name.strip().lower() == b"content-disposition":
            disposition = value.decode("utf-8", errors="replace")
    kind, params = header_params(disposition or "")
    if kind != "form-data" or "name" not in params:
        raise MultipartError(f"{where}: no 'Content-Disposition: form-data; name=...' header")
    return Part(field=params["name"], filename=params.get("filename"), data=chunk[head_end + 4:])


# ---- request headers: a time limit -----------------------------------------------------------------------

HEADER_TIMEOUT_S = float(os.environ.get("DLOPS_HEADER_TIMEOUT_S", "10"))


def _header_timeout_protocol() -> type:
    """uvicorn's httptools protocol with a time limit on request headers. uvicorn has none: a client
    that sends its headers a byte at a time (or opens a connection and sends nothing) holds it open
    forever. The clock starts when the connection opens and when a request's first byte arrives, and
    stops when its headers are complete; past ``HEADER_TIMEOUT_S`` the client gets 408 and the
    connection is closed. (Idle keep-alive connections are uvicorn's ``timeout_keep_alive``.)"""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    body = json.dumps({"error": f"request headers did not arrive within {HEADER_TIMEOUT_S:g} s"}).encode()
    reply = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(reply)
                self.transport.close()

    return HeaderTimeoutProtocol


def install_header_timeout() -> None:
    """Make uvicorn (started by BentoML, which passes no protocol option) use ``HeaderTimeoutProtocol``
    for ``http="auto"``, its default. Without httptools (pinned in requirements) nothing changes."""
    global HeaderTimeoutProtocol
    try:
        import uvicorn.config

        HeaderTimeoutProtocol = _header_timeout_protocol()
    except ImportError:
        return
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderTimeoutProtocol"


HeaderTimeoutProtocol: Any = None
