"""Running the app under uvicorn until SIGTERM / Ctrl-C, then draining.

On a signal uvicorn stops accepting connections and waits for open requests. Three things are
added: the first signal also makes the app refuse new requests on connections that stay open
(keep-alive); when the shutdown timeout passes, the requests still running are aborted in the
engine, so their streams end properly (finish_reason "abort", then [DONE]) instead of having their
tasks cancelled mid-write; and the signal is not re-raised after a clean drain (uvicorn re-raises
it, which would end the process with the signal instead of status 0). A second Ctrl-C still quits
at once.
"""

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional

import uvicorn
from fastapi import FastAPI

from .app import begin_draining
from .header_timeout import header_timeout_protocol
from .settings import ServerSettings

logger = logging.getLogger("mlc_llm.serve.server")


# uvicorn's own cancellation comes this long after the engine-side abort, as a backstop only.
_CANCEL_GRACE_S = 10.0
# How long an idle keep-alive connection stays open (the header deadline, `--header-timeout`, 15 s by
# default, closes one sooner). Longer than httpx's and the OpenAI SDK's pools keep one (5 s): at uvicorn's
# default of 5 s, equal to theirs, a client could send its next request on a connection in the instant
# the server closes it and get a reset (httpx.ReadError) for a request that never arrived, which a loaded
# 2-core run of the burst test did.
_KEEP_ALIVE_S = 20.0


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        on_exit_signal: Callable[[], None],
        on_drain_timeout: Callable[[], None],
        drain_timeout_s: float,
    ) -> None:
        super().__init__(config)
        self._on_exit_signal = on_exit_signal
        self._on_drain_timeout = on_drain_timeout
        self._drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: Optional[List[Any]] = None) -> None:
        timer = asyncio.get_running_loop().call_later(self._drain_timeout_s, self._drain_timed_out)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _drain_timed_out(self) -> None:
        logger.warning("shutdown timeout of %.1fs passed: aborting the requests still running", self._drain_timeout_s)
        self._on_drain_timeout()

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            # A warning: why a server stopped serving should be in the log at the default levels of a deployment.
            logger.warning("received %s: draining running requests, then stopping", signal.Signals(sig).name)
            self._on_exit_signal()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: Optional[List[Any]] = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            # One stable line that scripts and tests can wait for, with the real port when port 0
            # asked for any free one.
            print(f"mlc_llm serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)


def run_server(
    app: FastAPI,
    settings: ServerSettings,
    abort_all: Callable[[], None],
    log_level: str = "info",
    access_log: bool = True,
) -> bool:
    """Serves `app` until a signal and a drain; `abort_all` stops every running engine request when
    the shutdown timeout passes. Returns whether the server had started."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=settings.shutdown_timeout_s + _CANCEL_GRACE_S,
        lifespan="off",
        timeout_keep_alive=_KEEP_ALIVE_S,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    server = DrainingServer(
        config,
        on_exit_signal=lambda: begin_draining(app),
        on_drain_timeout=abort_all,
        drain_timeout_s=settings.shutdown_timeout_s,
    )
    server.run()
    return bool(server.started)
