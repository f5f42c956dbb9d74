"""The exceptions the engine raises. The native module raises these very classes."""

from typing import Optional


class MLCError(Exception):
    """Base class of every error raised by mlc_llm."""


class BadRequestError(MLCError, ValueError):
    """An invalid request or engine argument. `field` names the offending field."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedError(BadRequestError):
    """A valid option that this engine does not implement (yet)."""


class ModelLoadError(MLCError, RuntimeError):
    """The model is missing, unreadable or not a supported architecture."""


class InsufficientMemoryError(MLCError, MemoryError):
    """The configuration does not fit in memory; the message says what to change."""


class EngineDeadError(MLCError, RuntimeError):
    """The engine has been terminated or has crashed; no request can be served."""


class InternalError(MLCError, RuntimeError):
    """An unexpected failure inside the engine (also what a Rust panic becomes)."""
