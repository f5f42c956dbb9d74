"""Server-sent events for `stream: true`, and the watch on the client's connection.

A request whose client has gone must stop generating: both the SSE response and the non-streaming
route race their work against the ASGI `http.disconnect` message, and the loser is cancelled.
Cancelling the task that reads an engine stream closes that stream, which aborts its engine requests
(stream.py), so the KV blocks come back at once.
"""

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Callable, MutableMapping, Optional, TypeVar

from pydantic import BaseModel
from starlette.responses import Response

from ...protocol.openai_api_protocol import CompletionUsage
from .errors import CLIENT_CLOSED, classify, error_body

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was complete."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns once the client has gone. Call only after the request body has been read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Awaits `work`; if the client disconnects first, cancels it and raises ClientDisconnected."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request's own task was cancelled (shutdown timeout): stop both
        work_task.cancel()
        watch_task.cancel()
        raise
    if work_task.done():
        watch_task.cancel()
        return work_task.result()
    work_task.cancel()
    try:
        await work_task
    except asyncio.CancelledError:
        pass
    raise ClientDisconnected()


def sse_event(obj: BaseModel) -> bytes:
    return b"data: " + obj.model_dump_json().encode() + b"\n\n"


class EventStreamResponse(Response):
    """Streams the chunks of one engine stream as `data: {json}` events ending with `data: [DONE]`.

    An engine failure after the first byte can no longer change the status, so it is sent as a
    `data: {"error": {...}}` event before [DONE] (as OpenAI-compatible servers do). `on_end(status,
    usage)` is called exactly once with the outcome: 200, the error's status, or 499 when the client
    left.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[BaseModel],
        close: Callable[[], None],
        usage: Callable[[], CompletionUsage],
        on_end: Callable[[int, Optional[CompletionUsage]], None],
    ) -> None:
        # Like StreamingResponse: no body attribute, so no content-length header is computed.
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._chunks = chunks
        self._close = close
        self._usage = usage
        self._on_end = on_end

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        status = 200
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            status = await unless_disconnected(receive, self._pump(send))
        except (ClientDisconnected, OSError):
            status = CLIENT_CLOSED
        finally:
            self._close()  # aborts the engine requests unless they all finished
            self._on_end(status, self._usage())

    async def _pump(self, send: Send) -> int:
        status = 200
        try:
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": sse_event(chunk), "more_body": True})
        except Exception as exc:  # engine failure mid-stream (the engine's typed errors)
            status, info = classify(exc)
            error = b"data: " + json.dumps(error_body(info)).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": error, "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        return status
