"""A deadline on a request's headers (slowloris): uvicorn times out idle keep-alive connections and the
request guard (guards.py) times out slow bodies, but a client that sends its header lines one at a time
holds a connection open for as long as it likes. The protocol built here closes a connection whose
request headers are not complete `timeout_s` after it opened, or after the previous response on it ended.

It wraps whichever HTTP protocol uvicorn would pick (h11, or httptools when installed): a request's
headers are complete when the protocol starts its request cycle (`self.cycle`), which both implementations
do as soon as they have parsed them.
"""

import asyncio
import logging
from typing import Any, Optional

logger = logging.getLogger("mlc_llm.serve.server")


def header_timeout_protocol(timeout_s: float) -> type:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _mlc_timer: Optional[asyncio.TimerHandle] = None
        _mlc_cycle: Any = None

        def _mlc_arm(self) -> None:
            self._mlc_disarm()
            self._mlc_cycle = getattr(self, "cycle", None)
            self._mlc_timer = self.loop.call_later(timeout_s, self._mlc_expire)

        def _mlc_disarm(self) -> None:
            if self._mlc_timer is not None:
                self._mlc_timer.cancel()
                self._mlc_timer = None

        def _mlc_expire(self) -> None:
            self._mlc_timer = None
            if not self.transport.is_closing():
                logger.debug("closing a connection whose request headers took over %.0f s", timeout_s)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._mlc_arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = getattr(self, "cycle", None)
            if self._mlc_timer is not None and cycle is not None and cycle is not self._mlc_cycle:
                self._mlc_disarm()  # the headers are in; the body has its own deadline

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._mlc_arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._mlc_disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
