"""Engine metrics as returned by `engine.metrics()`.

MLC returns an `EngineMetrics` object that is read both as a dict (`m["num_running"]`) and through
`prometheus_text()`; attribute access is added for convenience. The values are a snapshot taken when
`metrics()` was called.
"""

from typing import Any, Dict, Iterator, Mapping

# Monotonic totals are Prometheus counters; everything else is a point-in-time gauge.
_COUNTERS = frozenset(
    {
        "num_requests_finished",
        "num_requests_aborted",
        "prefill_tokens",
        "decode_tokens",
        "num_preemptions",
        "num_rope_recomputes",
        "prefix_cache_hit_tokens",
        "engine_steps",
    }
)


class EngineMetrics(Mapping[str, Any]):
    """A read-only snapshot of the engine's metrics dict."""

    def __init__(self, metrics: Dict[str, Any]) -> None:
        self.metrics: Dict[str, Any] = dict(metrics)

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not regular attributes.
        try:
            return self.__dict__["metrics"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"EngineMetrics({self.metrics!r})"

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.metrics)

    def prometheus_text(self, prefix: str = "mlc_llm_") -> str:
        """The metrics in the Prometheus text exposition format (numeric values only)."""
        lines = []
        for key, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = prefix + key
            kind = "counter" if key in _COUNTERS else "gauge"
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"
