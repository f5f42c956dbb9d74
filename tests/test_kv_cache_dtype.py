"""`kv_cache_dtype` (vLLM's engine option; not in MLC): "fp8_e4m3" / "fp8" store K and V as e4m3 with one
scale per token and KV head. Its fidelity on SmolLM2 is measured in rust/core/tests/smollm2_gguf.rs; here,
the Python API: the option reaches the core (the cache is smaller, the answer with a wide margin is kept),
bad values are refused by name.
"""

import pytest

from mlc_llm import MLCEngine
from mlc_llm.cli.overrides import engine_config_from_overrides
from mlc_llm.protocol.errors import BadRequestError
from mlc_llm.serve import EngineConfig

QUESTION = [{"role": "user", "content": "What is the capital of Japan? Answer in one sentence."}]


def _answer_and_cache(path: str, config: EngineConfig) -> tuple:
    engine = MLCEngine(path, device="cpu", verbose=False, engine_config=config)
    try:
        r = engine.chat.completions.create(messages=QUESTION, max_tokens=12, temperature=0.0)
        return r.choices[0].message.content, engine.info
    finally:
        engine.terminate()


def test_fp8_cache_keeps_the_answer(smollm2_path: str) -> None:
    text, info = _answer_and_cache(smollm2_path, EngineConfig(max_total_sequence_length=1024))
    fp8_text, fp8_info = _answer_and_cache(smollm2_path, engine_config_from_overrides("max_total_sequence_length=1024;kv_cache_dtype=fp8"))
    assert "Tokyo" in text and "Tokyo" in fp8_text
    assert (info["kv_cache_dtype"], fp8_info["kv_cache_dtype"]) == ("float32", "float8_e4m3")


@pytest.mark.parametrize("bad", ["fp16", "int8", "e5m2"])
def test_unknown_kv_cache_dtype_is_refused_by_name(smollm2_path: str, bad: str) -> None:
    with pytest.raises(BadRequestError, match="kv_cache_dtype"):
        MLCEngine(smollm2_path, device="cpu", verbose=False, engine_config=EngineConfig(kv_cache_dtype=bad))
