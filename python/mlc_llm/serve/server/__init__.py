"""The OpenAI-compatible REST server of `mlc_llm serve` (FastAPI over AsyncMLCEngine)."""

from .app import begin_draining, create_app
from .settings import ServerSettings

__all__ = ["ServerSettings", "begin_draining", "create_app"]
