"""A chat template's `raise_exception` reaches the user as a typed bad request, never a crash or a 500:
Gemma 2's template refuses a system message ("System role not supported") and non-alternating roles.

- `MLCEngine.chat.completions.create` raises `BadRequestError` (a `ValueError`) with `field == "messages"`
  and the template's own message, streaming or not, and the same engine then serves a user-only chat;
- `mlc_llm serve` answers 400 with an OpenAI error object (`invalid_request_error`, `param: "messages"`,
  the template's message), and keeps serving.

The model is the tiny random Llama of tests/fixtures/models/llama with the Gemma 2 chat template
(tests/fixtures/templates/sources/google-gemma-2-2b-it.jinja) in its tokenizer_config.json. Its word-level
tokenizer spells token i as "t<i>" (unknown words become t0), so BOS/EOS are the vocabulary words t1/t2.
"""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from mlc_llm import MLCEngine
from mlc_llm.protocol.errors import BadRequestError
from server_process import ServerProcess

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA = FIXTURES / "models" / "llama"
GEMMA2_TEMPLATE = FIXTURES / "templates" / "sources" / "google-gemma-2-2b-it.jinja"

SYSTEM_ERROR = "System role not supported"
ALTERNATION_ERROR = "Conversation roles must alternate user/assistant/user/assistant/..."
WITH_SYSTEM: List[Dict[str, str]] = [
    {"role": "system", "content": "t5 t6"},
    {"role": "user", "content": "t7 t8"},
]
NOT_ALTERNATING: List[Dict[str, str]] = [
    {"role": "user", "content": "t7"},
    {"role": "user", "content": "t8"},
]
USER_ONLY: List[Dict[str, str]] = [
    {"role": "user", "content": "t7 t8"},
    {"role": "assistant", "content": "t9"},
    {"role": "user", "content": "t10"},
]


@pytest.fixture(scope="module")
def gemma2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("gemma2tpl") / "llama-gemma2-template"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(LLAMA / name, model / name)
    config = {
        "model_max_length": 512,
        "bos_token": "t1",
        "eos_token": "t2",
        "add_bos_token": False,
        "chat_template": GEMMA2_TEMPLATE.read_text(encoding="utf-8"),
    }
    (model / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return model


@pytest.fixture(scope="module")
def engine(gemma2_model: Path) -> Iterator[MLCEngine]:
    eng = MLCEngine(str(gemma2_model), device="cpu", verbose=False)
    yield eng
    eng.terminate()


def chat(engine: MLCEngine, messages: List[Dict[str, str]], **kwargs: Any) -> Any:
    return engine.chat.completions.create(messages=messages, max_tokens=3, temperature=0.0, **kwargs)


@pytest.mark.parametrize("stream", [False, True])
def test_system_role_is_a_bad_request(engine: MLCEngine, stream: bool) -> None:
    with pytest.raises(BadRequestError) as info:
        result = chat(engine, WITH_SYSTEM, stream=stream)
        if stream:
            list(result)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == "messages"
    assert SYSTEM_ERROR in str(err)
    # The template's message is what the user reads, with no engine internals around it.
    assert str(err) == f"chat template: {SYSTEM_ERROR}"


def test_roles_not_alternating_is_a_bad_request(engine: MLCEngine) -> None:
    with pytest.raises(BadRequestError, match="Conversation roles must alternate") as info:
        chat(engine, NOT_ALTERNATING)
    assert info.value.field == "messages"
    assert ALTERNATION_ERROR in str(info.value)


def test_engine_serves_user_chat_after_template_errors(engine: MLCEngine) -> None:
    for messages in (WITH_SYSTEM, NOT_ALTERNATING, WITH_SYSTEM):
        with pytest.raises(BadRequestError):
            chat(engine, messages)
    out = chat(engine, USER_ONLY)
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.completion_tokens >= 1
    # Gemma 2's prompt for three turns plus the generation prompt, tokenized by whitespace:
    # "t1<start_of_turn>user" "t7" "t8<end_of_turn>" "<start_of_turn>model" "t9<end_of_turn>"
    # "<start_of_turn>user" "t10<end_of_turn>" "<start_of_turn>model".
    assert out.usage.prompt_tokens == 8
    chunks = list(chat(engine, USER_ONLY, stream=True))
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_user_prompt_is_the_gemma2_rendering(engine: MLCEngine) -> None:
    prompt = engine._render_chat(USER_ONLY, [])  # the text the tokenizer receives
    assert prompt == (
        "t1<start_of_turn>user\nt7 t8<end_of_turn>\n<start_of_turn>model\nt9<end_of_turn>\n"
        "<start_of_turn>user\nt10<end_of_turn>\n<start_of_turn>model\n"
    )


def test_async_engine_raises_the_same_error(gemma2_model: Path) -> None:
    import asyncio

    from mlc_llm import AsyncMLCEngine

    async def run(eng: Any) -> None:
        with pytest.raises(BadRequestError, match=SYSTEM_ERROR) as info:
            await eng.chat.completions.create(messages=WITH_SYSTEM, max_tokens=3, stream=True)
        assert info.value.field == "messages"
        out = await eng.chat.completions.create(messages=USER_ONLY, max_tokens=3)
        assert out.usage.completion_tokens >= 1

    eng = AsyncMLCEngine(str(gemma2_model), device="cpu", verbose=False)
    try:
        asyncio.run(run(eng))
    finally:
        eng.terminate()


@pytest.fixture(scope="module")
def server(gemma2_model: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(str(gemma2_model), "--no-access-log")
    yield proc
    proc.close()


@pytest.mark.parametrize(
    "messages,expected,stream",
    [
        (WITH_SYSTEM, SYSTEM_ERROR, False),
        (WITH_SYSTEM, SYSTEM_ERROR, True),
        (NOT_ALTERNATING, ALTERNATION_ERROR, False),
    ],
)
def test_server_answers_400_with_the_template_message(
    server: ServerProcess, messages: List[Dict[str, str]], expected: str, stream: bool
) -> None:
    body = {"messages": messages, "max_tokens": 3, "stream": stream}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 400, (r.status_code, r.text, server.log()[-2000:])
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert expected in error["message"]
    # The server keeps serving.
    ok = httpx.post(
        f"{server.url}/v1/chat/completions", json={"messages": USER_ONLY, "max_tokens": 3}, timeout=120
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_server_openai_client_gets_bad_request(server: ServerProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=WITH_SYSTEM, max_tokens=3)
    assert SYSTEM_ERROR in str(info.value)
