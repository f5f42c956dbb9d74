"""Continuous batching under load: 32 concurrent async requests of mixed lengths with random aborts.

Every request that is not aborted completes; greedy outputs equal the same requests run one at a time;
seeded sampling gives the same tokens alone and batched; every KV block is free afterwards."""

import asyncio
import random
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest

from mlc_llm import AsyncMLCEngine, MLCEngine

TOPICS = ["the sea", "a red fox", "bread", "winter", "a robot", "tea", "the moon", "rivers"]


def _prompts() -> List[str]:
    rng = random.Random(7)
    out = []
    for i in range(32):
        words = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(1, 12)))
        out.append(f"Request {i}. Say one sentence about {words}.")
    return out


def _request(prompt: str, seed: Optional[int]) -> Dict[str, object]:
    req: Dict[str, object] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "extra_body": {"ignore_eos": False},
    }
    if seed is None:
        req["temperature"] = 0.0
    else:
        req.update(temperature=0.9, top_p=0.95, seed=seed)
    return req


@pytest.fixture(scope="module")
def batch_engine(smollm2_path: str):
    eng = AsyncMLCEngine(smollm2_path, device="cpu", mode="server", max_batch_size=16,
                         max_total_sequence_length=4096, verbose=False)
    yield eng
    eng.terminate()


def test_32_requests_with_random_aborts(batch_engine: AsyncMLCEngine, engine: MLCEngine) -> None:
    prompts = _prompts()
    rng = random.Random(11)
    aborted = set(rng.sample(range(32), 10))
    # Half greedy, half seeded sampling: both must be independent of batching.
    seeds = [None if i % 2 == 0 else 1000 + i for i in range(32)]

    async def run_all() -> Dict[int, Optional[str]]:
        results: Dict[int, Optional[str]] = {}

        async def one(i: int) -> None:
            text = ""
            stream = await batch_engine.chat.completions.create(
                **_request(prompts[i], seeds[i]), stream=True, request_id=f"conc-{i}")
            async for chunk in stream:
                for c in chunk.choices:
                    text += c.delta.content or ""
                    if c.finish_reason is not None:
                        results[i] = text

        tasks = {i: asyncio.create_task(one(i)) for i in range(32)}
        await asyncio.sleep(0.3)
        for i in sorted(aborted):
            if i % 2:
                tasks[i].cancel()  # cancelling the task that iterates the stream aborts the request
            else:
                await batch_engine.abort(f"conc-{i}")
            await asyncio.sleep(rng.random() * 0.2)
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return results

    results = asyncio.run(run_all())
    for i in range(32):
        if i not in aborted:
            assert i in results, f"request {i} was not aborted but did not complete"
    metrics = asyncio.run(batch_engine.metrics()).to_dict()
    assert metrics["max_batch_size_seen"] > 1
    assert metrics["num_free_blocks"] == metrics["num_total_blocks"], metrics
    # Every step is counted once, as decode-only or with prefill, and the two kinds carry all tokens.
    assert metrics["decode_steps"] > 0 and metrics["prefill_steps"] > 0, metrics
    assert metrics["decode_steps"] + metrics["prefill_steps"] == metrics["engine_steps"], metrics
    assert metrics["decode_step_seqs"] + metrics["prefill_step_decodes"] == metrics["decode_tokens"], metrics
    assert metrics["prefill_step_tokens"] == metrics["prefill_tokens"], metrics
    assert metrics["decode_step_seqs"] > metrics["decode_steps"], "no decode-only step ran a batch"
    assert metrics["decode_step_time_s"] > 0 and metrics["prefill_step_time_s"] > 0, metrics

    # The same requests one at a time give the same text (greedy and seeded).
    for i in range(32):
        if i in aborted:
            continue
        alone = engine.chat.completions.create(**_request(prompts[i], seeds[i]), stream=False)
        assert alone.choices[0].message.content == results[i], f"request {i} differs alone vs batched"


# --------------------------------------------------------------------------- ids are owned per request

VICTIM = {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 24,
          "temperature": 0.0, "extra_body": {"ignore_eos": True}}


