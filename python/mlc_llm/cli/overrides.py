"""MLC's `--overrides "key=value;key=value"` strings, parsed into an `EngineConfig`.

Keys are `EngineConfig` field names plus the spellings MLC's `chat` and `serve` use for the same
settings. Values are converted to the field's type here, so a typo fails before any model loads.
"""

import dataclasses
import typing
from typing import Any, Dict, Optional

from ..protocol.errors import BadRequestError
from ..serve.config import EngineConfig

# MLC spellings -> EngineConfig fields.
ALIASES: Dict[str, str] = {
    "max_total_seq_length": "max_total_sequence_length",
    "max_batch_size": "max_num_sequence",
    "context_window_size": "max_single_sequence_length",
}

# Fields that are not plain scalars, or that the command line sets through its own flags.
_NOT_OVERRIDABLE = frozenset({"model", "model_lib", "additional_models", "mode", "verbose"})


def _scalar_type(annotation: Any) -> type:
    """int / float / str / bool out of `Optional[X]` or `X`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _convert(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise BadRequestError(f"override {key}={text!r}: expected true or false", key)
    try:
        return kind(text.strip())
    except ValueError:
        raise BadRequestError(f"override {key}={text!r}: expected {kind.__name__}", key) from None


def overridable_fields() -> Dict[str, type]:
    hints = typing.get_type_hints(EngineConfig)
    return {
        f.name: _scalar_type(hints[f.name])
        for f in dataclasses.fields(EngineConfig)
        if f.name not in _NOT_OVERRIDABLE
    }


def parse_overrides(text: Optional[str]) -> Dict[str, Any]:
    """`"max_num_sequence=32;gpu_memory_utilization=0.8"` -> {"max_num_sequence": 32, ...}."""
    fields = overridable_fields()
    values: Dict[str, Any] = {}
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise BadRequestError(f"override {item.strip()!r} is not of the form key=value", "overrides")
        name = ALIASES.get(key, key)
        if name not in fields:
            known = ", ".join(sorted(set(fields) | set(ALIASES)))
            raise BadRequestError(f"unknown override {key!r}; known keys: {known}", "overrides")
        values[name] = _convert(key, value, fields[name])
    return values


def engine_config_from_overrides(text: Optional[str]) -> Optional[EngineConfig]:
    """An EngineConfig carrying the overrides, or None when there are none."""
    values = parse_overrides(text)
    return EngineConfig(**values) if values else None
