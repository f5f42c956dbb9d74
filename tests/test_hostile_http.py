"""Hostile HTTP requests against one `mlc_llm serve` process on SmolLM2: hundreds of distinct bad
requests (wrong types, out-of-range numbers, JSON nested thousands of levels deep, lone surrogates,
token ids past 2^32, self-referencing schemas, wrong content types, duplicate credentials, unknown
paths and methods, oversize bodies, requests for more work than the server allows). Every one must be
answered with a 4xx and an OpenAI error object, never a 500, and the server must serve the next
good request.

Then the faults a client can cause on the wire: a body sent too slowly (408), a client that leaves
mid-body (counted as 499 with no traceback), and client-chosen paths that must not become metric
labels. The API key of this server comes from MLC_LLM_API_KEY, not the command line.

One server serves the module (its access log is on, so the query-string test can read it).
"""

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import httpx
import pytest

from openai_errors import assert_error_object
from server_process import ServerProcess

API_KEY = "sk-hostile"
AUTH = {"authorization": f"Bearer {API_KEY}"}
JSON_HEADERS = {**AUTH, "content-type": "application/json"}
MAX_BODY = 256 * 1024
MAX_N = 8
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 2.0
CONTEXT = 4096
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def server(smollm2_path: str) -> Iterator[ServerProcess]:
    saved = os.environ.get("MLC_LLM_API_KEY")
    os.environ["MLC_LLM_API_KEY"] = API_KEY  # the key is read from the environment, not argv
    try:
        proc = ServerProcess(
            smollm2_path,
            "--max-body-size", str(MAX_BODY),
            "--max-n", str(MAX_N),
            "--body-timeout", str(BODY_TIMEOUT_S),
            "--header-timeout", str(HEADER_TIMEOUT_S),
            "--overrides", f"max_total_seq_length={CONTEXT}",
        )
    finally:
        if saved is None:
            del os.environ["MLC_LLM_API_KEY"]
        else:
            os.environ["MLC_LLM_API_KEY"] = saved
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


@dataclass
class Bad:
    name: str
    body: Union[Dict[str, Any], bytes, None]  # a JSON object, raw bytes, or no body
    path: str = COMPLETIONS
    status: int = 400
    param: Optional[str] = None
    method: str = "POST"
    headers: List[Tuple[str, str]] = field(default_factory=lambda: list(JSON_HEADERS.items()))


def chat(**fields: Any) -> Dict[str, Any]:
    return {"messages": USER, "max_tokens": 2, **fields}


def completion(**fields: Any) -> Dict[str, Any]:
    return {"prompt": "Hi", "max_tokens": 2, **fields}


def deep_list(depth: int) -> str:
    """JSON text of `depth` nested lists (built as text: json.dumps itself recurses)."""
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def nested_schema(levels: int) -> Dict[str, Any]:
    schema: Dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def json_schema(schema: Any) -> Dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