def test_refused_request_leaves_the_running_owner_of_its_engine_id_alone(engine: MLCEngine) -> None:
    """"victim" with n=2 would use the engine ids "victim-0" and "victim-1": refused, and the
    running "victim-0" still streams to its end (it once lost its route and hung forever)."""
    from mlc_llm.protocol.errors import BadRequestError

    stream = engine.chat.completions.create(**VICTIM, stream=True, request_id="victim-0")
    first = next(stream)
    for n in (2, 3):
        with pytest.raises(BadRequestError) as err:
            engine.chat.completions.create(**VICTIM, n=n, request_id="victim")
        assert err.value.field == "request_id"
    rest: List[object] = []
    reader = threading.Thread(target=lambda: rest.extend(stream), daemon=True)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "the running stream lost its route and hangs"
    assert [first, *rest][-1].choices[0].finish_reason == "length"
    # The id is free again once its request ended; "victim" with n=2 now runs.
    both = engine.chat.completions.create(**VICTIM, n=2, request_id="victim")
    assert [c.finish_reason for c in both.choices] == ["length", "length"]


def test_refused_async_request_leaves_the_running_owner_alone(async_engine: AsyncMLCEngine) -> None:
    from mlc_llm.protocol.errors import BadRequestError

    async def run() -> List[Optional[str]]:
        stream = await async_engine.chat.completions.create(**VICTIM, stream=True, request_id="avictim-1")
        first = await stream.__anext__()
        with pytest.raises(BadRequestError):
            await async_engine.chat.completions.create(**VICTIM, n=2, request_id="avictim")
        # Aborting the refused request's id must not reach the running one either.
        await async_engine.abort("avictim")
        chunks = [first] + [c async for c in stream]
        return [c.choices[0].finish_reason for c in chunks if c.choices]

    finishes = asyncio.run(asyncio.wait_for(run(), timeout=60))
    assert finishes[-1] == "length"


# --------------------------------------------------------------------------- liveness during a long step

LONG_PROMPT_TOKENS = 1024


@pytest.fixture(scope="module")
def cpu_server(smollm2_path: str) -> Iterator[Any]:
    from server_process import ServerProcess

    server = ServerProcess(
        smollm2_path, "--overrides", f"prefill_chunk_size={LONG_PROMPT_TOKENS};max_total_seq_length=8192",
        "--no-access-log", "--log-level", "warning",
    )
    yield server
    server.close()


def test_http_request_refused_for_its_engine_ids_leaves_the_running_stream_alone(cpu_server: Any) -> None:
    """The HTTP face of the request-id test above: the running stream still ends with [DONE]."""
    import httpx

    body = {"prompt": "Count to ten.", "max_tokens": 24, "temperature": 0.0, "ignore_eos": True}
    events: List[str] = []

    def stream() -> None:
        with httpx.stream("POST", f"{cpu_server.url}/v1/completions", timeout=120,
                          json={**body, "stream": True, "request_id": "hvictim-0"}) as r:
            events.extend(line for line in r.iter_lines() if line.startswith("data:"))

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = httpx.post(f"{cpu_server.url}/v1/completions", json={**body, "n": 2, "request_id": "hvictim"}, timeout=60)
    assert refused.status_code == 400, refused.text
    reader.join(60)
    assert not reader.is_alive(), "the running stream lost its route and hangs"
    assert events[-1] == "data: [DONE]", events[-3:]


def test_health_and_metrics_answer_within_a_second_during_a_long_cpu_prefill(cpu_server: Any) -> None:
    """One CPU prefill step of 1,024 tokens takes seconds; /health and /metrics once waited for it
    (17.8 s for 8,000 tokens), so a liveness probe would have killed a healthy server."""
    import httpx

    server = cpu_server
    body = {"prompt": [(i * 7919) % 40000 + 100 for i in range(LONG_PROMPT_TOKENS)], "max_tokens": 1}
    done: List[float] = []

    def post() -> None:
        started = time.monotonic()
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        done.append(time.monotonic() - started)

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    time.sleep(0.5)  # let the step start
    latencies: List[float] = []
    while poster.is_alive():
        for path in ("/health", "/metrics"):
            started = time.monotonic()
            r = httpx.get(f"{server.url}{path}", timeout=30)
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200, (path, r.text)
        time.sleep(0.1)
    poster.join()
    print(f"prefill {done[0]:.1f}s, {len(latencies)} probes, slowest {max(latencies):.3f}s")
    # On a machine fast enough to prefill in under a second this shows little, and still holds.
    assert done and latencies and max(latencies) < 1.0, f"prefill {done[0]:.1f}s, latencies {latencies}"
