"""The Python facade (request routing, n > 1 merging, abort and cancellation, dead-engine handling)
against a scripted stand-in for `_core.Engine`, so these paths are exercised without loading a model.

The stand-in follows the contract in python/mlc_llm/_core.pyi: it "generates" the letters of the
alphabet starting at an offset derived from the seed, one token per step on its own thread.
"""

import asyncio
import gc
import json
import threading
import time
import types
from typing import Any, Dict, List, Optional

import openai.types as openai_types
import pytest

import mlc_llm
import mlc_llm._native
from mlc_llm import AsyncMLCEngine, BadRequestError, EngineDeadError, InternalError, MLCEngine
from mlc_llm.protocol.openai_api_protocol import ChatCompletion, ChatCompletionChunk, Completion



class _FakeRequest:
    def __init__(self, prompt: List[int], params: Dict[str, Any]) -> None:
        self.prompt = prompt
        self.params = params
        seed = params.get("seed")
        self.offset = (seed if seed is not None else 7) % 26
        self.generated = ""
        self.fail = "FAIL" in "".join(chr(t) for t in prompt)
        self.max_tokens = params.get("max_tokens", FakeCore.default_max_tokens)


class FakeCore:
    """A minimal engine honouring the _core.Engine contract."""

    step_s = 0.002
    default_max_tokens = 12

    def __init__(self, model: str, device: str, config_json: str) -> None:
        self.config = json.loads(config_json)
        self.model = model
        self._cv = threading.Condition()
        self._requests: Dict[str, _FakeRequest] = {}
        self._outputs: List[Dict[str, Any]] = []
        self._stopped = False
        self.aborted: List[str] = []
        self.max_batch_seen = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def info(self) -> str:
        return json.dumps({"model": "fake-model", "max_num_sequence": self.config["max_num_sequence"] or 4})

    def apply_chat_template(self, messages_json: str, add_generation_prompt: bool, tools_json: Optional[str]) -> str:
        messages = json.loads(messages_json)
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def tokenize(self, text: str, add_special_tokens: bool) -> List[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    def detokenize(self, token_ids: List[int]) -> str:
        return "".join(chr(t) for t in token_ids if t > 1)

    def add_request(self, request_id: str, prompt_token_ids: List[int], params_json: str) -> None:
        with self._cv:
            if self._stopped:
                raise EngineDeadError("stopped")
            if request_id in self._requests:
                raise BadRequestError(f"duplicate request id {request_id}", "request_id")
            self._requests[request_id] = _FakeRequest(prompt_token_ids, json.loads(params_json))

    def abort(self, request_id: str) -> None:
        with self._cv:
            if self._requests.pop(request_id, None) is not None:
                self.aborted.append(request_id)
                self._emit(request_id, "", [], None, "abort")

    def poll(self, timeout_ms: int) -> List[Dict[str, Any]]:
        with self._cv:
            if not self._outputs:
                if self._stopped:
                    raise EngineDeadError("terminated")
                self._cv.wait(timeout_ms / 1000)
            out, self._outputs = self._outputs, []
            return out

    def metrics(self) -> str:
        return json.dumps({"max_batch_size_seen": self.max_batch_seen, "num_running": len(self._requests)})

    def trace(self) -> str:
        return "[]"

    def terminate(self) -> None:
        with self._cv:
            for request_id in list(self._requests):
                self._emit(request_id, "", [], None, "abort")
            self._requests.clear()
            self._stopped = True
            self._cv.notify_all()

    def _emit(self, rid: str, text: str, ids: List[int], logprobs: Any, finish: Optional[str]) -> None:
        req = self._requests.get(rid)
        usage = None
        if finish is not None:
            usage = {"prompt_tokens": len(req.prompt) if req else 0, "completion_tokens": len(req.generated) if req else 0}
        self._outputs.append(
            {"request_id": rid, "token_ids": ids, "text": text, "logprobs": logprobs, "finish_reason": finish,
             "error": "scripted failure" if finish == "error" else None, "usage": usage}
        )
        self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            time.sleep(self.step_s)
            with self._cv:
                if self._stopped:
                    return
                self.max_batch_seen = max(self.max_batch_seen, len(self._requests))
                for rid, req in list(self._requests.items()):
                    self._step(rid, req)

    def _step(self, rid: str, req: _FakeRequest) -> None:
        if req.fail:
            self._emit(rid, "", [], None, "error")
            del self._requests[rid]
            return
        ch = chr(ord("a") + (req.offset + len(req.generated)) % 26)
        req.generated += ch
        logprobs = None
        if req.params.get("logprobs"):
            top = [{"token": "z", "logprob": -3.0, "bytes": [122]}] * req.params.get("top_logprobs", 0)
            logprobs = [{"token": ch, "logprob": -0.5, "bytes": [ord(ch)], "top_logprobs": top}]
        finish = None
        for stop in req.params.get("stop", []):
            if req.generated.endswith(stop):
                finish = "stop"
                ch = ch[: len(ch) - len(stop)] if len(stop) <= 1 else ""
        if finish is None and len(req.generated) >= req.max_tokens:
            finish = "length"
        self._emit(rid, ch, [ord(ch[0]) if ch else 0], logprobs, finish)
        if finish is not None:
            del self._requests[rid]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    made: List[FakeCore] = []

    def engine(*args: Any) -> FakeCore:
        core = FakeCore(*args)
        made.append(core)
        return core

    monkeypatch.setattr(mlc_llm._native, "_core", types.SimpleNamespace(Engine=engine))
    return types.SimpleNamespace(cores=made)


MESSAGES = [{"role": "user", "content": "hello"}]


def test_sync_stream_and_non_stream(fake: types.SimpleNamespace) -> None:
    engine = MLCEngine("fake.gguf", device="cpu", verbose=False)
    text = ""
    roles = []
    for chunk in engine.chat.completions.create(messages=MESSAGES, stream=True, seed=0):
        assert isinstance(chunk, ChatCompletionChunk)
        openai_types.chat.ChatCompletionChunk.model_validate(chunk.model_dump())
        for choice in chunk.choices:
            assert isinstance(choice.delta.content, str)
            roles.append(choice.delta.role)
            text += choice.delta.content
    assert text == "abcdefghijkl"
    # MLC's engine streams name the role in every delta (the REST server only in the first).
    assert roles and set(roles) == {"assistant"}
    response = engine.chat.completions.create(messages=MESSAGES, seed=0, model="m")
    assert isinstance(response, ChatCompletion)
    assert response.choices[0].message.content == text
    assert response.model == "m" and response.id.startswith("chatcmpl-")
    assert response.usage is not None and response.usage.completion_tokens == 12
    openai_types.chat.ChatCompletion.model_validate(response.model_dump())
    engine.terminate()
    engine.terminate()


def test_n_choices_usage_and_seeds(fake: types.SimpleNamespace) -> None:
    engine = MLCEngine("fake.gguf", device="cpu", verbose=False)
    chunks = list(
        engine.chat.completions.create(
            messages=MESSAGES, n=2, seed=3, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(len(c.choices) == 1 for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        texts[c.choices[0].index] += c.choices[0].delta.content
    assert texts == {0: "defg", 1: "efgh"}
    engine.terminate()


def test_completion_logprobs_echo_and_stop(fake: types.SimpleNamespace) -> None:
    engine = MLCEngine("fake.gguf", device="cpu", verbose=False)
    out = engine.completions.create(prompt="hi ", seed=0, logprobs=2, max_tokens=3)
    assert isinstance(out, Completion) and out.choices[0].text == "abc"
    lp = out.choices[0].logprobs
    assert lp.tokens == ["a", "b", "c"] and lp.text_offset == [0, 1, 2] and lp.top_logprobs[0] == {"z": -3.0}
    openai_types.Completion.model_validate(out.model_dump())
    echoed = engine.completions.create(prompt="hi ", seed=0, echo=True, stop=["d"])
    assert echoed.choices[0].text == "hi abc" and echoed.choices[0].finish_reason == "stop"
    chat = engine.chat.completions.create(messages=MESSAGES, seed=0, max_tokens=2, logprobs=True, top_logprobs=1)
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == ["a", "b"] and content[0].top_logprobs[0].token == "z"
    engine.terminate()


def test_duplicate_id_abort_and_closing_a_stream(fake: types.SimpleNamespace) -> None:
    engine = MLCEngine("fake.gguf", device="cpu", verbose=False)
    FakeCore.default_max_tokens = 10_000
    try:
        stream = engine.chat.completions.create(messages=MESSAGES, stream=True, request_id="r1")
        with pytest.raises(BadRequestError) as err:
            engine.chat.completions.create(messages=MESSAGES, request_id="r1")
        assert err.value.field == "request_id"
        next(iter(stream))
        engine.abort("r1")
        finishes = [c.choices[0].finish_reason for c in stream]
        assert finishes[-1] == "abort"
        early = engine.chat.completions.create(messages=MESSAGES, stream=True, n=2, request_id="r2")
        next(early)
        del early
        gc.collect()
        assert {"r2-0", "r2-1"} <= set(fake.cores[0].aborted)
    finally:
        FakeCore.default_max_tokens = 12
    assert engine.chat.completions.create(messages=MESSAGES, request_id="r1").choices[0].finish_reason == "length"
    engine.terminate()


def test_engine_error_and_dead_engine(fake: types.SimpleNamespace) -> None:
    engine = MLCEngine("fake.gguf", device="cpu", verbose=False)
    with pytest.raises(InternalError):
        engine.chat.completions.create(messages=[{"role": "user", "content": "FAIL"}])
    FakeCore.default_max_tokens = 10_000
    try:
        stream = engine.chat.completions.create(messages=MESSAGES, stream=True)
        next(stream)
        threading.Timer(0.05, engine.terminate).start()
        with pytest.raises((EngineDeadError, StopIteration)):
            for chunk in stream:
                if chunk.choices[0].finish_reason == "abort":
                    raise StopIteration
    finally:
        FakeCore.default_max_tokens = 12
    time.sleep(0.1)
    with pytest.raises(EngineDeadError):
        engine.chat.completions.create(messages=MESSAGES)


def test_async_stream_cancel_and_batching(fake: types.SimpleNamespace) -> None:
    engine = AsyncMLCEngine("fake.gguf", device="cpu", verbose=False)

    async def one(seed: int) -> str:
        text = ""
        async for chunk in await engine.chat.completions.create(messages=MESSAGES, seed=seed, stream=True):
            for choice in chunk.choices:
                text += choice.delta.content
        return text

    async def cancelled() -> None:
        FakeCore.default_max_tokens = 10_000
        try:
            stream = await engine.chat.completions.create(messages=MESSAGES, stream=True, request_id="long")
        finally:
            FakeCore.default_max_tokens = 12

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main() -> None:
        texts = await asyncio.gather(*(one(s) for s in range(4)))
        assert texts[0] == "abcdefghijkl" and texts[1] == "bcdefghijklm"
        await cancelled()
        assert "long" in fake.cores[0].aborted
        assert (await engine.metrics())["max_batch_size_seen"] >= 2
        response = await engine.completions.create(prompt="x", max_tokens=2, seed=0)
        assert response.choices[0].text == "ab"

    asyncio.run(main())
    engine.terminate()


def test_engine_argument_validation(fake: types.SimpleNamespace, tmp_path: Any) -> None:
    cases = [
        (dict(mode="fast"), "mode"),
        (dict(speculative_mode="fast"), "speculative_mode"),
        (dict(speculative_mode="eagle"), "additional_models"),
        (dict(additional_models=["draft"]), "additional_models"),
        (dict(model_lib=str(tmp_path / "missing.so")), "model_lib"),
        (dict(max_batch_size=0), "max_batch_size"),
        (dict(prefill_chunk_size=-1), "prefill_chunk_size"),
        (dict(max_total_sequence_length=1.5), "max_total_sequence_length"),
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    ]
    for kwargs, field in cases:
        with pytest.raises(BadRequestError) as err:
            MLCEngine("fake.gguf", device="cpu", verbose=False, **kwargs)
        assert err.value.field == field, kwargs
    assert not fake.cores
    lib = tmp_path / "model.so"
    lib.write_bytes(b"")
    engine = MLCEngine("fake.gguf", device="cpu", model_lib=str(lib), max_batch_size=2, verbose=False)
    assert fake.cores[0].config["max_num_sequence"] == 2
    engine.terminate()


def test_reset_trace_metrics_and_engine_config(fake: types.SimpleNamespace, tmp_path: Any) -> None:
    from mlc_llm import EngineConfig, UnsupportedError

    engine = MLCEngine(
        "fake.gguf", device="cpu", verbose=False, enable_tracing=True,
        engine_config=EngineConfig(mode="server", max_num_sequence=3, prefix_cache_mode="disable"),
    )
    config = fake.cores[0].config
    assert (config["mode"], config["max_num_sequence"], config["prefix_cache"], config["enable_tracing"]) == (
        "server", 3, False, True)
    FakeCore.default_max_tokens = 10_000
    try:
        streams = [engine.chat.completions.create(messages=MESSAGES, stream=True) for _ in range(2)]
    finally:
        FakeCore.default_max_tokens = 12
    engine.reset()
    assert [list(s)[-1].choices[0].finish_reason for s in streams] == ["abort", "abort"]
    metrics = engine.metrics()
    assert metrics.num_running == 0 and metrics.to_dict()["num_running"] == 0
    assert "# TYPE mlc_llm_num_running gauge" in metrics.prometheus_text()
    path = tmp_path / "trace.json"
    assert engine.dump_trace(str(path)) == "[]" and path.read_text() == "[]"
    engine.terminate()
    with pytest.raises(UnsupportedError) as err:
        MLCEngine("fake.gguf", verbose=False, engine_config=EngineConfig(tensor_parallel_shards=2))
    assert err.value.field == "tensor_parallel_shards"
