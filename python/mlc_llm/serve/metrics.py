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


# MLC's names for the same engine totals (its EngineMetrics JSON and /metrics text; MLC's server tests
# look for "engine_prefill_time_sum"). This engine never jumps forward in a grammar, so those are 0.
MLC_METRIC_NAMES = {
    "engine_prefill_time_sum": "prefill_time_s",
    "engine_decode_time_sum": "decode_time_s",
    "prefill_tokens_sum": "prefill_tokens",
    "decode_tokens_sum": "decode_tokens",
}
MLC_ZERO_METRICS = ("engine_jump_forward_time_sum", "jump_forward_tokens_sum")


def with_mlc_names(metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """`metrics` plus the same totals under MLC's names (where the engine reports them)."""
    out = dict(metrics)
    for mlc_name, ours in MLC_METRIC_NAMES.items():
        if ours in metrics:
            out.setdefault(mlc_name, metrics[ours])
    for mlc_name in MLC_ZERO_METRICS:
        out.setdefault(mlc_name, 0)
    return out


class EngineMetrics(Mapping[str, Any]):
    """A read-only snapshot of the engine's metrics dict (with MLC's names beside ours)."""

    def __init__(self, metrics: Dict[str, Any]) -> None:
        self.metrics: Dict[str, Any] = with_mlc_names(metrics)

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
