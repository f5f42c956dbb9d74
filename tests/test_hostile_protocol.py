"""Hostile values for the request models and the Python API (no HTTP).

Property-based (hypothesis): whatever JSON-like value lands in whatever field, `parse_request` either
accepts the request or raises BadRequestError naming a field with a message the server can send, never
RecursionError, UnicodeEncodeError, OverflowError or pydantic's own error type. Then the inputs that
used to escape as those errors, through `engine.chat.completions.create` / `completions.create`.
"""

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlc_llm.protocol.errors import BadRequestError, MLCError, ModelLoadError
from mlc_llm.protocol.limits import MAX_JSON_DEPTH, MAX_U32, check_request_values
from mlc_llm.protocol.openai_api_protocol import ChatCompletionRequest, CompletionRequest, parse_request

USER = [{"role": "user", "content": "Hi"}]
# Derandomized and without an example database: CI runs the same examples every time and the tree
# stays clean; a failure prints the falsifying example to reproduce.
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Text that may hold lone surrogates, which JSON escapes can spell and UTF-8 cannot encode.
text = st.one_of(st.text(max_size=20), st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])),
                                               max_size=8))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**31 - 2, max_value=2**80),
    st.integers(min_value=-(2**80), max_value=-1), st.floats(), text, st.binary(max_size=8),
)
json_like = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=20,
)

SAMPLING_FIELDS = [
    "model", "frequency_penalty", "presence_penalty", "logit_bias", "max_tokens", "n", "seed", "stop", "stream",
    "stream_options", "temperature", "top_p", "user", "request_id", "best_of", "top_k", "min_p",
    "repetition_penalty", "ignore_eos", "debug_config", "response_format", "extra_body",
]
CHAT_FIELDS = SAMPLING_FIELDS + [
    "messages", "logprobs", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
]
COMPLETION_FIELDS = SAMPLING_FIELDS + ["prompt", "echo", "suffix", "logprobs", "top_logprobs"]


def outcome(cls: Any, kwargs: Dict[str, Any]) -> None:
    """Parses; a refusal must be our typed error with a field and a message that UTF-8 can carry."""
    try:
        parse_request(cls, kwargs)
    except BadRequestError as err:
        assert isinstance(err.field, str), err
        str(err).encode("utf-8")
        err.field.encode("utf-8")


@PROPERTY_SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(CHAT_FIELDS), text), json_like, max_size=4))
def test_any_chat_fields_are_accepted_or_a_bad_request(fields: Dict[str, Any]) -> None:
    outcome(ChatCompletionRequest, {"messages": USER, **fields})


@PROPERTY_SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(COMPLETION_FIELDS), text), json_like, max_size=4))
def test_any_completion_fields_are_accepted_or_a_bad_request(fields: Dict[str, Any]) -> None:
    outcome(CompletionRequest, {"prompt": "Hi", **fields})


def nest(value: Any, depth: int, as_dict: bool) -> Any:
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


# extra_body is left out: its keys are merged into the request, so the error names the inner key.
@PROPERTY_SETTINGS
@given(st.sampled_from([f for f in COMPLETION_FIELDS if f != "extra_body"]), st.integers(MAX_JSON_DEPTH + 1, 5000),
       st.booleans())
def test_values_nested_past_the_limit_are_refused_naming_the_field(name: str, depth: int, as_dict: bool) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_request(CompletionRequest, {"prompt": "Hi", name: nest(1, depth, as_dict)})
    assert err.value.field == name


def test_nesting_up_to_the_limit_is_accepted() -> None:
    for as_dict in (False, True):
        check_request_values({"stop": nest("x", MAX_JSON_DEPTH, as_dict)})
        with pytest.raises(BadRequestError):
            check_request_values({"stop": nest("x", MAX_JSON_DEPTH + 1, as_dict)})


@PROPERTY_SETTINGS
@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=6))
def test_token_id_prompts_are_accepted_exactly_when_every_id_is_a_u32(ids: List[int]) -> None:
    valid = bool(ids) and all(0 <= t <= MAX_U32 for t in ids)
    try:
        request = parse_request(CompletionRequest, {"prompt": ids, "echo": True})
    except BadRequestError as err:
        assert not valid and err.field == "prompt", (ids, err)
    else:
        assert valid and request.prompt == ids


@PROPERTY_SETTINGS
@given(st.sampled_from(["max_tokens", "top_k", "n", "top_logprobs", "max_completion_tokens"]),
       st.integers(min_value=MAX_U32 + 1, max_value=2**200))
def test_integers_past_the_engine_types_name_their_field(name: str, value: int) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_request(ChatCompletionRequest, {"messages": USER, "logprobs": True, name: value})
    assert err.value.field == name and str(value) not in (err.value.field or "")


