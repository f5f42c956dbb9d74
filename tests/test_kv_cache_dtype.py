"""`kv_cache_dtype` (vLLM's engine option; not in MLC): "auto" is f16 on the CPU; "float32" / "f32" keeps
an f32 cache, "float16" / "f16" asks for f16; "fp8_e4m3" / "fp8" store K and V as e4m3 with one scale per
token and KV head. Their fidelity on SmolLM2 is measured in rust/core/tests/smollm2_gguf.rs; here, the
Python API: the option reaches the core (the cache's type, the answer with a wide margin is kept), bad
values are refused by name.
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
    assert (info["kv_cache_dtype"], fp8_info["kv_cache_dtype"]) == ("float16", "float8_e4m3")


@pytest.mark.parametrize("name, dtype", [("f32", "float32"), ("float32", "float32"), ("f16", "float16"), ("float16", "float16"), ("auto", "float16")])
def test_16_and_32_bit_caches_on_the_cpu(smollm2_path: str, name: str, dtype: str) -> None:
    text, info = _answer_and_cache(smollm2_path, EngineConfig(max_total_sequence_length=1024, kv_cache_dtype=name))
    assert "Tokyo" in text and info["kv_cache_dtype"] == dtype


def test_an_f16_cache_holds_twice_the_tokens_of_an_f32_one(smollm2_path: str) -> None:
    sizes = {}
    for name in ("f32", "auto"):
        engine = MLCEngine(smollm2_path, device="cpu", mode="server", verbose=False, engine_config=EngineConfig(kv_cache_dtype=name, gpu_memory_utilization=0.05))
        try:
            sizes[name] = engine.info["max_total_sequence_length"]
        finally:
            engine.terminate()
    assert sizes["auto"] >= 1.9 * sizes["f32"], sizes


@pytest.mark.parametrize("bad", ["fp16", "int8", "e5m2"])
def test_unknown_kv_cache_dtype_is_refused_by_name(smollm2_path: str, bad: str) -> None:
    with pytest.raises(BadRequestError, match="kv_cache_dtype"):
        MLCEngine(smollm2_path, device="cpu", verbose=False, engine_config=EngineConfig(kv_cache_dtype=bad))
