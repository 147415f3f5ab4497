"""The one error path of the API (vLLM's ``create_error_response`` pattern).

Every failure a client can see, whatever raised it (our checks, FastAPI's validation, Starlette's
routing, the middlewares, an unexpected bug), leaves through ``create_error_response`` as an
OpenAI error body ``{"error": {"message", "type", "param", "code"}}``; streams carry the same
body as one SSE event. Clients never see a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from helios_worker.server.protocol import ErrorBody, ErrorResponse

logger = logging.getLogger("helios.server")

# OpenAI's error ``type`` for each status we send.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(StarletteHTTPException):
    """An error answered to the client; raise it anywhere in a request.

    An HTTPException so that FastAPI's body reader lets it through (the body limit raises it
    from inside ``receive``); its own handler, not the generic one, formats it.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, dict(headers or {}))
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> ErrorResponse:
        error_type = ERROR_TYPES.get(self.status_code, "invalid_request_error")
        return ErrorResponse(error=ErrorBody(message=self.message, type=error_type, param=self.param, code=self.code))


def create_error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body().model_dump(), status_code=error.status_code, headers=error.headers)


def sse_error_event(error: APIError) -> str:
    """The same error body as a server-sent event, for failures after a stream has started."""
    return f"data: {error.body().model_dump_json()}\n\n"


def param_from_location(location: Sequence[Any]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``"messages[0].content"``; the body itself -> None.

    pydantic puts the union member tried into the location (``("body", "prompt", "str")``);
    those tags are not parameters and are dropped.
    """
    parts = [part for part in location if part not in _LOCATION_NOISE and not _is_union_tag(part)]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or None


_LOCATION_NOISE = {"body", "query", "path", "header"}
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes", "literal"}


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or ("[" in part and part.endswith("]")))


def validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return APIError(400, f"request body is not valid JSON: {reason}", code="invalid_json")
    param = param_from_location(first.get("loc", ()))
    message = first.get("msg", "invalid value")
    if param is None:
        return APIError(400, f"request body: {message}", code="invalid_body")
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
        return create_error_response(exc)

    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return create_error_response(validation_error(exc))

    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing (404 unknown path, 405 wrong method) and FastAPI's own body errors (400).
        message = str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase
        return create_error_response(APIError(exc.status_code, message, headers=exc.headers))

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return create_error_response(APIError(500, "internal error; the worker log has the details"))

    app.add_exception_handler(APIError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)