# Bad values of the sampling fields both endpoints share; each must be refused naming the field.
SHARED_BAD: Dict[str, List[Any]] = {
    "temperature": ["hot", -0.1, 2.01, [], {}, True, "0.5"],
    "top_p": [0, -0.5, 1.5, "x", [], True],
    "top_k": [-2, 2**31, 2**32, 2**70, -(2**70), 1.5, "5", True],
    "min_p": [-0.1, 1.1, "x", []],
    "frequency_penalty": [2.5, -2.5, "x", 10**30],
    "presence_penalty": [2.5, -2.5, "x", {}],
    "repetition_penalty": [0, -1, 1e300, 1e39, "x", True],
    "max_tokens": [0, -1, 2**32, 2**64, 2**70, 1.5, "4", True, []],
    "n": [0, -1, MAX_N + 1, 129, 2**70, "2", True, 1.5],
    "seed": ["42", 1.5, True, [], {}],
    "stop": [5, [5], [""], "", {"a": 1}, [[]], [None]],
    "stream": ["yes", 1, "true", []],  # null is accepted: OpenAI reads it as "not given"
    "logit_bias": [{"abc": 1}, {"-1": 1}, {str(2**32): 1}, {str(2**70): 1}, {"5": 101}, {"5": "x"}, [], "x",
                   {"10000000": 1}],
    "user": [5, [], {}],
    "request_id": [5, [], {}],
    "ignore_eos": ["yes", 1, []],
    "debug_config": [{"ignore_eos": "yes"}, "x", {"unknown": 1}, {"ignore_eos": 1}],
    "response_format": [
        {"type": "yaml"}, {"type": "json_schema"}, "json", [],
        {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        {"type": "text", "schema": {"type": "object"}},
        json_schema({"type": "banana"}),
        json_schema({"$ref": "#"}),
        json_schema({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        json_schema({"allOf": [{"$ref": "#"}]} | {"$ref": "#"}),
        json_schema(nested_schema(60)),
        json_schema(nested_schema(200)),
        json_schema({"type": "string", "minLength": 5, "maxLength": 2}),
        json_schema({"allOf": [{"type": "string"}, {"type": "integer"}]}),
        {"type": "json_object", "schema": "{not json"},
        {"type": "json_schema", "json_schema": {"name": "a b", "schema": {"type": "object"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}},
    ],
}
STREAM_OPTIONS_BAD: List[Any] = [
    {"include_usage": "yes"}, {"include_usage": 1}, {"include_usage": "true"}, {"include_usage": None},
    {"foo": True}, "yes", [],
]

CHAT_BAD: Dict[str, List[Any]] = {
    "messages": [
        [], "x", [{}], [None], [[]], [{"role": "wizard", "content": "x"}], [{"content": "x"}],
        [{"role": "user", "content": 5}], [{"role": "user"}], [{"role": "user", "content": "x", "mood": 1}],
        [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [{"type": "video"}]}],
        [{"role": "user", "content": "x", "name": 5}],
        [{"role": "user", "content": "x", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}]}],
        [{"role": "user", "content": [{"text": "no type"}]}],
        [{"role": "assistant", "content": None}],
    ],
    "logprobs": ["yes", 1, []],
    "top_logprobs": [21, -1, "3"],
    "max_completion_tokens": [0, -5, 2**32, 2**70, "8", True],
    "tools": [[{}], [{"type": "function"}], [{"type": "function", "function": {"name": "a b"}}],
              [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}], [TOOL, TOOL], "x",
              [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}],
              [{"type": "retrieval"}]],
    "tool_choice": ["sometimes", {"type": "function", "function": {"name": "stocks"}}, 5, {"type": "function"}],
    "parallel_tool_calls": ["yes", 1],
}

COMPLETION_BAD: Dict[str, List[Any]] = {
    "prompt": [[], [-1], [2**32], [2**64], [2**70], [True], [False, 1], [1.0], ["a", 5], [[1, "a"]], None, 5, {},
               [1, None], [100] * 5000],
    "echo": ["yes", 1],
    "logprobs": [21, -1, "x", 2**70],
    "top_logprobs": [21, -1],
}


def field_cases() -> List[Bad]:
    cases: List[Bad] = []
    for path, make, prefix in ((CHAT, chat, "chat"), (COMPLETIONS, completion, "completion")):
        for name, values in SHARED_BAD.items():
            for i, value in enumerate(values):
                cases.append(Bad(f"{prefix} {name} #{i}", make(**{name: value}), path, param=name))
        for i, value in enumerate(STREAM_OPTIONS_BAD):
            cases.append(Bad(f"{prefix} stream_options #{i}", make(stream=True, stream_options=value), path,
                             param="stream_options"))
    for name, values in CHAT_BAD.items():
        for i, value in enumerate(values):
            body = chat(**{name: value})
            if name == "tool_choice" and not isinstance(value, (str, int)):
                body["tools"] = [TOOL]
            cases.append(Bad(f"chat {name} #{i}", body, CHAT, param=name))
    for name, values in COMPLETION_BAD.items():
        for i, value in enumerate(values):
            cases.append(Bad(f"completion {name} #{i}", completion(**{name: value}), param=name))
    return cases


