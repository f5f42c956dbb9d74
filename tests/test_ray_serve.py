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


def _metrics_by_replica(url: str, want: int = 2, tries: int = 40) -> Dict[str, Dict[str, float]]:
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


def test_a_client_that_hangs_up_mid_stream_frees_its_sequence_on_the_replica(front: str, smollm2_path: str) -> None:
    body = {
        "model": smollm2_path,
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{front}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        replica = r.headers[REPLICA_HEADER]
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    # The front cancels the replica's work, the app sees http.disconnect and aborts the engine request.
    deadline = time.monotonic() + 20
    while True:
        running = _metrics_by_replica(front)[replica]
        if running["vllm:num_requests_running"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert running["vllm:num_requests_running"] == 0 and running["mlc_llm_engine_requests_aborted_total"] >= 1, running


class _Stream(threading.Thread):
    """One streaming chat request: which replica took it, how many chunks came, and how it ended."""

    def __init__(self, url: str, model: str, i: int, max_tokens: int = 200) -> None:
        super().__init__(daemon=True)
        self._client, self._model, self._i, self._max_tokens = _client(url), model, i, max_tokens
        self.replica: Optional[str] = None
        self.chunks = 0
        self.outcome: Optional[str] = None  # "done", or the exception class name

    def run(self) -> None:
        messages = [{"role": "user", "content": f"Story {self._i}: write a long tale about a lighthouse."}]
        try:
            with self._client.chat.completions.with_streaming_response.create(
                model=self._model,
                messages=messages,
                max_tokens=self._max_tokens,
                temperature=0.8,
                seed=self._i,
                stream=True,
                extra_body={"ignore_eos": True},  # every stream runs its max_tokens
            ) as response:
                self.replica = response.headers.get(REPLICA_HEADER)
                for chunk in response.parse():
                    self.chunks += 1
                    if chunk.choices and chunk.choices[0].finish_reason:
                        self.outcome = "done"
        except Exception as e:  # recorded, judged by the test
            self.outcome = type(e).__name__


def _start_streams(url: str, model: str, n: int, max_tokens: int, replicas: int) -> List[_Stream]:
    """`n` streams, returned once streams on at least `replicas` replicas have had a chunk after their first
    (the router may spread even two streams over both replicas)."""
    streams = [_Stream(url, model, i, max_tokens) for i in range(n)]
    for s in streams:
        s.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len({s.replica for s in streams if s.chunks > 1}) < replicas:
        time.sleep(0.05)
    assert len({s.replica for s in streams if s.chunks > 1}) >= replicas, [(s.replica, s.chunks, s.outcome) for s in streams]
    return streams


def _wait_for_new_replicas(url: str, gone: str, timeout_s: float) -> List[str]:
    """The replicas answering once two do and `gone` is not among them."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            names = list(_metrics_by_replica(url, tries=20))
            if gone not in names:
                return names
        except AssertionError:  # only one replica answers yet
            pass
        assert time.monotonic() < deadline, f"no replacement replica within {timeout_s}s"
        time.sleep(0.5)


def test_killing_a_replica_mid_load_fails_its_streams_cleanly_and_ray_restarts_it(front: str, smollm2_path: str) -> None:
    streams = _start_streams(front, smollm2_path, 6, max_tokens=200, replicas=2)
    victim = next(s.replica for s in streams if s.chunks > 1 and s.outcome is None)
    assert victim is not None
    # What each stream should end with: cut if its replica was the victim and it was still running;
    # complete if it was elsewhere, finished, or not yet answered (the front retries it on the survivor).
    expected = ["APIError" if s.replica == victim and s.outcome is None else "done" for s in streams]
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
    assert not any(s.is_alive() for s in streams), [(s.chunks, s.outcome) for s in streams]
    # A cut stream ends with an error the client sees (an error event: openai.APIError), never a hang
    # (APITimeoutError) or a silent end.
    assert [s.outcome for s in streams] == expected, [(s.replica == victim, s.chunks, s.outcome) for s in streams]

    # Ray replaces the replica: two answer again, one of them new.
    _wait_for_new_replicas(front, victim, timeout_s=120)
    print(f"replica replaced {time.monotonic() - killed_at:.1f}s after the kill")


def test_deleting_the_app_lets_running_streams_finish(front: str, smollm2_path: str) -> None:
    """Ray's drain, then the replicas' __del__: streams running when the app is deleted complete."""
    streams = _start_streams(front, smollm2_path, 2, max_tokens=60, replicas=1)
    serve.delete(APP)  # returns once the replicas have drained and stopped
    for s in streams:
        s.join(timeout=60)
    assert [s.outcome for s in streams] == ["done", "done"], [(s.chunks, s.outcome) for s in streams]
    # 60 content chunks, the finish chunk and the usage-less end: nothing was cut.
    assert all(s.chunks >= 60 for s in streams), [s.chunks for s in streams]


def test_prefix_hashes_are_chained_over_full_blocks_and_prompts_are_read_from_the_body() -> None:
    from mlc_llm.serve.integrations.ray import prefix_text
    from mlc_llm.serve.integrations.ray_router import prefix_block_hashes

    a = prefix_block_hashes("x" * 64 + "y" * 64 + "z" * 63, 64, 1024)
    b = prefix_block_hashes("x" * 64 + "y" * 64 + "w" * 64, 64, 1024)
    c = prefix_block_hashes("q" * 64 + "y" * 64, 64, 1024)
    assert len(a) == 2 and b[:2] == a and len(b) == 3  # the partial last block does not count
    assert c[1] != a[1]  # a block's hash depends on every block before it
    assert len(prefix_block_hashes("x" * 1000, 64, 256)) == 4
    chat = b'{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}'
    assert prefix_text("/v1/chat/completions", chat) == '[{"role":"system","content":"S"},{"role":"user","content":"U"}]'
    assert prefix_text("/v1/completions", b'{"prompt": "abc"}') == "abc"
    assert prefix_text("/v1/completions", b'{"prompt": [1, 2]}') == "[1,2]"
    assert prefix_text("/v1/completions", b"not json") == prefix_text("/metrics", b"") == ""
