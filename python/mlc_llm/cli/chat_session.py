"""One terminal conversation over an MLCEngine: the message history, the sampling settings a user
can change with `/set`, and the speed of the last turn (`/stats`).

Kept apart from the terminal loop in chat.py so that it can be driven without a terminal.
"""

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

# Settings `/set` accepts, with the type each value is converted to.
SETTABLE: Dict[str, Callable[[str], Any]] = {
    "temperature": float,
    "top_p": float,
    "frequency_penalty": float,
    "presence_penalty": float,
    "max_tokens": int,
    "seed": int,
}


@dataclass(frozen=True)
class TurnStats:
    """Speed of one answer. Prefill counts the tokens the engine actually computed (a prefix-cache
    hit on the earlier turns makes it smaller than the prompt)."""

    prompt_tokens: int
    prefill_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_s: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.ttft_s if self.ttft_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # The first token comes out of prefill; decoding produced the rest.
        decoded = max(self.completion_tokens - 1, 0)
        return decoded / self.decode_s if self.decode_s > 0 else 0.0

    def describe(self) -> str:
        return (
            f"prompt: {self.prompt_tokens} tokens, "
            f"prefill: {self.prefill_tokens_per_s:.1f} tok/s ({self.prefill_tokens} tokens), "
            f"decode: {self.decode_tokens_per_s:.1f} tok/s ({self.completion_tokens} tokens)"
        )


class ChatSession:
    """The conversation so far and the sampling settings of the next turns."""

    def __init__(self, engine: Any, model: str, sampling: Dict[str, Any]) -> None:
        self._engine = engine
        self._model = model
        self.sampling: Dict[str, Any] = {k: v for k, v in sampling.items() if v is not None}
        self.messages: List[Dict[str, str]] = []
        self.last_stats: Optional[TurnStats] = None

    def reset(self) -> None:
        """Forgets the conversation (the settings stay)."""
        self.messages = []
        self.last_stats = None

    def set_options(self, text: str) -> Dict[str, Any]:
        """Applies `"temperature=0.5;max_tokens=64"`; raises ValueError naming a bad key or value."""
        changed: Dict[str, Any] = {}
        for item in text.split(";"):
            if not item.strip():
                continue
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or key not in SETTABLE:
                raise ValueError(f"cannot set {item.strip()!r}; settable: {', '.join(SETTABLE)}")
            try:
                changed[key] = SETTABLE[key](value)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a valid {SETTABLE[key].__name__}") from None
        self.sampling.update(changed)
        return changed

    def ask(self, text: str, write: Callable[[str], None]) -> str:
        """Streams the answer to `text` through `write` and keeps both in the history. An
        interrupted turn (Ctrl-C) leaves the history as it was before the question."""
        messages = self.messages + [{"role": "user", "content": text}]
        started = time.perf_counter()
        first_token_at: Optional[float] = None
        usage: Any = None
        pieces: List[str] = []
        stream = self._engine.chat.completions.create(
            messages=messages,
            model=self._model,
            stream=True,
            stream_options={"include_usage": True},
            **self.sampling,
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                content = choice.delta.content
                if content:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    pieces.append(content)
                    write(content)
        finished = time.perf_counter()
        answer = "".join(pieces)
        self.messages = messages + [{"role": "assistant", "content": answer}]
        self.last_stats = _turn_stats(usage, started, first_token_at, finished)
        return answer


def _turn_stats(usage: Any, started: float, first_token_at: Optional[float], finished: float) -> Optional[TurnStats]:
    """Prefers the engine's own timings (usage.extra); falls back to what this side observed."""
    if usage is None:
        return None
    extra: Dict[str, Any] = dict(usage.extra or {})
    first = first_token_at if first_token_at is not None else finished
    ttft = float(extra.get("ttft_s", first - started))
    e2e = float(extra.get("end_to_end_latency_s", finished - started))
    return TurnStats(
        prompt_tokens=int(usage.prompt_tokens),
        prefill_tokens=int(extra.get("prefill_tokens", usage.prompt_tokens)),
        completion_tokens=int(usage.completion_tokens),
        ttft_s=ttft,
        decode_s=max(e2e - ttft, 0.0),
    )
