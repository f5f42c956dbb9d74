"""The Prometheus metrics vLLM exports, under vLLM's names, beside our own (`mlc_llm_*`).

Routers that pick a replica by its load read these names: llm-d's inference scheduler and the Gateway API
Inference Extension's endpoint picker (queue length, KV-cache utilization, prefix-cache hit rate), KServe
through them, and Grafana dashboards made for vLLM. The values are the engine's, taken at scrape time
(gauges and counters) or observed per finished request (histograms); every series carries vLLM's
`model_name` label with the served model's id.

    vllm:num_requests_running          gauge      sequences being generated
    vllm:num_requests_waiting          gauge      sequences waiting to start
    vllm:kv_cache_usage_perc           gauge      fraction (0..1) of KV-cache blocks in use (vLLM v1's name)
    vllm:gpu_cache_usage_perc          gauge      the same (vLLM v0's name, which older routers read)
    vllm:prefix_cache_queries_total    counter    prompt tokens looked up in the prefix cache
    vllm:prefix_cache_hits_total       counter    of those, tokens found there
    vllm:time_to_first_token_seconds   histogram  engine time from arrival to first token
    vllm:inter_token_latency_seconds   histogram  mean decode interval of a request
    vllm:e2e_request_latency_seconds   histogram  end-to-end request time the server saw
"""

from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

EngineSnapshot = Callable[[], Mapping[str, Any]]

# vLLM's own bucket edges, so that dashboards' quantiles line up.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class _VllmEngineCollector(Collector):
    def __init__(self, snapshot: EngineSnapshot, model_name: str) -> None:
        self._snapshot = snapshot
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        try:
            m = self._snapshot()
        except Exception:  # a stopped engine leaves the other metrics scrapeable
            return

        def gauge(name: str, text: str, value: float) -> Metric:
            g = GaugeMetricFamily(name, text, labels=["model_name"])
            g.add_metric([self._model], value)
            return g

        def counter(name: str, text: str, value: float) -> Metric:
            c = CounterMetricFamily(name, text, labels=["model_name"])
            c.add_metric([self._model], value)
            return c

        total = int(m.get("num_total_blocks", 0))
        free = int(m.get("num_free_blocks", 0))
        usage = (total - free) / total if total else 0.0
        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", m.get("num_running", 0))
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", m.get("num_waiting", 0))
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield gauge("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage (vLLM v0's name).", usage)
        hits = m.get("prefix_cache_hit_tokens", 0)
        # Every prompt token is looked up once: those computed (prefill) and those found cached.
        yield counter("vllm:prefix_cache_queries", "Prefix-cache queries, in tokens.", m.get("prefill_tokens", 0) + hits)
        yield counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens.", hits)


class VllmMetrics:
    """Registers the vLLM-named series in `registry`; `observe` records one finished request."""

    def __init__(self, registry: CollectorRegistry, snapshot: EngineSnapshot, model_name: str) -> None:
        self._model = model_name
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ["model_name"],
            buckets=TTFT_BUCKETS, registry=registry,
        )
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ["model_name"],
            buckets=ITL_BUCKETS, registry=registry,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", ["model_name"],
            buckets=E2E_BUCKETS, registry=registry,
        )
        registry.register(_VllmEngineCollector(snapshot, model_name))

    def observe(self, latency_s: float, ttft_s: Any, decode_tokens_per_s: Any) -> None:
        self._e2e.labels(self._model).observe(latency_s)
        if isinstance(ttft_s, (int, float)) and ttft_s >= 0:
            self._ttft.labels(self._model).observe(ttft_s)
        if isinstance(decode_tokens_per_s, (int, float)) and decode_tokens_per_s > 0:
            self._itl.labels(self._model).observe(1.0 / decode_tokens_per_s)
