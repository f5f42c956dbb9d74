"""Checks of the JSON schemas a request carries (response_format, tool parameters) before any
decoding starts, so that a schema no output can follow is a 400 at the door, not an empty answer.

Well-formedness is the jsonschema library's meta-schema check. One more rule is ours: a `$ref` chain
that comes back to where it started without passing through an object or array (`{"$ref": "#"}`, or
`a -> b -> a` in `$defs`) describes no value a grammar can produce (every expansion needs another
expansion first), so the grammar compiles to nothing and the model could only stop at once.
"""

from typing import Any, Dict, List, Optional

from .limits import MAX_JSON_DEPTH


def check_json_schema(schema: Any, what: str) -> None:
    """Raises ValueError unless `schema` is a well-formed JSON Schema (checked against its draft's
    meta-schema) whose `$ref`s do not loop back on themselves."""
    from jsonschema import exceptions, validators  # imported lazily: only schema-carrying requests pay

    if not isinstance(schema, dict):
        raise ValueError(f"{what} must be a JSON object")
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as err:
        location = "/".join(str(p) for p in err.absolute_path)
        raise ValueError(f"{what} is not a valid JSON Schema at '/{location}': {err.message}") from None
    except RecursionError:  # defence in depth: parse_request already refuses values this deep
        raise ValueError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_ref_cycles(schema, what)


def _check_ref_cycles(schema: Dict[str, Any], what: str) -> None:
    """Follows the `$ref` chain from every subschema that has one; a chain that revisits a pointer
    is a cycle without nesting. Only local refs ("#...") are followed; others are left to the
    grammar compiler, which resolves no remote documents anyway."""
    for pointer in _pointers_with_ref(schema):
        seen: List[str] = []
        current: Optional[str] = pointer
        while current is not None:
            if current in seen:
                chain = " -> ".join([*seen, current])
                raise ValueError(f"{what} refers to itself without nesting ({chain}), so no value can match it")
            seen.append(current)
            current = _ref_of(_resolve(schema, current))


def _pointers_with_ref(schema: Dict[str, Any]) -> List[str]:
    """JSON pointers ("#", "#/$defs/a") of every object in the schema that has a local `$ref`."""
    found: List[str] = []
    stack = [("#", schema)]
    while stack:
        pointer, node = stack.pop()
        if isinstance(node, dict):
            if _ref_of(node) is not None:
                found.append(pointer)
            stack.extend((f"{pointer}/{_escape(k)}", v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{pointer}/{i}", v) for i, v in enumerate(node))
    return found


def _ref_of(node: Any) -> Optional[str]:
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    return "#" + ref[1:] if ref[1:].startswith("/") or ref == "#" else None


def _resolve(schema: Any, pointer: str) -> Any:
    """The value at a local JSON pointer, or None where it does not resolve."""
    node = schema
    for part in pointer[2:].split("/") if pointer != "#" else ():
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _escape(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")
