"""Admission checks that run before any route: the API key, the body size limit, the time a client
may take to send its body, and refusing new work while the server drains for shutdown.

This is plain ASGI middleware (not Starlette's BaseHTTPMiddleware) so that streamed responses pass
through untouched and the body can be counted as it arrives, whether or not the client declared its
length.
"""

import asyncio
import hmac
import json
import time
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional

from .errors import AUTHENTICATION, INVALID_REQUEST, UNAVAILABLE, ErrorInfo, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A too-large body is still read (and dropped) up to this many bytes before the 413 goes out: a
# client that is still sending when the server closes gets a connection reset instead of the answer.
_DRAIN_LIMIT_BYTES = 256 * 1024 * 1024


class BodyTooLarge(Exception):
    """Raised from `receive` once the body passes the limit; turned into a 413 here."""


class BodyTimeout(Exception):
    """Raised from `receive` when the body has not arrived in time; turned into a 408 here.

    A slow client (slowloris: a byte every few seconds) would otherwise hold a connection and a
    task for as long as it likes; uvicorn times out idle keep-alive connections but not a body.
    """


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: Optional[str],
        max_body_bytes: int,
        body_timeout_s: float,
        is_draining: Callable[[], bool],
        on_rejected: Callable[[Scope, int], None],
    ):
        self._app = app
        self._api_key = api_key.encode() if api_key else None
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._is_draining = is_draining
        self._on_rejected = on_rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        path: str = scope.get("path", "")
        if path.startswith(("/v1", "/debug")) and self._api_key is not None:
            credentials = _header_values(scope, b"authorization")
            if len(credentials) > 1:
                # Proxies and frameworks disagree on which of two wins; refuse rather than pick one.
                await _drain(receive)
                info = ErrorInfo(message="more than one Authorization header", type=INVALID_REQUEST, code="invalid_api_key")
                await self._reject(send, scope, 400, info)
                return
            if not self._authorized(credentials):
                await _drain(receive)
                info = ErrorInfo(message="missing or incorrect API key", type=AUTHENTICATION, code="invalid_api_key")
                await self._reject(send, scope, 401, info, {"www-authenticate": "Bearer"})
                return
        if path.startswith("/v1") and self._is_draining():
            await _drain(receive)
            info = ErrorInfo(message="the server is shutting down", type=UNAVAILABLE, code="shutting_down")
            await self._reject(send, scope, 503, info)
            return
        declared = _content_length(headers)
        if declared is not None and declared > self._max_body_bytes:
            await _drain(receive)
            await self._reject(send, scope, 413, self._too_large())
            return
        await self._call_limited(scope, receive, send)

    async def _reject(
        self, send: Send, scope: Scope, status: int, info: ErrorInfo, headers: Optional[Dict[str, str]] = None
    ) -> None:
        self._on_rejected(scope, status)
        await _send_error(send, status, info, headers)

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        body_done = False
        started = False
        deadline = time.monotonic() + self._body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only the disconnect is left to wait for: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self._max_body_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            if not body_done:
                await _drain(receive)
            # Not counted here: the route that was reading the body has counted it.
            await _send_error(send, 413, self._too_large())
        except BodyTimeout:
            if started:
                raise
            # The rest of the body is not waited for: uvicorn closes a connection whose body was
            # not read to the end, which is what a client this slow should get.
            info = ErrorInfo(
                message=f"the request body did not arrive within {self._body_timeout_s:g} seconds",
                type=INVALID_REQUEST,
                code="request_timeout",
            )
            await _send_error(send, 408, info, {"connection": "close"})

    def _authorized(self, credentials: List[bytes]) -> bool:
        assert self._api_key is not None
        scheme, _, token = (credentials[0] if credentials else b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._api_key)

    def _too_large(self) -> ErrorInfo:
        return ErrorInfo(
            message=f"the request body is larger than {self._max_body_bytes} bytes",
            type=INVALID_REQUEST,
            code="request_too_large",
        )


def _headers(scope: Scope) -> Dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", ())}


def _header_values(scope: Scope, name: bytes) -> List[bytes]:
    """Every value of one header, in order (a dict of the headers would keep only the last)."""
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def _content_length(headers: Dict[bytes, bytes]) -> Optional[int]:
    value = headers.get(b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


async def _drain(receive: Receive) -> None:
    """Reads and drops the rest of the body (bounded) so the error answer reaches the client."""
    drained = 0
    while drained <= _DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_error(send: Send, status: int, info: ErrorInfo, extra_headers: Optional[Dict[str, str]] = None) -> None:
    body = json.dumps(error_body(info)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode(), v.encode()) for k, v in (extra_headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
