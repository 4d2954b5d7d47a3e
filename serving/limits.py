"""ASGI middleware that refuses request bodies over a size limit before they are read.

BentoML 1.4 has no body-size setting: the JSON serde reads the whole body into memory and parses it.
A declared ``Content-Length`` over the limit is answered 413 at once, unread; a chunked body is
counted as it arrives and cut off with 413 as soon as it passes the limit.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

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