def rule_cases() -> List[Bad]:
    """Valid fields that break a rule across fields, or a limit of this server."""
    return [
        Bad("stream_options without stream", completion(stream_options={"include_usage": True}), param="stream_options"),
        Bad("top_logprobs without logprobs", chat(top_logprobs=2), CHAT, param="top_logprobs"),
        Bad("max_tokens and max_completion_tokens disagree", chat(max_tokens=4, max_completion_tokens=5), CHAT,
            param="max_completion_tokens"),
        Bad("tool_choice required without tools", chat(tool_choice="required"), CHAT, param="tool_choice"),
        Bad("response_format with a forced tool", chat(tools=[TOOL], tool_choice="required",
                                                       response_format={"type": "json_object"}), CHAT,
            param="response_format"),
        Bad("max_tokens past the context", completion(max_tokens=CONTEXT), param="max_tokens"),
        Bad("max_tokens far past the context", completion(max_tokens=100_000), param="max_tokens"),
        Bad("chat max_tokens past the context", chat(max_tokens=CONTEXT + 1), CHAT, param="max_tokens"),
        Bad("n times max_tokens over the request limit", completion(n=MAX_N, max_tokens=CONTEXT - 10),
            param="max_tokens"),
        Bad("n with unbounded max_tokens over the request limit", {"prompt": "Hi", "n": MAX_N}, param="n"),
        Bad("over-long token prompt", completion(prompt=[100] * (CONTEXT + 10)), param="prompt"),
        Bad("token id outside the vocabulary", completion(prompt=[10_000_000]), param="prompt"),
        Bad("echo with a token id past u32", completion(prompt=[2**70], echo=True), param="prompt"),
        Bad("stream with a token id past u32", completion(prompt=[2**32], stream=True), param="prompt"),
        # Valid OpenAI / MLC options this engine does not implement: 400 (as OpenAI answers), never ignored.
        Bad("best_of", completion(best_of=2), param="best_of"),
        Bad("suffix not text", completion(suffix=5), param="suffix"),
        Bad("echo with logprobs", completion(echo=True, logprobs=1), param="echo"),
        Bad("debug_config special_request", chat(debug_config={"special_request": "query_engine_metrics"}), CHAT,
            param="debug_config"),
        Bad("image content part", chat(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]), CHAT, param="messages"),
        Bad("unknown model", chat(model="gpt-4o"), CHAT, status=404, param="model"),
        Bad("unknown model for completions", completion(model="llama"), status=404, param="model"),
        Bad("model of wrong type", completion(model=5), param="model"),
        Bad("messages on completions", completion(messages=USER), param="messages"),
        Bad("prompt on chat", chat(prompt="x"), CHAT, param="prompt"),
        Bad("missing prompt", {"max_tokens": 2}),
        Bad("missing messages", {"max_tokens": 2}, CHAT),
        Bad("unknown field", completion(frobnicate=1), param="frobnicate"),
        Bad("field name of other case", completion(Temperature=1), param="Temperature"),
        Bad("empty field name", completion(**{"": 1}), param=""),
        Bad("extra_body not an object", completion(extra_body="x"), param="extra_body"),
        Bad("extra_body list", completion(extra_body=[1]), param="extra_body"),
        Bad("extra_body with a bad field", completion(extra_body={"top_k": 2**70}), param="top_k"),
    ]


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def nesting_cases() -> List[Bad]:
    """Deep JSON in every kind of place, as raw text (about 1,000 levels is where Python's decoder
    gives up; 101 is past our limit)."""
    cases: List[Bad] = []
    places = {
        "stop": '{"prompt": "Hi", "max_tokens": 2, "stop": %s}',
        "logit_bias": '{"prompt": "Hi", "max_tokens": 2, "logit_bias": {"1": %s}}',
        "prompt": '{"prompt": %s, "max_tokens": 2}',
        "user": '{"prompt": "Hi", "max_tokens": 2, "user": %s}',
        "unknown": '{"prompt": "Hi", "max_tokens": 2, "zzz": %s}',
        "extra_body": '{"prompt": "Hi", "max_tokens": 2, "extra_body": {"a": %s}}',
        "response_format": '{"prompt": "Hi", "max_tokens": 2, "response_format": {"type": "json_schema", '
                           '"json_schema": {"name": "x", "schema": {"properties": {"a": %s}}}}}',
        "messages": '{"messages": [{"role": "user", "content": %s}], "max_tokens": 2}',
        "tools": '{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "tools": [{"type": "function", '
                 '"function": {"name": "f", "parameters": {"type": "object", "properties": %s}}}]}',
        "tool_call_arguments": '{"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", '
                               '"function": {"name": "f", "arguments": %s}}]}, {"role": "user", "content": "x"}], '
                               '"max_tokens": 2}',
    }
    for place, template in places.items():
        path = CHAT if place in ("messages", "tools", "tool_call_arguments") else COMPLETIONS
        for depth in (101, 999, 1000, 5000, 50_000):
            cases.append(Bad(f"{place} lists nested {depth}", _raw(template % deep_list(depth)), path))
        for depth in (150, 1000, 3000):
            cases.append(Bad(f"{place} objects nested {depth}", _raw(template % deep_object(depth)), path))
    cases.append(Bad("body itself nested 100000", _raw(deep_list(100_000)), COMPLETIONS))
    return cases


