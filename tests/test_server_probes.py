"""Kubernetes probes and the vLLM-named metrics on an app with a stand-in engine (no model): readiness
fails while the server drains or when the engine stops, liveness does not; /metrics carries the series
llm-d and the Gateway API Inference Extension read, with the values the engine reports."""

from typing import Any, Dict

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mlc_llm.serve.server.app import begin_draining, create_app
from mlc_llm.serve.server.settings import ServerSettings


class StandInEngine:
    """What the app asks of the engine for probes and metrics: its metrics snapshot."""

    def __init__(self) -> None:
        self.running = True
        self.snapshot: Dict[str, Any] = {"num_total_blocks": 100, "num_free_blocks": 75, "num_running": 3,
                                         "num_waiting": 2, "prefill_tokens": 900, "prefix_cache_hit_tokens": 100}

    def _metrics(self) -> Dict[str, Any]:
        if not self.running:
            raise RuntimeError("engine stopped")
        return self.snapshot


def test_readiness_fails_while_draining_or_stopped_liveness_does_not() -> None:
    engine = StandInEngine()
    app = create_app(engine, ServerSettings(served_model_name="m"))  # type: ignore[arg-type]
    with TestClient(app) as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 200
        assert c.get("/health").status_code == 200
        engine.running = False
        assert c.get("/health/ready").status_code == 503
        assert c.get("/health").json()["error"]["type"]  # an OpenAI error object
        assert c.get("/health/live").status_code == 200
        engine.running = True
        begin_draining(app)
        assert c.get("/health/ready").status_code == 503
        assert c.get("/health/live").status_code == 200


def test_vllm_named_gauges_and_counters_follow_the_engine() -> None:
    engine = StandInEngine()
    app = create_app(engine, ServerSettings(served_model_name="my-model"))  # type: ignore[arg-type]
    with TestClient(app) as c:
        text = c.get("/metrics").text
    samples = {s.name: s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("vllm:")}
    assert all(s.labels["model_name"] == "my-model" for s in samples.values())
    assert samples["vllm:num_requests_running"].value == 3
    assert samples["vllm:num_requests_waiting"].value == 2
    assert samples["vllm:kv_cache_usage_perc"].value == 0.25
    assert samples["vllm:gpu_cache_usage_perc"].value == 0.25
    assert samples["vllm:prefix_cache_queries_total"].value == 1000
    assert samples["vllm:prefix_cache_hits_total"].value == 100
