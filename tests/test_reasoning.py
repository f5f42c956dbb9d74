"""Reasoning models: the <think> parser and the chat response builder fed recorded model output
(Qwen3 opening <think> itself, DeepSeek-R1 whose template opens it, Qwen3 with thinking switched
off), streamed and not, with and without a tool call after the thinking; history stripping."""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import openai
import pytest

from mlc_llm.protocol.openai_api_protocol import ChatCompletionRequest, parse_request
from mlc_llm.serve.engine_base import _message_for_template
from mlc_llm.serve.harmony import HarmonyTokens
from mlc_llm.serve.reasoning import (
    ReasoningStream,
    knows_think_tags,
    split_reasoning,
    starts_in_reasoning,
    strip_history,
)
from mlc_llm.serve.responses import ChatResponseBuilder

# Token pieces as the engine's detokenizer delivers them (one delta per token).
QWEN3_THINKING = ["<think>", "\n", "The", " user", " asks", " for", " France", "'s", " capital", ".", "\n",
                  "</think>", "\n\n", "The", " capital", " is", " Paris", "."]
QWEN3_TOOL = ["<think>", "\n", "I", " should", " call", " the", " tool", ".", "\n", "</think>", "\n\n",
              "<tool_call>", "\n", '{"name": "get_weather", ', '"arguments": {"city": ', '"Paris"}}', "\n",
              "</tool_call>"]
# DeepSeek-R1's template ends the prompt with "<think>\n": the answer starts inside the thinking.
R1_THINKING = ["Paris", " is", " the", " capital", ".", "\n", "</", "think", ">", "\n\n", "Paris", "."]
QWEN3_NO_THINK = ["Paris", "."]

PROMPTS = {
    "qwen3": "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n",
    "r1": "<｜User｜>Capital of France?<｜Assistant｜><think>\n",
    "qwen3_nothink": "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
}


def test_starts_in_reasoning_reads_the_prompt() -> None:
    assert not starts_in_reasoning(PROMPTS["qwen3"])
    assert starts_in_reasoning(PROMPTS["r1"])
    assert not starts_in_reasoning(PROMPTS["qwen3_nothink"])
    assert not starts_in_reasoning("<|im_start|>user\nWhat does <think> mean?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("pieces,in_reasoning,reasoning,content", [
    (QWEN3_THINKING, False, "The user asks for France's capital.\n", "The capital is Paris."),
    (R1_THINKING, True, "Paris is the capital.\n", "Paris."),
    (QWEN3_NO_THINK, False, None, "Paris."),
    (QWEN3_THINKING[:6], False, "The user asks for", ""),  # cut off by max_tokens while thinking
    (["<thin", "king", " is fun"], False, None, "<thinking is fun"),  # not a tag after all
])
def test_split_whole_and_streamed_agree(
    pieces: List[str], in_reasoning: bool, reasoning: Optional[str], content: str
) -> None:
    whole = split_reasoning("".join(pieces), in_reasoning)
    assert (whole.reasoning, whole.content) == (reasoning, content)
    stream = ReasoningStream(in_reasoning)
    got: List[Tuple[str, str]] = [stream.push(p) for p in pieces] + [stream.finish()]
    assert "".join(r for r, _ in got) == (reasoning or "") and "".join(c for _, c in got) == content
    # Nothing of a tag ever leaks into either part.
    assert all("</" not in r and "<think>" not in c for r, c in got)


def test_knows_think_tags_by_single_tokens() -> None:
    vocab = {"<think>": [151667], "</think>": [151668]}
    words = {151667: "<think>", 151668: "</think>"}
    assert knows_think_tags(lambda text: vocab.get(text, [1, 2, 3]), lambda ids: "".join(words[i] for i in ids))
    assert not knows_think_tags(lambda text: [ord(c) for c in text], lambda ids: "".join(map(chr, ids)))
    # A word-level tokenizer spells every unknown word as one id, which does not spell the tag back.
    assert not knows_think_tags(lambda text: [0], lambda ids: "<unk>")


# ------------------------------------------------------------------------------------- the builder


def _deltas(pieces: List[str], finish: str = "stop") -> List[Dict[str, Any]]:
    last = len(pieces) - 1
    return [
        {"request_id": "r", "token_ids": [7], "text": p, "logprobs": None, "error": None,
         "finish_reason": finish if i == last else None,
         "usage": {"prompt_tokens": 9, "completion_tokens": len(pieces)} if i == last else None}
        for i, p in enumerate(pieces)
    ]


def _build(pieces: List[str], in_reasoning: bool, stream: bool, tools: bool = False) -> Any:
    builder = ChatResponseBuilder(
        response_id="chatcmpl-r", model="m", created=1, engine_ids=["r"], prompt_tokens=9, stream=stream,
        include_usage=True, logprobs=False, parse_tools=tools, reasoning=in_reasoning,
    )
    chunks = [chunk for d in _deltas(pieces) for chunk in builder.on_delta(d)]
    return chunks if stream else builder.response()