def unicode_cases() -> List[Bad]:
    """Lone surrogates (valid JSON escapes, invalid text) in every kind of string."""
    cases: List[Bad] = []
    for escape in ("\\udfff", "\\ud800", "x\\udc00y", "\\udbff\\udbff"):
        for name, template, path in (
            ("prompt", '{"prompt": "%s", "max_tokens": 2}', COMPLETIONS),
            ("request_id", '{"prompt": "Hi", "max_tokens": 2, "request_id": "%s"}', COMPLETIONS),
            ("user", '{"prompt": "Hi", "max_tokens": 2, "user": "%s"}', COMPLETIONS),
            ("stop", '{"prompt": "Hi", "max_tokens": 2, "stop": ["%s"]}', COMPLETIONS),
            ("model", '{"prompt": "Hi", "max_tokens": 2, "model": "%s"}', COMPLETIONS),
            ("logit_bias key", '{"prompt": "Hi", "max_tokens": 2, "logit_bias": {"%s": 1}}', COMPLETIONS),
            ("field name", '{"prompt": "Hi", "max_tokens": 2, "%s": 1}', COMPLETIONS),
            ("content", '{"messages": [{"role": "user", "content": "%s"}], "max_tokens": 2}', CHAT),
            ("chat request_id", '{"messages": [{"role": "user", "content": "x"}], "request_id": "%s"}', CHAT),
            ("schema key", '{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": '
                           '"json_schema", "json_schema": {"name": "x", "schema": {"type": "object", '
                           '"properties": {"%s": {"type": "string"}}}}}}', CHAT),
        ):
            cases.append(Bad(f"surrogate {escape} in {name}", _raw(template % escape), path))
    return cases


def wire_cases() -> List[Bad]:
    """Bodies that are not a JSON object, wrong content types, credentials, paths and methods."""
    good = json.dumps(completion()).encode()
    cases = [Bad(f"malformed body #{i}", raw) for i, raw in enumerate([
        b"", b"   ", b"{", b'{"prompt": "x", ', b'{"prompt": "x"} trailing', b"{'prompt': 'x'}",
        b'{"prompt": "x", "max_tokens": NaN}', b'{"prompt": "x", "temperature": Infinity}',
        b'{"prompt": "x", "temperature": -Infinity}', b'{"prompt": "x" /* c */}', b"\xff\xfe{}", b'{"prompt": "\xff"}',
        "\ufeff{}".encode("utf-8"), '{"prompt": "x"}'.encode("utf-16"), b"[1, 2]", b'"hello"', b"42", b"null",
        b"true", b"\x00\x00\x00", b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}",
    ])]
    for i, content_type in enumerate([
        None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
        "application/xml", "application/jsonx", "application/json-patch+json", "text/json", "json", "*/*",
        "application/javascript",
    ]):
        headers = [("authorization", AUTH["authorization"])]
        if content_type is not None:
            headers.append(("content-type", content_type))
        cases.append(Bad(f"content type #{i} {content_type}", good, status=415, headers=headers))
    auth_cases = {
        "missing key": [],
        "wrong key": [("authorization", "Bearer nope")],
        "basic scheme": [("authorization", f"Basic {API_KEY}")],
        "bearer without token": [("authorization", "Bearer")],
        "key without scheme": [("authorization", API_KEY)],
        "key prefix": [("authorization", f"Bearer {API_KEY[:-1]}")],
        "key with suffix": [("authorization", f"Bearer {API_KEY}x")],
        "non-ascii key": [("authorization", "Bearer k\u00e9y".encode())],
        "key in x-api-key": [("x-api-key", API_KEY)],
    }
    for name, auth in auth_cases.items():
        headers = [("content-type", "application/json"), *auth]
        cases.append(Bad(f"auth: {name}", good, status=401, headers=headers))
    for name, auth in {
        "two keys, good last": [("authorization", "Bearer nope"), ("authorization", AUTH["authorization"])],
        "two keys, good first": [("authorization", AUTH["authorization"]), ("authorization", "Bearer nope")],
        "the good key twice": [("authorization", AUTH["authorization"])] * 2,
    }.items():
        cases.append(Bad(f"auth: {name}", good, status=400, headers=[("content-type", "application/json"), *auth]))
    for path in ("/v1/chat/complete", "/v1/completions/x", "/v2/completions", "/v1", "/v1/", "/nothing/here",
                 "/%2e%2e/etc/passwd", "/v1/engines"):
        cases.append(Bad(f"unknown path {path}", good, path=path, status=404))
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        for path in (CHAT, COMPLETIONS):
            cases.append(Bad(f"{method} {path}", None, path=path, method=method, status=405))
    cases.append(Bad("POST /v1/models", good, path="/v1/models", status=405))
    cases.append(Bad("unknown model id", None, path="/v1/models/gpt-4o", method="GET", status=404))
    cases.append(Bad("oversize body", b'{"prompt": "' + b"x" * (2 * MAX_BODY) + b'"}', status=413))
    return cases


