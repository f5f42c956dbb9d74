"""mlc_llm: the MLC LLM Python API (MLCEngine, AsyncMLCEngine, OpenAI-style completions) on a Rust
engine with a paged KV cache and continuous batching.

Importing the package never needs CUDA: pip-installed CUDA libraries are preloaded when present (so the
native engine finds them), and the native engine itself is loaded when the first engine is built.
"""

from ._native import preload_cuda_libs as _preload_cuda_libs

_preload_cuda_libs()

from .protocol.errors import (  # noqa: E402
    BadRequestError,
    EngineDeadError,
    InsufficientMemoryError,
    InternalError,
    MLCError,
    ModelLoadError,
    UnsupportedError,
)
from .serve.config import EngineConfig  # noqa: E402
from .serve.engine import AsyncMLCEngine, MLCEngine  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AsyncMLCEngine",
    "BadRequestError",
    "EngineConfig",
    "EngineDeadError",
    "InsufficientMemoryError",
    "InternalError",
    "MLCEngine",
    "MLCError",
    "ModelLoadError",
    "UnsupportedError",
]
