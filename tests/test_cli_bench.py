"""`mlc_llm bench`: its statistics against numpy, its workloads, and an end-to-end run against a
small OpenAI-compatible server (`mlc_llm serve` on SmolLM2 when this build has it, otherwise a
scripted streaming server defined here), checking the printed table, the JSON and the PNG.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from mlc_llm.bench import workload
from mlc_llm.bench.client import RequestRecord
from mlc_llm.bench.stats import Distribution, percentile, summarize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentiles_match_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.exponential(0.05, size=n).tolist()
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_is_in_milliseconds() -> None:
    seconds = [0.010, 0.020, 0.030, 0.100]
    d = Distribution.of_seconds(seconds)
    ms = np.array(seconds) * 1000
    assert d.count == 4
    assert d.mean == pytest.approx(ms.mean())
    assert (d.p50, d.p90, d.p99) == pytest.approx(tuple(np.percentile(ms, [50, 90, 99])))
    assert Distribution.of_seconds([]) == Distribution(0, None, None, None, None)


def test_summary_counts_only_successful_requests() -> None:
    records = [
        RequestRecord(prompt_tokens=10, output_tokens=5, ttft_s=0.1, e2e_s=0.5, itl_s=[0.1, 0.1, 0.1, 0.1]),
        RequestRecord(prompt_tokens=20, output_tokens=3, ttft_s=0.3, e2e_s=0.7, itl_s=[0.2, 0.2]),
        RequestRecord(prompt_tokens=30, error="HTTP 500: boom"),
    ]
    s = summarize(records, duration_s=2.0, concurrency=2, request_rate=None)
    assert (s.num_requests, s.num_failed, s.first_error) == (3, 1, "HTTP 500: boom")
    assert s.request_throughput == pytest.approx(1.0)
    assert s.input_token_throughput == pytest.approx(15.0)
    assert s.output_token_throughput == pytest.approx(4.0)
    assert s.total_token_throughput == pytest.approx(19.0)
    assert s.ttft_ms.mean == pytest.approx(200.0)
    assert s.itl_ms.count == 6
    assert s.itl_ms.p50 == pytest.approx(float(np.percentile([100, 100, 100, 100, 200, 200], 50)))
    assert s.e2e_ms.p99 == pytest.approx(float(np.percentile([500, 700], 99)))


# ---------------------------------------------------------------------------------------- workloads


def test_synthetic_workload_is_seeded_and_sized() -> None:
    a = workload.synthetic(5, input_len=32, output_len=7, seed=3)
    b = workload.synthetic(5, input_len=32, output_len=7, seed=3)
    assert a == b
    assert all(len(p.text.split()) == 32 and p.max_tokens == 7 for p in a)
    assert len({p.text for p in a}) == 5


def test_sharegpt_workload(tmp_path: Any) -> None:
    data = [
        {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "x" * 400}]},
        {"conversations": [{"from": "gpt", "value": "no question first"}]},
        {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    prompts = workload.sharegpt(str(path), 4, seed=0)
    assert len(prompts) == 4
    assert {p.text for p in prompts} == {"Hi there", "What is 2+2?"}
    lengths = {p.text: p.max_tokens for p in prompts}
    assert lengths == {"Hi there": 100, "What is 2+2?": workload.MIN_SHAREGPT_OUTPUT}
    assert all(p.max_tokens == 9 for p in workload.sharegpt(str(path), 2, output_len=9))


# --------------------------------------------------------------------------------- end to end (CLI)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ScriptedServer(BaseHTTPRequestHandler):
    """Streams `max_tokens` one-word chunks for every chat request, then a usage chunk."""

    protocol_version = "HTTP/1.1"
    requests_seen: List[Dict[str, Any]] = []
    auth_seen: List[str] = []

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "scripted-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests_seen.append(request)
        type(self).auth_seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        n = int(request["max_tokens"])
        for i in range(n):
            chunk = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.002)
        usage = {"prompt_tokens": len(request["messages"][0]["content"].split()), "completion_tokens": n,
                 "total_tokens": 0}
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[Dict[str, Any]]:
    port = _free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _ScriptedServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"base_url": f"http://127.0.0.1:{port}/v1", "scripted": True}
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(smollm2_path: str, tmp_path_factory: Any, scripted_server: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """An OpenAI-compatible endpoint: the real `mlc_llm serve` on SmolLM2 when this build has it,
    else the scripted one."""
    if importlib.util.find_spec("mlc_llm.cli.serve") is None:
        yield scripted_server
        return
    port = _free_port()
    # The server's log goes to a file: an unread pipe would fill up and stall the server.
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlc_llm", "serve", smollm2_path, "--device", "cpu", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log"],
            cwd=REPO, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, proc, log)
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "scripted": False}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_port(port: int, proc: "subprocess.Popen[bytes]", log: Any, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlc_llm serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            import httpx

            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlc_llm serve did not come up: {log.read_text()[-2000:]}")


def _env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))


def _mlc_llm(*args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout, cwd=REPO)


def test_help_lists_subcommands() -> None:
    result = _mlc_llm("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("chat", "bench", "serve"):
        assert name in result.stdout
    bench_help = _mlc_llm("bench", "--help", timeout=60)
    assert bench_help.returncode == 0 and "--request-rate" in bench_help.stdout


def test_bench_end_to_end(server: Dict[str, Any], tmp_path: Any) -> None:
    output = tmp_path / "results.json"
    result = _mlc_llm(
        "bench", "--base-url", server["base_url"], "--num-prompts", "4", "--input-len", "16", "--output-len", "6",
        "--concurrency", "1,2", "--num-warmup", "0", "--ignore-eos", "--temperature", "0", "--output", str(output),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for heading in ("=== concurrency 1 ===", "=== concurrency 2 ===", "TTFT (ms)", "ITL (ms)", "E2E (ms)", "p99"):
        assert heading in result.stdout
    assert "4 ok, 0 failed" in result.stdout

    saved = json.loads(output.read_text())
    assert saved["endpoint"] == server["base_url"]
    assert "bench" in saved["command"] and "--concurrency" in saved["argv"]
    assert saved["timestamp"] and saved["model"]
    assert [r["concurrency"] for r in saved["results"]] == [1, 2]
    for r in saved["results"]:
        assert r["num_requests"] == 4 and r["num_failed"] == 0
        assert r["ttft_ms"]["count"] == 4
        assert 0 < r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"]
        assert r["ttft_ms"]["p50"] <= r["ttft_ms"]["p90"] <= r["ttft_ms"]["p99"]
        assert r["output_token_throughput"] > 0
        # --ignore-eos makes every answer exactly --output-len tokens long
        assert r["output_token_throughput"] * r["duration_s"] == pytest.approx(4 * 6)

    png = tmp_path / "results.png"
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    if server["scripted"]:
        assert _ScriptedServer.requests_seen[-1]["ignore_eos"] is True


def test_bench_request_rate(scripted_server: Dict[str, Any], tmp_path: Any) -> None:
    output = tmp_path / "rate.json"
    plot = tmp_path / "rate.png"
    _ScriptedServer.requests_seen.clear()
    result = _mlc_llm(
        "bench", "--base-url", scripted_server["base_url"], "--num-prompts", "3", "--input-len", "8",
        "--output-len", "4", "--request-rate", "50,inf", "--num-warmup", "1", "--output", str(output),
        "--plot", str(plot), "--api-key", "secret",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "request rate 50/s" in result.stdout and "request rate inf/s" in result.stdout
    saved = json.loads(output.read_text())
    assert [r["request_rate"] for r in saved["results"]] == [50.0, float("inf")]
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert saved["model"] == "scripted-model"  # no --model: the first one /v1/models lists
    # 3 prompts per rate, each rate after one warm-up request
    assert len(_ScriptedServer.requests_seen) == 2 * (1 + 3)
    sent = _ScriptedServer.requests_seen[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 4 and "ignore_eos" not in sent and sent["model"] == "scripted-model"
    assert _ScriptedServer.auth_seen[-1] == "Bearer secret"


def test_bench_reports_unreachable_endpoint() -> None:
    result = _mlc_llm("bench", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--model", "m",
                      "--num-prompts", "2", "--num-warmup", "0", "--no-progress", timeout=60)
    assert result.returncode == 1
    assert "2 failed" in result.stdout and "ConnectError" in result.stdout


class _KeyedServer(BaseHTTPRequestHandler):
    """Answers 401 without `Authorization: Bearer k`, an empty model list with it."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == "Bearer k"
        body = json.dumps({"object": "list", "data": []} if ok else {"error": {"message": "no key"}}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_bench_says_why_it_found_no_model() -> None:
    """Without --model the bench asks /v1/models; when that fails it says what to change."""
    args = ["--num-prompts", "1", "--num-warmup", "0", "--no-progress"]
    r = _mlc_llm("bench", "--base-url", f"http://127.0.0.1:{_free_port()}/v1", *args, timeout=60)
    assert r.returncode == 1 and "cannot be reached" in r.stderr and "--base-url" in r.stderr, r.stderr
    port = _free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _KeyedServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        r = _mlc_llm("bench", "--base-url", f"http://127.0.0.1:{port}/v1", *args, timeout=60)
        assert r.returncode == 1 and "401" in r.stderr and "--api-key" in r.stderr, r.stderr
        r = _mlc_llm("bench", "--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", "k", *args, timeout=60)
        assert r.returncode == 1 and "lists no model" in r.stderr and "--model" in r.stderr, r.stderr
    finally:
        httpd.shutdown()


def test_plot_has_a_legend_on_both_panels(tmp_path: Any) -> None:
    # Same output length per request: requests/s is proportional to tokens/s, the case where two lines on
    # twin axes coincide and one hid the other. Both series must be named on the throughput panel.
    from mlc_llm.bench.plot import save_plot
    from mlc_llm.bench.stats import Distribution, Summary

    lat = Distribution.of_seconds([0.01, 0.02, 0.03])
    summaries = [
        Summary(c, None, 8, 0, 1.0, 2.0 * c, 10.0 * c, 64.0 * c, 74.0 * c, lat, lat, lat, None) for c in (1, 4, 16)
    ]
    path = tmp_path / "p.png"
    throughput, latency = save_plot(str(path), summaries, "t")
    assert throughput == ["output tokens/s", "requests/s"]
    assert latency == [f"{m} {p}" for m in ("TTFT", "ITL", "E2E") for p in ("p50", "p99")]
    assert path.read_bytes()[:8] == PNG_MAGIC
