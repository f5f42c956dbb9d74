"""What the REST server is configured with, apart from the engine: where it listens, who may call it,
how large and how much work a request may be, and how long shutdown waits for running requests."""

import os
from dataclasses import dataclass, field
from typing import List, Optional

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_HEADER_TIMEOUT_S = 15.0
# OpenAI's own limit on `n`.
DEFAULT_MAX_N = 128
# A request may ask for as many tokens as four full-length sequences hold (MLC's local mode runs
# four at once): enough for n=4 without max_tokens, while n=64 with long outputs is refused.
DEFAULT_REQUEST_TOKENS_PER_WINDOW = 4


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    # When set, every /v1 route needs `Authorization: Bearer <api_key>`; /health and /metrics stay open
    # so that probes and scrapers need no secret.
    api_key: Optional[str] = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # The whole body must arrive within this many seconds of the request's start (slow clients).
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    # A request's headers must arrive within this many seconds of the connection opening, or of the
    # previous response on it (slowloris); slower connections are closed.
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    # Work one request may ask for: choices, and prompt plus n x max_tokens (an unset max_tokens
    # counts as the rest of the context window). None: DEFAULT_REQUEST_TOKENS_PER_WINDOW windows.
    max_n: int = DEFAULT_MAX_N
    max_request_tokens: Optional[int] = None
    # On SIGTERM / Ctrl-C running requests may finish for this long; what is left is then aborted.
    shutdown_timeout_s: float = 30.0
    # The id /v1/models reports; requests may name it, the model path, or its file name.
    served_model_name: str = ""
    model_aliases: List[str] = field(default_factory=list)
    allow_origins: List[str] = field(default_factory=list)
    enable_debug: bool = False

    @staticmethod
    def for_model(model: str, **kwargs: object) -> "ServerSettings":
        """Settings serving `model` (a path or HF:// name) under its own name and its file name."""
        settings = ServerSettings(**kwargs)  # type: ignore[arg-type]
        if not settings.served_model_name:
            settings.served_model_name = model
        base = os.path.basename(model.rstrip("/"))
        stem = os.path.splitext(base)[0]
        aliases = [model, base, stem, *settings.model_aliases]
        settings.model_aliases = [a for i, a in enumerate(aliases) if a and a not in aliases[:i]]
        return settings

    def serves(self, name: str) -> bool:
        return name == self.served_model_name or name in self.model_aliases
