"""Ray Serve (mlc_llm.serve.integrations.ray) on the CPU: a local Ray with 2 CPUs, two replicas of
SmolLM2 behind the prefix-aware front, spoken to with the openai client over HTTP.

Replicas are told apart by the `x-mlc-replica` header (the replica's Ray actor name); a replica's own
metrics are its /metrics, fetched through the front until each replica has answered one.
"""

import os
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import openai
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from mlc_llm.serve.integrations.ray import REPLICA_HEADER, build_app

APP = "mlc"
# Each replica: MLC's local mode (4 sequences) and 2,048 tokens of KV cache (about 90 MB in f32).
ENGINE_KWARGS = {"device": "cpu", "mode": "local", "max_total_sequence_length": 2048, "verbose": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def front(smollm2_path: str) -> Iterator[str]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            smollm2_path, num_replicas=2, engine_kwargs=ENGINE_KWARGS, health_check_period_s=1.0, health_check_timeout_s=10.0
        )
        serve.run(app, name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60.0, max_retries=0)


def _metrics_by_replica(url: str, want: int = 2, tries: int = 60) -> Dict[str, Dict[str, float]]:
    """Each replica's vLLM-named counters, from /metrics answers until `want` replicas have answered
    (requests without a prompt are spread at random over the replicas)."""
    seen: Dict[str, Dict[str, float]] = {}
    for _ in range(tries):
        r = httpx.get(f"{url}/metrics", timeout=30)
        assert r.status_code == 200, r.text
        values = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                values[sample.name] = sample.value
        seen[r.headers[REPLICA_HEADER]] = values
        if len(seen) >= want:
            return seen
    raise AssertionError(f"only {sorted(seen)} answered /metrics in {tries} tries")


def test_chat_stream_and_completions_through_the_front(front: str, smollm2_path: str) -> None:
    client = _client(front)
    messages = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model=smollm2_path, messages=messages, max_tokens=12, temperature=0)
    text = chat.choices[0].message.content
    assert text and chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens > 0
    # Greedy decoding: the stream through Ray says what the whole answer said, whichever replica runs it.
    chunks = list(client.chat.completions.create(model=smollm2_path, messages=messages, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    completion = client.completions.create(model=smollm2_path, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert "Paris" in completion.choices[0].text
    # The replica's own validation and error objects pass through unchanged.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=smollm2_path, messages=messages, max_tokens=4, temperature=-1)
    assert err.value.body and err.value.param == "temperature"  # type: ignore[attr-defined]


def test_a_repeated_long_prefix_goes_to_one_replica_and_hits_its_cache(front: str, smollm2_path: str) -> None:
    client = _client(front)
    prefix = " ".join(f"Clause {i}: the tenant keeps the garden tidy and the gate closed." for i in range(40))
    before = _metrics_by_replica(front)
    replicas: List[str] = []
    for i in range(6):
        raw = client.completions.with_raw_response.create(
            model=smollm2_path, prompt=f"{prefix}\nQuestion {i}: who keeps the gate closed?", max_tokens=1, temperature=0
        )
        replicas.append(raw.headers[REPLICA_HEADER])
        prompt_tokens = raw.parse().usage.prompt_tokens
    assert len(set(replicas)) == 1, replicas
    owner = replicas[0]
    after = _metrics_by_replica(front)
    hits = {name: after[name]["vllm:prefix_cache_hits_total"] - before[name]["vllm:prefix_cache_hits_total"] for name in after}
    # Five repeats find the shared prefix (all but its last partial 16-token block and the question) cached.
    assert hits[owner] >= 5 * (prompt_tokens - 48), (hits, prompt_tokens)
    assert all(h == 0 for name, h in hits.items() if name != owner), hits


class _Stream(threading.Thread):
    """One streaming chat request: which replica took it, how many chunks came, and how it ended."""

    def __init__(self, url: str, model: str, i: int) -> None:
        super().__init__(daemon=True)
        self._client, self._model, self._i = _client(url), model, i
        self.replica: Optional[str] = None
        self.chunks = 0
        self.outcome: Optional[str] = None  # "done", or the exception class name

    def run(self) -> None:
        messages = [{"role": "user", "content": f"Story {self._i}: write a long tale about a lighthouse."}]
        try:
            with self._client.chat.completions.with_streaming_response.create(
                model=self._model, messages=messages, max_tokens=200, temperature=0.8, seed=self._i, stream=True
            ) as response:
                self.replica = response.headers.get(REPLICA_HEADER)
                for chunk in response.parse():
                    self.chunks += 1
                    if chunk.choices and chunk.choices[0].finish_reason:
                        self.outcome = "done"
        except Exception as e:  # recorded, judged by the test
            self.outcome = type(e).__name__


def _running_replicas() -> int:
    status = serve.status().applications[APP].deployments["MLCServer"]
    return int(status.replica_states.get("RUNNING", 0))


def test_killing_a_replica_mid_load_fails_its_streams_cleanly_and_ray_restarts_it(front: str, smollm2_path: str) -> None:
    streams = [_Stream(front, smollm2_path, i) for i in range(6)]
    for s in streams:
        s.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len({s.replica for s in streams if s.chunks > 1}) < 2:
        time.sleep(0.05)
    by_replica = {s.replica for s in streams if s.chunks > 1}
    assert len(by_replica) == 2, [(s.replica, s.chunks, s.outcome) for s in streams]
    victim = next(s.replica for s in streams if s.chunks > 1 and s.outcome is None)
    assert victim is not None
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed_at = time.monotonic()

    # Requests sent right after the kill are served (by the survivor, or retried there).
    client = _client(front)
    served: List[Tuple[str, str]] = []
    for i in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model=smollm2_path, messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=4, temperature=0
        )
        served.append((raw.headers[REPLICA_HEADER], raw.parse().choices[0].finish_reason))
    assert all(name != victim and reason in ("stop", "length") for name, reason in served), served

    for s in streams:
        s.join(timeout=120)
    outcomes = [(s.replica == victim, s.outcome) for s in streams]
    assert not any(s.is_alive() for s in streams), outcomes
    # The victim's streams end with an error the client sees (an error event: openai.APIError), never
    # a hang (APITimeoutError) or a silent end; the survivor's finish.
    assert all(o == "APIError" for on_victim, o in outcomes if on_victim), outcomes
    assert all(o == "done" for on_victim, o in outcomes if not on_victim), outcomes

    # Ray replaces the replica: two running again, one of them new.
    while time.monotonic() - killed_at < 120 and _running_replicas() < 2:
        time.sleep(0.5)
    assert _running_replicas() == 2
    names = set(_metrics_by_replica(front))
    assert victim not in names and len(names) == 2, names
    print(f"replica replaced {time.monotonic() - killed_at:.1f}s after the kill")
