"""A PNG of throughput and latency against concurrency (or request rate) over the scenarios."""

from typing import List, Sequence, Tuple

from .stats import Summary


def _axis(summaries: Sequence[Summary]) -> Tuple[str, List[float]]:
    """Request rate when every scenario has one, otherwise concurrency."""
    if all(s.request_rate is not None for s in summaries):
        return "request rate (req/s)", [float(s.request_rate or 0.0) for s in summaries]
    return "concurrency", [float(s.concurrency or 1) for s in summaries]


def save_plot(path: str, summaries: Sequence[Summary], title: str) -> List[List[str]]:
    """Left: output tokens/s and requests/s; right: p50 (solid) and p99 (dashed) latencies. Returns each
    panel's legend labels."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    xlabel, values = _axis(summaries)
    # Scenarios are evenly spaced and labelled with their value: concurrencies usually grow
    # geometrically, and a request rate may be infinite.
    xs = list(range(len(values)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.suptitle(title)

    # Requests/s is proportional to tokens/s when every request has the same output length, so on twin
    # axes the two lines coincide and one hides the other: requests/s is drawn as bars behind the line.
    requests = left.twinx()
    bars = requests.bar(xs, [s.request_throughput for s in summaries], width=0.5, color="tab:orange", alpha=0.35, label="requests/s")
    requests.set_ylabel("requests/s", color="tab:orange")
    (line,) = left.plot(xs, [s.output_token_throughput for s in summaries], "o-", color="tab:blue", label="output tokens/s")
    left.set_xlabel(xlabel)
    left.set_ylabel("output tokens/s", color="tab:blue")
    left.set_zorder(requests.get_zorder() + 1)  # the line over the bars
    left.patch.set_visible(False)
    left.set_ylim(bottom=0)
    requests.set_ylim(bottom=0)
    left.legend(handles=[line, bars], loc="upper left", fontsize="small")
    left.set_title("throughput")

    for name, label, color in (("ttft_ms", "TTFT", "tab:green"), ("itl_ms", "ITL", "tab:red"), ("e2e_ms", "E2E", "tab:purple")):
        p50 = [getattr(s, name).p50 for s in summaries]
        p99 = [getattr(s, name).p99 for s in summaries]
        right.plot(xs, [v if v is not None else float("nan") for v in p50], "o-", color=color, label=f"{label} p50")
        right.plot(xs, [v if v is not None else float("nan") for v in p99], "x--", color=color, label=f"{label} p99")
    right.set_xlabel(xlabel)
    right.set_ylabel("latency (ms)")
    right.set_yscale("log")
    right.set_title("latency")
    right.legend(fontsize="small")

    for axis in (left, right):
        axis.set_xticks(xs)
        axis.set_xticklabels([f"{v:g}" for v in values])
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    labels = [[t.get_text() for t in axis.get_legend().get_texts()] for axis in (left, right)]
    plt.close(fig)
    return labels
