"""What a request body may carry beyond the fields this engine acts on, decided before the request
model sees it: OpenAI's tolerance, not a looser parser.

OpenAI's API accepts every documented field, and its SDK and the libraries on top of it send some of
them on every call (`n: null`, `store`, `metadata`, the legacy `functions`), so refusing them breaks
real clients. It does refuse a field it does not know ("Unrecognized request argument"), and so do we:
a misspelt option must fail loudly rather than be ignored (vLLM only warns; we follow OpenAI).

Three rules, in this order:
1. An explicit `null` at the top level is the same as leaving the field out (every top-level field of
   OpenAI's request bodies is nullable, and the SDK serialises unset options as null).
2. Documented OpenAI fields that change nothing this engine does (bookkeeping, billing tiers, hints for
   OpenAI's own models) are type-checked and dropped; values that would ask for something we cannot
   do (audio output, web search) are refused as unsupported (400).
3. The legacy function-calling fields (`functions`, `function_call`, `role: "function"` messages and
   `function_call` on assistant messages) are rewritten into their `tools` equivalents.
"""

from typing import Any, Dict, List, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from .errors import BadRequestError, UnsupportedError
from .validation_errors import bad_request_from


class IgnoredOpenAIFields(BaseModel):
    """Documented OpenAI request fields accepted for compatibility and without effect here, with the
    types OpenAI gives them (a wrong type is still a 400 naming the field)."""

    model_config = ConfigDict(extra="forbid")

    # Stored completions, their tags, and the end-user identifiers OpenAI uses for abuse monitoring.
    store: Optional[StrictBool] = None
    metadata: Optional[Dict[StrictStr, StrictStr]] = Field(default=None, max_length=16)
    prompt_cache_key: Optional[StrictStr] = None
    safety_identifier: Optional[StrictStr] = None
    # Processing tier and hints for OpenAI's reasoning / GPT-5 models; a local engine has one tier.
    service_tier: Optional[StrictStr] = None
    reasoning_effort: Optional[StrictStr] = None
    verbosity: Optional[StrictStr] = None
    # Output modalities: text is what this engine produces (audio is refused in `check_ignored`).
    modalities: Optional[List[Literal["text", "audio"]]] = None
    # Predicted outputs and prompt-cache options only speed OpenAI up; the answer is the same without
    # them (this engine caches prefixes on its own).
    prediction: Optional[Dict[StrictStr, Any]] = None
    prompt_cache_options: Optional[Dict[StrictStr, Any]] = None
    prompt_cache_retention: Optional[StrictStr] = None
    # OpenAI's moderation of the answer; nothing here moderates.
    moderation: Optional[Dict[StrictStr, Any]] = None
    # Asks for what this engine cannot do: refused in `_check_ignored` unless empty.
    audio: Optional[Dict[StrictStr, Any]] = None
    web_search_options: Optional[Dict[StrictStr, Any]] = None


IGNORED_FIELDS = frozenset(IgnoredOpenAIFields.model_fields)


def normalize_request(data: Mapping[str, Any], chat: bool) -> Dict[str, Any]:
    """The body with the three rules above applied; raises BadRequestError for an ignored field of
    the wrong type or a legacy field that conflicts with its modern form."""
    body = {key: value for key, value in data.items() if value is not None}
    ignored = {key: body.pop(key) for key in list(body) if key in IGNORED_FIELDS}
    _check_ignored(ignored)
    if chat:
        _map_legacy_functions(body)
    return body


def _check_ignored(ignored: Dict[str, Any]) -> None:
    try:
        fields = IgnoredOpenAIFields.model_validate(ignored)
    except ValidationError as err:
        raise bad_request_from(err) from None
    if fields.modalities is not None and "audio" in fields.modalities:
        raise UnsupportedError("audio output is not supported; modalities may only be ['text']", "modalities")
    if fields.audio:
        raise UnsupportedError("audio output is not supported", "audio")
    if fields.web_search_options is not None:
        raise UnsupportedError("web search is not supported", "web_search_options")


# ------------------------------------------------------------------------ legacy function calling


def _map_legacy_functions(body: Dict[str, Any]) -> None:
    """`functions` -> `tools`, `function_call` -> `tool_choice`, and the legacy message shapes in
    `messages` -> their tool-call forms. The response keeps the modern shape (`tool_calls`), which
    the SDK and LangChain read as well."""
    functions = body.pop("functions", None)
    function_call = body.pop("function_call", None)
    if functions is not None:
        if "tools" in body:
            raise BadRequestError("give either tools or the legacy functions, not both", "functions")
        if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
            raise BadRequestError("functions must be a list of function definitions", "functions")
        body["tools"] = [{"type": "function", "function": f} for f in functions]
    if function_call is not None:
        if "tool_choice" in body:
            raise BadRequestError("give either tool_choice or the legacy function_call, not both", "function_call")
        body["tool_choice"] = _tool_choice_of(function_call)
    messages = body.get("messages")
    if isinstance(messages, list):
        body["messages"] = _modern_messages(messages)


def _tool_choice_of(function_call: Any) -> Union[str, Dict[str, Any]]:
    if function_call in ("none", "auto"):
        return str(function_call)
    if isinstance(function_call, dict) and set(function_call) == {"name"} and isinstance(function_call["name"], str):
        return {"type": "function", "function": {"name": function_call["name"]}}
    raise BadRequestError('function_call must be "none", "auto" or {"name": ...}', "function_call")


def _modern_messages(messages: List[Any]) -> List[Any]:
    """Assistant `function_call` -> `tool_calls` with a made-up id, and the `role: "function"` answer
    that follows -> a `tool` message answering that id (templates pair calls and results by id)."""
    out: List[Any] = []
    last_call_id: Optional[str] = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        if message.get("role") == "assistant" and isinstance(message.get("function_call"), dict):
            call = message["function_call"]
            last_call_id = f"call_legacy_{i}"
            rest = {k: v for k, v in message.items() if k != "function_call"}
            out.append({**rest, "tool_calls": [{"id": last_call_id, "type": "function", "function": call}]})
        elif message.get("role") == "function":
            rest = {k: v for k, v in message.items() if k != "role"}
            out.append({**rest, "role": "tool", "tool_call_id": last_call_id or f"call_legacy_{i}"})
        else:
            out.append(message)
    return out
