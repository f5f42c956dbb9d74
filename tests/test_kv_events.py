"""Prefix-cache events on ZeroMQ in vLLM's wire format (`mlc_llm serve --kv-events-endpoint`), read the way
llm-d's indexer reads vLLM's: a SUB socket, multipart [topic, 8-byte sequence, msgpack payload], the payload
decoded with vLLM's msgspec structs (copied here from vllm/distributed/kv_events.py, not from our module)."""

import socket
import time
from typing import Any, List, Optional, Union

import httpx
import msgspec
import pytest
import zmq

from server_process import ServerProcess


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: List[Any]
    data_parallel_rank: Optional[int] = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: List[int]
    parent_block_hash: Optional[int]
    token_ids: List[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]


class BlockRemoved(KVCacheEvent):
    block_hashes: List[int]
    medium: Optional[str]


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: List[Union[BlockStored, BlockRemoved, AllBlocksCleared]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(smollm2_path: str):
    port = _free_port()
    proc = ServerProcess(smollm2_path, "--no-access-log", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}",
                         "--kv-events-topic", "kv@test")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@test")
    try:
        yield proc, sub
    finally:
        sub.close(linger=0)
        ctx.term()
        proc.close()


def _receive(sub: Any, want_tokens: int, timeout_ms: int = 20000) -> List[Any]:
    """Batches until their BlockStored events hold `want_tokens` tokens."""
    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    events, seqs, stored = [], [], 0
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while stored < want_tokens:
        assert poller.poll(timeout_ms), f"no KV events within {timeout_ms} ms ({stored} of {want_tokens} tokens)"
        topic, seq, payload = sub.recv_multipart()
        assert topic == b"kv@test" and len(seq) == 8
        seqs.append(int.from_bytes(seq, "big"))
        batch = decoder.decode(payload)
        assert batch.ts > 0
        events += batch.events
        stored = sum(len(e.token_ids) for e in events if isinstance(e, BlockStored))
    assert seqs == sorted(seqs)
    return events


def test_a_prompt_s_full_blocks_are_announced_with_their_tokens_in_chain_order(served: Any) -> None:
    proc, sub = served
    prompt = list(range(1000, 1040))  # 40 tokens: two full blocks of 16 before generation starts
    r = httpx.post(f"{proc.url}/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    events = _receive(sub, 32)
    stored = [e for e in events if isinstance(e, BlockStored)]
    assert all(e.block_size == 16 and len(e.token_ids) == 16 * len(e.block_hashes) for e in stored)
    tokens = [t for e in stored for t in e.token_ids]
    assert tokens[:32] == prompt[:32]
    # The chain: the first block has no parent, each later run names the block before it.
    assert stored[0].parent_block_hash is None
    hashes = [h for e in stored for h in e.block_hashes]
    for e in stored[1:]:
        assert e.parent_block_hash == hashes[hashes.index(e.block_hashes[0]) - 1]
    assert all(0 <= h < 2**64 for h in hashes)


def test_without_the_flag_nothing_is_recorded(smollm2_path: str) -> None:
    from mlc_llm import MLCEngine

    engine = MLCEngine(smollm2_path, device="cpu")
    try:
        engine.completions.create(model=smollm2_path, prompt=list(range(1000, 1040)), max_tokens=1, temperature=0)
        assert engine.kv_events() == []
    finally:
        engine.terminate()


def _replay(events: List[Any]) -> set:
    """The block set a router's index holds after applying `events` in order."""
    blocks: set = set()
    for e in events:
        if isinstance(e, BlockStored):
            blocks.update(e.block_hashes)
        elif isinstance(e, BlockRemoved):
            assert blocks.issuperset(e.block_hashes), "a removed block was never announced"
            blocks.difference_update(e.block_hashes)
        else:
            blocks.clear()
    return blocks


def test_replaying_the_events_rebuilds_the_prefix_cache_s_block_set(smollm2_path: str) -> None:
    """A run that fills and evicts a 32-block cache: BlockStored / BlockRemoved applied in order give
    exactly the blocks the engine's prefix cache can find afterwards."""
    from mlc_llm import MLCEngine
    from mlc_llm.serve.server.kv_events import KvEventPublisher

    engine = MLCEngine(smollm2_path, device="cpu", max_total_sequence_length=512, enable_kv_events=True, verbose=False)
    assert engine.info["num_kv_blocks"] == 32 and engine.info["kv_block_size"] == 16
    port = _free_port()
    publisher = KvEventPublisher(engine.kv_events, f"tcp://127.0.0.1:{port}", "replay")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"replay")
    try:
        # A SUB socket misses what is published before its subscription reaches the publisher.
        time.sleep(0.5)
        shared = list(range(2000, 2064))  # four blocks several prompts start with
        prompts = [shared + list(range(3000 + 100 * i, 3000 + 100 * i + 56)) for i in range(4)]
        prompts += [list(range(5000 + 200 * i, 5000 + 200 * i + 120)) for i in range(10)]  # evict the above
        prompts += [shared + list(range(9000, 9040)), prompts[-1]]  # a prefix lost to eviction, one still held
        for p in prompts:
            engine.completions.create(prompt=p, max_tokens=3, temperature=0)
        cached = engine.cached_block_hashes()
        events = _receive_until_quiet(sub, quiet_s=1.0)
    finally:
        publisher.close()
        sub.close(linger=0)
        ctx.term()
        engine.terminate()
    kinds = {type(e).__name__ for e in events}
    assert {"BlockStored", "BlockRemoved"} <= kinds, kinds
    assert 0 < len(cached) <= 32
    assert _replay(events) == cached


def _receive_until_quiet(sub: Any, quiet_s: float) -> List[Any]:
    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    events: List[Any] = []
    while sub.poll(int(quiet_s * 1000)):
        _, _, payload = sub.recv_multipart()
        events += decoder.decode(payload).events
    return events
