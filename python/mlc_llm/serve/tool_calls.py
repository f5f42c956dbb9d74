"""Tool calling: which output format the model uses, the grammar that forces a call, and parsing
the model's text into OpenAI `tool_calls` (whole, or as stream deltas).

Formats understood by the parser (the common ones of open models):
- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call,
  possibly after some text (which becomes `content`);
- Llama 3.1 JSON: ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``, several
  calls separated by ``;``;
- plain JSON: one object ``{"name": ..., "arguments": ...}`` or an array of them.

A forced call (`tool_choice="required"` or a named function) is generated under a grammar in the
format the chat template announces to the model (Hermes when the rendered prompt mentions
``<tool_call>``, Llama's ``parameters`` when it mentions ``<|python_tag|>``, plain JSON otherwise),
so the parser always finds it.
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERMES_BEGIN = "<tool_call>"
HERMES_END = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"

# Text that may open a tool call; output starting otherwise is plain content (see ToolCallStream).
_CALL_OPENERS = (HERMES_BEGIN, PYTHON_TAG, "{", "[")


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the function name and its arguments as a JSON string."""

    name: str
    arguments: str

    def to_openai(self, call_id: Optional[str] = None) -> Dict[str, Any]:
        return {
            "id": call_id or new_call_id(),
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# ------------------------------------------------------------------------------------ parsing


def _call_from_object(obj: Any) -> Optional[ToolCall]:
    """`{"name", "arguments"|"parameters"}` (arguments as an object or a JSON string) -> ToolCall."""
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "function" and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name=name, arguments=json.dumps(args, ensure_ascii=False))


def _calls_from_json(text: str) -> Optional[List[ToolCall]]:
    """A whole JSON object or array of calls, or None if `text` is not exactly that."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call_from_object(item) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _parse_hermes(text: str) -> Optional[Tuple[Optional[str], List[ToolCall]]]:
    start = text.find(HERMES_BEGIN)
    if start < 0:
        return None
    content = text[:start].strip() or None
    calls: List[ToolCall] = []
    rest = text[start:]
    while rest.startswith(HERMES_BEGIN):
        body = rest[len(HERMES_BEGIN) :]
        end = body.find(HERMES_END)
        # A missing closing tag at the very end still counts (some models stop right after the JSON).
        inner, rest = (body, "") if end < 0 else (body[:end], body[end + len(HERMES_END) :].lstrip())
        found = _calls_from_json(inner.strip())
        if not found:
            return None
        calls.extend(found)
    if rest.strip():
        return None
    return content, calls


def _parse_llama(text: str) -> Optional[List[ToolCall]]:
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :].strip()
    whole = _calls_from_json(body)
    if whole is not None:
        return whole
    # Several calls separated by ";" (Llama 3.1's documented multi-call form).
    calls: List[ToolCall] = []
    for part in body.split(";"):
        if not part.strip():
            continue
        found = _calls_from_json(part.strip())
        if not found:
            return None
        calls.extend(found)
    return calls or None


def parse_tool_calls(text: str) -> Tuple[Optional[str], List[ToolCall]]:
    """Splits model output into (content, calls). Output that is not a well-formed call in one of
    the known formats is all content, with no calls."""
    hermes = _parse_hermes(text)
    if hermes is not None:
        return hermes
    calls = _parse_llama(text)
    if calls:
        return None, calls
    return text, []


def may_start_call(text: str) -> bool:
    """Whether `text` (output so far) could still turn out to be a tool call, so streaming should
    hold it back rather than send it as content."""
    head = text.lstrip()
    if not head:
        return True
    return any(head.startswith(o) or o.startswith(head) for o in _CALL_OPENERS)


# ------------------------------------------------------------------------------ grammar / format


def call_format(rendered_prompt: str) -> str:
    """The call format the prompt teaches the model: "hermes", "llama" or "json"."""
    if HERMES_BEGIN in rendered_prompt:
        return "hermes"
    if PYTHON_TAG in rendered_prompt or '"parameters"' in rendered_prompt:
        return "llama"
    return "json"


def _call_schema(tools: Sequence[Dict[str, Any]], args_key: str) -> Dict[str, Any]:
    """`{"name": <one of the tools>, args_key: <that tool's parameters>}`, one branch per tool so
    that the arguments match the named function.

    Each tool's parameters are moved under the root's `$defs` (as `tool_<i>`) and referenced from
    its branch, with the tool's own local refs rewritten to the new place: a parameters schema is a
    root document, so `#/$defs/Person` (every nested pydantic model) means its own `$defs`, which
    would point at nothing once nested inside the call schema."""
    branches = []
    defs: Dict[str, Any] = {}
    for i, tool in enumerate(tools):
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        key = f"tool_{i}"
        defs[key] = _rebase_refs(params, f"#/$defs/{key}")
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, args_key: {"$ref": f"#/$defs/{key}"}},
                "required": ["name", args_key],
                "additionalProperties": False,
            }
        )
    root: Dict[str, Any] = dict(branches[0]) if len(branches) == 1 else {"anyOf": branches}
    root["$defs"] = defs
    return root


def _rebase_refs(schema: Any, base: str) -> Any:
    """A copy of `schema` whose document-local refs (`#`, `#/...`) point into `base` instead of the
    document root. Refs to other documents, and `$ref` used as a property name, are left alone."""
    if isinstance(schema, list):
        return [_rebase_refs(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: Dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and (value == "#" or value.startswith("#/")):
            out[key] = base + value[1:]
        elif key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas"):
            # Names of properties / definitions are not keywords: only their values are schemas.
            out[key] = (
                {name: _rebase_refs(sub, base) for name, sub in value.items()} if isinstance(value, dict) else value
            )
        elif key in ("const", "enum", "default", "examples"):
            out[key] = value  # JSON values, not schemas: a "$ref" key inside is data
        else:
            out[key] = _rebase_refs(value, base)
    return out


def forced_call_grammar(tools: Sequence[Dict[str, Any]], fmt: str) -> Dict[str, Any]:
    """The engine grammar (SamplingParams "grammar") that makes the output one call of `tools`."""
    if fmt == "hermes":
        schema = _call_schema(tools, "arguments")
        return {"type": "tagged_json", "begin": HERMES_BEGIN + "\n", "schema": schema, "end": "\n" + HERMES_END}
    if fmt == "llama":
        return {"type": "json_schema", "schema": _call_schema(tools, "parameters")}
    return {"type": "json_schema", "schema": _call_schema(tools, "arguments")}


def tools_system_prompt(tools: Sequence[Dict[str, Any]]) -> str:
    """Describes the tools in Hermes style, for chat templates that do not render `tools` at all."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listing}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