CASES = field_cases() + rule_cases() + nesting_cases() + unicode_cases() + wire_cases()


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


def send(http: httpx.Client, case: Bad) -> httpx.Response:
    if isinstance(case.body, dict):
        content: Optional[bytes] = json.dumps(case.body).encode()
    else:
        content = case.body
    return http.request(case.method, case.path, content=content, headers=case.headers)


def assert_serves(http: httpx.Client) -> None:
    response = http.post(COMPLETIONS, json={"prompt": "One, two,", "max_tokens": 1}, headers=AUTH)
    assert response.status_code == 200, response.text


def test_there_are_at_least_300_distinct_bad_requests() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names), "case names must be unique"
    bodies = {(c.method, c.path, json.dumps(c.body, sort_keys=True) if isinstance(c.body, dict) else c.body,
               tuple(c.headers)) for c in CASES}
    assert len(bodies) == len(CASES), "every case must be a different request"
    assert len(CASES) >= 300, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_is_a_4xx_error_object(http: httpx.Client, case: Bad) -> None:
    response = send(http, case)
    assert response.status_code == case.status, f"{case.name}: {response.status_code} {response.text[:500]}"
    error = assert_error_object(response)
    if case.param is not None:
        assert error["param"] == case.param, error
    assert_serves(http)


def test_no_request_was_answered_with_a_5xx(server: ServerProcess, http: httpx.Client) -> None:
    text = http.get("/metrics").text
    statuses = [line for line in text.splitlines() if line.startswith("mlc_llm_requests_total{")]
    assert statuses, text
    assert not [line for line in statuses if 'status="5' in line], statuses
    assert server.process.poll() is None
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert_serves(http)


# ---------------------------------------------------------------------------------------------
# Faults on the wire
# ---------------------------------------------------------------------------------------------


def _connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.rsplit("/", 1)[-1].split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: test\r\nauthorization: {AUTH['authorization']}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


def _counts(http: httpx.Client) -> Dict[str, float]:
    """mlc_llm_requests_total by its label text, e.g. '{endpoint="/v1/completions",status="499"}'."""
    out: Dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("mlc_llm_requests_total{"):
            labels, _, value = line[len("mlc_llm_requests_total"):].rpartition(" ")
            out[labels] = float(value)
    return out


def test_a_body_sent_too_slowly_gets_408(server: ServerProcess, http: httpx.Client) -> None:
    """Slowloris: the client declares a body and sends it a byte at a time; the server answers
    408 once --body-timeout has passed instead of waiting for as long as the client likes."""
    with _connect(server) as sock:
        sock.sendall(_head(COMPLETIONS, 200) + b'{"prompt": ')
        started = time.monotonic()
        response = b""
        while not response.endswith(b"}"):
            try:
                sock.sendall(b" ")
            except OSError:
                pass
            time.sleep(0.25)
            sock.settimeout(0.01)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            response += chunk
        elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408"), response
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 5, elapsed
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert_serves(http)


