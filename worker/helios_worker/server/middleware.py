"""ASGI middlewares that answer before any route runs: bearer auth and the body size limit.

Both run ahead of FastAPI's body parsing, so an unauthenticated or oversized request is
refused without reading (or parsing) what it sent. Errors leave through the one error path.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helios_worker.server.errors import APIError, create_error_response

PROTECTED_PREFIX = "/v1/"


class BearerAuthMiddleware:
    """``/v1/*`` need ``Authorization: Bearer <key>``; health, readiness and metrics stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):  # constant time: no key-guessing by timing
                error = APIError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await create_error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``, by Content-Length or, when chunked, while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = APIError(413, f"request body is larger than {self.max_bytes} bytes", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await create_error_response(error)(scope, receive, send)
            return
        received = 0
        is_response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, so FastAPI's body reader passes it on to the error handler.
                    raise error
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal is_response_started
            is_response_started = is_response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except APIError:  # raised outside FastAPI's handlers: answer here
            if not is_response_started:
                await create_error_response(error)(scope, receive, send)