# ------------------------------------------------------------------------------------ streaming


class ToolCallStream:
    """Per-choice streaming state, giving the same split into content and calls as `parse_tool_calls`
    gives the whole text:

    - while the output might still be a call from its start (`may_start_call`), it is held back;
    - otherwise it is content, sent as it comes, except a tail that may be the start of `<tool_call>`
      (Hermes-style models write a sentence, then the call); from `<tool_call>` on it is held again;
    - at the end of the choice the held text becomes the calls (as OpenAI `delta.tool_calls` entries) if
      it parses as calls, else content.

    Calls are emitted once the choice ends because only the complete text tells a call from JSON
    that merely looks like one; the arguments still arrive in several fragments, as the SDK's
    stream accumulator expects.
    """

    ARGUMENT_FRAGMENT = 16

    def __init__(self) -> None:
        self._held = ""
        self._content = False  # decided: the output does not start with a call; watching for <tool_call>
        self._in_call = False  # held from a <tool_call> that followed content

    def push(self, text: str) -> str:
        """Adds generated text; returns the part that may be sent as content now."""
        self._held += text
        if self._in_call:
            return ""
        if not self._content:
            if may_start_call(self._held):
                return ""
            self._content = True
        at = self._held.find(HERMES_BEGIN)
        if at >= 0:
            self._in_call = True
        else:  # keep back a tail that may be the start of the tag
            at = len(self._held) - _partial_suffix(self._held, HERMES_BEGIN)
        out, self._held = self._held[:at], self._held[at:]
        return out

    def finish(self) -> Tuple[str, List[Dict[str, Any]]]:
        """At the end of the choice: (content still to send, tool-call delta entries)."""
        held, self._held = self._held, ""
        if (self._content and not self._in_call) or not held:
            return held, []
        content, calls = parse_tool_calls(held)
        if not calls:
            return held, []
        return content or "", call_deltas(calls, self.ARGUMENT_FRAGMENT)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def call_deltas(calls: Sequence[ToolCall], fragment: int) -> List[Dict[str, Any]]:
    """The `delta.tool_calls` entries of a streamed call list: per call, a head with index, id,
    type and name (arguments empty), then the arguments in fragments."""
    out: List[Dict[str, Any]] = []
    for index, call in enumerate(calls):
        out.append(
            {
                "index": index,
                "id": new_call_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
        )
        args = call.arguments
        for start in range(0, len(args), max(1, fragment)):
            out.append({"index": index, "function": {"arguments": args[start : start + fragment]}})
    return out