def _closed_after(sock: socket.socket, drip: list) -> float:
    """Sends `drip` one piece every 0.25 s (then keeps the line open) until the server closes the
    connection; returns the seconds that took."""
    started = time.monotonic()
    sock.settimeout(0.25)
    pieces = iter(drip)
    while time.monotonic() - started < 30:
        piece = next(pieces, None)
        try:
            if piece is not None:
                sock.sendall(piece)
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError("the server kept a connection with unfinished headers open for 30 s")


def test_headers_sent_too_slowly_close_the_connection(server: ServerProcess, http: httpx.Client) -> None:
    """Slowloris on the headers: one header line every 0.25 s, never finished. The server closes the
    connection once --header-timeout has passed, on a fresh connection and on a kept-alive one after a
    first request was answered."""
    drip = [f"POST {COMPLETIONS} HTTP/1.1\r\n".encode(), b"Host: x\r\n"] + [f"X-Slow-{i}: y\r\n".encode() for i in range(200)]
    with _connect(server) as sock:
        elapsed = _closed_after(sock, drip)
    assert HEADER_TIMEOUT_S - 0.5 <= elapsed < HEADER_TIMEOUT_S + 3, elapsed
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        elapsed = _closed_after(sock, drip)
    assert elapsed < HEADER_TIMEOUT_S + 3, elapsed
    assert_serves(http)


def test_a_client_that_leaves_mid_body_is_not_a_server_error(server: ServerProcess, http: httpx.Client) -> None:
    before = _counts(http)
    log_before = len(server.log())
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(_head(COMPLETIONS, 1000) + b'{"prompt": "half a bo')
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    closed = '{endpoint="/v1/completions",status="499"}'
    while _counts(http).get(closed, 0) < before.get(closed, 0) + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    after = _counts(http)
    assert after.get(closed, 0) == before.get(closed, 0) + 3, after
    assert not [k for k in after if 'status="5' in k], after
    new_log = server.log()[log_before:]
    assert "Traceback" not in new_log and "ERROR" not in new_log, new_log
    assert_serves(http)


def test_client_chosen_paths_do_not_become_metric_labels(http: httpx.Client) -> None:
    """Unauthenticated 401s and oversize 413s on thousands of made-up paths leave /metrics as it was
    (they are counted under the route template, or 'unmatched')."""
    size_before = len(http.get("/metrics").text)
    for i in range(300):
        http.post(f"/v1/made-up/{i}-{'x' * 200}", content=b"{}", headers={"content-type": "application/json"})
        http.post(f"/v1/models/{i}", content=b"{}", headers={"content-type": "application/json"})
    for i in range(50):
        big = b'{"pad": "' + b"x" * (MAX_BODY + 1) + b'"}'
        http.post(f"/v1/too-big/{i}", content=big, headers=JSON_HEADERS)
    text = http.get("/metrics").text
    assert "made-up" not in text and "too-big" not in text
    assert 'endpoint="unmatched",status="401"' in text
    assert 'endpoint="/v1/models/{model_id:path}",status="401"' in text
    assert len(text) < size_before + 2000, (size_before, len(text))


def test_query_strings_are_not_logged(server: ServerProcess, http: httpx.Client) -> None:
    response = http.post(f"{COMPLETIONS}?api_key=sk-leaked-secret&x=1", json=completion(), headers=AUTH)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 5
    while f'"POST {COMPLETIONS} HTTP/1.1" 200' not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log()
    assert f'"POST {COMPLETIONS} HTTP/1.1" 200' in log, log[-2000:]
    assert "sk-leaked-secret" not in log


def test_the_api_key_came_from_the_environment(server: ServerProcess, http: httpx.Client) -> None:
    with open(f"/proc/{server.pid}/cmdline", "rb") as f:
        assert API_KEY.encode() not in f.read()
    assert http.get("/v1/models").status_code == 401
    assert http.get("/v1/models", headers=AUTH).status_code == 200
