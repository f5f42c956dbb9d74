"""`mlc_llm serve` with the real openai client: chat and text completions, streamed and not, n = 2,
logprobs, extras, models, health, metrics, disconnects and shutdown.

One server (SmolLM2-135M-Instruct on the CPU, started with an API key) serves the whole module. Every
response is validated from its wire JSON as the openai SDK's own types, and greedy answers are
compared with what an in-process MLCEngine returns for the same request.
"""

import json
import math
import os
import signal
import threading
import time
from typing import Any, Dict, Iterator, List

import httpx
import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from server_process import ServerProcess

API_KEY = "sk-test-key"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY: Dict[str, Any] = {"temperature": 0.0}


@pytest.fixture(scope="module")
def server(smollm2_path: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        smollm2_path, "--api-key", API_KEY, "--mode", "server", "--overrides", "max_num_sequence=8", "--no-access-log"
    )
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
        yield c


def stem(path: str) -> str:
    """The model's file name without extension: one of the names the server accepts for it."""
    return os.path.splitext(os.path.basename(path))[0]


def sse_data(response: httpx.Response) -> List[str]:
    """The data payloads of an SSE body, checking the framing: only `data:` lines and blank lines."""
    payloads = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payloads.append(line[len("data: ") :])
    return payloads


def stream_chat(http: httpx.Client, body: Dict[str, Any]) -> List[ChatCompletionChunk]:
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(response)
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]


def stream_completion(http: httpx.Client, body: Dict[str, Any]) -> List[Completion]:
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        payloads = sse_data(response)
    assert payloads[-1] == "[DONE]"
    return [completion_chunk(json.loads(p)) for p in payloads[:-1]]


def completion_chunk(data: Dict[str, Any]) -> Completion:
    """Validates a streamed text completion as the SDK's Completion. The SDK types a choice's
    finish_reason as never null, yet OpenAI streams null until a choice ends (the SDK builds stream
    chunks without validating); that one field is checked here and the rest by the SDK's type."""
    reasons = [choice["finish_reason"] for choice in data["choices"]]
    assert all(r in (None, "stop", "length") for r in reasons), reasons
    filled = [dict(choice, finish_reason=choice["finish_reason"] or "length") for choice in data["choices"]]
    chunk = Completion.model_validate(dict(data, choices=filled))
    for choice, reason in zip(chunk.choices, reasons):
        choice.finish_reason = reason  # type: ignore[assignment]
    return chunk


# ------------------------------------------------------------------------------------------ chat


def test_chat_non_stream_validates_and_matches_the_engine(client: openai.OpenAI, engine: Any, smollm2_path: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=smollm2_path, messages=QUESTION, max_tokens=16, **GREEDY)
    wire = ChatCompletion.model_validate_json(raw.text)
    assert wire.object == "chat.completion" and wire.id.startswith("chatcmpl-")
    choice = wire.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert wire.usage is not None and 0 < wire.usage.completion_tokens <= 16
    assert wire.usage.total_tokens == wire.usage.prompt_tokens + wire.usage.completion_tokens

    direct = engine.chat.completions.create(model=smollm2_path, messages=QUESTION, max_tokens=16, **GREEDY)
    ChatCompletion.model_validate(direct.model_dump())  # what MLCEngine returns has the same shape
    assert choice.message.content == direct.choices[0].message.content
    assert wire.usage.prompt_tokens == direct.usage.prompt_tokens


def test_chat_stream_with_the_sdk(client: openai.OpenAI, engine: Any, smollm2_path: str) -> None:
    text = ""
    stream = client.chat.completions.create(
        model=stem(smollm2_path), messages=QUESTION, stream=True, max_tokens=16, **GREEDY
    )
    chunks = list(stream)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump())
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)
    direct = engine.chat.completions.create(messages=QUESTION, max_tokens=16, **GREEDY)
    assert text == direct.choices[0].message.content
    for chunk in engine.chat.completions.create(messages=QUESTION, max_tokens=4, stream=True):
        ChatCompletionChunk.model_validate(chunk.model_dump())


# ----------------------------------------------------------------- structured output and tools

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


def test_json_schema_through_the_sdk_validates(client: openai.OpenAI, smollm2_path: str) -> None:
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Describe a person who lives in Paris as JSON."}]
    reply = client.chat.completions.create(
        model=stem(smollm2_path), messages=messages, response_format=fmt, n=2, temperature=1.0, seed=3, max_tokens=96
    )
    ChatCompletion.model_validate(reply.model_dump())
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    text = ""
    for chunk in client.chat.completions.create(
        model=stem(smollm2_path), messages=messages, response_format=fmt, stream=True, max_tokens=96, **GREEDY
    ):
        ChatCompletionChunk.model_validate(chunk.model_dump())
        text += "".join(c.delta.content or "" for c in chunk.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_invalid_schema_is_a_400_through_the_sdk(client: openai.OpenAI, smollm2_path: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"a": {"type": 12}}}}}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=stem(smollm2_path), messages=QUESTION, response_format=fmt, max_tokens=8)
    assert client.chat.completions.create(model=stem(smollm2_path), messages=QUESTION, max_tokens=4).choices


