"""Property-based engine arguments (hypothesis): any mix of values of any type for MLCEngine's keyword
arguments and EngineConfig's fields ends in a working engine (it answers a request) or an exception of our
hierarchy (MLCError), never another exception type or a dead process. The examples run in a subprocess, so
an abort is a failed test rather than a dead pytest; tests/test_hostile_engine.py lists hand-picked cases."""

import subprocess
import sys
from pathlib import Path

GOOD_HF = Path(__file__).parent / "fixtures" / "models" / "llama"

SCRIPT = r"""
import math, sys
from hypothesis import HealthCheck, given, settings, strategies as st
from mlc_llm import MLCEngine
from mlc_llm.protocol.errors import MLCError
from mlc_llm.serve import EngineConfig

MODEL = sys.argv[1]
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
sizes = st.one_of(st.integers(0, 4096), st.sampled_from([2**31, 2**32, 2**40, 2**63, 2**64]), anything)
kwargs = st.fixed_dictionaries({}, optional={
    "mode": st.one_of(st.sampled_from(["local", "interactive", "server"]), anything),
    "max_batch_size": sizes, "max_total_sequence_length": sizes, "prefill_chunk_size": sizes,
    "max_history_size": sizes, "spec_draft_length": sizes,
    "gpu_memory_utilization": st.one_of(st.floats(0, 1), anything),
    "speculative_mode": st.one_of(st.sampled_from(["disable", "ngram", "small_draft", "eagle", "medusa"]), anything),
    "enable_tracing": anything, "device": st.one_of(st.sampled_from(["cpu", "auto", "cuda:7"]), anything),
    "additional_models": anything,
})
config = st.fixed_dictionaries({}, optional={
    "kv_cache_page_size": sizes, "max_num_sequence": sizes, "max_total_sequence_length": sizes,
    "prefill_chunk_size": sizes, "prefix_cache_mode": st.one_of(st.sampled_from(["radix", "disable"]), anything),
    "tensor_parallel_shards": sizes, "quantized_matmul": anything, "cuda_graph": anything,
})
seen = {"ok": 0, "typed": 0}

@settings(max_examples=int(sys.argv[2]), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(kwargs, st.one_of(st.none(), config))
def check(kw, cfg):
    kw = dict(kw)
    kw.setdefault("device", "cpu")
    if kw["device"] in ("auto",):
        kw["device"] = "cpu"
    try:
        engine = MLCEngine(MODEL, engine_config=None if cfg is None else EngineConfig(**cfg), verbose=False, **kw)
    except MLCError:
        seen["typed"] += 1
        return
    try:
        out = engine.completions.create(prompt=[1, 2, 3], max_tokens=2)
        assert out.usage.completion_tokens == 2
        seen["ok"] += 1
    except MLCError:
        seen["typed"] += 1
    finally:
        engine.terminate()

check()
print(seen)
assert seen["ok"] > 0 and seen["typed"] > 0, seen
"""


def test_any_engine_arguments_end_in_an_engine_or_a_typed_error() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(GOOD_HF), "300"], capture_output=True, text=True, timeout=900)
    print(done.stdout[-500:])
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
