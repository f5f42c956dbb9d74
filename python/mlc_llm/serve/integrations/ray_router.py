"""A prefix-aware request router for Ray Serve: requests that share a long prompt prefix go to the
replica that served it last, whose prefix cache still holds it.

Ray Serve LLM ships such a router (`ray.serve.llm.request_router.PrefixCacheAffinityRouter`), but it
is not used here: it comes with `ray[llm]`, which pins vLLM (`vllm[audio]==0.29.0` for Ray 2.60), and
without it the import fails (ray.llm needs pyarrow); it also divides by the prompt's length (a request
without one, /health or /metrics, fails) and keeps its prefix tree in a detached actor of its own.
This one is written against Ray Serve's public custom-router API
(`ray.serve.request_router.RequestRouter`, as in Ray's "custom request router" guide) and follows the
same policy:

- The text the front put in `HttpRequest.prefix_text` is cut into blocks of `block_chars`
  characters (64 characters are about one 16-token KV block) and each full block gets a chained
  hash (the hash of a block depends on every block before it, like the engine's block hashes), up
  to `max_prefix_chars`.
- After a request is routed, its block hashes are remembered as held by that replica (an LRU map of
  at most `max_blocks` entries; the newest owner wins).
- A new request goes to the replica holding its longest remembered prefix when that prefix is at
  least `match_rate_threshold` of its text (0.1, Ray's default) and the replica's queue is not more
  than `imbalanced_threshold` requests longer than the shortest one; the other replicas are the
  second choice, taken by Ray when the first is full (`max_ongoing_requests`).
- Otherwise (no text, no match, or too much load): power of two choices, Ray's default policy.

The map lives in the router, and each deployment handle has its own router: with one front replica
(the default of `build_app`) every request sees the same map; with several, each front learns its
own (affinity holds per front, the cache hit rate drops accordingly).
"""

import hashlib
import random
from collections import OrderedDict
from typing import List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica


def prefix_block_hashes(text: str, block_chars: int, max_prefix_chars: int) -> List[bytes]:
    """Chained hashes of the text's full blocks (a partial last block is left out, as in a KV cache)."""
    hashes: List[bytes] = []
    parent = b""
    limit = min(len(text), max_prefix_chars)
    for start in range(0, limit - block_chars + 1, block_chars):
        block = text[start : start + block_chars].encode("utf-8", "surrogatepass")
        parent = hashlib.blake2b(parent + block, digest_size=8).digest()
        hashes.append(parent)
    return hashes


def _request_text(pending_request: Optional[PendingRequest]) -> str:
    if pending_request is None or not pending_request.args:
        return ""
    text = getattr(pending_request.args[0], "prefix_text", "")
    return text if isinstance(text, str) else ""


class PrefixAwareRouter(RequestRouter):
    def initialize_state(
        self,
        block_chars: int = 64,
        max_prefix_chars: int = 64 * 256,
        max_blocks: int = 1 << 18,
        match_rate_threshold: float = 0.1,
        imbalanced_threshold: int = 8,
    ) -> None:
        if block_chars < 1 or max_prefix_chars < block_chars or max_blocks < 1:
            raise ValueError("PrefixAwareRouter: need block_chars >= 1, max_prefix_chars >= block_chars, max_blocks >= 1")
        self._block_chars = block_chars
        self._max_prefix_chars = max_prefix_chars
        self._max_blocks = max_blocks
        self._match_rate_threshold = match_rate_threshold
        self._imbalanced_threshold = imbalanced_threshold
        # chained block hash -> the replica that was last sent a prompt containing it
        self._owners: "OrderedDict[bytes, ReplicaID]" = OrderedDict()

    def _hashes(self, pending_request: Optional[PendingRequest]) -> List[bytes]:
        return prefix_block_hashes(_request_text(pending_request), self._block_chars, self._max_prefix_chars)

    def _queue_len(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        by_id = {r.replica_id: r for r in candidate_replicas}
        text_len = len(_request_text(pending_request))
        hashes = self._hashes(pending_request)
        for depth in range(len(hashes), 0, -1):
            owner = by_id.get(self._owners.get(hashes[depth - 1]))  # type: ignore[arg-type]
            if owner is None:
                continue
            if depth * self._block_chars < self._match_rate_threshold * text_len:
                break
            shortest = min(self._queue_len(r) for r in candidate_replicas)
            if self._queue_len(owner) - shortest > self._imbalanced_threshold:
                break
            return [[owner], [r for r in candidate_replicas if r is not owner]]
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        for h in self._hashes(pending_request):
            self._owners[h] = replica_id
            self._owners.move_to_end(h)
        while len(self._owners) > self._max_blocks:
            self._owners.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for h in [h for h, owner in self._owners.items() if owner == replica_id]:
            del self._owners[h]