def test_forced_tool_call_through_the_sdk(client: openai.OpenAI, smollm2_path: str) -> None:
    import jsonschema

    messages = [{"role": "user", "content": "What is the weather in Rome?"}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model=stem(smollm2_path), messages=messages, tools=[WEATHER_TOOL], tool_choice=choice, max_tokens=96, **GREEDY
    )
    ChatCompletion.model_validate(reply.model_dump())
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls", reply
    assert len(message.tool_calls) == 1 and message.tool_calls[0].id.startswith("call_")
    call = message.tool_calls[0].function
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["function"]["parameters"])
    # Streamed: deltas that the SDK's own accumulation turns into the same call.
    with client.chat.completions.stream(
        model=stem(smollm2_path), messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=96, **GREEDY
    ) as stream:
        for event in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert streamed and streamed[0].function.name == "get_weather"
    jsonschema.validate(json.loads(streamed[0].function.arguments), WEATHER_TOOL["function"]["parameters"])
    # The history with the call and its result is accepted on the next turn.
    follow = messages + [
        {"role": "assistant", "content": None, "tool_calls": [message.tool_calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": '{"temperature": 21}'},
    ]
    again = client.chat.completions.create(model=stem(smollm2_path), messages=follow, tools=[WEATHER_TOOL], max_tokens=16, **GREEDY)
    ChatCompletion.model_validate(again.model_dump())


def test_chat_stream_wire_format_and_include_usage(http: httpx.Client) -> None:
    chunks = stream_chat(
        http, {"messages": QUESTION, "max_tokens": 8, "stream_options": {"include_usage": True}, **GREEDY}
    )
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert 0 < last.usage.completion_tokens <= 8
    assert len({c.id for c in chunks}) == 1
    assert content[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_n2_seeded_choices(http: httpx.Client) -> None:
    body = {"messages": QUESTION, "n": 2, "seed": 7, "temperature": 1.0, "max_tokens": 12}
    first = ChatCompletion.model_validate(http.post("/v1/chat/completions", json=body).json())
    again = ChatCompletion.model_validate(http.post("/v1/chat/completions", json=body).json())
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.usage is not None and first.usage.completion_tokens <= 24

    chunks = stream_chat(http, body)
    streamed = ["", ""]
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert streamed == [c.message.content for c in first.choices]


def test_chat_logprobs_are_consistent(http: httpx.Client) -> None:
    body = {"messages": QUESTION, "max_tokens": 6, "logprobs": True, "top_logprobs": 3, **GREEDY}
    response = ChatCompletion.model_validate(http.post("/v1/chat/completions", json=body).json())
    entries = response.choices[0].logprobs.content
    assert entries and len(entries) == response.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0.0 and len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert sum(math.exp(t) for t in tops) <= 1.0 + 1e-4
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(tops[0], abs=1e-4)
        assert entry.token == entry.top_logprobs[0].token
    assert "".join(e.token for e in entries) == response.choices[0].message.content

    streamed = stream_chat(http, body)
    stream_entries = [e for c in streamed for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert [e.token for e in stream_entries] == [e.token for e in entries]


def test_chat_every_field_is_accepted(http: httpx.Client, smollm2_path: str) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "user", "content": [{"type": "text", "text": "So, is it warm?"}]},
    ]
    body = {
        "model": smollm2_path,
        "messages": messages,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.1,
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"28": -1.0},
        "max_completion_tokens": 6,
        "n": 1,
        "seed": 3,
        "stop": ["\n\n", "###"],
        "temperature": 0.7,
        "top_p": 0.9,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "auto",
        "user": "tester",
        "response_format": {"type": "text"},
        "request_id": "chatcmpl-every-field",
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "ignore_eos": False,
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    parsed = ChatCompletion.model_validate(response.json())
    assert parsed.id == "chatcmpl-every-field"
    assert parsed.usage.completion_tokens <= 6


def test_extra_body_through_the_sdk(client: openai.OpenAI, smollm2_path: str) -> None:
    response = client.chat.completions.create(
        model=os.path.basename(smollm2_path),
        messages=QUESTION,
        max_tokens=10,
        extra_body={"ignore_eos": True, "top_k": 1, "min_p": 0.0, "repetition_penalty": 1.0},
    )
    assert response.usage.completion_tokens == 10
    assert response.choices[0].finish_reason == "length"


def test_stop_string_ends_the_answer(http: httpx.Client, engine: Any) -> None:
    free = engine.chat.completions.create(messages=QUESTION, max_tokens=16, **GREEDY).choices[0].message.content
    words = free.split()
    assert len(words) >= 2
    stop = " " + words[1]
    body = {"messages": QUESTION, "max_tokens": 16, "stop": stop, **GREEDY}
    response = ChatCompletion.model_validate(http.post("/v1/chat/completions", json=body).json())
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == free[: free.index(stop)]


# ------------------------------------------------------------------------------------ completions


def test_completion_non_stream_and_stream(
    client: openai.OpenAI, http: httpx.Client, engine: Any, smollm2_path: str
) -> None:
    prompt = "The three primary colors are"
    raw = client.completions.with_raw_response.create(model=stem(smollm2_path), prompt=prompt, max_tokens=12, **GREEDY)
    wire = Completion.model_validate_json(raw.text)
    assert wire.object == "text_completion" and wire.choices[0].text
    direct = engine.completions.create(prompt=prompt, max_tokens=12, **GREEDY)
    Completion.model_validate(direct.model_dump())
    assert wire.choices[0].text == direct.choices[0].text

    chunks = stream_completion(http, {"prompt": prompt, "max_tokens": 12, **GREEDY})
    assert "".join(c.choices[0].text for c in chunks if c.choices) == wire.choices[0].text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completion_echo_n2_logprobs(http: httpx.Client) -> None:
    prompt = "Once upon a time"
    body = {"prompt": prompt, "max_tokens": 5, "n": 2, "seed": 11, "temperature": 0.9, "logprobs": 2}
    response = Completion.model_validate(http.post("/v1/completions", json=body).json())
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        lp = choice.logprobs
        assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) > 0
        assert all(len(top) <= 2 for top in lp.top_logprobs)
        assert "".join(lp.tokens) == choice.text
    echoed = Completion.model_validate(
        http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 3, "echo": True, **GREEDY}).json()
    )
    assert echoed.choices[0].text.startswith(prompt)


