"""response_format json_object / json_schema enforced while decoding, on the real SmolLM2-135M-Instruct
(CPU). A 135M model left alone rarely writes valid JSON for a schema; under the grammar every finished
output must parse and validate (checked with the independent `jsonschema` package)."""

import asyncio
import json
from typing import Any, Dict, List

import jsonschema
import openai.types.chat
import pytest

from mlc_llm import AsyncMLCEngine, BadRequestError, MLCEngine

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}

NESTED = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "location": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "location", "sunny"],
    "additionalProperties": False,
}

ARRAY = {
    "type": "object",
    "properties": {
        "colors": {
            "type": "array",
            "items": {"enum": ["red", "green", "blue", "yellow"]},
            "minItems": 1,
            "maxItems": 4,
        },
        "count": {"type": "integer"},
    },
    "required": ["colors", "count"],
    "additionalProperties": False,
}

SCHEMAS = {"person": PERSON, "nested": NESTED, "array": ARRAY}
PROMPTS = {
    "person": "Describe a fictional person as JSON with a name, an age and a role.",
    "nested": "Give the weather in Paris as JSON: city, location (lat, lon) and whether it is sunny.",
    "array": "List some colors you like as JSON.",
}


def _json_schema_format(name: str) -> Dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def _ask(name: str) -> List[Dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[name]}]


def _validated(text: str, schema: Dict[str, Any]) -> Any:
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_greedy_output_validates(engine: MLCEngine, name: str) -> None:
    response = engine.chat.completions.create(
        messages=_ask(name), response_format=_json_schema_format(name), temperature=0.0, max_tokens=200
    )
    openai.types.chat.ChatCompletion.model_validate(response.model_dump())
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    _validated(choice.message.content, SCHEMAS[name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_sampled_with_n_2_validates(engine: MLCEngine, seed: int) -> None:
    response = engine.chat.completions.create(
        messages=_ask("person"),
        response_format=_json_schema_format("person"),
        temperature=1.0,
        seed=seed,
        n=2,
        max_tokens=200,
    )
    assert len(response.choices) == 2
    for choice in response.choices:
        assert choice.finish_reason == "stop", choice.message.content
        _validated(choice.message.content, PERSON)


def test_json_schema_streaming_validates_and_matches_non_streamed(engine: MLCEngine) -> None:
    kwargs: Dict[str, Any] = dict(
        messages=_ask("nested"), response_format=_json_schema_format("nested"), temperature=1.0, seed=7, max_tokens=200
    )
    texts = [""]
    finish = None
    for chunk in engine.chat.completions.create(stream=True, **kwargs):
        openai.types.chat.ChatCompletionChunk.model_validate(chunk.model_dump())
        for choice in chunk.choices:
            texts[0] += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "stop"
    _validated(texts[0], NESTED)
    whole = engine.chat.completions.create(stream=False, **kwargs)
    assert whole.choices[0].message.content == texts[0]


def test_json_object_without_schema_gives_an_object(engine: MLCEngine) -> None:
    for seed in (3, 4):
        response = engine.chat.completions.create(
            messages=[{"role": "user", "content": "Reply in JSON: what is your favourite fruit?"}],
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        choice = response.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(json.loads(choice.message.content), dict)


def test_mlc_json_object_with_schema_string(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(
        messages=_ask("array"),
        response_format={"type": "json_object", "schema": json.dumps(ARRAY)},
        temperature=0.0,
        max_tokens=200,
    )
    assert response.choices[0].finish_reason == "stop"
    _validated(response.choices[0].message.content, ARRAY)


def test_completions_accept_response_format(engine: MLCEngine) -> None:
    response = engine.completions.create(
        prompt="A person, as JSON:", response_format=_json_schema_format("person"), temperature=0.0, max_tokens=200
    )
    assert response.choices[0].finish_reason == "stop"
    _validated(response.choices[0].text, PERSON)


def test_async_json_schema_concurrent_requests_validate(async_engine: AsyncMLCEngine) -> None:
    async def one(name: str, seed: int) -> None:
        response = await async_engine.chat.completions.create(
            messages=_ask(name), response_format=_json_schema_format(name), temperature=1.0, seed=seed, max_tokens=200
        )
        assert response.choices[0].finish_reason == "stop"
        _validated(response.choices[0].message.content, SCHEMAS[name])

    async def main() -> None:
        await asyncio.gather(*(one(name, seed) for seed, name in enumerate(sorted(SCHEMAS) * 2)))

    asyncio.run(main())


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": 3}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
        {"type": "json_object", "schema": "{not json"},
    ],
)
def test_invalid_schema_is_a_bad_request(engine: MLCEngine, response_format: Dict[str, Any]) -> None:
    with pytest.raises(BadRequestError) as err:
        engine.chat.completions.create(messages=_ask("person"), response_format=response_format, max_tokens=8)
    assert err.value.field == "response_format"
    assert "schema" in str(err.value)
    # The engine keeps serving after the rejection.
    ok = engine.chat.completions.create(messages=_ask("person"), max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")
