"""The OpenAI-compatible REST server of `mlc_llm serve` (FastAPI over AsyncMLCEngine)."""

from .app import begin_draining, create_app
from .popen_server import PopenServer
from .settings import ServerSettings

__all__ = ["PopenServer", "ServerSettings", "begin_draining", "create_app"]
