"""Tool calling: the parser on hand-written outputs of each format, the streaming assembly, and
forced calls (tool_choice "required" / named) end to end on the real SmolLM2-135M-Instruct (CPU)."""

import json
from typing import Any, Dict, List, Optional, cast

import jsonschema
import openai
import openai.types.chat
import pytest

from nested_models import Team

from mlc_llm import BadRequestError, MLCEngine
from mlc_llm.serve.tool_calls import (
    ToolCallStream,
    call_format,
    forced_call_grammar,
    may_start_call,
    parse_tool_calls,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


# ------------------------------------------------------------------------------------- parser


def _calls(text: str) -> List[Dict[str, Any]]:
    return [{"name": c.name, "arguments": json.loads(c.arguments)} for c in parse_tool_calls(text)[1]]


def test_parses_hermes_blocks_with_leading_text() -> None:
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {"timezone": "CET"}}</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"timezone": "CET"}),
    ]


def test_parses_hermes_without_closing_tag_and_string_arguments() -> None:
    text = '<tool_call>\n{"name": "get_time", "arguments": "{\\"timezone\\": \\"UTC\\"}"}'
    assert _calls(text) == [{"name": "get_time", "arguments": {"timezone": "UTC"}}]


def test_parses_llama_json_with_parameters() -> None:
    assert _calls('{"name": "get_time", "parameters": {"timezone": "UTC"}}') == [
        {"name": "get_time", "arguments": {"timezone": "UTC"}}
    ]
    text = '<|python_tag|>{"name": "get_time", "parameters": {"timezone": "UTC"}}; {"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}'
    assert [c["name"] for c in _calls(text)] == ["get_time", "get_weather"]


def test_parses_plain_json_object_and_array() -> None:
    assert _calls('  {"name": "get_time", "arguments": {}}  ') == [{"name": "get_time", "arguments": {}}]
    text = '[{"name": "get_time", "arguments": {"timezone": "A"}}, {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "B", "unit": "celsius"}}}]'
    assert [c["name"] for c in _calls(text)] == ["get_time", "get_weather"]


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        '{"city": "Paris"}',  # JSON, but not a call
        '{"name": 3, "arguments": {}}',
        '{"name": "get_time", "arguments": [1, 2]}',
        '<tool_call>{"name": "get_time", "arguments": {</tool_call>',
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> trailing words',
        "[1, 2, 3]",
    ],
)
def test_non_calls_are_content(text: str) -> None:
    content, calls = parse_tool_calls(text)
    assert calls == [] and content == text


def test_may_start_call_holds_back_only_possible_openers() -> None:
    for prefix in ["", " ", "<", "<tool_", "<tool_call>", "{", ' {"na', "[", "<|python"]:
        assert may_start_call(prefix), prefix
    for prefix in ["Hello", "<b>", "The {", "x["]:
        assert not may_start_call(prefix), prefix


def test_call_format_follows_the_prompt() -> None:
    assert call_format("... <tool_call> ...") == "hermes"
    assert call_format('... {"name": function name, "parameters": ...}') == "llama"
    assert call_format("no hint here") == "json"
    grammar = forced_call_grammar([WEATHER], "hermes")
    assert grammar["type"] == "tagged_json" and grammar["begin"].startswith("<tool_call>")
    schema = forced_call_grammar(TOOLS, "llama")["schema"]
    jsonschema.validate({"name": "get_time", "parameters": {"timezone": "UTC"}}, schema)
    with pytest.raises(jsonschema.ValidationError):  # the arguments must match the named function
        jsonschema.validate({"name": "get_time", "parameters": {"city": "Paris", "unit": "celsius"}}, schema)


TEAM = cast(Dict[str, Any], openai.pydantic_function_tool(Team))


@pytest.mark.parametrize("fmt", ["hermes", "llama", "json"])
def test_forced_call_schema_keeps_nested_refs_resolvable(fmt: str) -> None:
    assert "$defs" in TEAM["function"]["parameters"]  # the shape that broke
    grammar = forced_call_grammar([TEAM, WEATHER], fmt)
    key = "parameters" if fmt == "llama" else "arguments"
    person = {"name": "Ada", "age": 36}
    jsonschema.validate({"name": "Team", key: {"lead": person, "members": [person]}}, grammar["schema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "Team", key: {"lead": {"name": "Ada"}, "members": []}}, grammar["schema"])


def test_forced_call_schema_rebases_root_and_definitions_refs() -> None:
    tree = {
        "type": "object",
        "definitions": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}}},
        "properties": {"root": {"$ref": "#/definitions/node"}, "$ref": {"const": {"$ref": "#/kept"}}},
    }
    tool = {"type": "function", "function": {"name": "tree", "parameters": tree}}
    schema = forced_call_grammar([tool], "json")["schema"]
    moved = schema["$defs"]["tool_0"]
    assert moved["properties"]["root"] == {"$ref": "#/$defs/tool_0/definitions/node"}
    assert moved["definitions"]["node"]["properties"]["kids"]["items"] == {"$ref": "#/$defs/tool_0"}
    assert moved["properties"]["$ref"] == {"const": {"$ref": "#/kept"}}  # data, not a reference
    jsonschema.validate({"name": "tree", "arguments": {"root": {"kids": [{"root": {}}]}}}, schema)


