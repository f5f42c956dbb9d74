"""Prefix-cache events on ZeroMQ in vLLM's wire format, for routers that route a request to the replica
that already holds its prefix (llm-d's KV-cache indexer and precise-prefix-cache scorer).

`mlc_llm serve --kv-events-endpoint tcp://*:5557` binds a PUB socket there and publishes, every
`interval_s` while there is something to say, one multipart message as vLLM's ZmqEventPublisher does:

    [topic (--kv-events-topic, default empty), sequence number (8 bytes, big-endian), payload]

payload = msgpack of KVEventBatch(ts, events, data_parallel_rank=None) as vLLM's msgspec structs encode it
(array_like: a list of the fields in order; events tagged: the class name first):

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

Block hashes are 64-bit integers (the low half of our 128-bit chain hashes); our block size is the
engine's `kv_cache_page_size` (set it to the router's). `pip install "mlc_llm[kv-events]"` brings pyzmq
and msgspec.
"""

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

logger = logging.getLogger("mlc_llm.serve.server")

EventSource = Callable[[], List[Dict[str, Any]]]


def _structs() -> Any:
    """vLLM's event classes (vllm/distributed/kv_events.py), defined here so vLLM is not needed."""
    import msgspec

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

    return BlockStored, BlockRemoved, AllBlocksCleared, KVEventBatch


class KvEventPublisher:
    """A thread that drains the engine's events and publishes them until `close()`."""

    def __init__(self, source: EventSource, endpoint: str, topic: str = "", interval_s: float = 0.02) -> None:
        try:
            import msgspec
            import zmq
        except ImportError as e:
            raise ImportError(f'--kv-events-endpoint needs pyzmq and msgspec (pip install "mlc_llm[kv-events]"): {e}') from e
        self._stored, self._removed, self._cleared, self._batch = _structs()
        self._encode = msgspec.msgpack.Encoder().encode
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._sock.close(linger=0)
            self._ctx.term()
            raise OSError(f"cannot bind {endpoint!r}: {e}") from e
        self._source = source
        self._topic = topic.encode()
        self._interval_s = interval_s
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlc-kv-events", daemon=True)
        self._thread.start()
        logger.info("publishing KV-cache events on %s (topic %r)", endpoint, topic)

    def _convert(self, e: Dict[str, Any]) -> Any:
        kind = e.get("type")
        if kind == "BlockStored":
            return self._stored(e["block_hashes"], e["parent_block_hash"], e["token_ids"], e["block_size"], None, None)
        if kind == "BlockRemoved":
            return self._removed(e["block_hashes"], None)
        return self._cleared()

    def publish_pending(self) -> int:
        """Publishes what the engine has recorded since the last call; returns how many events."""
        events = self._source()
        if events:
            payload = self._encode(self._batch(ts=time.time(), events=[self._convert(e) for e in events]))
            self._sock.send_multipart((self._topic, self._seq.to_bytes(8, "big"), payload))
            self._seq += 1
        return len(events)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.publish_pending()
            except Exception as exc:  # a stopped engine ends the stream; the server reports that elsewhere
                logger.debug("KV events: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(linger=0)
        self._ctx.term()
