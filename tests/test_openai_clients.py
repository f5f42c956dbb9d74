"""Drop-in behaviour for OpenAI clients and MLC users, against one `mlc_llm serve` on SmolLM2 started
through `mlc_llm.serve.PopenServer` (MLC's way of launching a server from Python, with tracing and
its debug routes).

Each request is the one a real client sends: the openai SDK itself where it is installed in CI,
otherwise the exact body of the client named in the test (LangChain's `OpenAI` LLM, instructor's
TOOLS mode), reproduced with the SDK or httpx.
"""

import json
import os
import socket
from typing import Any, Dict, Iterator, cast

import httpx
import openai
import pytest
from nested_models import Team
from openai.types import Completion

from mlc_llm.serve import PopenServer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(smollm2_path: str) -> Iterator[PopenServer]:
    from mlc_llm.serve.config import EngineConfig

    popen = PopenServer(
        smollm2_path,
        "cpu",
        mode="server",
        engine_config=EngineConfig(max_num_sequence=8),
        enable_tracing=True,
        port=_free_port(),
    )
    # No API key from the environment: MLC's PopenServer starts an open server.
    popen.start(extra_env={"MLC_LLM_API_KEY": ""})
    yield popen
    popen.terminate()


@pytest.fixture(scope="module")
def client(server: PopenServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_v1_base_url, api_key="none", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


# ------------------------------------------------------------------------- tools with nested models


def test_forced_nested_pydantic_tool_parses_into_the_model(client: openai.OpenAI, model: str) -> None:
    """`client.chat.completions.parse` with `openai.pydantic_function_tool`: the SDK itself validates
    the arguments into the model (today's main: 400 "Pointer '/$defs/Person' does not exist")."""
    completion = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Make a team of two people."}],
        tools=[openai.pydantic_function_tool(Team)],
        tool_choice={"type": "function", "function": {"name": "Team"}},
        temperature=0.0,
        max_tokens=100,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert isinstance(choice.message.tool_calls[0].function.parsed_arguments, Team)


def test_instructor_tools_mode_request_with_nested_model(client: openai.OpenAI, model: str) -> None:
    """instructor's TOOLS mode sends the model's JSON schema (with `$defs`) as the only tool and
    forces it by name; `tool_choice="required"` and "auto" must work with the same schema."""
    tool = {
        "type": "function",
        "function": {"name": "Team", "description": "Correctly extracted `Team`", "parameters": Team.model_json_schema()},
    }
    for tool_choice in ("required", "auto"):
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Ada (36) leads a team with Bob (40)."}],
            tools=[cast(Any, tool)],
            tool_choice=cast(Any, tool_choice),
            temperature=0.0,
            # Free text under "auto" only has to be well-formed: a few tokens show it.
            max_tokens=100 if tool_choice == "required" else 12,
        )
        choice = response.choices[0]
        if tool_choice == "auto" and not choice.message.tool_calls:
            assert choice.message.content is not None
            continue
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        Team.model_validate_json(choice.message.tool_calls[0].function.arguments)


# -------------------------------------------------------------------------------- OpenAI tolerance


def test_explicit_nulls_and_every_documented_field_through_the_sdk(client: openai.OpenAI, model: str) -> None:
    """The SDK sends a None argument as JSON null; OpenAI reads it as "not given"."""
    response = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=4,
        n=None,
        logprobs=None,
        top_logprobs=None,
        stream=None,
        stop=None,
        seed=None,
        temperature=None,
        tool_choice=None,
        store=True,
        metadata={"run": "ci"},
        service_tier="auto",
        reasoning_effort="low",
        prompt_cache_key="k",
        prompt_cache_retention="in_memory",
        safety_identifier="user-1",
        modalities=["text"],
        verbosity="low",
        parallel_tool_calls=False,
        prediction={"type": "content", "content": "Paris"},
        user="u",
    )
    assert response.choices[0].message.content is not None and len(response.choices) == 1
    completion = client.completions.create(model=model, prompt="One,", max_tokens=2, n=None, echo=None, logprobs=None)
    assert len(completion.choices) == 1 and completion.choices[0].index == 0


