"""The stream-back side: one thread that moves engine deltas to per-request queues, and the response
iterators that read those queues.

The Rust engine runs on its own thread and never touches Python. Python learns about progress only by
calling `_core.Engine.poll`, which releases the GIL while it waits. A single "stream-back" thread per
engine polls and routes each delta to the sink its request registered, so a caller (a plain thread or
an asyncio task) waits on its own queue and never on the engine. When the engine stops, every open
stream receives an `EngineDeadError` instead of hanging.
"""

import asyncio
import collections
import logging
import queue
import threading
import time
from typing import Any, Callable, Deque, Dict, Generic, Iterable, List, Optional, Protocol, TypeVar, Union

from ..protocol.errors import BadRequestError, EngineDeadError

logger = logging.getLogger("mlc_llm.serve")

Delta = Dict[str, Any]
Item = Union[Delta, BaseException]
Sink = Callable[[Item], None]
ChunkT = TypeVar("ChunkT")

# How long the dispatcher keeps draining after terminate() before it gives up on the final deltas.
_DRAIN_AFTER_STOP_S = 2.0


class PollingEngine(Protocol):
    def poll(self, timeout_ms: int) -> List[Delta]: ...


class StreamBack:
    """Owns the stream-back thread of one engine and the routing table request id -> sink."""

    def __init__(self, core: PollingEngine, poll_timeout_ms: int = 50) -> None:
        self._core = core
        self._poll_timeout_ms = poll_timeout_ms
        self._sinks: Dict[str, Sink] = {}
        self._lock = threading.Lock()
        self._stop_requested_at: Optional[float] = None
        self._dead: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="stream-back", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def register(self, request_ids: Iterable[str], sink: Sink) -> None:
        """Routes the deltas of `request_ids` to `sink`; must happen before the request is queued so
        that no delta can arrive unrouted. All or nothing: an id that is already routed is refused
        and the routes of its owner are left as they are."""
        ids = list(request_ids)
        with self._lock:
            if self._dead is not None:
                raise EngineDeadError(f"the engine has stopped: {self._dead}")
            taken = next((i for i in ids if i in self._sinks), None)
            if taken is not None:
                raise BadRequestError(f"request id {taken!r} is already in use", "request_id")
            for request_id in ids:
                self._sinks[request_id] = sink

    def unregister(self, request_ids: Iterable[str], sink: Optional[Sink]) -> None:
        """Drops the routes of `request_ids` that lead to `sink` (a route that another request
        registered under the same id is not ours to drop)."""
        with self._lock:
            for request_id in request_ids:
                if sink is not None and self._sinks.get(request_id) is sink:
                    del self._sinks[request_id]

    def request_stop(self) -> None:
        """Lets the thread exit once the engine reports dead (or after a short drain)."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        reason: BaseException = EngineDeadError("the engine has been terminated")
        try:
            while True:
                try:
                    deltas = self._core.poll(self._poll_timeout_ms)
                except EngineDeadError as err:
                    reason = err
                    break
                self._dispatch(deltas)
                if not deltas and self._drain_expired():
                    break
        except BaseException as err:  # a broken binding must not leave callers waiting forever
            logger.exception("stream-back thread failed")
            reason = EngineDeadError(f"stream-back thread failed: {err!r}")
        self._fail_all(reason)

    def _drain_expired(self) -> bool:
        started = self._stop_requested_at
        return started is not None and time.monotonic() - started > _DRAIN_AFTER_STOP_S

    def _dispatch(self, deltas: List[Delta]) -> None:
        for delta in deltas:
            request_id = delta["request_id"]
            with self._lock:
                if delta.get("finish_reason") is None:
                    sink = self._sinks.get(request_id)
                else:
                    sink = self._sinks.pop(request_id, None)
            if sink is not None:
                sink(delta)

    def _fail_all(self, reason: BaseException) -> None:
        with self._lock:
            self._dead = reason
            sinks = set(self._sinks.values())
            self._sinks.clear()
        for sink in sinks:
            sink(EngineDeadError(str(reason)))


def queue_sink(q: "queue.SimpleQueue[Item]") -> Sink:
    """A sink for a caller blocked on a plain queue (MLCEngine)."""
    return q.put_nowait


def async_queue_sink(loop: asyncio.AbstractEventLoop, q: "asyncio.Queue[Item]") -> Sink:
    """A sink for a caller awaiting an asyncio.Queue on `loop` (AsyncMLCEngine). asyncio queues are
    not thread-safe, so the put is scheduled on the caller's loop."""

    def put(item: Item) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:  # the caller's loop has closed; nobody is listening any more
            pass

    return put


