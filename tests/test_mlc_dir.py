"""Serving an MLC model directory: the conversation template of mlc-chat-config.json builds the chat prompt
(and its stop strings and stop token ids end the answer), the config's sampling defaults apply, and `model`
may name the directory or its mlc-chat-config.json. The model is the tiny random Llama converted to q0f32;
its word-level tokenizer spells token i as "t<i>", so prompts and stops are written in those words."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from mlc_llm import MLCEngine, ModelLoadError

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "llama"
REPO = Path(__file__).parent.parent

# A template in MLC's JSON form whose every piece is a word of the tokenizer, so the prompt it renders is
# known word for word: system_template, roles, role_content_sep, seps (two: after user / after assistant).
CONV = {
    "name": "test_words",
    "system_template": "t5 {system_message} t6",
    "system_message": "t7",
    "roles": {"user": "t10", "assistant": "t11"},
    "seps": [" t12 ", " t13 "],
    "role_content_sep": " t14 ",
    "role_empty_sep": " t15",
    "stop_str": [],
    "stop_token_ids": [],
}
MESSAGES = [
    {"role": "system", "content": "t100 t101"},
    {"role": "user", "content": "t200"},
    {"role": "assistant", "content": "t300"},
    {"role": "user", "content": "t201 t202"},
]
# MLC's as_prompt: system, then role + role_content_sep + content + seps[i % 2], then the empty assistant turn.
EXPECTED_PROMPT = "t5 t100 t101 t6t10 t14 t200 t12 t11 t14 t300 t13 t10 t14 t201 t202 t12 t11 t15"


def mlc_llm(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlcdir") / "llama-q0f32-MLC"
    mlc_llm("convert_weight", str(FIXTURE), "--quantization", "q0f32", "-o", str(out))
    mlc_llm("gen_config", str(FIXTURE), "--quantization", "q0f32", "--conv-template", "chatml", "-o", str(out))
    return out


def with_chat_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    path = dst / "mlc-chat-config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return dst


def greedy_chat(engine: MLCEngine, messages: List[Dict[str, str]], **kw: Any) -> Any:
    return engine.chat.completions.create(messages=messages, temperature=0, max_tokens=8, **kw)


def greedy_completion(engine: MLCEngine, prompt: str) -> Any:
    return engine.completions.create(prompt=prompt, temperature=0, max_tokens=8)


def test_conv_template_object_builds_the_prompt_and_stops(model_dir: Path, tmp_path: Path) -> None:
    d = with_chat_config(model_dir, tmp_path / "m", conv_template=CONV)
    engine = MLCEngine(str(d / "mlc-chat-config.json"), device="cpu")
    try:
        chat = greedy_chat(engine, MESSAGES)
        plain = greedy_completion(engine, EXPECTED_PROMPT)
        assert chat.usage.prompt_tokens == len(EXPECTED_PROMPT.split()) == plain.usage.prompt_tokens
        # Same prompt ids -> the same greedy continuation.
        assert chat.choices[0].message.content == plain.choices[0].text
        words = plain.choices[0].text.split()
        assert len(words) >= 4
    finally:
        engine.terminate()

    # The template's stop string and stop token id end the answer before the word / token.
    stop_word, stop_id = words[2], int(words[3][1:])
    d2 = with_chat_config(model_dir, tmp_path / "m2", conv_template={**CONV, "stop_str": [stop_word]})
    engine = MLCEngine(str(d2), device="cpu")
    try:
        out = greedy_chat(engine, MESSAGES)
        assert out.choices[0].finish_reason == "stop"
        assert out.choices[0].message.content.split() == words[:2]
    finally:
        engine.terminate()
    d3 = with_chat_config(model_dir, tmp_path / "m3", conv_template={**CONV, "stop_token_ids": [stop_id]})
    engine = MLCEngine(str(d3), device="cpu")
    try:
        out = greedy_chat(engine, MESSAGES)
        assert out.choices[0].finish_reason == "stop"
        assert out.choices[0].message.content.split() == words[:3]
    finally:
        engine.terminate()


def test_template_by_name_and_config_defaults(model_dir: Path, tmp_path: Path) -> None:
    d = with_chat_config(model_dir, tmp_path / "m", conv_template="chatml", temperature=0.25, top_p=0.5, repetition_penalty=1.5)
    engine = MLCEngine(str(d), device="cpu")
    try:
        defaults = engine.info["generation_defaults"]
        assert defaults["temperature"] == 0.25 and defaults["top_p"] == 0.5 and defaults["repetition_penalty"] == 1.5
        # A built-in template by name renders the chat (chatml: role markers around each turn).
        out = engine.chat.completions.create(messages=[{"role": "user", "content": "t1"}], max_tokens=4, seed=1)
        assert out.usage.prompt_tokens > 1
    finally:
        engine.terminate()


def test_bad_conv_template_names_the_field(model_dir: Path, tmp_path: Path) -> None:
    d = with_chat_config(model_dir, tmp_path / "m", conv_template={**CONV, "seps": "t12"})
    with pytest.raises(ModelLoadError, match="conv_template"):
        MLCEngine(str(d), device="cpu")
