"""ASGI middlewares that answer before any route runs: the port split, bearer auth and the body size limit.

They run ahead of FastAPI's body parsing, so a misdirected, unauthenticated or oversized request
is refused without reading (or parsing) what it sent. Errors leave through the one error path.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helios_worker.server.errors import APIError, create_error_response

PROTECTED_PREFIX = "/v1/"
CONTROL_PREFIX = "/v1/helios/"


class BearerAuthMiddleware:
    """Bearer auth for the two APIs; health, readiness and metrics stay open.

    The control API (``/v1/helios/*``) takes the control token when one is set (the API key does
    not open it: users of the OpenAI API cannot change layers or read other users' prompts), else
    the API key. The OpenAI API (the rest of ``/v1/*``) takes the API key when one is set.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, control_token: str | None = None) -> None:
        self.app = app
        self._api = f"Bearer {api_key}".encode() if api_key else None
        self._control = f"Bearer {control_token}".encode() if control_token else self._api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX):
            is_control = scope["path"].startswith(CONTROL_PREFIX)
            expected = self._control if is_control else self._api
            given = dict(scope["headers"]).get(b"authorization", b"")
            if expected is not None and not hmac.compare_digest(given, expected):  # constant time
                what = "control token" if is_control and self._control is not self._api else "API key"
                error = APIError(
                    401,
                    f"missing or wrong {what}: send 'Authorization: Bearer <{what.split()[-1]}>'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await create_error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class PortSplitMiddleware:
    """With a control port, each API answers on its own port only.

    ``/v1/helios/*`` (layers, recent prompts, shadow, evaluation) on ``control_port``; the OpenAI
    API, readiness and metrics on the serving port; ``/health`` on both. The port is the one the
    connection came in on (ASGI ``scope["server"]``), so a NetworkPolicy that admits only the
    operator to the control port keeps everyone else off the control API, token or not.
    """

    def __init__(self, app: ASGIApp, control_port: int) -> None:
        self.app = app
        self.control_port = control_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            server = scope.get("server")
            is_control_port = server is not None and server[1] == self.control_port
            if is_control_port != scope["path"].startswith(CONTROL_PREFIX):
                where = f"the control port ({self.control_port})" if not is_control_port else "the serving port"
                error = APIError(404, f"{scope['path']} is served on {where}, not on this one", code="not_found")
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
