"""Hostile engine construction: bad arguments and corrupt model files (truncated, bit-flipped,
overwritten GGUF and safetensors fields, out-of-range config.json values, absurd sizes).

Every case must end in an exception of our hierarchy (`MLCError`: BadRequestError, UnsupportedError,
ModelLoadError, InsufficientMemoryError, ...) or, for the few edits that leave a file valid (bits
flipped in a string), in a working engine; never in a dead process, a hang or another exception
type. The cases run in a worker subprocess that reports each one as it goes, so an abort (an
allocation failure kills the process without a Python exception) is a failed case, not a dead
pytest: the worker is restarted after the case that killed it. After every case the worker checks
that a good model still loads and generates.

Run by hand: `python tests/test_hostile_engine.py` lists each case and its outcome.
"""

import json
import math
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile_files  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
GOOD_HF = FIXTURES / "models" / "llama"
GOOD_GGUF = FIXTURES / "gguf_quant" / "tiny-llama-q5_0.gguf"
CASE_TIMEOUT_S = 30.0

Case = Dict[str, Any]


# --------------------------------------------------------------------------- the cases

def _arg_cases(tmp: Path) -> Iterator[Case]:
    good = str(GOOD_HF)
    bad_args: List[Tuple[str, Any]] = [
        ("device", "tpu"), ("device", ""), ("device", "cuda:abc"), ("device", "cuda:99"), ("device", 5),
        ("device", None), ("device", "cpu\x00"),
        ("mode", "turbo"), ("mode", ""), ("mode", None), ("mode", 1), ("mode", "LOCAL"),
        ("max_batch_size", 0), ("max_batch_size", -1), ("max_batch_size", 1.5), ("max_batch_size", "4"),
        ("max_batch_size", True), ("max_batch_size", 2**40), ("max_batch_size", 2**64), ("max_batch_size", 2**70),
        ("max_total_sequence_length", 0), ("max_total_sequence_length", -1), ("max_total_sequence_length", 2**40),
        ("max_total_sequence_length", 2**63), ("max_total_sequence_length", 2**64), ("max_total_sequence_length", 2**70),
        ("max_total_sequence_length", "1"), ("max_total_sequence_length", 1.0),
        ("prefill_chunk_size", 0), ("prefill_chunk_size", -3), ("prefill_chunk_size", 2**40),
        ("prefill_chunk_size", 2**64), ("prefill_chunk_size", "x"),
        ("max_history_size", 0), ("max_history_size", -1), ("max_history_size", "x"),
        ("gpu_memory_utilization", 0), ("gpu_memory_utilization", -0.5), ("gpu_memory_utilization", 1.5),
        ("gpu_memory_utilization", math.nan), ("gpu_memory_utilization", math.inf), ("gpu_memory_utilization", "0.5"),
        ("gpu_memory_utilization", True), ("gpu_memory_utilization", 1e-300),
        ("speculative_mode", "medusa"), ("speculative_mode", "bogus"), ("speculative_mode", "small_draft"),
        ("speculative_mode", "eagle"), ("speculative_mode", None),
        ("spec_draft_length", -1), ("spec_draft_length", 1.5), ("spec_draft_length", "3"),
        ("spec_draft_length", 2**40), ("spec_draft_length", 2**70),
        ("additional_models", ["x"]), ("model_lib", "/nonexistent/lib.so"), ("model_lib", 5),
    ]
    for name, value in bad_args:
        yield {"name": f"arg {name}={value!r}", "model": good, "kwargs": {name: value}}
    spec = {"speculative_mode": "small_draft"}
    for draft in ("/nonexistent", str(tmp / "empty.gguf"), 123, None, str(GOOD_GGUF)):
        # The GGUF's vocabulary differs from the HF model's: refused as a draft.
        yield {"name": f"arg draft model {draft!r}", "model": good, "kwargs": {**spec, "additional_models": [draft]}}
    (tmp / "empty.gguf").write_bytes(b"")
    (tmp / "text.gguf").write_text("hello")
    (tmp / "no_config").mkdir()
    (tmp / "only_config").mkdir()
    (tmp / "only_config" / "config.json").write_text((GOOD_HF / "config.json").read_text())
    # A FIFO blocks whoever opens it for reading until a writer comes: once a hang for ever.
    fifo_dir = tmp / "fifo_config"
    hostile_files.write_dir_case(GOOD_HF, fifo_dir, "config.json", b"")
    (fifo_dir / "config.json").unlink()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp / "fifo.gguf")
        os.mkfifo(fifo_dir / "config.json")
        yield {"name": "model a FIFO", "model": str(tmp / "fifo.gguf"), "kwargs": {}}
        yield {"name": "model config.json a FIFO", "model": str(fifo_dir), "kwargs": {}}
    for model in ("", "/nonexistent/model", str(tmp / "no_config"), str(tmp / "only_config"), "/dev/null",
                  str(tmp / "empty.gguf"), str(tmp / "text.gguf"), 123, None, "x" * 5000, "bad\x00path"):
        # Named by the part below tmp for tmp's files: pytest's numbered base directory grows with each run,
        # and a prefix of 40 characters of the whole path once named four cases alike.
        label = str(model).replace(str(tmp), "<tmp>")[:40] if isinstance(model, str) else model
        yield {"name": f"model {label!r}", "model": model, "kwargs": {}}
    configs = [
        {"tensor_parallel_shards": 3}, {"tensor_parallel_shards": 0}, {"kv_state_kind": "rnn"}, {"prefix_cache_mode": "lru"},
        {"kv_cache_page_size": 0}, {"kv_cache_page_size": 2**40}, {"kv_cache_page_size": 2**64},
        {"max_single_sequence_length": 10}, {"sliding_window_size": 5}, {"max_num_sequence": 2**50},
    ]
    for fields in configs:
        yield {"name": f"engine_config {fields}", "model": good, "kwargs": {"engine_config": fields}}
    yield {"name": "engine_config not a config", "model": good, "kwargs": {"engine_config_raw": "fast"}}


