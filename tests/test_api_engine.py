"""End-to-end behaviour of MLCEngine / AsyncMLCEngine on the real SmolLM2-135M-Instruct (CPU).

The engines are session fixtures (tests/conftest.py): `engine` is an MLCEngine in local mode,
`async_engine` an AsyncMLCEngine in server mode with 8 sequences.
"""

import asyncio
import json
import time
from typing import Any, Dict, List

import openai.types
import openai.types.chat
import pytest

from mlc_llm import AsyncMLCEngine, BadRequestError, EngineDeadError, MLCEngine

QUESTION = [{"role": "user", "content": "What is the meaning of life?"}]
LONG = {"max_tokens": 400, "extra_body": {"ignore_eos": True}}


def chat_text(chunks: List[Any]) -> str:
    return "".join(choice.delta.content for chunk in chunks for choice in chunk.choices)


def wait_until_idle(engine: MLCEngine, timeout_s: float = 10.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = engine.metrics()
        if metrics["num_running"] == 0 and metrics["num_waiting"] == 0:
            return metrics.to_dict()
        assert time.monotonic() < deadline, f"engine still busy: {metrics}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- the seed's examples


def test_seed_example_sync_stream(engine: MLCEngine, smollm2_path: str) -> None:
    chunks = []
    for response in engine.chat.completions.create(messages=QUESTION, model=smollm2_path, stream=True, max_tokens=24):
        for choice in response.choices:
            assert isinstance(choice.delta.content, str)  # the example prints it with end=""
        openai.types.chat.ChatCompletionChunk.model_validate(response.model_dump())
        chunks.append(response)
    assert chat_text(chunks).strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.model == smollm2_path and c.id == chunks[0].id for c in chunks)
    assert chunks[0].id.startswith("chatcmpl-")


def test_seed_example_non_stream(engine: MLCEngine, smollm2_path: str) -> None:
    response = engine.chat.completions.create(messages=QUESTION, model=smollm2_path, stream=False, max_tokens=24)
    sdk = openai.types.chat.ChatCompletion.model_validate(response.model_dump())
    assert sdk.choices[0].message.content.strip()
    assert sdk.choices[0].message.role == "assistant"
    assert sdk.usage is not None and sdk.usage.prompt_tokens > 0
    assert 0 < sdk.usage.completion_tokens <= 24
    assert sdk.usage.total_tokens == sdk.usage.prompt_tokens + sdk.usage.completion_tokens
    assert isinstance(sdk.created, int) and sdk.model == smollm2_path
    print(response)  # the example prints the response object


def test_seed_example_async_stream(async_engine: AsyncMLCEngine, smollm2_path: str) -> None:
    prompts = ["Write a three-day travel plan to Pittsburgh.", "What is the meaning of life?"]
    outputs: Dict[str, str] = {}

    async def generate(prompt: str) -> None:
        async for response in await async_engine.chat.completions.create(
            messages=[{"role": "user", "content": prompt}], model=smollm2_path, stream=True, max_tokens=24
        ):
            outputs.setdefault(response.id, "")
            outputs[response.id] += response.choices[0].delta.content

    async def main() -> None:
        await asyncio.gather(*(asyncio.create_task(generate(p)) for p in prompts))

    asyncio.run(main())
    assert len(outputs) == 2 and all(text.strip() for text in outputs.values())


# --------------------------------------------------------------------------- sampling options


