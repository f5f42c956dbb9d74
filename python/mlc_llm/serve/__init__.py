"""The serving engine: MLCEngine, AsyncMLCEngine and their configuration, and (as MLC exports them)
AsyncEmbeddingEngine and PopenServer, which runs `mlc_llm serve` in a subprocess."""

from typing import Any

from .config import EngineConfig
from .embedding_engine import AsyncEmbeddingEngine
from .engine import AsyncMLCEngine, MLCEngine
from .metrics import EngineMetrics

__all__ = ["AsyncEmbeddingEngine", "AsyncMLCEngine", "EngineConfig", "EngineMetrics", "MLCEngine", "PopenServer"]


def __getattr__(name: str) -> Any:
    # Imported on first use: importing the engine must not pay for the web stack.
    if name == "PopenServer":
        from .server.popen_server import PopenServer

        return PopenServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
