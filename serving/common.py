"""What the digits and tabular services share: the log filter, the model-service connection
settings, and the API side's cached manifest / readiness / retried model call."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from serving.limits import BodyTooLarge

logger = logging.getLogger(__name__)

# Since 1.4.30 the caller's client (proxy2.SessionManager) replaces its aiohttp session every
# runner_connection.max_requests requests (default 100) or max_age seconds, closing the old one
# under requests still in flight: at 16 clients ~8 % of requests failed with 500 ("Server
# disconnected", bentoml/BentoML#5540, #5544). Over a private Unix socket there is nothing to
# rebalance, so the session is kept; ModelClient.call_model also retries once on a dropped connection.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


class ClientErrorFilter(logging.Filter):
    """BentoML logs every rejected request as ERROR with a traceback: a client sending bad input
    would flood the log. Keep one INFO line with the reason instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ValidationError, BodyTooLarge)):
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "body too large"
            record.msg, record.args = f"{record.msg}: rejected (%s)", (*(record.args or ()), reason)
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
        return True


def install_log_filter() -> None:
    """Idempotent: both service modules may be imported into one process."""
    http_log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorFilter) for f in http_log.filters):
        http_log.addFilter(ClientErrorFilter())


class ModelClient:
    """Mixin for a public API service whose ``model`` dependency exposes ``manifest()``."""

    model: Any  # bentoml.depends(...) on the service class

    def __init__(self) -> None:
        self._manifest: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def _get_manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            async with self._lock:
                if self._manifest is None:
                    self._manifest = await self.model.to_async.manifest()
        return self._manifest

    async def __is_ready__(self) -> bool:
        """Ready once the model service answered with its manifest."""
        try:  # bounded: a model service that failed to start accepts on its socket but never answers
            await asyncio.wait_for(self._get_manifest(), timeout=5)
        except Exception:  # noqa: BLE001 - not ready yet, /readyz says 503
            return False
        return True

    async def call_model(self, method: str, batch: Any) -> Any:
        import aiohttp

        call = getattr(self.model.to_async, method)
        try:
            return await call(batch)
        except aiohttp.ClientConnectionError:  # inference is idempotent: one retry on a fresh connection
            logger.warning("model service connection dropped; retrying once")
            return await call(batch)