def _assemble(chunks: List[Any]) -> Dict[str, Any]:
    """What a client accumulating the stream sees (validating each chunk as the SDK's type)."""
    out: Dict[str, Any] = {"reasoning": "", "content": "", "tool_calls": {}, "finish": None, "usage": None}
    for chunk in chunks:
        sdk = openai.types.chat.ChatCompletionChunk.model_validate(chunk.model_dump())
        out["usage"] = sdk.usage or out["usage"]
        for choice in sdk.choices:
            extra = choice.delta.model_extra or {}
            assert extra.get("reasoning_content") == extra.get("reasoning")
            out["reasoning"] += extra.get("reasoning_content") or ""
            out["content"] += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = out["tool_calls"].setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            out["finish"] = choice.finish_reason or out["finish"]
    return out


@pytest.mark.parametrize("pieces,in_reasoning", [(QWEN3_THINKING, False), (R1_THINKING, True)])
def test_thinking_goes_to_reasoning_content(pieces: List[str], in_reasoning: bool) -> None:
    response = _build(pieces, in_reasoning, stream=False)
    sdk = openai.types.chat.ChatCompletion.model_validate(response.model_dump())
    message = sdk.choices[0].message
    expected = split_reasoning("".join(pieces), in_reasoning)
    assert message.content == expected.content and "think>" not in (message.content or "")
    assert (message.model_extra or {})["reasoning_content"] == expected.reasoning
    assert (message.model_extra or {})["reasoning"] == expected.reasoning
    # Every token up to and including </think> is a reasoning token.
    thinking_tokens = pieces.index("</think>") + 1 if "</think>" in pieces else pieces.index(">") + 1
    assert sdk.usage is not None and sdk.usage.completion_tokens_details is not None
    assert sdk.usage.completion_tokens_details.reasoning_tokens == thinking_tokens

    streamed = _assemble(_build(pieces, in_reasoning, stream=True))
    assert (streamed["reasoning"], streamed["content"]) == (expected.reasoning, expected.content)
    assert streamed["finish"] == "stop"
    assert streamed["usage"].completion_tokens_details.reasoning_tokens == thinking_tokens


def test_tool_call_after_thinking_is_parsed() -> None:
    response = _build(QWEN3_TOOL, False, stream=False, tools=True)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.reasoning_content == "I should call the tool.\n"
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(str(choice.message.tool_calls[0].function.arguments)) == {"city": "Paris"}

    streamed = _assemble(_build(QWEN3_TOOL, False, stream=True, tools=True))
    assert streamed["reasoning"] == "I should call the tool.\n" and streamed["content"] == ""
    assert streamed["finish"] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed["tool_calls"].values()] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_answer_without_thinking_has_no_reasoning_fields() -> None:
    response = _build(QWEN3_NO_THINK, False, stream=False)
    assert response.choices[0].message.content == "Paris." and response.choices[0].message.reasoning_content is None
    assert response.usage.completion_tokens_details == {"reasoning_tokens": 0}
    plain = ChatResponseBuilder(response_id="x", model="m", created=1, engine_ids=["r"], prompt_tokens=9,
                                stream=False, include_usage=False, logprobs=False)
    for d in _deltas(QWEN3_THINKING):
        plain.on_delta(d)
    # A model that does not think in tags keeps its text as it is.
    assert plain.response().choices[0].message.content == "".join(QWEN3_THINKING)
    assert plain.response().usage.completion_tokens_details is None


# ------------------------------------------------------------------------------------------ history


def test_reasoning_is_stripped_from_history() -> None:
    request = parse_request(ChatCompletionRequest, {"messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nParis.", "reasoning_content": "Easy."},
        {"role": "assistant", "content": "Hmm.\n</think>\n\nRome.", "reasoning": "Hmm."},
        {"role": "user", "content": "And <think> of Italy?"},
    ]})
    messages = strip_history([_message_for_template(m) for m in request.messages])
    assert [m["content"] for m in messages] == ["Capital of France?", "Paris.", "Rome.", "And <think> of Italy?"]
    assert all("reasoning_content" not in m and "reasoning" not in m for m in messages)


# ------------------------------------------------------------------------------ chat_template_kwargs

