"""Pydantic's ValidationError as our BadRequestError: callers never see pydantic's error type, and
the error names the top-level field (OpenAI's `param`) with a path to the exact spot in the message."""

from typing import Union

from pydantic import ValidationError

from .errors import BadRequestError


def bad_request_from(err: ValidationError) -> BadRequestError:
    """The first error of a pydantic validation as our BadRequestError naming the top-level field."""
    errors = err.errors(include_url=False)
    first = errors[0]
    # A value that fits no member of a union gets one error per member; the deepest location is the
    # member the value was meant for (a list of ids with one id out of range, not "not a string").
    same_field = [e for e in errors if e.get("loc", ())[:1] == first.get("loc", ())[:1]]
    first = max(same_field, key=lambda e: len(e.get("loc", ())))
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else "request"
    path = field + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:] if _is_field_name(p))
    if first.get("type") == "extra_forbidden":
        return BadRequestError(f"unknown field {path!r}", field)
    return BadRequestError(f"invalid {path!r}: {first.get('msg', 'invalid value')}", field)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _is_field_name(part: Union[int, str]) -> bool:
    """Pydantic puts union member tags (`str`, `list[ContentPart]`) into error locations; drop them."""
    return isinstance(part, int) or (part.isidentifier() and part not in _TYPE_TAGS)
