"""Load on `mlc_llm serve` over loopback: 500 concurrent streaming chat requests, 30 % of whose
clients hang up after the first token; then 1,000 such streams together with a burst of 5,000
non-streaming requests and an 8,000-token prompt, while /health is probed throughout.

Every client that stays gets its complete answer (exactly max_tokens tokens, finish_reason "length",
a usage chunk and [DONE]); the server stays up; afterwards every KV block is free again (read from
/metrics) and the server's resident memory is within 10 % of what it was after an identical
warm-up round.
"""

import asyncio
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Iterator, List

import httpx
import pytest

from server_process import ServerProcess

NUM_REQUESTS = 500
DISCONNECT_FRACTION = 0.3
MAX_TOKENS = 6
ROUND_TIMEOUT_S = 900.0  # a bound on one round; CI on two cores needs a few minutes


@pytest.fixture(scope="module")
def server(smollm2_path: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        smollm2_path,
        "--mode", "server",
        "--overrides", "max_num_sequence=64;max_total_seq_length=8192;prefill_chunk_size=1024",
        "--no-access-log",
        "--log-level", "warning",
    )
    yield proc
    proc.close()


@dataclass
class Outcome:
    disconnected: bool
    text: str = ""
    completion_tokens: int = -1
    finish_reason: str = ""
    done: bool = False


