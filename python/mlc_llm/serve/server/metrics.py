"""Prometheus metrics of the REST server (`GET /metrics`, text exposition format).

Two sources: what the server counts as requests pass through it (requests by endpoint and status,
prompt and generated tokens, latencies), and a snapshot of the engine taken at scrape time (KV-cache
blocks, running / waiting sequences, engine counters). Each app has its own registry so that two
servers in one process (tests) never share counters.

Latencies come from the engine's per-request statistics (`usage.extra`): time to first token, and
the mean decode interval of the request (1 / decode tokens per second) as its inter-token latency.
They measure the engine, not HTTP; `mlc_llm_request_latency_seconds` is the end-to-end time the
server saw.
"""

from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match

from ...protocol.openai_api_protocol import CompletionUsage
from .vllm_metrics import VllmMetrics
from ..metrics import MLC_METRIC_NAMES, MLC_ZERO_METRICS, with_mlc_names

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

EngineSnapshot = Callable[[], Mapping[str, Any]]

# The endpoint label of a request that matches no route. Labels are route templates, never raw
# paths: a client choosing paths would otherwise choose how many series /metrics holds.
UNMATCHED = "unmatched"

# Engine counters exported as they are (name in the engine's metrics dict -> Prometheus name, help).
_ENGINE_COUNTERS = (
    ("num_requests_finished", "mlc_llm_engine_requests_finished", "Sequences the engine finished"),
    ("num_requests_aborted", "mlc_llm_engine_requests_aborted", "Sequences the engine aborted"),
    ("prefill_tokens", "mlc_llm_engine_prefill_tokens", "Prompt tokens the engine computed"),
    ("decode_tokens", "mlc_llm_engine_decode_tokens", "Tokens the engine generated"),
    ("num_preemptions", "mlc_llm_engine_preemptions", "Sequences preempted for lack of KV blocks"),
    ("num_rope_recomputes", "mlc_llm_engine_rope_recomputes", "Sequences recomputed on growing past a longrope model's original context"),
    ("prefix_cache_hit_tokens", "mlc_llm_engine_prefix_cache_hit_tokens", "Prompt tokens reused from the prefix cache"),
    ("engine_steps", "mlc_llm_engine_steps", "Engine steps run"),
    ("spec_draft_tokens", "mlc_llm_spec_draft_tokens", "Draft tokens proposed (speculative decoding)"),
    ("spec_accepted_tokens", "mlc_llm_spec_accepted_tokens", "Draft tokens the target accepted"),
    ("spec_verify_steps", "mlc_llm_spec_verify_steps", "Sequence steps that verified drafts"),
    ("spec_draft_time_s", "mlc_llm_spec_draft_seconds", "Time spent proposing drafts"),
    ("spec_verify_time_s", "mlc_llm_spec_verify_seconds", "Time of the target steps that verified drafts"),
)
# Ratios over the engine's life, as gauges.
_ENGINE_GAUGES = (
    ("spec_acceptance_rate", "mlc_llm_spec_acceptance_rate", "Accepted over proposed draft tokens"),
    ("spec_mean_accepted_length", "mlc_llm_spec_mean_accepted_length", "Tokens emitted per verification step"),
)


class _EngineCollector(Collector):
    """Reads the engine's metrics at scrape time, so gauges are never stale."""

    def __init__(self, snapshot: EngineSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            m = self._snapshot()
        except Exception:  # a stopped engine leaves the server's own metrics scrapeable
            return
        total = int(m.get("num_total_blocks", 0))
        free = int(m.get("num_free_blocks", 0))
        yield GaugeMetricFamily("mlc_llm_kv_cache_blocks_total", "KV-cache blocks in the pool", value=total)
        yield GaugeMetricFamily(
            "mlc_llm_kv_cache_blocks_free", "KV-cache blocks not held by any sequence (cached ones included)", value=free
        )
        yield GaugeMetricFamily(
            "mlc_llm_kv_cache_blocks_cached",
            "Free KV-cache blocks that still hold a cached prefix (reused by a matching prompt, evicted last)",
            value=int(m.get("num_cached_blocks", 0)),
        )
        usage = (total - free) / total if total else 0.0
        yield GaugeMetricFamily("mlc_llm_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", value=usage)
        yield GaugeMetricFamily("mlc_llm_engine_running", "Sequences being generated", value=m.get("num_running", 0))
        yield GaugeMetricFamily("mlc_llm_engine_waiting", "Sequences waiting to start", value=m.get("num_waiting", 0))
        for key, name, text in _ENGINE_COUNTERS:
            if key in m:
                yield CounterMetricFamily(name, text, value=m[key])
        for key, name, text in _ENGINE_GAUGES:
            if key in m:
                yield GaugeMetricFamily(name, text, value=m[key])
        # MLC's names, unprefixed as MLC's /metrics shows them (its dashboards and tests read them);
        # gauges, because a counter's name would gain "_total".
        mlc = with_mlc_names(m)
        for name in (*MLC_METRIC_NAMES, *MLC_ZERO_METRICS):
            if name in mlc:
                yield GaugeMetricFamily(name, "MLC LLM's name for an engine total", value=mlc[name])


def route_label(routes: Sequence[BaseRoute], scope: Mapping[str, Any]) -> str:
    """The template of the route `scope` is for ("/v1/models/{model_id:path}"), or UNMATCHED."""
    for route in routes:
        match, _ = route.matches(dict(scope))
        if match != Match.NONE:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class ServerMetrics:
    def __init__(self, engine_snapshot: EngineSnapshot, model_name: str = "") -> None:
        # The `*_created` timestamp series double the output and no dashboard reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "mlc_llm_requests",
            "Requests answered, by endpoint and HTTP status (499: client disconnected)",
            ["endpoint", "status"],
            registry=r,
        )
        self._in_flight = Gauge("mlc_llm_requests_in_flight", "Requests being served", registry=r)
        self._prompt_tokens = Counter("mlc_llm_prompt_tokens", "Prompt tokens of served requests", registry=r)
        self._generation_tokens = Counter(
            "mlc_llm_generation_tokens", "Tokens generated for served requests", registry=r
        )
        self._ttft = Histogram(
            "mlc_llm_time_to_first_token_seconds",
            "Engine time from arrival to first token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "mlc_llm_inter_token_latency_seconds", "Mean decode interval of a request", buckets=_ITL_BUCKETS, registry=r
        )
        self._latency = Histogram(
            "mlc_llm_request_latency_seconds",
            "End-to-end request time seen by the server",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(engine_snapshot))
        # The same figures under vLLM's names, for routers and dashboards made for vLLM (llm-d, GIE).
        self._vllm = VllmMetrics(r, engine_snapshot, model_name)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_ended(self, endpoint: str, status: int, latency_s: float, usage: Optional[CompletionUsage]) -> None:
        """Counts one answered request; `usage` is what it consumed (None if it never reached the engine)."""
        self._in_flight.dec()
        self.count(endpoint, status)
        self._latency.observe(latency_s)
        if usage is None:
            return
        self._prompt_tokens.inc(usage.prompt_tokens)
        self._generation_tokens.inc(usage.completion_tokens)
        extra = usage.extra or {}
        ttft = extra.get("ttft_s")
        if isinstance(ttft, (int, float)) and ttft >= 0:
            self._ttft.observe(ttft)
        rate = extra.get("decode_tokens_per_s")
        if isinstance(rate, (int, float)) and rate > 0:
            self._itl.observe(1.0 / rate)
        self._vllm.observe(latency_s, ttft, rate)

    def count(self, endpoint: str, status: int) -> None:
        self._requests.labels(endpoint=endpoint, status=str(status)).inc()