# Qwen3's switch, cut down: without thinking, the generation prompt carries an empty thinking block.
QWEN3_LIKE_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> "
    "{% if enable_thinking is defined and enable_thinking is false %}<think> </think> {% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def templated_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from mlc_llm import MLCEngine

    llama = Path(__file__).parent / "fixtures" / "models" / "llama"
    model = tmp_path_factory.mktemp("kwargs") / "llama-qwen3-like"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(llama / name, model / name)
    config = {"bos_token": "t1", "eos_token": "t2", "add_bos_token": False, "chat_template": QWEN3_LIKE_TEMPLATE}
    (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    engine = MLCEngine(str(model), device="cpu", verbose=False)
    yield engine
    engine.terminate()


def test_chat_template_kwargs_reach_the_template(templated_engine: Any) -> None:
    def prompt_tokens(**kwargs: Any) -> int:
        response = templated_engine.chat.completions.create(
            messages=[{"role": "user", "content": "t5 t6"}], max_tokens=1, **kwargs
        )
        return int(response.usage.prompt_tokens)

    thinking = prompt_tokens()
    assert prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": True}}) == thinking
    # "<think> </think>" are two more words of the prompt.
    assert prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": False}}) == thinking + 2
    from mlc_llm import BadRequestError

    with pytest.raises(BadRequestError) as err:
        prompt_tokens(extra_body={"chat_template_kwargs": {"messages": []}})
    assert err.value.field == "chat_template_kwargs"


def test_a_grammar_turns_the_split_off(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced call is constrained from its first token, even where the template opened a thinking
    block (SmolLM2 taken for a thinking model whose prompt opens one)."""
    from mlc_llm.serve import engine_base

    monkeypatch.setattr(engine, "_thinking", ("think",))
    monkeypatch.setattr(engine_base, "starts_in_reasoning", lambda prompt: True)
    tool = {"type": "function", "function": {"name": "answer", "parameters": {
        "type": "object", "properties": {"text": {"type": "string", "maxLength": 8}}, "required": ["text"]}}}
    response = engine.chat.completions.create(
        messages=[{"role": "user", "content": "Answer"}], tools=[tool], tool_choice="required", max_tokens=40,
        temperature=0.0,
    )
    message = response.choices[0].message
    assert message.tool_calls and message.reasoning_content is None
    # Without a grammar the same prompt's answer is all thinking (it never closed the block).
    plain = engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert plain.choices[0].message.content == "" and plain.choices[0].message.reasoning_content
    assert plain.usage.completion_tokens_details == {"reasoning_tokens": plain.usage.completion_tokens}


# ------------------------------------------------------------------------------ gpt-oss (Harmony)

HARMONY = HarmonyTokens(start=200006, channel=200005, message=200008, end=200007, return_=200002, call=200012,
                        constrain=200003)
_MARK = {"<|start|>": 200006, "<|channel|>": 200005, "<|message|>": 200008, "<|end|>": 200007,
         "<|return|>": 200002, "<|call|>": 200012, "<|constrain|>": 200003}

# gpt-oss output one token per delta: markers are special tokens (no text), the rest text.
GPT_OSS_ANSWER = ["<|channel|>", "analysis", "<|message|>", "User", " asks", " the", " capital", ".", "<|end|>",
                  "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "Paris", ".", "<|return|>"]
GPT_OSS_CALL = ["<|channel|>", "analysis", "<|message|>", "Need", " weather", ".", "<|end|>", "<|start|>",
                "assistant", "<|channel|>", "commentary", " to", "=functions", ".get", "_weather", " ",
                "<|constrain|>", "json", "<|message|>", '{"', "city", '":"', "Paris", '"}', "<|call|>"]


def _harmony_deltas(pieces: List[str]) -> List[Dict[str, Any]]:
    deltas = _deltas(pieces)
    for d, piece in zip(deltas, pieces):
        d["token_ids"] = [_MARK.get(piece, 1000 + len(piece))]
        d["text"] = "" if piece in _MARK else piece
    return deltas


def _harmony_build(pieces: List[str], stream: bool) -> Any:
    builder = ChatResponseBuilder(
        response_id="chatcmpl-h", model="m", created=1, engine_ids=["r"], prompt_tokens=9, stream=stream,
        include_usage=True, logprobs=False, parse_tools=True, reasoning=HARMONY,
    )
    chunks = [chunk for d in _harmony_deltas(pieces) for chunk in builder.on_delta(d)]
    return chunks if stream else builder.response()


def test_harmony_tokens_are_found_only_as_single_tokens() -> None:
    assert HarmonyTokens.of(lambda text: [_MARK[text]] if text in _MARK else [1, 2]) == HARMONY
    assert HarmonyTokens.of(lambda text: [ord(c) for c in text]) is None
    assert HarmonyTokens.of(lambda text: [0]) is None  # a word-level tokenizer's unknown word


def test_harmony_analysis_is_reasoning_and_final_is_content() -> None:
    message = _harmony_build(GPT_OSS_ANSWER, stream=False).choices[0].message
    assert (message.reasoning_content, message.content) == ("User asks the capital.", "Paris.")
    streamed = _assemble(_harmony_build(GPT_OSS_ANSWER, stream=True))
    assert (streamed["reasoning"], streamed["content"], streamed["finish"]) == ("User asks the capital.", "Paris.", "stop")
    # <|message|> .. <|end|> of the analysis channel: its five text tokens and both markers.
    assert streamed["usage"].completion_tokens_details.reasoning_tokens == 7


@pytest.mark.parametrize("pieces", [GPT_OSS_CALL, GPT_OSS_CALL[:-1]], ids=["call-token", "call-as-stop"])
def test_harmony_commentary_to_a_function_is_a_tool_call(pieces: List[str]) -> None:
    choice = _harmony_build(pieces, stream=False).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.reasoning_content == "Need weather."
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(str(choice.message.tool_calls[0].function.arguments)) == {"city": "Paris"}
    streamed = _assemble(_harmony_build(pieces, stream=True))
    assert streamed["reasoning"] == "Need weather." and streamed["finish"] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed["tool_calls"].values()] == [
        ("get_weather", {"city": "Paris"})
    ]
