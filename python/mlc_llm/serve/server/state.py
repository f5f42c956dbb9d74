"""What every route of one server shares: the engine, the settings, the metrics, and whether the
server is draining for shutdown."""

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ...protocol.openai_api_protocol import CompletionUsage
from ..engine import AsyncMLCEngine
from .errors import INVALID_REQUEST, APIError
from .metrics import ServerMetrics
from .settings import ServerSettings


class RequestTracker:
    """Times one request and reports its outcome to the metrics exactly once."""

    def __init__(self, metrics: ServerMetrics, endpoint: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._started = time.monotonic()
        self._ended = False
        metrics.request_started()

    def end(self, status: int, usage: Optional[CompletionUsage] = None) -> None:
        if not self._ended:
            self._ended = True
            self._metrics.request_ended(self._endpoint, status, time.monotonic() - self._started, usage)


@dataclass
class ServerState:
    engine: AsyncMLCEngine
    settings: ServerSettings
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False

    def track(self, endpoint: str) -> RequestTracker:
        return RequestTracker(self.metrics, endpoint)

    def check_model(self, body: Mapping[str, Any]) -> None:
        """A request may leave `model` out or name this server's model; any other name is a 404
        (a string of the wrong type is left for validation to report as a 400)."""
        name = body.get("model")
        if isinstance(name, str) and name and not self.settings.serves(name):
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.settings.served_model_name!r}",
                type=INVALID_REQUEST,
                param="model",
                code="model_not_found",
            )