def _assemble(deltas: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """What the openai SDK's stream accumulator does with `delta.tool_calls` entries."""
    calls: Dict[int, Dict[str, Any]] = {}
    for d in deltas:
        call = calls.setdefault(d["index"], {"id": None, "name": "", "arguments": ""})
        call["id"] = d.get("id") or call["id"]
        call["name"] += d.get("function", {}).get("name") or ""
        call["arguments"] += d.get("function", {}).get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def test_stream_of_pieces_assembles_to_the_parsed_calls() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    stream = ToolCallStream()
    sent = "".join(stream.push(text[i : i + 3]) for i in range(0, len(text), 3))
    assert sent == ""  # held back: it is a call
    rest, deltas = stream.finish()
    assert rest == ""
    assembled = _assemble(deltas)
    assert len(assembled) == 1 and assembled[0]["id"].startswith("call_")
    assert assembled[0]["name"] == "get_weather"
    assert json.loads(assembled[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert sum(1 for d in deltas if "id" not in d) > 1  # arguments arrive in several fragments


def test_stream_of_plain_text_passes_through() -> None:
    stream = ToolCallStream()
    pieces = ["Hel", "lo ", "{there}"]
    assert "".join(stream.push(p) for p in pieces) == "Hello {there}"
    assert stream.finish() == ("", [])
    stream = ToolCallStream()
    assert stream.push("{not a call") == ""
    assert stream.finish() == ("{not a call", [])


# ----------------------------------------------------------------------------------- end to end


def _check_call(call: Any, allowed: Optional[List[str]] = None) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in (allowed or PARAMS)
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


@pytest.mark.parametrize("seed", [0, 1])
def test_named_tool_choice_gives_a_valid_call(engine: MLCEngine, seed: int) -> None:
    response = engine.chat.completions.create(
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=1.0,
        seed=seed,
        max_tokens=120,
    )
    sdk = openai.types.chat.ChatCompletion.model_validate(response.model_dump())
    choice = sdk.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0], ["get_time"])


def test_required_tool_choice_gives_a_valid_call_for_each_choice(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(
        messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=11, n=2, max_tokens=120
    )
    for choice in response.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
        _check_call(choice.message.tool_calls[0])


def test_streamed_tool_call_assembles_to_the_non_streamed_call(engine: MLCEngine) -> None:
    kwargs: Dict[str, Any] = dict(messages=ASK, tools=TOOLS, tool_choice="required", temperature=0.0, max_tokens=120)
    whole = engine.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "tool_calls"
    deltas: List[Dict[str, Any]] = []
    finish = None
    content = ""
    for chunk in engine.chat.completions.create(stream=True, **kwargs):
        sdk = openai.types.chat.ChatCompletionChunk.model_validate(chunk.model_dump())
        for choice in sdk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or ():
                deltas.append(tc.model_dump(exclude_none=True))
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assembled = _assemble(deltas)
    assert [(c["name"], json.loads(c["arguments"])) for c in assembled] == [
        (tc.function.name, json.loads(tc.function.arguments)) for tc in whole.message.tool_calls or ()
    ]


def test_tool_choice_none_renders_no_tools_and_parses_nothing(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=16)
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].finish_reason in ("stop", "length")


def test_auto_tool_choice_returns_a_well_formed_response(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(messages=ASK, tools=TOOLS, temperature=0.0, max_tokens=80)
    sdk = openai.types.chat.ChatCompletion.model_validate(response.model_dump())
    choice = sdk.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.function.name and isinstance(json.loads(call.function.arguments), dict)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content is not None


def test_unknown_named_tool_is_a_bad_request(engine: MLCEngine) -> None:
    with pytest.raises(BadRequestError) as err:
        engine.chat.completions.create(
            messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}, max_tokens=4
        )
    assert err.value.field == "tool_choice"


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "Team"}}, "auto"])
def test_nested_pydantic_tool_forced_and_auto(engine: MLCEngine, tool_choice: Any) -> None:
    """Forced: a call whose arguments validate against the nested model (today's main: 400 "Pointer
    '/$defs/Person' does not exist"). Auto: a well-formed answer either way."""
    response = engine.chat.completions.create(
        messages=[{"role": "user", "content": "Make a team of two people."}],
        tools=[TEAM, WEATHER],
        tool_choice=tool_choice,
        temperature=0.0,
        max_tokens=100 if tool_choice != "auto" else 12,
    )
    choice = openai.types.chat.ChatCompletion.model_validate(response.model_dump()).choices[0]
    if tool_choice == "auto" and not choice.message.tool_calls:
        assert choice.message.content is not None
        return
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    if call.function.name == "Team":
        Team.model_validate_json(call.function.arguments)
    else:
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_stream_of_text_then_a_call_gives_what_the_whole_text_parses_to() -> None:
    # Hermes-style models often say a sentence first: the sentence is content, the call a call, streamed
    # as parse_tool_calls splits the whole text; the tag is never sent as content, even cut across pieces.
    text = 'Let me look that up. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    whole_content, whole_calls = parse_tool_calls(text)
    assert whole_content == "Let me look that up." and [c.name for c in whole_calls] == ["get_weather"]
    for size in (1, 3, 7, len(text)):
        stream = ToolCallStream()
        sent = "".join(stream.push(text[i : i + size]) for i in range(0, len(text), size))
        rest, deltas = stream.finish()
        assert (sent + rest).strip() == whole_content and "<" not in sent + rest, (size, sent, rest)
        assembled = _assemble(deltas)
        assert [c["name"] for c in assembled] == ["get_weather"]
        assert json.loads(assembled[0]["arguments"]) == {"city": "Oslo"}


def test_stream_of_text_with_a_tag_that_is_not_a_call_stays_content() -> None:
    for text in ["a < b and <tool_ is a prefix", "see <tool_call> here but no JSON", "ends with <tool_c"]:
        stream = ToolCallStream()
        sent = "".join(stream.push(text[i : i + 2]) for i in range(0, len(text), 2))
        rest, deltas = stream.finish()
        assert sent + rest == text and deltas == [], text
