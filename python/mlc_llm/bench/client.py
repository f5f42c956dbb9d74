"""One streamed chat request against an OpenAI-compatible endpoint, timed from the client's side.

TTFT is the time to the first chunk that carries text; inter-token latency (ITL) is the gap between
consecutive text chunks (a server that packs several tokens into one chunk shows fewer, longer
gaps); end-to-end latency ends at the last byte. Token counts come from the server's `usage` when it
sends one (we ask with stream_options.include_usage) and otherwise from the number of text chunks.
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import httpx

from .workload import Prompt


@dataclass
class RequestRecord:
    """What one request measured. `error` is set when it failed; its timings are then unusable."""

    prompt_tokens: int
    output_tokens: int = 0
    ttft_s: Optional[float] = None
    e2e_s: Optional[float] = None
    itl_s: List[float] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None

    def to_json(self) -> Dict[str, Any]:
        """The per-request entry of results.json (ITL gaps are summarized, not listed)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "ttft_s": self.ttft_s,
            "e2e_s": self.e2e_s,
            "num_itl": len(self.itl_s),
            "error": self.error,
        }


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send requests."""

    base_url: str
    model: str
    api_key: Optional[str] = None
    ignore_eos: bool = False
    temperature: Optional[float] = None

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, prompt: Prompt) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt.text}],
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.ignore_eos:
            body["ignore_eos"] = True  # MLC / vLLM extension: always generate max_tokens
        return body


async def send(client: httpx.AsyncClient, endpoint: Endpoint, prompt: Prompt) -> RequestRecord:
    """Sends `prompt`, reads the stream to its end and returns the timings; never raises for a
    failed request (the error is recorded), so one bad request does not stop a benchmark."""
    record = RequestRecord(prompt_tokens=prompt.approx_input_tokens)
    start = time.perf_counter()
    try:
        async with client.stream("POST", endpoint.chat_url, json=endpoint.body(prompt), headers=endpoint.headers()) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {r.status_code}: {body[:300]}"
                return record
            await _read_stream(r, record, start)
    except (httpx.HTTPError, ValueError) as err:
        record.error = f"{type(err).__name__}: {err}"
        return record
    record.e2e_s = time.perf_counter() - start
    if record.error is None and record.ttft_s is None:
        record.error = "the stream ended without any text"
    return record


async def _read_stream(response: httpx.Response, record: RequestRecord, start: float) -> None:
    last_text_at: Optional[float] = None
    text_chunks = 0
    usage: Optional[Dict[str, Any]] = None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, "event:" lines
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            record.error = f"server error: {chunk['error']}"
            return
        now = time.perf_counter()
        if chunk.get("usage"):
            usage = chunk["usage"]
        if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ()):
            if last_text_at is None:
                record.ttft_s = now - start
            else:
                record.itl_s.append(now - last_text_at)
            last_text_at = now
            text_chunks += 1
    record.output_tokens = int(usage["completion_tokens"]) if usage else text_chunks
    if usage and usage.get("prompt_tokens"):
        record.prompt_tokens = int(usage["prompt_tokens"])