def test_unknown_and_unsupported_fields_are_400s(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:  # a misspelt option still fails loudly
        client.chat.completions.create(model=model, messages=QUESTION, extra_body={"temprature": 0.5})
    assert unknown.value.param == "temprature" and unknown.value.code == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as unsupported:  # 400 as OpenAI answers, never 422
        client.chat.completions.create(model=model, messages=QUESTION, modalities=["text", "audio"])
    assert unsupported.value.param == "modalities" and unsupported.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=QUESTION, store=cast(Any, "yes"))


def test_legacy_function_history_is_understood(client: openai.OpenAI, model: str) -> None:
    """An assistant `function_call` and the `role: "function"` answer after it reach the template as
    a tool call and its result."""
    weather = {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": False},
    }
    response = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": "sunny"},
            {"role": "user", "content": "And in Rome?"},
        ],
        functions=[cast(Any, weather)],
        function_call={"name": "get_weather"},
        temperature=0.0,
        max_tokens=60,
    )
    call = response.choices[0].message.function_call
    assert call is not None and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)


def test_langchain_openai_llm_list_prompt(client: openai.OpenAI, model: str) -> None:
    """LangChain's `OpenAI` LLM (langchain_openai.OpenAI.generate) always sends `prompt` as a list,
    with these default parameters; OpenAI answers one choice per prompt, `index` in prompt order."""
    prompts = ["The capital of France is", "One, two, three,"]
    langchain_params: Dict[str, Any] = dict(
        temperature=0.0, top_p=1, frequency_penalty=0, presence_penalty=0, n=1, logit_bias={}, seed=None,
        logprobs=None, max_tokens=6,
    )
    both = client.completions.create(model=model, prompt=prompts, **langchain_params)
    assert [c.index for c in both.choices] == [0, 1]
    for prompt, choice in zip(prompts, both.choices):
        alone = client.completions.create(model=model, prompt=prompt, **langchain_params)
        assert choice.text == alone.choices[0].text
    assert both.usage is not None and both.usage.prompt_tokens > alone.usage.prompt_tokens  # type: ignore[union-attr]

    streamed: Dict[int, str] = {}
    for chunk in client.completions.create(model=model, prompt=prompts, stream=True, **{**langchain_params, "n": 2}):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert sorted(streamed) == [0, 1, 2, 3]  # prompt-major: the n choices of the first prompt first
    assert streamed[0] == streamed[1] == both.choices[0].text and streamed[2] == both.choices[1].text


# ---------------------------------------------------------------------------------- MLC behaviour


def test_mlc_completion_rules(client: openai.OpenAI, model: str, server: PopenServer) -> None:
    with pytest.raises(openai.BadRequestError) as too_many:  # COMPLETION_MAX_TOP_LOGPROBS
        client.completions.create(model=model, prompt="Hi", logprobs=6, max_tokens=1)
    assert too_many.value.param == "logprobs"
    five = client.completions.create(model=model, prompt="Hi", logprobs=5, max_tokens=1)
    assert five.choices[0].logprobs and len(five.choices[0].logprobs.top_logprobs[0]) == 5  # type: ignore[index]

    plain = client.completions.create(model=model, prompt="One, two,", max_tokens=3, temperature=0.0)
    suffixed = client.completions.create(model=model, prompt="One, two,", max_tokens=3, temperature=0.0, suffix="!!")
    assert suffixed.choices[0].text == plain.choices[0].text + "!!"
    with httpx.stream("POST", f"{server.openai_v1_base_url}/completions", timeout=60, json={
        "prompt": "One, two,", "max_tokens": 3, "temperature": 0.0, "suffix": "!!", "stream": True,
    }) as response:
        chunks = [Completion.model_validate(dict(json.loads(line[6:]), choices=[
            dict(c, finish_reason=c["finish_reason"] or "length") for c in json.loads(line[6:])["choices"]]))
            for line in response.iter_lines() if line.startswith("data: {")]
    assert "".join(c.choices[0].text for c in chunks) == suffixed.choices[0].text


