"""One HTTP request through an ASGI app inside this process, its response as a stream of pieces.

A Ray Serve replica runs the whole `mlc_llm serve` app (validation, OpenAI errors, SSE, metrics) this
way, so what a client gets through Ray is byte for byte what `mlc_llm serve` sends. httpx's
ASGITransport is not used because it holds the whole body back until the app returns, which would
turn every stream into one late chunk.

The request body is handed over at once; after it, `receive` waits until the caller stops reading
(closes or cancels the iterator) and then says `http.disconnect`, which is how the app learns that
the client went away and aborts the engine request.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple, Union

Headers = List[Tuple[bytes, bytes]]
AsgiApp = Callable[[Dict[str, Any], Callable[[], Awaitable[Dict[str, Any]]], Callable[[Dict[str, Any]], Awaitable[None]]], Awaitable[None]]

# How long the app may take to finish after the caller went away (it aborts its engine request).
_FINISH_TIMEOUT_S = 5.0


@dataclass
class HttpRequest:
    """What the front sends to a replica. `prefix_text` is only for the request router: the prompt or
    the messages as text, the part of a request that decides which prefix-cache blocks it can reuse."""

    method: str
    path: str
    query_string: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    prefix_text: str = ""


@dataclass
class ResponseHead:
    """The first piece of every response; body pieces (bytes) follow."""

    status: int
    headers: Headers
    # Which replica answered (its Ray actor name), so a client or a test can tell replicas apart.
    replica: str = ""


def _scope(request: HttpRequest) -> Dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method.upper(),
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode("latin-1", "replace"),
        "query_string": request.query_string,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }


async def call_asgi(app: AsgiApp, request: HttpRequest) -> AsyncIterator[Union[ResponseHead, bytes]]:
    """Runs `request` through `app`: yields one ResponseHead, then the body's non-empty pieces."""
    messages: "asyncio.Queue[Optional[Dict[str, Any]]]" = asyncio.Queue()
    gone = asyncio.Event()
    body_given = False

    async def receive() -> Dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(_scope(request), receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    started = False
    try:
        while True:
            message = await messages.get()
            if message is None:  # the app returned (or raised) without finishing its response
                error = task.exception() if not task.cancelled() else None
                if not started:
                    raise RuntimeError(f"the app sent no response: {error!r}")
                return
            if message["type"] == "http.response.start":
                started = True
                yield ResponseHead(status=int(message["status"]), headers=list(message.get("headers", [])))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), _FINISH_TIMEOUT_S)
            task.cancel()