@PROPERTY_SETTINGS
@given(st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3), st.text(max_size=5),
       st.sampled_from(["prompt", "request_id", "user", "stop", "model"]))
def test_lone_surrogates_are_refused_naming_the_field(surrogates: str, rest: str, name: str) -> None:
    fields = {"prompt": "Hi", name: rest + surrogates}
    with pytest.raises(BadRequestError) as err:
        parse_request(CompletionRequest, fields)
    assert err.value.field == name


@PROPERTY_SETTINGS
@given(st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 2**31 - 1),
    "max_tokens": st.integers(1, MAX_U32), "n": st.integers(1, 128), "seed": st.integers(-(2**70), 2**70),
    "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3), "repetition_penalty": st.floats(0.01, 1e38),
    "logit_bias": st.dictionaries(st.integers(0, MAX_U32).map(str), st.floats(-100, 100), max_size=3),
}))
def test_valid_sampling_fields_are_accepted(fields: Dict[str, Any]) -> None:
    request = parse_request(CompletionRequest, {"prompt": [1, 2, 3], **fields})
    assert request.max_tokens == fields.get("max_tokens")


# ---------------------------------------------------------------------------------------------
# The same through the Python API (a real engine)
# ---------------------------------------------------------------------------------------------


def _schema(levels: int) -> Dict[str, Any]:
    schema: Dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


PYTHON_API_CASES = [
    ("chat", {"stop": nest("x", 1000, False)}, "stop"),
    ("chat", {"response_format": _schema(200)}, "response_format"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}},
     "response_format"),
    ("chat", {"max_tokens": 2**70}, "max_tokens"),
    ("chat", {"top_k": 2**70}, "top_k"),
    ("chat", {"logit_bias": {str(2**70): 1}}, "logit_bias"),
    ("chat", {"logit_bias": {2**70: 1}}, "logit_bias"),
    ("chat", {"repetition_penalty": 1e300}, "repetition_penalty"),
    ("chat", {"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ("chat", {"messages": [{"role": "user", "content": "\udfff"}]}, "messages"),
    ("completion", {"prompt": "\udfff"}, "prompt"),
    ("completion", {"request_id": "\udfff"}, "request_id"),
    ("completion", {"prompt": [2**32]}, "prompt"),
    ("completion", {"prompt": [2**70]}, "prompt"),
    ("completion", {"prompt": [2**70], "echo": True}, "prompt"),
    ("completion", {"prompt": [True]}, "prompt"),
    ("completion", {"prompt": [1.0]}, "prompt"),
    ("completion", {"prompt": b"Hi"}, "prompt"),
    ("completion", {"prompt": nest(1, 5000, True)}, "prompt"),
]


@pytest.mark.parametrize("kind,fields,field", PYTHON_API_CASES, ids=[f"{k}-{f}-{i}" for i, (k, _, f) in
                                                                      enumerate(PYTHON_API_CASES)])
def test_python_api_raises_typed_errors(engine: Any, kind: str, fields: Dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequestError) as err:
        if kind == "chat":
            engine.chat.completions.create(**{"messages": USER, "max_tokens": 2, **fields})
        else:
            engine.completions.create(**{"prompt": "Hi", "max_tokens": 2, **fields})
    assert err.value.field == field, err.value
    if field == "repetition_penalty":
        assert "greater than 0" in str(err.value) and "at most" in str(err.value)
    # The engine still serves.
    assert engine.completions.create(prompt="One,", max_tokens=1).choices[0].finish_reason == "length"


# ---------------------------------------------------------------------------------------------
# Messages without Rust backtraces
# ---------------------------------------------------------------------------------------------


def test_a_rust_backtrace_is_cut_from_the_message() -> None:
    err = ModelLoadError("cannot load x: bad\n   0: candle_core::error::Error::bt\n   1: mlc_core::loader::load")
    assert str(err) == "cannot load x: bad"
    assert err.backtrace is not None and err.backtrace.startswith("   0: candle_core")
    assert str(MLCError("plain\nsecond line")) == "plain\nsecond line"
    assert BadRequestError("bad\nstack backtrace:\n  0: f", "n").field == "n"


def test_model_load_errors_carry_no_backtrace(smollm2_path: str, tmp_path: Any) -> None:
    """RUST_BACKTRACE=1 makes candle attach a backtrace to its errors; the message a caller (and
    `mlc_llm serve`) shows stays one readable line."""
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_path, "rb") as f:
        truncated.write_bytes(f.read(100_000))
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(os.path.dirname(__file__)), "python"),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "mlc_llm.cli.serve", str(truncated), "--device", "cpu", "--port", "0"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "not a valid GGUF" in result.stderr, result.stderr
    assert "candle_core::" not in result.stderr and "\n   0: " not in result.stderr, result.stderr
    json.dumps(result.stderr)