def test_mlc_chat_rules_and_stream_roles(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as late_system:
        client.chat.completions.create(
            model=model, messages=[*QUESTION, {"role": "system", "content": "Be brief."}], max_tokens=2
        )
    assert late_system.value.param == "messages"
    roles = [c.choices[0].delta.role for c in client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=4, stream=True) if c.choices]
    # The REST server keeps OpenAI's convention (the SDK's stream helper concatenates repeated roles);
    # MLC's engine streams name it in every delta (test_api_facade).
    assert roles[0] == "assistant" and set(roles[1:]) == {None}


def test_models_owned_by_mlc(client: openai.OpenAI) -> None:
    assert [m.owned_by for m in client.models.list().data] == ["MLC-LLM"]


def test_dump_event_trace(client: openai.OpenAI, model: str, server: PopenServer) -> None:
    client.chat.completions.create(model=model, messages=QUESTION, max_tokens=2)
    trace = httpx.post(f"{server.base_url}/debug/dump_event_trace", json={"model": model}, timeout=30)
    assert trace.status_code == 200, trace.text
    events = trace.json()
    assert isinstance(events, list) and events and {"name", "ph", "ts"} <= set(events[0])
    missing = httpx.post(f"{server.base_url}/debug/dump_event_trace", json={"model": "gpt-4o"}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_popen_server_reports_a_server_that_cannot_start(tmp_path: Any) -> None:
    from mlc_llm import ModelLoadError

    with pytest.raises(ModelLoadError):
        PopenServer(os.fspath(tmp_path / "missing.gguf"), "cpu", port=_free_port()).start(timeout_s=60)


def test_legacy_functions_are_answered_with_function_call(client: openai.OpenAI, model: str) -> None:
    """A request in the legacy form gets OpenAI's legacy answer: `message.function_call` and
    finish_reason "function_call" (what LangChain's and LlamaIndex's older function agents read)."""
    functions = [{"name": "get_time", "parameters": {"type": "object", "properties": {
        "timezone": {"type": "string", "maxLength": 10}}, "required": ["timezone"], "additionalProperties": False}}]
    kwargs: Dict[str, Any] = dict(model=model, messages=QUESTION, functions=functions,
                                  function_call={"name": "get_time"}, temperature=0.0, max_tokens=40)
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call is not None and choice.message.function_call.name == "get_time"
    whole = json.loads(choice.message.function_call.arguments)
    name, arguments, finish = "", "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            if c.delta.function_call is not None:
                name += c.delta.function_call.name or ""
                arguments += c.delta.function_call.arguments or ""
            finish = c.finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_time", whole, "function_call")


def test_metrics_carry_mlc_names(server: PopenServer, client: openai.OpenAI, model: str) -> None:
    client.completions.create(model=model, prompt="One,", max_tokens=2)
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(values["engine_prefill_time_sum"]) > 0 and float(values["decode_tokens_sum"]) >= 1
    assert "engine_decode_time_sum" in values and "mlc_llm_engine_prefill_tokens_total" in values


def test_engine_metrics_carry_mlc_names() -> None:
    from mlc_llm.serve import EngineMetrics

    metrics = EngineMetrics({"prefill_time_s": 1.5, "decode_time_s": 2.5, "prefill_tokens": 7, "decode_tokens": 9})
    assert (metrics["engine_prefill_time_sum"], metrics["engine_decode_time_sum"]) == (1.5, 2.5)
    assert (metrics["prefill_tokens_sum"], metrics["decode_tokens_sum"], metrics["jump_forward_tokens_sum"]) == (7, 9, 0)


def test_embeddings_without_an_embedding_model_are_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="any", input="Hi")
    assert missing.value.code == "model_not_found" and "--embedding-model" in str(missing.value)
