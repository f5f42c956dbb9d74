"""MLC's `--overrides "key=value;..."` strings as `mlc_llm chat` and `serve` parse them."""

import pytest

from mlc_llm import BadRequestError, EngineConfig
from mlc_llm.cli.overrides import engine_config_from_overrides, parse_overrides


def test_values_take_the_field_types() -> None:
    parsed = parse_overrides(" max_num_sequence=32; gpu_memory_utilization=0.85;prefix_cache_mode=disable;"
                             "quantized_matmul=true ;")
    assert parsed == {
        "max_num_sequence": 32,
        "gpu_memory_utilization": 0.85,
        "prefix_cache_mode": "disable",
        "quantized_matmul": True,
    }
    assert isinstance(parsed["max_num_sequence"], int) and isinstance(parsed["gpu_memory_utilization"], float)


def test_mlc_spellings_are_accepted() -> None:
    assert parse_overrides("max_total_seq_length=4096;max_batch_size=2") == {
        "max_total_sequence_length": 4096,
        "max_num_sequence": 2,
    }


def test_engine_config() -> None:
    assert engine_config_from_overrides(None) is None
    assert engine_config_from_overrides("  ") is None
    config = engine_config_from_overrides("prefill_chunk_size=256")
    assert isinstance(config, EngineConfig) and config.prefill_chunk_size == 256
    assert config.max_num_sequence is None


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("max_num_sequense=4", "unknown override 'max_num_sequense'"),
        ("max_num_sequence", "not of the form key=value"),
        ("max_num_sequence=four", "expected int"),
        ("quantized_matmul=maybe", "expected true or false"),
        ("model=x", "unknown override 'model'"),
    ],
)
def test_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(BadRequestError, match=fragment):
        parse_overrides(text)


def test_quantized_matmul_can_be_turned_off_from_python(smollm2_path: str) -> None:
    """EngineConfig(quantized_matmul=False) widens the GGUF weights on the CPU (its default keeps them
    quantized); None leaves the device's default."""
    from mlc_llm import MLCEngine
    from mlc_llm.serve import EngineConfig

    for choice, expected in ((None, True), (False, False), (True, True)):
        engine = MLCEngine(smollm2_path, device="cpu", engine_config=EngineConfig(quantized_matmul=choice), verbose=False)
        try:
            assert engine.info["quantized_matmul"] is expected, choice
        finally:
            engine.terminate()