def test_n2_non_stream_and_stream(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(messages=QUESTION, n=2, seed=11, temperature=1.0, max_tokens=12)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens <= 24 and response.usage.completion_tokens >= 2
    openai.types.chat.ChatCompletion.model_validate(response.model_dump())

    chunks = list(
        engine.chat.completions.create(
            messages=QUESTION, n=2, seed=11, temperature=1.0, max_tokens=12, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(len(c.choices) == 1 for c in chunks[:-1])
    texts = ["", ""]
    finished = [None, None]
    for c in chunks[:-1]:
        choice = c.choices[0]
        texts[choice.index] += choice.delta.content
        finished[choice.index] = choice.finish_reason or finished[choice.index]
    assert texts == [c.message.content for c in response.choices]  # same seeds, same texts
    assert None not in finished
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == response.usage.completion_tokens
    assert usage.prompt_tokens == response.usage.prompt_tokens


def test_stream_options_include_usage(engine: MLCEngine) -> None:
    with_usage = list(
        engine.chat.completions.create(
            messages=QUESTION, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in with_usage[:-1])
    without = list(engine.chat.completions.create(messages=QUESTION, max_tokens=6, stream=True))
    assert all(c.usage is None and c.choices for c in without)


def test_logprobs_with_top_logprobs(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(
        messages=QUESTION, max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 8
    for entry in content:
        assert entry.logprob <= 0.0 and 1 <= len(entry.top_logprobs) <= 3
        # Greedy: the sampled token is the most likely one.
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-4
        assert entry.bytes is not None
    openai.types.chat.ChatCompletion.model_validate(response.model_dump())

    completion = engine.completions.create(prompt="The capital of France is", max_tokens=5, temperature=0.0, logprobs=2)
    legacy = completion.choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.text_offset) == 5
    assert all(len(top) <= 2 for top in legacy.top_logprobs)
    openai.types.Completion.model_validate(completion.model_dump())


def test_stop_strings(engine: MLCEngine) -> None:
    free = engine.chat.completions.create(messages=QUESTION, max_tokens=30, temperature=0.0)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) >= 4, text
    stop = " " + words[2]
    assert stop in text
    stopped = engine.chat.completions.create(messages=QUESTION, max_tokens=30, temperature=0.0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    streamed = list(engine.chat.completions.create(messages=QUESTION, max_tokens=30, temperature=0.0, stop=stop, stream=True))
    assert chat_text(streamed) == text[: text.index(stop)]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_max_tokens_finishes_with_length(engine: MLCEngine) -> None:
    response = engine.chat.completions.create(messages=QUESTION, max_tokens=5, extra_body={"ignore_eos": True})
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5
    completion = engine.completions.create(prompt="Once upon a time", max_tokens=4, ignore_eos=True)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 4
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"


def test_completions_stream_and_echo(engine: MLCEngine) -> None:
    prompt = "Once upon a time"
    chunks = list(engine.completions.create(prompt=prompt, max_tokens=6, temperature=0.0, stream=True, echo=True))
    assert all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks)
    assert text.startswith(prompt) and len(text) > len(prompt)
    full = engine.completions.create(prompt=prompt, max_tokens=6, temperature=0.0)
    assert text == prompt + full.choices[0].text
    ids = engine._core.tokenize(prompt, True)
    by_ids = engine.completions.create(prompt=ids, max_tokens=6, temperature=0.0)
    assert by_ids.choices[0].text == full.choices[0].text


def test_seed_reproducible_alone_and_in_a_batch(async_engine: AsyncMLCEngine) -> None:
    params = dict(messages=QUESTION, temperature=1.0, top_p=0.95, seed=1234, max_tokens=20)

    async def run(**overrides: Any) -> str:
        response = await async_engine.chat.completions.create(**{**params, **overrides})
        return response.choices[0].message.content

    async def main() -> None:
        alone = await run()
        again = await run()
        assert alone == again
        others = [run(seed=s, messages=[{"role": "user", "content": f"Count to {s}."}]) for s in range(5)]
        together = await asyncio.gather(run(), *others)
        assert together[0] == alone
        different = await run(seed=4321)
        assert different != alone

    asyncio.run(main())


# --------------------------------------------------------------------------- abort and cancellation


def test_abort_ends_stream_and_engine_serves_next(engine: MLCEngine) -> None:
    stream = engine.chat.completions.create(messages=QUESTION, stream=True, request_id="to-abort", **LONG)
    first = next(stream)
    assert first.id == "to-abort"
    with pytest.raises(BadRequestError) as err:  # still running: the id is taken
        engine.chat.completions.create(messages=QUESTION, request_id="to-abort", max_tokens=2)
    assert err.value.field == "request_id"
    engine.abort("to-abort")
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "abort"
    assert len(rest) < 399
    wait_until_idle(engine)
    after = engine.chat.completions.create(messages=QUESTION, max_tokens=4)
    assert after.choices[0].message.content


def test_closing_a_sync_stream_aborts_it(engine: MLCEngine) -> None:
    before = engine.metrics()["num_requests_aborted"]
    stream = engine.chat.completions.create(messages=QUESTION, stream=True, **LONG)
    for _ in range(2):
        next(stream)
    stream.close()
    metrics = wait_until_idle(engine)
    assert metrics["num_requests_aborted"] == before + 1


def test_task_cancellation_aborts_request(async_engine: AsyncMLCEngine) -> None:
    async def consume(received: List[str]) -> None:
        async for chunk in await async_engine.chat.completions.create(messages=QUESTION, stream=True, **LONG):
            received.append(chunk.choices[0].delta.content)

    async def main() -> None:
        before = (await async_engine.metrics())["num_requests_aborted"]
        received: List[str] = []
        task = asyncio.create_task(consume(received))
        while len(received) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while True:
            metrics = await async_engine.metrics()
            if metrics["num_running"] == 0 and metrics["num_requests_aborted"] == before + 1:
                break
            assert time.monotonic() < deadline, metrics.to_dict()
            await asyncio.sleep(0.05)
        response = await async_engine.chat.completions.create(messages=QUESTION, max_tokens=4)
        assert response.choices[0].message.content

        # A non-streaming request whose awaiting task is cancelled is aborted too.
        task = asyncio.create_task(async_engine.chat.completions.create(messages=QUESTION, **LONG))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


# --------------------------------------------------------------------------- errors and lifecycle


def test_bad_request_then_normal_request(engine: MLCEngine) -> None:
    with pytest.raises(BadRequestError) as err:
        engine.chat.completions.create(messages=QUESTION, temperature=5.0)
    assert err.value.field == "temperature"
    with pytest.raises(BadRequestError) as err:
        engine.chat.completions.create(messages=[])
    assert err.value.field == "messages"
    with pytest.raises(BadRequestError) as err:  # rejected by the engine itself
        engine.completions.create(prompt=[1] * (engine.info["context_window_size"] + 10), max_tokens=1)
    assert err.value.field == "prompt"
    response = engine.chat.completions.create(messages=QUESTION, max_tokens=4)
    assert response.choices[0].message.content


def test_concurrent_async_requests_are_batched(async_engine: AsyncMLCEngine) -> None:
    async def one(i: int) -> int:
        response = await async_engine.chat.completions.create(
            messages=[{"role": "user", "content": f"Tell me a fact about the number {i}."}], max_tokens=16
        )
        return response.usage.completion_tokens

    async def main() -> None:
        counts = await asyncio.gather(*(one(i) for i in range(4)))
        assert all(c > 0 for c in counts)
        metrics = await async_engine.metrics()
        assert metrics["max_batch_size_seen"] > 1
        assert "max_batch_size_seen" in metrics.prometheus_text()

    asyncio.run(main())


def test_tracing_and_idempotent_terminate(smollm2_path: str) -> None:
    engine = MLCEngine(smollm2_path, device="cpu", mode="interactive", enable_tracing=True, verbose=True)
    assert engine.info["max_num_sequence"] == 1
    engine.chat.completions.create(messages=QUESTION, max_tokens=3)
    events = json.loads(engine.dump_trace())
    assert isinstance(events, (list, dict)) and events
    engine.terminate()
    engine.terminate()
    with pytest.raises(EngineDeadError):
        engine.chat.completions.create(messages=QUESTION, max_tokens=3)
