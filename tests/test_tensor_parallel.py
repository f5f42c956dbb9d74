"""`tensor_parallel_shards` (MLC's EngineConfig field and `--overrides` key) through the Python API.

On the CPU the model runs split over in-process ranks (the core's sharded model; its math is checked
against the unsharded model for every architecture in rust/core/tests/tensor_parallel.rs) and gives the
unsharded engine's completions; on a GPU device it is refused by name (no NCCL ranks yet), as is a shard
count the model cannot be split into.
"""

from pathlib import Path

import pytest

from mlc_llm import MLCEngine
from mlc_llm.cli.overrides import engine_config_from_overrides
from mlc_llm.protocol.errors import BadRequestError, UnsupportedError
from mlc_llm.serve import EngineConfig

# 4 query heads, 2 KV heads: 4 shards keep each KV head on 2 ranks.
LLAMA = str(Path(__file__).parent / "fixtures" / "models" / "llama")
PROMPTS = [[815, 723, 1318, 1077, 1228, 1396, 664], [2041, 1679, 689, 279, 1257, 1178, 30, 1707]]


def _complete(config: EngineConfig) -> list:
    engine = MLCEngine(LLAMA, device="cpu", verbose=False, engine_config=config)
    try:
        outs = []
        for prompt in PROMPTS:
            r = engine.completions.create(prompt=prompt, max_tokens=12, temperature=0.0, logprobs=1)
            choice = r.choices[0]
            outs.append((choice.text, choice.logprobs.token_logprobs, r.usage.completion_tokens))
        return outs
    finally:
        engine.terminate()


def test_cpu_shards_give_the_unsharded_completions() -> None:
    # The shards keep an f32 KV cache (each rank's cache is in the compute dtype); one engine's default is f16.
    whole = _complete(EngineConfig(kv_cache_dtype="float32"))
    assert all(n > 0 and len(lp) == n for _, lp, n in whole)
    for config in (EngineConfig(tensor_parallel_shards=2), engine_config_from_overrides("tensor_parallel_shards=4")):
        for (text, logprobs, n), (want_text, want_logprobs, want_n) in zip(_complete(config), whole):
            assert (text, n) == (want_text, want_n), config.tensor_parallel_shards
            assert logprobs == pytest.approx(want_logprobs, rel=1e-4, abs=1e-5)


def test_shard_counts_that_cannot_work_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedError) as gpu:
        MLCEngine(LLAMA, device="cuda:0", verbose=False, engine_config=EngineConfig(tensor_parallel_shards=2))
    assert gpu.value.field == "tensor_parallel_shards" and "cpu" in str(gpu.value)
    for shards, why in ((3, "num_attention_heads 4"), (8, "num_attention_heads 4"), (0, "positive")):
        with pytest.raises(BadRequestError) as err:
            MLCEngine(LLAMA, device="cpu", verbose=False, engine_config=EngineConfig(tensor_parallel_shards=shards))
        assert err.value.field == "tensor_parallel_shards" and why in str(err.value), str(err.value)
