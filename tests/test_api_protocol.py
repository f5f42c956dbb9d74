"""Request validation and response shapes, without an engine.

Every invalid request must raise BadRequestError whose `.field` names the offending field; options the
engine does not implement raise UnsupportedError (never ignored); responses must validate as the openai
SDK's own types.
"""

from typing import Any, Dict, List

import openai.types
import openai.types.chat
import pytest

from mlc_llm.protocol.errors import BadRequestError, UnsupportedError
from mlc_llm.protocol.openai_api_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
)
from mlc_llm.serve.responses import ChatResponseBuilder, CompletionResponseBuilder

USER = [{"role": "user", "content": "Hi"}]


def chat(**kwargs: Any) -> ChatCompletionRequest:
    kwargs.setdefault("messages", USER)
    return parse_request(ChatCompletionRequest, kwargs)


INVALID_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "system", "content": "x", "tool_calls": []}, {"role": "user", "content": [{"type": "text"}]}]}, "messages"),
    ({"n": 0}, "n"),
    ({"n": -2}, "n"),
    ({"n": "2"}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.01}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1.0}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stream": "true"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"bogus": 1}}, "stream_options"),
    ({"seed": "42"}, "seed"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_p": 1.5}, "min_p"),
    ({"top_k": -3}, "top_k"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"extra_body": {"no_such_option": 1}}, "no_such_option"),
    ({"extra_body": "x"}, "extra_body"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"response_format": {"type": "json_object", "schema": "{not json"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
]


@pytest.mark.parametrize("kwargs,field", INVALID_CHAT)
def test_invalid_chat_request_names_the_field(kwargs: Dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequestError) as err:
        chat(**kwargs)
    assert err.value.field == field
    assert field in str(err.value) or field == "messages"
    assert isinstance(err.value, ValueError)


UNSUPPORTED_CHAT = [
    ({"best_of": 2}, "best_of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"extra_body": {"debug_config": {"special_request": "query_engine_metrics"}}}, "debug_config"),
    ({"extra_body": {"debug_config": {"disagg_config": {"kind": "prepare_receive"}}}}, "debug_config"),
    ({"modalities": ["text", "audio"]}, "modalities"),
]


@pytest.mark.parametrize("kwargs,field", UNSUPPORTED_CHAT)
def test_unimplemented_options_are_rejected_not_ignored(kwargs: Dict[str, Any], field: str) -> None:
    with pytest.raises(UnsupportedError) as err:
        chat(**kwargs)
    assert err.value.field == field


def test_valid_chat_request_with_tools_history_and_extras() -> None:
    messages: List[Dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"c": "P"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "refusal": None, "annotations": None, "audio": None,
         "function_call": None, "tool_calls": None},
        {"role": "user", "content": "Thanks"},
    ]
    req = chat(
        messages=messages,
        tools=[{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        logit_bias={"15": 2.0, 7: -1},
        stop="\n\n",
        seed=1,
        logprobs=True,
        top_logprobs=20,
        max_completion_tokens=9,
        response_format={"type": "text"},
        extra_body={"top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1, "debug_config": {"ignore_eos": True}},
    )
    assert req.messages[1].text() == "Weather\nin Paris?"
    assert req.logit_bias == {15: 2.0, 7: -1.0}
    assert req.stop_list() == ["\n\n"] and req.max_new_tokens() == 9
    assert req.top_k == 40 and req.effective_ignore_eos() and req.uses_tools()
    assert not chat(tools=req.model_dump()["tools"], tool_choice="none").uses_tools()


INVALID_COMPLETION = [
    ({"prompt": ["a", 5]}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": ["a"] * 65, "n": 2}, "prompt"),
    ({"logprobs": 6}, "logprobs"),
    ({"prompt": []}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"logprobs": 21}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"messages": USER}, "messages"),
]


@pytest.mark.parametrize("kwargs,field", INVALID_COMPLETION)
def test_invalid_completion_request_names_the_field(kwargs: Dict[str, Any], field: str) -> None:
    kwargs.setdefault("prompt", "Once")
    with pytest.raises(BadRequestError) as err:
        parse_request(CompletionRequest, kwargs)
    assert err.value.field == field


@pytest.mark.parametrize(
    "kwargs,field",
    [({"best_of": 3}, "best_of"), ({"echo": True, "logprobs": 1}, "echo")],
)
def test_unsupported_completion_options(kwargs: Dict[str, Any], field: str) -> None:
    with pytest.raises(UnsupportedError) as err:
        parse_request(CompletionRequest, {"prompt": "Once", **kwargs})
    assert err.value.field == field


def test_completion_logprobs_forms() -> None:
    legacy = parse_request(CompletionRequest, {"prompt": [1, 2, 3], "logprobs": 3})
    assert legacy.wants_logprobs() and legacy.num_top_logprobs() == 3
    mlc = parse_request(CompletionRequest, {"prompt": "x", "logprobs": True, "top_logprobs": 2})
    assert mlc.wants_logprobs() and mlc.num_top_logprobs() == 2
    assert not parse_request(CompletionRequest, {"prompt": "x"}).wants_logprobs()


def _delta(rid: str, text: str, finish: Any = None, logprobs: Any = None, tokens: int = 1) -> Dict[str, Any]:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "ttft_s": 0.1} if finish else None
    return {"request_id": rid, "token_ids": [1] * tokens, "text": text, "logprobs": logprobs,
            "finish_reason": finish, "error": None, "usage": usage}


LP = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}]