def _file_cases(tmp: Path) -> Iterator[Case]:
    gguf = GOOD_GGUF.read_bytes()
    for i, (name, data, may_load) in enumerate(hostile_files.gguf_cases(gguf)):
        path = tmp / f"g{i}.gguf"
        path.write_bytes(data)
        yield {"name": name, "model": str(path), "kwargs": {}, "may_load": may_load}
    st = (GOOD_HF / "model.safetensors").read_bytes()
    for i, (name, data, may_load) in enumerate(hostile_files.safetensors_cases(st)):
        path = hostile_files.write_dir_case(GOOD_HF, tmp / f"st{i}", "model.safetensors", data)
        yield {"name": name, "model": str(path), "kwargs": {}, "may_load": may_load}
    config = json.loads((GOOD_HF / "config.json").read_text())
    for i, (name, edit) in enumerate(hostile_files.config_cases(config)):
        copy = json.loads(json.dumps(config))
        whole = edit(copy)
        content = whole if isinstance(whole, bytes) else json.dumps(copy).encode()
        path = hostile_files.write_dir_case(GOOD_HF, tmp / f"cfg{i}", "config.json", content)
        yield {"name": name, "model": str(path), "kwargs": {}}
    for name, content in [("tokenizer.json not JSON", b"{oops"), ("tokenizer.json empty", b""),
                          ("tokenizer.json truncated", (GOOD_HF / "tokenizer.json").read_bytes()[:5000])]:
        path = hostile_files.write_dir_case(GOOD_HF, tmp / f"tok{len(name)}{len(content)}", "tokenizer.json", content)
        yield {"name": name, "model": str(path), "kwargs": {}}


def all_cases(tmp: Path) -> List[Case]:
    cases = list(_arg_cases(tmp)) + list(_file_cases(tmp))
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


# --------------------------------------------------------------------------- the worker

def _construct(case: Case) -> str:
    """Builds the engine of `case`; returns the outcome ("ok" or the exception's class and whether
    it belongs to our hierarchy)."""
    from mlc_llm import MLCEngine
    from mlc_llm.protocol.errors import MLCError
    from mlc_llm.serve import EngineConfig

    kwargs = dict(case["kwargs"])
    if "engine_config" in kwargs:
        kwargs["engine_config"] = EngineConfig(**kwargs["engine_config"])
    if "engine_config_raw" in kwargs:
        kwargs["engine_config"] = kwargs.pop("engine_config_raw")
    kwargs.setdefault("device", "cpu")
    try:
        engine = MLCEngine(case["model"], verbose=False, **kwargs)
    except MLCError as err:
        return f"typed {type(err).__name__}: {str(err)[:160]}"
    except BaseException as err:  # noqa: BLE001 - what the suite is looking for
        return f"UNTYPED {type(err).__module__}.{type(err).__name__}: {str(err)[:160]}"
    try:
        engine.completions.create(prompt=[1, 2, 3], max_tokens=2)
        return "ok"
    except MLCError as err:
        return f"typed-at-generate {type(err).__name__}: {str(err)[:160]}"
    except BaseException as err:  # noqa: BLE001
        return f"UNTYPED-at-generate {type(err).__name__}: {str(err)[:160]}"
    finally:
        engine.terminate()


def _good_engine_works() -> bool:
    from mlc_llm import MLCEngine

    engine = MLCEngine(str(GOOD_HF), device="cpu", verbose=False)
    try:
        return engine.completions.create(prompt="t1 t2", max_tokens=2).usage.completion_tokens == 2
    finally:
        engine.terminate()


def _worker(cases_file: str, start: int) -> None:
    cases = json.loads(Path(cases_file).read_text())
    for i in range(start, len(cases)):
        print(json.dumps({"start": i}), flush=True)
        outcome = _construct(cases[i])
        good = _good_engine_works() if outcome != "ok" else True
        print(json.dumps({"case": i, "outcome": outcome, "good_after": good}), flush=True)