def test_completion_token_id_prompt(http: httpx.Client, engine: Any) -> None:
    ids = engine._core.tokenize("Paris is the capital of", True)
    by_ids = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 6, **GREEDY}).json()
    by_text = http.post("/v1/completions", json={"prompt": "Paris is the capital of", "max_tokens": 6, **GREEDY}).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]


def test_error_cases_raise_the_sdk_exceptions(client: openai.OpenAI, smollm2_path: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=smollm2_path, messages=QUESTION, temperature=5.0)
    assert bad.value.status_code == 400 and bad.value.param == "temperature"
    assert bad.value.body["message"] and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=smollm2_path, messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):  # unsupported: 400, as OpenAI answers
        client.completions.create(model=smollm2_path, prompt="x", best_of=2)
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(model=smollm2_path, messages=QUESTION)
    # The server is still fine.
    assert client.chat.completions.create(model=smollm2_path, messages=QUESTION, max_tokens=2).choices


# ---------------------------------------------------------------------------------- other routes


def test_models_health_and_metrics(client: openai.OpenAI, server: ServerProcess, smollm2_path: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [smollm2_path]
    Model.model_validate(models.data[0].model_dump())
    assert client.models.retrieve(stem(smollm2_path)).id == smollm2_path
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    # Answers name the model as /v1/models does, whatever alias the request used.
    for name in (smollm2_path, stem(smollm2_path)):
        assert client.chat.completions.create(model=name, messages=QUESTION, max_tokens=1).model == smollm2_path
        assert client.completions.create(model=name, prompt="Hi", max_tokens=1).model == smollm2_path

    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # no API key needed
    # Kubernetes probes: liveness only asks that the process answers, readiness that it takes requests.
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/health/ready").json() == {"status": "ok"}
    before = server.metrics()
    client.chat.completions.create(model=smollm2_path, messages=QUESTION, max_tokens=4)
    text = httpx.get(f"{server.url}/metrics").text
    after = server.metrics()
    for family in (
        "mlc_llm_requests_total",
        "mlc_llm_prompt_tokens_total",
        "mlc_llm_generation_tokens_total",
        "mlc_llm_time_to_first_token_seconds",
        "mlc_llm_inter_token_latency_seconds",
        "mlc_llm_kv_cache_usage_ratio",
        "mlc_llm_kv_cache_blocks_free",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text, family
    assert after["mlc_llm_generation_tokens_total"] >= before["mlc_llm_generation_tokens_total"] + 1
    assert after["mlc_llm_prompt_tokens_total"] > before["mlc_llm_prompt_tokens_total"]
    assert after["mlc_llm_time_to_first_token_seconds_count"] == before["mlc_llm_time_to_first_token_seconds_count"] + 1
    assert 'mlc_llm_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert after["mlc_llm_kv_cache_blocks_total"] > 0


def test_vllm_named_metrics_for_llm_d_and_gateway_routers(client: openai.OpenAI, server: ServerProcess, smollm2_path: str) -> None:
    """The series llm-d's scheduler and the Gateway API Inference Extension read, under vLLM's names and
    its model_name label, parseable by Prometheus' own parser, moving with a request."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        out = {}
        for fam in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
            for sample in fam.samples:
                if sample.name.startswith("vllm:"):
                    assert sample.labels.get("model_name") == smollm2_path, sample
                    if "le" not in sample.labels:
                        out[sample.name] = sample.value
        return out

    server.wait_idle()
    before = scrape()
    client.chat.completions.create(model=smollm2_path, messages=QUESTION, max_tokens=4)
    after = scrape()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count"):
        assert name in after, (name, sorted(after))
    assert 0.0 <= after["vllm:kv_cache_usage_perc"] <= 1.0
    assert after["vllm:kv_cache_usage_perc"] == after["vllm:gpu_cache_usage_perc"]
    assert after["vllm:time_to_first_token_seconds_count"] == before["vllm:time_to_first_token_seconds_count"] + 1
    assert after["vllm:prefix_cache_queries_total"] > before["vllm:prefix_cache_queries_total"]
    assert after["vllm:prefix_cache_hits_total"] <= after["vllm:prefix_cache_queries_total"]


# ----------------------------------------------------------------------------------- disconnects

LONG = {"messages": QUESTION, "max_tokens": 2000, "ignore_eos": True}


def test_disconnect_mid_stream_aborts_the_request(server: ServerProcess, http: httpx.Client) -> None:
    before = server.wait_idle()
    with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
        lines = response.iter_lines()
        got = [line for _, line in zip(range(6), lines)]
        assert any(line.startswith("data: {") for line in got)
    # Closing a half-read streamed response closes its connection.
    after = server.wait_idle(timeout_s=30)
    assert after["mlc_llm_engine_requests_aborted_total"] == before["mlc_llm_engine_requests_aborted_total"] + 1
    assert after["mlc_llm_engine_decode_tokens_total"] - before["mlc_llm_engine_decode_tokens_total"] < 2000


def test_disconnect_while_waiting_for_a_non_streamed_answer(server: ServerProcess) -> None:
    before = server.wait_idle()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/v1/chat/completions",
            json=LONG,
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=httpx.Timeout(30, read=1.0),
        )
    after = server.wait_idle(timeout_s=30)
    assert after["mlc_llm_engine_requests_aborted_total"] == before["mlc_llm_engine_requests_aborted_total"] + 1
    assert 'status="499"' in httpx.get(f"{server.url}/metrics").text


# -------------------------------------------------------------------------------------- shutdown


def test_sigterm_drains_running_requests_then_exits_cleanly(smollm2_path: str) -> None:
    proc = ServerProcess(smollm2_path, "--no-access-log")
    try:
        result: Dict[str, Any] = {}

        def run() -> None:
            body = {"messages": QUESTION, "max_tokens": 48, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{proc.url}/v1/chat/completions", json=body, timeout=120) as response:
                result["payloads"] = sse_data(response)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 30
        while proc.metrics().get("mlc_llm_engine_running", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proc.stop(signal.SIGTERM) == 0
        thread.join(30)
        payloads = result["payloads"]
        assert payloads[-1] == "[DONE]"
        chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
        assert chunks[-1].choices[0].finish_reason == "length"  # the request ran to its end
        assert "draining running requests" in proc.log()
    finally:
        proc.close()


def test_sigint_with_a_request_past_the_shutdown_timeout_aborts_it(smollm2_path: str) -> None:
    proc = ServerProcess(smollm2_path, "--no-access-log", "--shutdown-timeout", "1")
    try:
        result: Dict[str, Any] = {}

        def run() -> None:
            with httpx.stream("POST", f"{proc.url}/v1/chat/completions", json={**LONG, "stream": True}, timeout=120) as r:
                result["payloads"] = sse_data(r)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 30
        while proc.metrics().get("mlc_llm_engine_running", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proc.stop(signal.SIGINT) == 0
        thread.join(30)
        assert not thread.is_alive()
        # The stream still ends properly: its request was aborted, then [DONE].
        payloads = result["payloads"]
        assert payloads[-1] == "[DONE]"
        last = json.loads(payloads[-2])
        assert last["choices"][0]["finish_reason"] == "abort"
        assert len(payloads) < LONG["max_tokens"]
        assert "aborting the requests still running" in proc.log()
    finally:
        proc.close()
