"""OpenAI-style error answers: every non-2xx response is `{"error": {"message", "type", "param",
"code"}}` with a status that tells the client whether retrying can help.

    400  the request is malformed or a value is invalid (BadRequestError, bad JSON, wrong types)
    401  missing or wrong API key
    404  unknown path or unknown model name
    405  known path, wrong method
    408  the request body did not arrive within --body-timeout
    413  request body larger than the server accepts
    415  the body is not declared as application/json
         (a valid OpenAI option this engine does not implement is a 400 too, with code
         "unsupported_parameter": OpenAI answers 400 for every invalid request and its SDK raises
         BadRequestError for it)
    500  a failure inside the engine
    503  the engine is gone or the server is shutting down; another replica may serve it

The engine's own exception classes (protocol/errors.py) are mapped here once, so routes raise or let
through typed errors and never build error bodies by hand.
"""

import logging
from typing import Any, Dict, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...protocol.errors import (
    BadRequestError,
    EngineDeadError,
    InsufficientMemoryError,
    MLCError,
    UnsupportedError,
)
from ...protocol.openai_api_protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("mlc_llm.serve.server")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"
UNAVAILABLE = "service_unavailable_error"

# Status of a request whose client went away before the answer (nginx's convention); never sent.
CLIENT_CLOSED = 499


class APIError(Exception):
    """An error answer decided by the server itself (auth, routing, limits, unknown model)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: Optional[str] = None,
        code: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)


def error_body(info: ErrorInfo) -> Dict[str, Any]:
    return ErrorResponse(error=info).model_dump()


def error_response(status: int, info: ErrorInfo, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(info), status_code=status, headers=headers)


def classify(exc: BaseException) -> Tuple[int, ErrorInfo]:
    """The status and error object for any exception a route can meet."""
    if isinstance(exc, APIError):
        return exc.status, exc.info
    if isinstance(exc, UnsupportedError):
        return 400, ErrorInfo(message=str(exc), type=INVALID_REQUEST, param=exc.field, code="unsupported_parameter")
    if isinstance(exc, BadRequestError):
        return 400, ErrorInfo(message=str(exc), type=INVALID_REQUEST, param=exc.field, code=_bad_request_code(exc))
    if isinstance(exc, (EngineDeadError, InsufficientMemoryError)):
        return 503, ErrorInfo(message=str(exc), type=UNAVAILABLE, code="engine_unavailable")
    if isinstance(exc, MLCError):
        return 500, ErrorInfo(message=str(exc), type=SERVER_ERROR, code="engine_error")
    return 500, ErrorInfo(message=f"internal server error: {type(exc).__name__}", type=SERVER_ERROR)


def _bad_request_code(exc: BadRequestError) -> Optional[str]:
    """OpenAI's machine-readable codes for the two invalid requests clients handle specially."""
    text = str(exc).lower()
    if exc.field in ("prompt", "messages", "max_tokens") and ("context" in text or "too long" in text):
        return "context_length_exceeded"
    if exc.field is not None and text.startswith("unknown field"):
        return "unknown_parameter"
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Makes FastAPI's and Starlette's own errors (404 route, 405 method, validation) OpenAI-shaped."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = NOT_FOUND if exc.status_code == 404 else INVALID_REQUEST
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(exc.status_code, ErrorInfo(message=message, type=kind), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"invalid {'.'.join(loc) or 'request'}: {first.get('msg', 'invalid value')}"
        return error_response(400, ErrorInfo(message=message, type=INVALID_REQUEST, param=loc[0] if loc else None))

    @app.exception_handler(MLCError)
    async def _engine_error(request: Request, exc: MLCError) -> JSONResponse:
        status, info = classify(exc)
        return error_response(status, info)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.info)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs and re-raises after this handler; the client still gets an error object.
        status, info = classify(exc)
        return error_response(status, info)
