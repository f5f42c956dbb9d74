"""Summaries of a benchmark run: latency distributions (mean, p50, p90, p99) and throughput.

Percentiles interpolate linearly between the two nearest ranks (numpy's default, so numbers compare
with other tools'). Latencies are reported in milliseconds.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

from .client import RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of a non-empty sequence, linearly interpolated."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency, in milliseconds; all None when nothing was measured."""

    count: int
    mean: Optional[float]
    p50: Optional[float]
    p90: Optional[float]
    p99: Optional[float]

    @staticmethod
    def of_seconds(values: Sequence[float]) -> "Distribution":
        if not values:
            return Distribution(0, None, None, None, None)
        ms = [v * 1000.0 for v in values]
        p50, p90, p99 = (percentile(ms, q) for q in PERCENTILES)
        return Distribution(len(ms), sum(ms) / len(ms), p50, p90, p99)


@dataclass(frozen=True)
class Summary:
    """One scenario (a concurrency or a request rate) of a benchmark."""

    concurrency: Optional[int]
    request_rate: Optional[float]
    num_requests: int
    num_failed: int
    duration_s: float
    request_throughput: float  # finished requests per second
    input_token_throughput: float
    output_token_throughput: float
    total_token_throughput: float
    ttft_ms: Distribution
    itl_ms: Distribution
    e2e_ms: Distribution
    first_error: Optional[str]

    @property
    def label(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        if self.request_rate is not None:
            parts.append(f"request rate {self.request_rate:g}/s")
        return ", ".join(parts) or "unbounded"

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def summarize(
    records: List[RequestRecord], duration_s: float, concurrency: Optional[int], request_rate: Optional[float]
) -> Summary:
    """Throughput counts only requests that succeeded, over the wall time of the whole scenario."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    seconds = max(duration_s, 1e-9)
    input_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    return Summary(
        concurrency=concurrency,
        request_rate=request_rate,
        num_requests=len(records),
        num_failed=len(failed),
        duration_s=duration_s,
        request_throughput=len(ok) / seconds,
        input_token_throughput=input_tokens / seconds,
        output_token_throughput=output_tokens / seconds,
        total_token_throughput=(input_tokens + output_tokens) / seconds,
        ttft_ms=Distribution.of_seconds([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl_ms=Distribution.of_seconds([gap for r in ok for gap in r.itl_s]),
        e2e_ms=Distribution.of_seconds([r.e2e_s for r in ok if r.e2e_s is not None]),
        first_error=failed[0].error if failed else None,
    )