def body(i: int, max_tokens: int) -> dict:
    topic = ["the sea", "mountains", "a city", "the sun", "rain", "trees", "music", "stars"][i % 8]
    return {
        "messages": [{"role": "user", "content": f"Write one sentence about {topic}. (#{i})"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.8,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one_request(client: httpx.AsyncClient, i: int, disconnect: bool, max_tokens: int) -> Outcome:
    outcome = Outcome(disconnected=disconnect)
    async with client.stream("POST", "/v1/chat/completions", json=body(i, max_tokens)) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: ") :]
            if data == "[DONE]":
                outcome.done = True
                continue
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                outcome.text += choice["delta"].get("content") or ""
                outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
            if chunk.get("usage"):
                outcome.completion_tokens = chunk["usage"]["completion_tokens"]
            if disconnect and outcome.text:
                return outcome  # leaving the block closes the connection mid-stream
    return outcome


async def run_round(url: str, n: int, max_tokens: int, seed: int) -> List[Outcome]:
    rng = random.Random(seed)
    hang_ups = set(rng.sample(range(n), int(n * DISCONNECT_FRACTION)))
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    timeout = httpx.Timeout(ROUND_TIMEOUT_S, connect=60.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        tasks = [one_request(client, i, i in hang_ups, max_tokens) for i in range(n)]
        return await asyncio.wait_for(asyncio.gather(*tasks), ROUND_TIMEOUT_S)


def requests_answered(server: ServerProcess) -> float:
    return sum(v for k, v in server.metrics().items() if k.startswith('mlc_llm_requests_total{endpoint="/v1/chat'))


def test_500_concurrent_streams_with_disconnects(server: ServerProcess) -> None:
    # A warm-up round of the same shape, so that buffers, pools and batch shapes reach their size.
    with server.explains_failures():
        asyncio.run(run_round(server.url, NUM_REQUESTS, MAX_TOKENS, seed=0))
    server.wait_idle()
    rss_after_warmup = server.rss_bytes()
    answered_before = requests_answered(server)
    aborted_before = server.metrics()["mlc_llm_engine_requests_aborted_total"]

    with server.explains_failures():
        outcomes = asyncio.run(run_round(server.url, NUM_REQUESTS, MAX_TOKENS, seed=1))

    stayed = [o for o in outcomes if not o.disconnected]
    assert len(stayed) == NUM_REQUESTS - int(NUM_REQUESTS * DISCONNECT_FRACTION)
    for o in stayed:
        assert o.done and o.finish_reason == "length" and o.completion_tokens == MAX_TOKENS, o
        assert o.text
    assert all(o.text for o in outcomes if o.disconnected)  # they did get a first token

    # The server is up, has answered every request (200, or 499 for a client that left), and has
    # returned every KV block.
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    metrics = server.wait_idle(timeout_s=120)
    assert requests_answered(server) - answered_before == NUM_REQUESTS
    assert metrics["mlc_llm_engine_requests_aborted_total"] > aborted_before
    assert metrics["mlc_llm_kv_cache_blocks_free"] == metrics["mlc_llm_kv_cache_blocks_total"] > 0
    assert metrics["mlc_llm_requests_in_flight"] == 0

    rss_after = server.rss_bytes()
    assert rss_after <= rss_after_warmup * 1.10, (rss_after_warmup, rss_after)
    assert server.process.poll() is None


# CI's sizes fit two cores in a few minutes; issue 14's full check is MLC_LOAD_STREAMS=1000 MLC_LOAD_BURST=5000
# MLC_LOAD_LONG_PROMPT=8000 (its figures are in the closing note of the session that ran it).
BIG_STREAMS = int(os.environ.get("MLC_LOAD_STREAMS", "1000"))
BURST = int(os.environ.get("MLC_LOAD_BURST", "2000"))
LONG_PROMPT = int(os.environ.get("MLC_LOAD_LONG_PROMPT", "4000"))


BURST_CONNECTIONS = 256


async def _burst(url: str, n: int) -> List[int]:
    """`n` non-streaming completions sent as fast as BURST_CONNECTIONS connections carry them (the
    server holds hundreds queued at once); the completion tokens of each (-1: not a 200)."""
    limits = httpx.Limits(max_connections=BURST_CONNECTIONS, max_keepalive_connections=BURST_CONNECTIONS)
    slots = asyncio.Semaphore(BURST_CONNECTIONS)  # keeps httpx's pool from queueing thousands of requests
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(ROUND_TIMEOUT_S, connect=60.0)) as client:

        async def one(i: int) -> int:
            async with slots:
                r = await client.post("/v1/completions", json={"prompt": f"Count: {i}", "max_tokens": 1, "temperature": 0})
            return r.json()["usage"]["completion_tokens"] if r.status_code == 200 else -1

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _long_prompt(client: httpx.AsyncClient) -> int:
    rng = random.Random(7)
    r = await client.post("/v1/completions", json={"prompt": [rng.randrange(100, 40000) for _ in range(LONG_PROMPT)],
                                                   "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def _probe_health(url: str, stop: threading.Event, latencies: List[float]) -> None:
    """Seconds each /health call took, one every 0.25 s until `stop`. A thread of its own: probing from the
    event loop that drives thousands of client requests would time the client as much as the server."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t = time.monotonic()
            r = client.get("/health")
            latencies.append(time.monotonic() - t)
            assert r.status_code == 200, r.text
            stop.wait(0.25)


async def _everything_at_once(url: str) -> tuple:
    stop, health = threading.Event(), []
    prober = threading.Thread(target=_probe_health, args=(url, stop, health))
    prober.start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(ROUND_TIMEOUT_S, connect=60.0)) as client:
            long_prompt = asyncio.create_task(_long_prompt(client))
            await asyncio.sleep(1.0)  # the long prefill is under way before the crowd arrives
            streams = asyncio.create_task(run_round(url, BIG_STREAMS, 4, seed=2))
            burst = await asyncio.wait_for(_burst(url, BURST), ROUND_TIMEOUT_S)
            outcomes = await asyncio.wait_for(streams, ROUND_TIMEOUT_S)
            prompt_tokens = await asyncio.wait_for(long_prompt, ROUND_TIMEOUT_S)
    finally:
        # Also when the round raises: a prober left running would probe the server through the fixture's
        # teardown and log refused connections that look like part of the failure.
        stop.set()
        prober.join()
    return outcomes, burst, prompt_tokens, health


@pytest.fixture(scope="module")
def big_server(smollm2_path: str) -> Iterator[ServerProcess]:
    """Room for the long prompt beside the crowd (a server of its own: the RSS check above needs a cache
    that its warm-up round fills)."""
    proc = ServerProcess(
        smollm2_path,
        "--mode", "server",
        "--overrides", "max_num_sequence=64;max_total_seq_length=32768;prefill_chunk_size=1024",
        "--no-access-log",
        "--log-level", "warning",
    )
    yield proc
    proc.close()


def test_streams_a_burst_and_a_long_prompt_with_health_checks(big_server: ServerProcess) -> None:
    """Nothing accepted is lost, every KV block comes back, and /health keeps answering throughout (within
    5 s: a blocked event loop would hold it for the whole run, tens of seconds; the slowest answer stayed
    under 1 s in earlier CI runs and took 1.23 s with other work sharing the 2 cores), while the CPU prefills
    a long prompt among thousands of other requests."""
    server = big_server
    server.wait_idle()
    with server.explains_failures():
        outcomes, burst, prompt_tokens, health = asyncio.run(_everything_at_once(server.url))
    stayed = [o for o in outcomes if not o.disconnected]
    assert len(stayed) == BIG_STREAMS - int(BIG_STREAMS * DISCONNECT_FRACTION)
    assert all(o.done and o.finish_reason == "length" and o.completion_tokens == 4 for o in stayed)
    assert burst.count(1) == BURST, sorted(set(burst))
    assert prompt_tokens == LONG_PROMPT
    print(f"/health: {len(health)} probes, slowest {max(health):.3f} s")
    assert len(health) > 10 and max(health) < 5.0, max(health)
    metrics = server.wait_idle(timeout_s=120)
    assert metrics["mlc_llm_kv_cache_blocks_free"] == metrics["mlc_llm_kv_cache_blocks_total"] > 0
    assert metrics["mlc_llm_requests_in_flight"] == 0
    assert server.process.poll() is None
