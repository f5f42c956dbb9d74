"""The exceptions the engine raises. The native module raises these very classes."""

import re
from typing import Optional

# A Rust backtrace appended to an error's text (candle captures one when RUST_BACKTRACE is set):
# numbered frames ("   0: candle_core::error::Error::bt") or the panic hook's "stack backtrace:".
_BACKTRACE = re.compile(r"\n(?:\s*stack backtrace:|\s*0: )", re.IGNORECASE)


class MLCError(Exception):
    """Base class of every error raised by mlc_llm.

    The message is what callers and HTTP clients are shown, so a Rust backtrace is cut off it and
    kept in `backtrace` for whoever debugs the engine.
    """

    def __init__(self, message: str = "", *args: object) -> None:
        text = str(message)
        cut = _BACKTRACE.search(text)
        self.backtrace: Optional[str] = text[cut.start() + 1 :] if cut else None
        super().__init__(text[: cut.start()] if cut else text, *args)


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