def run_cases(cases: List[Case], work: Path) -> List[Dict[str, Any]]:
    """Runs every case in worker subprocesses; a case during which the worker died is reported as
    `DEAD`, one that took longer than CASE_TIMEOUT_S as `HUNG` (the worker is killed), and the next
    worker starts after it."""
    cases_file = work / "cases.json"
    cases_file.write_text(json.dumps(cases))
    results: List[Optional[Dict[str, Any]]] = [None] * len(cases)
    start = 0
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    while start < len(cases):
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(cases_file), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current, hung = start, False
        while True:
            try:
                line = lines.get(timeout=CASE_TIMEOUT_S)
            except queue.Empty:
                hung = True
                proc.kill()
                break
            if line is None:
                break
            msg = json.loads(line)
            if "start" in msg:
                current = msg["start"]
            else:
                results[msg["case"]] = msg
        proc.wait()
        stderr = proc.stderr.read()[-300:] if proc.stderr else ""
        if results[current] is None:
            what = f"HUNG (over {CASE_TIMEOUT_S:.0f} s)" if hung else f"DEAD (exit {proc.returncode})"
            results[current] = {"case": current, "outcome": f"{what}: {stderr}", "good_after": False}
        start = current + 1
    return [r for r in results if r is not None]


def _pump(stream: Any, lines: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


# --------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> List[Tuple[Case, Dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("hostile")
    cases = all_cases(tmp)
    return list(zip(cases, run_cases(cases, tmp)))


def test_at_least_100_cases(outcomes: List[Tuple[Case, Dict[str, Any]]]) -> None:
    assert len(outcomes) >= 100, len(outcomes)


def test_no_dead_process_and_every_failure_typed(outcomes: List[Tuple[Case, Dict[str, Any]]]) -> None:
    bad = []
    for case, result in outcomes:
        outcome = result["outcome"]
        allowed = outcome.startswith("typed") or (outcome == "ok" and case.get("may_load", False))
        if not allowed:
            bad.append(f"{case['name']}: {outcome}")
    assert not bad, f"{len(bad)} of {len(outcomes)} cases:\n" + "\n".join(bad)


def test_the_next_good_engine_works_after_every_case(outcomes: List[Tuple[Case, Dict[str, Any]]]) -> None:
    broken = [case["name"] for case, result in outcomes if not result["good_after"]]
    assert not broken, broken


def test_absurd_sizes_are_insufficient_memory(outcomes: List[Tuple[Case, Dict[str, Any]]]) -> None:
    """Sizes are checked before anything is allocated (2**40 tokens once aborted the interpreter)."""
    by_name = {case["name"]: result["outcome"] for case, result in outcomes}
    for name in ("arg max_total_sequence_length=1099511627776", "arg prefill_chunk_size=1099511627776",
                 "arg max_batch_size=1099511627776", "engine_config {'kv_cache_page_size': 1099511627776}"):
        assert by_name[name].startswith("typed InsufficientMemoryError"), (name, by_name[name])


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]))
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            all_ = all_cases(Path(d))
            for case, result in zip(all_, run_cases(all_, Path(d))):
                print(f"{case['name'][:60]:60s} {result['outcome'][:150]}")


# --------------------------------------------------------------------------- memory sizing (CPU)

def _meminfo_bytes(key: str) -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# SmolLM2-135M: 30 layers x 3 KV heads x head_dim 64, K and V, in bytes per element of the cache (f16 on
# the CPU by default).
SMOLLM2_KV_VALUES_PER_TOKEN = 30 * 3 * 64 * 2
KV_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads /proc/meminfo")
def test_cpu_server_mode_sizes_the_kv_cache_from_available_memory(smollm2_path: str) -> None:
    """The KV cache once came from total memory (20.8 GB of 23.5 GB), more than the machine had free:
    its pages are committed as it fills, so a busy server ended OOM-killed."""
    from mlc_llm import MLCEngine

    available = _meminfo_bytes("MemAvailable")
    engine = MLCEngine(smollm2_path, device="cpu", mode="server", gpu_memory_utilization=1.0, verbose=False)
    try:
        info = engine.info
        kv_bytes = info["num_kv_blocks"] * info["kv_block_size"] * SMOLLM2_KV_VALUES_PER_TOKEN * KV_ELEMENT_BYTES[info["kv_cache_dtype"]]
        assert kv_bytes < available, (kv_bytes, available)
    finally:
        engine.terminate()


def test_prefix_cached_blocks_are_counted_apart_from_empty_ones(engine: Any) -> None:
    prompt = " ".join(f"word{i}" for i in range(60))
    engine.completions.create(prompt=prompt, max_tokens=1, temperature=0.0)
    m = engine.metrics()
    assert m["num_free_blocks"] == m["num_total_blocks"], m  # nothing running: every block is free
    assert m["num_cached_blocks"] >= 2, m  # ... but the prompt's full blocks stay cached
    assert m["num_empty_blocks"] + m["num_cached_blocks"] == m["num_free_blocks"], m
    assert m["num_used_blocks"] == 0, m