def _builder(cls: Any, stream: bool, **extra: Any) -> Any:
    return cls(response_id="chatcmpl-x", model="m", created=1, engine_ids=["r-0", "r-1"], prompt_tokens=5,
               stream=stream, include_usage=True, logprobs=True, **extra)


def test_chat_responses_validate_as_openai_types() -> None:
    full = _builder(ChatResponseBuilder, stream=False)
    for d in (_delta("r-0", "Hi", logprobs=LP), _delta("r-1", "Yo", logprobs=LP), _delta("r-0", "!", "stop", LP),
              _delta("r-1", "", "length", LP)):
        assert full.on_delta(d) == []
    response = full.response()
    sdk = openai.types.chat.ChatCompletion.model_validate(response.model_dump())
    assert [c.message.content for c in sdk.choices] == ["Hi!", "Yo"]
    assert [c.finish_reason for c in sdk.choices] == ["stop", "length"]
    assert sdk.usage.prompt_tokens == 5 and sdk.usage.completion_tokens == 4 and sdk.usage.total_tokens == 9
    assert sdk.choices[0].logprobs.content[0].top_logprobs[0].bytes == [72, 105]

    streamed = _builder(ChatResponseBuilder, stream=True)
    chunks = []
    for d in (_delta("r-0", "Hi", logprobs=LP), _delta("r-1", "", tokens=0), _delta("r-1", "Yo", "stop", LP),
              _delta("r-0", "", "stop", LP)):
        chunks.extend(streamed.on_delta(d))
    assert streamed.done
    assert [len(c.choices) for c in chunks] == [1, 1, 1, 0]
    assert chunks[-1].usage.completion_tokens == 4
    for c in chunks:
        sdk_chunk = openai.types.chat.ChatCompletionChunk.model_validate(c.model_dump())
        assert sdk_chunk.object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"


def test_completion_responses_validate_as_openai_types() -> None:
    full = _builder(CompletionResponseBuilder, stream=False, echo_texts=["Q:", "Q:"])
    full.on_delta(_delta("r-0", "Hi", "stop", LP))
    full.on_delta(_delta("r-1", "Hi", "length", LP))
    sdk = openai.types.Completion.model_validate(full.response().model_dump())
    assert sdk.choices[0].text == "Q:Hi"
    assert sdk.choices[0].logprobs.tokens == ["Hi"] and sdk.choices[0].logprobs.text_offset == [2]
    assert sdk.choices[0].logprobs.top_logprobs == [{"Hi": -0.1}]

    streamed = _builder(CompletionResponseBuilder, stream=True)
    chunks = streamed.on_delta(_delta("r-0", "A", "stop", LP)) + streamed.on_delta(_delta("r-1", "B", "stop", LP))
    for c in chunks:
        assert c.object == "text_completion"
        openai.types.Completion.model_validate(c.model_dump())
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("extra,field", [
    ({"functions": [5]}, "functions"),
    ({"functions": "x"}, "functions"),
    ({"function_call": "required"}, "function_call"),
    ({"function_call": {"name": 5}}, "function_call"),
    ({"functions": [{"name": "f"}], "tools": []}, "functions"),
    ({"store": "yes"}, "store"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
])
def test_compat_fields_of_the_wrong_shape_name_themselves(extra: Dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequestError) as err:
        chat(**extra)
    assert err.value.field == field


def test_nulls_and_ignored_fields_are_absent() -> None:
    request = chat(n=None, stream=None, logprobs=None, store=False, metadata={"a": "b"}, verbosity="low",
                   service_tier="flex", reasoning_effort="high", prompt_cache_key="k", safety_identifier="s",
                   modalities=["text"], moderation={"model": "m"}, prediction={"type": "content", "content": "x"})
    assert request.n == 1 and request.stream is False and request.logprobs is False
    legacy = chat(functions=[{"name": "f", "parameters": {"type": "object"}}], function_call="auto")
    assert legacy.tools and legacy.tools[0].function.name == "f" and legacy.tool_choice == "auto"
    assert legacy.legacy_functions() and not chat().legacy_functions()
