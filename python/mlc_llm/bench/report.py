"""The text tables printed after a benchmark and the JSON file it saves."""

import datetime
import json
from typing import Any, Dict, List, Optional, Sequence

from .stats import Distribution, Summary

_LATENCIES = (("TTFT (ms)", "ttft_ms"), ("ITL (ms)", "itl_ms"), ("E2E (ms)", "e2e_ms"))


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def scenario_table(summary: Summary) -> str:
    """One scenario: counts, throughput, and a latency table (mean, p50, p90, p99)."""
    lines = [
        f"=== {summary.label} ===",
        f"requests: {summary.num_requests - summary.num_failed} ok, {summary.num_failed} failed "
        f"in {summary.duration_s:.2f} s",
        f"throughput: {summary.request_throughput:.2f} req/s, "
        f"{summary.output_token_throughput:.1f} output tok/s, {summary.total_token_throughput:.1f} total tok/s",
    ]
    if summary.first_error:
        lines.append(f"first error: {summary.first_error}")
    lines.append(f"{'metric':<10} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9}")
    for title, name in _LATENCIES:
        d: Distribution = getattr(summary, name)
        lines.append(f"{title:<10} {_ms(d.mean):>9} {_ms(d.p50):>9} {_ms(d.p90):>9} {_ms(d.p99):>9}")
    return "\n".join(lines)


def overview_table(summaries: Sequence[Summary]) -> str:
    """One row per scenario, to compare them at a glance."""
    header = (
        f"{'scenario':<32} {'req/s':>8} {'out tok/s':>10} {'TTFT p50':>9} {'ITL p50':>8} {'E2E p50':>9} {'failed':>7}"
    )
    rows = [header]
    for s in summaries:
        rows.append(
            f"{s.label:<32} {s.request_throughput:>8.2f} {s.output_token_throughput:>10.1f} "
            f"{_ms(s.ttft_ms.p50):>9} {_ms(s.itl_ms.p50):>8} {_ms(s.e2e_ms.p50):>9} {s.num_failed:>7}"
        )
    return "\n".join(rows)


def results_json(
    summaries: Sequence[Summary], *, command: List[str], endpoint: str, model: str, workload: Dict[str, Any]
) -> Dict[str, Any]:
    """Everything needed to tell later where a number came from."""
    return {
        "command": " ".join(command),
        "argv": list(command),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "endpoint": endpoint,
        "model": model,
        "workload": workload,
        "results": [s.to_json() for s in summaries],
    }


def save_json(path: str, results: Dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
