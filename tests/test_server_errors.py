"""The REST server's answers to bad requests: each case gets the right 4xx status with an OpenAI
error object (`{"error": {"message", "type", "param", "code"}}`), and the server keeps serving: a
normal request succeeds right after every one of them.

One server (API key, 1 MiB body limit) serves the module.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional

import httpx
import openai
import pytest

from openai_errors import assert_error_object
from server_process import ServerProcess

API_KEY = "sk-errors"
AUTH = {"authorization": f"Bearer {API_KEY}"}
MAX_BODY = 1024 * 1024
USER = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def server(smollm2_path: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        smollm2_path, "--api-key", API_KEY, "--max-body-size", str(MAX_BODY), "--no-access-log",
        "--overrides", "max_total_seq_length=4096",
    )
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@dataclass
class Case:
    name: str
    status: int
    body: Any = None  # a JSON value, or bytes sent as they are
    path: str = CHAT
    method: str = "POST"
    headers: Dict[str, str] = field(default_factory=lambda: dict(AUTH))
    param: Optional[str] = None
    code: Optional[str] = None


def chat(**fields: Any) -> Dict[str, Any]:
    return {"messages": USER, "max_tokens": 4, **fields}


def completion(**fields: Any) -> Dict[str, Any]:
    return {"prompt": "Hello", "max_tokens": 4, **fields}


LONG_TEXT = "apple banana cherry " * 4000  # ~12000 tokens, more than the 8192-token context window

CASES = [
    # ------------------------------------------------------------------ the body is not a request
    Case("malformed json", 400, b'{"messages": [', code="invalid_json"),
    Case("empty body", 400, b"", code="invalid_json"),
    Case("json array", 400, b"[1, 2]", code="invalid_json"),
    Case("json string", 400, b'"hello"', code="invalid_json"),
    Case("NaN literal", 400, b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', code="invalid_json"),
    Case("invalid utf-8", 400, b'{"messages": "\xff\xfe"}', code="invalid_json"),
    Case("truncated completion json", 400, b'{"prompt": "x", ', path=COMPLETIONS, code="invalid_json"),
    # ------------------------------------------------------------------ messages
    Case("missing messages", 400, {"max_tokens": 4}, param="messages"),
    Case("empty messages", 400, chat(messages=[]), param="messages"),
    Case("messages not a list", 400, chat(messages="hello"), param="messages"),
    Case("unknown role", 400, chat(messages=[{"role": "wizard", "content": "x"}]), param="messages"),
    Case("content of wrong type", 400, chat(messages=[{"role": "user", "content": 5}]), param="messages"),
    Case("user message without content", 400, chat(messages=[{"role": "user"}]), param="messages"),
    Case("unknown field in a message", 400, chat(messages=[{"role": "user", "content": "x", "mood": 1}]), param="messages"),
    Case("tool_calls on a user message", 400,
         chat(messages=[{"role": "user", "content": "x",
                         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}]}]),
         param="messages"),
    # ------------------------------------------------------------------ fields
    Case("unknown field", 400, chat(frobnicate=True), param="frobnicate", code="unknown_parameter"),
    Case("extra_body not an object", 400, chat(extra_body="x"), param="extra_body"),
    Case("model of wrong type", 400, chat(model=5), param="model"),
    Case("temperature as string", 400, chat(temperature="hot"), param="temperature"),
    Case("temperature too high", 400, chat(temperature=2.5), param="temperature"),
    Case("top_p zero", 400, chat(top_p=0), param="top_p"),
    Case("n zero", 400, chat(n=0), param="n"),
    Case("n as string", 400, chat(n="2"), param="n"),
    Case("n above 128", 400, chat(n=129), param="n"),
    Case("negative max_tokens", 400, chat(max_tokens=-1), param="max_tokens"),
    Case("zero max_tokens", 400, chat(max_tokens=0), param="max_tokens"),
    Case("fractional max_tokens", 400, chat(max_tokens=2.5), param="max_tokens"),
    Case("max_tokens and max_completion_tokens disagree", 400, chat(max_tokens=4, max_completion_tokens=5),
         param="max_completion_tokens"),
    Case("top_logprobs over 20", 400, chat(logprobs=True, top_logprobs=21), param="top_logprobs"),
    Case("top_logprobs without logprobs", 400, chat(top_logprobs=2), param="top_logprobs"),
    Case("logprobs as string", 400, chat(logprobs="yes"), param="logprobs"),
    Case("logit_bias key not a token id", 400, chat(logit_bias={"abc": 1}), param="logit_bias"),
    Case("logit_bias value out of range", 400, chat(logit_bias={"5": 150}), param="logit_bias"),
    Case("logit_bias outside the vocabulary", 400, chat(logit_bias={"10000000": 1}), param="logit_bias"),
    Case("presence_penalty too high", 400, chat(presence_penalty=3), param="presence_penalty"),
    Case("frequency_penalty too low", 400, chat(frequency_penalty=-3), param="frequency_penalty"),
    Case("empty stop string", 400, chat(stop=[""]), param="stop"),
    Case("stop of wrong type", 400, chat(stop=5), param="stop"),
    Case("stream as string", 400, chat(stream="yes"), param="stream"),
    Case("stream_options without stream", 400, chat(stream_options={"include_usage": True}), param="stream_options"),
    Case("seed as string", 400, chat(seed="42"), param="seed"),
    Case("top_k below -1", 400, chat(top_k=-5), param="top_k"),
    Case("min_p above 1", 400, chat(min_p=2), param="min_p"),
    Case("repetition_penalty zero", 400, chat(repetition_penalty=0), param="repetition_penalty"),
    Case("over-long chat prompt", 400, chat(messages=[{"role": "user", "content": LONG_TEXT}]),
         param="messages", code="context_length_exceeded"),
    Case("over-long token prompt", 400, completion(prompt=[100] * 9000), path=COMPLETIONS, param="prompt"),
    # ------------------------------------------------------------------ response_format and tools
    Case("invalid response_format schema", 400,
         chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "banana"}}}),
         param="response_format"),
    Case("json_schema without a name", 400,
         chat(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
         param="response_format"),
    Case("json_schema type without json_schema", 400, chat(response_format={"type": "json_schema"}),
         param="response_format"),
    Case("unknown response_format type", 400, chat(response_format={"type": "yaml"}), param="response_format"),
    Case("tool_choice names a missing function", 400,
         chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "stocks"}}), param="tool_choice"),
    Case("tool without a function", 400, chat(tools=[{"type": "function"}]), param="tools"),
    Case("tool with an invalid parameters schema", 400,
         chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]), param="tools"),
    Case("two tools with one name", 400, chat(tools=[TOOL, TOOL]), param="tools"),
    Case("unknown tool_choice string", 400, chat(tools=[TOOL], tool_choice="sometimes"), param="tool_choice"),
    # ------------------------------------------------------------------ completions
    Case("completion without prompt", 400, {"max_tokens": 4}, path=COMPLETIONS, param="prompt"),
    Case("completion prompt of strings and ids", 400, completion(prompt=["a", 5]), path=COMPLETIONS, param="prompt"),
    Case("completion empty token prompt", 400, completion(prompt=[]), path=COMPLETIONS, param="prompt"),
    Case("completion logprobs over 5", 400, completion(logprobs=6), path=COMPLETIONS, param="logprobs"),
    Case("completion with messages", 400, completion(messages=USER), path=COMPLETIONS, param="messages"),
    # ------------------------------------------------------------------ valid but not implemented: 400
    Case("best_of other than 1", 400, completion(best_of=2), path=COMPLETIONS, param="best_of",
         code="unsupported_parameter"),
    Case("audio modality", 400, chat(modalities=["text", "audio"]), param="modalities", code="unsupported_parameter"),
    Case("image content part", 400,
         chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
         param="messages", code="unsupported_parameter"),
    # ------------------------------------------------------------------ model, auth, routing, size
    Case("unknown model name", 404, chat(model="gpt-4o"), param="model", code="model_not_found"),
    Case("unknown model for completions", 404, completion(model="llama"), path=COMPLETIONS, code="model_not_found"),
    Case("wrong api key", 401, chat(), headers={"authorization": "Bearer nope"}, code="invalid_api_key"),
    Case("missing api key", 401, chat(), headers={}, code="invalid_api_key"),
    Case("not a bearer token", 401, chat(), headers={"authorization": f"Basic {API_KEY}"}, code="invalid_api_key"),
    Case("unknown path", 404, chat(), path="/v1/chat/complete"),
    Case("unknown top-level path", 404, None, path="/nothing/here", method="GET"),
    Case("wrong method", 405, None, path=CHAT, method="GET"),
    Case("oversize body", 413, b'{"messages": [], "pad": "' + b"x" * (2 * MAX_BODY) + b'"}', code="request_too_large"),
]


def send(http: httpx.Client, case: Case) -> httpx.Response:
    if isinstance(case.body, bytes):
        headers = {"content-type": "application/json", **case.headers}
        return http.request(case.method, case.path, content=case.body, headers=headers)
    if case.body is None:
        return http.request(case.method, case.path, headers=case.headers)
    return http.request(case.method, case.path, json=case.body, headers=case.headers)


def assert_case_error(response: httpx.Response, case: Case) -> Dict[str, Any]:
    error = assert_error_object(response)
    if case.param is not None:
        assert error["param"] == case.param, error
    if case.code is not None:
        assert error["code"] == case.code, error
    return error


def assert_still_serving(http: httpx.Client) -> None:
    response = http.post(COMPLETIONS, json={"prompt": "One, two,", "max_tokens": 2}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] is not None


def test_the_matrix_has_enough_cases() -> None:
    assert len(CASES) >= 40
    assert {c.status for c in CASES} >= {400, 401, 404, 405, 413}  # 503: the test at the end


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_gets_an_error_object_and_the_server_keeps_serving(http: httpx.Client, case: Case) -> None:
    response = send(http, case)
    assert response.status_code == case.status, response.text
    assert_case_error(response, case)
    assert_still_serving(http)


def test_oversize_body_without_content_length(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [], "pad": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    response = http.post(CHAT, content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert_still_serving(http)


def test_over_long_prompt_is_reported_as_context_length(http: httpx.Client) -> None:
    response = http.post(COMPLETIONS, json=completion(prompt=[100] * 9000), headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded", response.text


def test_streaming_request_errors_before_the_stream_starts(http: httpx.Client) -> None:
    """A stream that cannot start is a plain error answer, not an event stream."""
    response = http.post(CHAT, json=chat(stream=True, temperature=9), headers=AUTH)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == "temperature"


def test_the_sdk_raises_its_own_error_classes(server: ServerProcess, smollm2_path: str) -> None:
    name = os.path.basename(smollm2_path)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=name, messages=USER, n=0)
        assert bad.value.status_code == 400 and bad.value.param == "n"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=USER)
        with pytest.raises(openai.BadRequestError) as unsupported:
            client.completions.create(model=name, prompt="x", best_of=3)
        assert unsupported.value.code == "unsupported_parameter" and unsupported.value.param == "best_of"
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_errors_are_counted_in_metrics(server: ServerProcess, http: httpx.Client) -> None:
    http.post(CHAT, json=chat(n=0), headers=AUTH)
    http.post(CHAT, json=chat(), headers={})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'mlc_llm_requests_total{endpoint="/v1/chat/completions",status="400"}' in text
    assert 'mlc_llm_requests_total{endpoint="/v1/chat/completions",status="401"}' in text
    assert json.loads(httpx.get(f"{server.url}/health").text) == {"status": "ok"}


def test_503_while_draining_and_after_the_engine_stopped(smollm2_path: str) -> None:
    """The app in-process (no sockets): a server that drains refuses new work with 503 and so does
    one whose engine has stopped; /health reports both."""
    import asyncio

    from mlc_llm import AsyncMLCEngine
    from mlc_llm.serve.server import ServerSettings, begin_draining, create_app

    engine = AsyncMLCEngine(smollm2_path, device="cpu", verbose=False)
    try:
        draining = create_app(engine, ServerSettings.for_model(smollm2_path))
        stopped = create_app(engine, ServerSettings.for_model(smollm2_path))

        async def call(app: Any, method: str, path: str, body: Any = None) -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
                return await client.request(method, path, json=body)

        async def scenario() -> None:
            ok = await call(draining, "POST", COMPLETIONS, {"prompt": "Hi", "max_tokens": 1})
            assert ok.status_code == 200, ok.text
            begin_draining(draining)
            refused = await call(draining, "POST", CHAT, chat())
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert (await call(draining, "GET", "/health")).status_code == 503

            engine.terminate()
            dead = await call(stopped, "POST", CHAT, chat())
            assert dead.status_code == 503, dead.text
            assert set(dead.json()["error"]) == {"message", "type", "param", "code"}
            health = await call(stopped, "GET", "/health")
            assert health.status_code == 503 and "error" in health.json()

        asyncio.run(scenario())
    finally:
        engine.terminate()


def test_a_port_in_use_fails_before_the_model_loads(smollm2_path: str, tmp_path) -> None:
    """`mlc_llm serve` checks its port first: a taken port ends the command at once with a message naming
    it, instead of after the model loaded (minutes for a large one)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mlc_llm.cli.serve", smollm2_path, "--device", "cpu", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr, done.stderr
    assert "engine ready" not in done.stderr + done.stdout
    assert elapsed < 30, elapsed
