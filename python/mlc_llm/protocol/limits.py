"""Limits every request value must respect before any field is validated: how deeply JSON may nest,
which strings are text at all, and the integer ranges the engine's types can hold.

Why here, at the protocol boundary: Python's recursive code (the JSON decoder, pydantic, jsonschema)
hits the interpreter's recursion limit on deeply nested values, a lone UTF-16 surrogate ("\\udfff",
which JSON's escapes can spell) cannot be encoded to UTF-8 by the tokenizer or the native module, and an
integer beyond the engine's `u32` / `i32` fields fails there with a message about floats. Checking these
once, first, turns each of them into a BadRequestError naming the field, for the REST API and the Python
API alike.
"""

import re
from itertools import repeat
from typing import Any, Iterable, Mapping

from annotated_types import Ge, Le
from pydantic import StrictInt
from typing_extensions import Annotated

from .errors import BadRequestError

# Deeper than any real request (a JSON schema nested 45 levels is still accepted) and well inside
# both Python's recursion limit and serde_json's (128), which sees the same values in the engine.
MAX_JSON_DEPTH = 100

# Token ids and token counts are u32 in the engine, top_k is i32, penalties are f32.
MAX_U32 = 2**32 - 1
MAX_I32 = 2**31 - 1
MAX_F32 = 3.4028234663852886e38

# Strict: lax validation would read True or 1.0 as a token id.
TokenId = Annotated[StrictInt, Ge(0), Le(MAX_U32)]
TokenCount = Annotated[StrictInt, Ge(1), Le(MAX_U32)]

# Python strings may hold surrogate code points that no UTF-8 text can (json.loads makes them from
# escapes such as "\udfff"); any one of them makes a string unencodable.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_request_values(data: Mapping[str, Any]) -> None:
    """Raises BadRequestError, naming the top-level field, for a value nested deeper than
    MAX_JSON_DEPTH or a string (or key) that is not valid Unicode text.

    Iterative, so a value nested a million levels deep costs no Python stack; numbers are not
    visited one by one, so a prompt of a million token ids costs little.
    """
    for field, value in data.items():
        if isinstance(field, str) and _SURROGATE.search(field) is not None:
            # The name goes into the answer, which must be encodable itself.
            shown = field.encode("utf-8", "backslashreplace").decode("utf-8")
            raise BadRequestError(f"the field name {shown!r} is not valid Unicode (a lone surrogate)", shown)
        _check_value(field, value)


def _check_value(field: str, value: Any) -> None:
    stack = [(1, value)]
    while stack:
        depth, item = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequestError(f"{field!r} is nested more than {MAX_JSON_DEPTH} levels deep", field)
        if isinstance(item, str):  # a string does not nest: its depth is its container's
            if _SURROGATE.search(item) is not None:
                raise BadRequestError(f"{field!r} holds a string that is not valid Unicode (a lone surrogate)", field)
            continue
        if isinstance(item, Mapping):
            if any(isinstance(key, str) and _SURROGATE.search(key) is not None for key in item):
                raise BadRequestError(f"{field!r} holds a key that is not valid Unicode (a lone surrogate)", field)
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        # A C-level scan first: a list of a million token ids has nothing to descend into.
        if any(map(isinstance, children, repeat(_COMPOUND_OR_TEXT))):
            stack.extend((depth + 1 if isinstance(child, _COMPOUND) else depth, child)
                     for child in children if isinstance(child, _COMPOUND_OR_TEXT))


# dict, not Mapping: an ABC check per token id costs twice as much, and JSON values are dicts.
_COMPOUND = (dict, list, tuple)
_COMPOUND_OR_TEXT = (str, dict, list, tuple)


def json_depth_exceeded(field: str) -> BadRequestError:
    """The error for a JSON document too deep even to decode (the decoder's own recursion limit)."""
    return BadRequestError(f"{field} is nested more than {MAX_JSON_DEPTH} levels deep", field)