class Submission(Protocol):
    """The engine-side handle of one user request (its n engine requests)."""

    def cancel(self) -> None:
        """Aborts the engine requests that have not finished and forgets them."""

    def release(self) -> None:
        """Forgets a request whose engine requests have all finished."""


class Builder(Protocol[ChunkT]):
    """Turns deltas into response chunks (see responses.py)."""

    @property
    def done(self) -> bool: ...

    def on_delta(self, delta: Delta) -> List[ChunkT]: ...


class _StreamState(Generic[ChunkT]):
    """What the sync and async iterators share: pending chunks and the end-of-request bookkeeping."""

    def __init__(self, submission: Submission, builder: Builder[ChunkT]) -> None:
        self._submission = submission
        self._builder = builder
        self._pending: Deque[ChunkT] = collections.deque()
        self._finished = False

    def _handle(self, item: Item) -> None:
        """Consumes one queue item; raises what the engine reported, after cleaning up."""
        if isinstance(item, BaseException):
            self.close()
            raise item
        try:
            self._pending.extend(self._builder.on_delta(item))
        except BaseException:
            self.close()
            raise
        if self._builder.done:
            self._finished = True
            self._submission.release()

    def close(self) -> None:
        """Ends the stream early: the remaining engine requests are aborted."""
        if not self._finished:
            self._finished = True
            self._submission.cancel()

    def __del__(self) -> None:
        # A stream dropped before its end must not keep generating tokens nobody reads.
        try:
            self.close()
        except Exception:
            pass


class SyncResponseStream(_StreamState[ChunkT]):
    """The iterator returned by MLCEngine's `create(stream=True)`."""

    def __init__(self, submission: Submission, builder: Builder[ChunkT], q: "queue.SimpleQueue[Item]") -> None:
        super().__init__(submission, builder)
        self._queue = q

    def __iter__(self) -> "SyncResponseStream[ChunkT]":
        return self

    def __next__(self) -> ChunkT:
        while not self._pending:
            if self._finished:
                raise StopIteration
            try:
                item = self._queue.get()
            except BaseException:  # KeyboardInterrupt while waiting
                self.close()
                raise
            self._handle(item)
        return self._pending.popleft()


class AsyncResponseStream(_StreamState[ChunkT]):
    """The async iterator returned by AsyncMLCEngine's `await create(stream=True)`. Cancelling the
    task that iterates it aborts the request."""

    def __init__(self, submission: Submission, builder: Builder[ChunkT], q: "asyncio.Queue[Item]") -> None:
        super().__init__(submission, builder)
        self._queue = q

    def __aiter__(self) -> "AsyncResponseStream[ChunkT]":
        return self

    async def __anext__(self) -> ChunkT:
        while not self._pending:
            if self._finished:
                raise StopAsyncIteration
            try:
                item = await self._queue.get()
            except BaseException:  # CancelledError: the consumer is gone
                self.close()
                raise
            self._handle(item)
        return self._pending.popleft()

    async def aclose(self) -> None:
        self.close()


def collect_sync(submission: Submission, builder: Builder[Any], q: "queue.SimpleQueue[Item]") -> None:
    """Drains a non-streaming request into `builder`."""
    state = SyncResponseStream(submission, builder, q)
    for _ in state:
        pass


async def collect_async(submission: Submission, builder: Builder[Any], q: "asyncio.Queue[Item]") -> None:
    state = AsyncResponseStream(submission, builder, q)
    async for _ in state:
        pass
