"""Load on `mlc_llm serve` over loopback: 500 concurrent streaming chat requests, 30 % of whose
clients hang up after the first token.

Every client that stays gets its complete answer (exactly max_tokens tokens, finish_reason "length",
a usage chunk and [DONE]); the server stays up; afterwards every KV block is free again (read from
/metrics) and the server's resident memory is within 10 % of what it was after an identical
warm-up round.
"""

import asyncio
import json
import random
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
    asyncio.run(run_round(server.url, NUM_REQUESTS, MAX_TOKENS, seed=0))
    server.wait_idle()
    rss_after_warmup = server.rss_bytes()
    answered_before = requests_answered(server)
    aborted_before = server.metrics()["mlc_llm_engine_requests_aborted_total"]

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
