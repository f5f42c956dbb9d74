"""Building OpenAI response objects from engine deltas.

A builder serves one user request of `n` choices (n engine requests). In streaming mode it turns each
delta into at most one chunk carrying one choice (the way OpenAI streams `n > 1`), plus a final
usage chunk when asked; otherwise it accumulates text and logprobs and assembles the full response
once every choice has finished. The work per delta is a dict lookup and one small object: no
re-rendering, no tokenizer calls.
"""

from typing import Any, Dict, List, Optional, Tuple, Union, cast

from ..protocol.errors import InternalError
from ..protocol.openai_api_protocol import (
    ChatCompletion,
    ChatToolCall,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionTokenLogprob,
    ChoiceDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionUsage,
    FinishReason,
    FunctionCall,
    Logprobs,
)
from .harmony import HarmonyStream, HarmonyTokens
from .reasoning import ReasoningStream
from .tool_calls import ToolCallStream, parse_tool_calls

Delta = Dict[str, Any]
LogprobEntry = Dict[str, Any]

# Engine statistics copied into `usage.extra` (MLC reports the same under that name).
_USAGE_EXTRA_KEYS = ("prefill_tokens", "ttft_s", "end_to_end_latency_s", "decode_tokens_per_s")


class _Builder:
    """Bookkeeping common to chat and text completions: choice index, finish reasons, token counts."""

    def __init__(
        self,
        *,
        response_id: str,
        model: str,
        created: int,
        engine_ids: List[str],
        prompt_tokens: int,
        stream: bool,
        include_usage: bool,
        logprobs: bool,
    ) -> None:
        self.response_id = response_id
        self.model = model
        self.created = created
        self.n = len(engine_ids)
        self._index_of = {engine_id: i for i, engine_id in enumerate(engine_ids)}
        self._prompt_tokens = prompt_tokens
        self._stream = stream
        self._include_usage = include_usage
        self._logprobs = logprobs
        self._finish: List[Optional[str]] = [None] * self.n
        self._completion_tokens = [0] * self.n
        self._remaining = self.n
        self._extra: Optional[Dict[str, Any]] = None
        self._texts: List[List[str]] = [[] for _ in range(self.n)]
        self._token_logprobs: List[List[LogprobEntry]] = [[] for _ in range(self.n)]

    @property
    def done(self) -> bool:
        return self._remaining == 0

    def on_delta(self, delta: Delta) -> List[Any]:
        index = self._index_of[delta["request_id"]]
        finish = self._record(index, delta)
        if not self._stream:
            self._texts[index].append(delta["text"])
            if self._logprobs and delta.get("logprobs"):
                self._token_logprobs[index].extend(delta["logprobs"])
            return []
        chunks: List[Any] = self._chunks(index, delta, finish)
        if self.done and self._include_usage:
            chunks.append(self._usage_chunk())
        return chunks

    def _record(self, index: int, delta: Delta) -> Optional[str]:
        finish = delta.get("finish_reason")
        if finish == "error":
            raise InternalError(delta.get("error") or "the engine failed while generating")
        self._completion_tokens[index] += len(delta.get("token_ids") or ())
        if finish is not None:
            usage = delta.get("usage")
            if usage:
                # The engine's count is authoritative (e.g. tokens removed by a stop string).
                self._completion_tokens[index] = int(usage.get("completion_tokens", self._completion_tokens[index]))
                if self._extra is None:
                    self._extra = {k: usage[k] for k in _USAGE_EXTRA_KEYS if k in usage}
            if self._finish[index] is None:
                self._remaining -= 1
            self._finish[index] = finish
        return finish

    def usage(self) -> CompletionUsage:
        completion = sum(self._completion_tokens)
        return CompletionUsage(
            prompt_tokens=self._prompt_tokens,
            completion_tokens=completion,
            total_tokens=self._prompt_tokens + completion,
            extra=self._extra,
        )

    def _chunks(self, index: int, delta: Delta, finish: Optional[str]) -> List[Any]:
        chunk = self._chunk(index, delta, finish)
        return [] if chunk is None else [chunk]

    def _chunk(self, index: int, delta: Delta, finish: Optional[str]) -> Any:
        raise NotImplementedError

    def _usage_chunk(self) -> Any:
        raise NotImplementedError


def _chat_logprobs(entries: List[LogprobEntry]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[ChatCompletionTokenLogprob.model_validate(e) for e in entries])


class ChatResponseBuilder(_Builder):
    """Deltas -> ChatCompletionChunk stream or one ChatCompletion. With `parse_tools`, output that
    is a tool call becomes `tool_calls` with finish_reason "tool_calls" (see tool_calls.py). With
    `reasoning` (True: the prompt leaves a <think> block open, False: the model may open one; gpt-oss's
    HarmonyTokens: its channels), a reasoning model's thinking goes to `reasoning_content` /
    `reasoning` and only the rest is content or a tool call (see reasoning.py, harmony.py)."""

    def __init__(
        self,
        *,
        parse_tools: bool = False,
        reasoning: Union[None, bool, HarmonyTokens] = None,
        legacy_functions: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A request in the legacy `functions` form gets its call as `function_call` (one per choice).
        self._legacy_functions = legacy_functions
        self._reasoning: Optional[List[Union[ReasoningStream, HarmonyStream]]] = None
        if isinstance(reasoning, HarmonyTokens):
            self._reasoning = [HarmonyStream(reasoning) for _ in range(self.n)]
        elif reasoning is not None:
            self._reasoning = [ReasoningStream(reasoning) for _ in range(self.n)]
        self._reasoning_texts: List[List[str]] = [[] for _ in range(self.n)]
        self._reasoning_tokens = [0] * self.n
        self._pending_reasoning = [""] * self.n
        self._started = [False] * self.n
        # MLC's engine streams carry role "assistant" in every delta (its tests assert it); the REST
        # server turns this off for OpenAI's convention of the first chunk only, because the openai
        # SDK's stream helper concatenates a role that repeats.
        self.role_in_every_delta = True
        self._tool_streams = [ToolCallStream() for _ in range(self.n)] if parse_tools and self._stream else None
        self._parse_tools = parse_tools

    def on_delta(self, delta: Delta) -> List[Any]:
        """Splits the thinking off first; the base class then sees only the answer text."""
        if self._reasoning is None:
            return super().on_delta(delta)
        index = self._index_of[delta["request_id"]]
        stream = self._reasoning[index]
        was_reasoning = stream.in_reasoning
        reasoning, text = stream.push(delta["text"], delta.get("token_ids") or ())
        if delta.get("finish_reason") is not None:
            more_reasoning, more_text = stream.finish()
            reasoning, text = reasoning + more_reasoning, text + more_text
        if was_reasoning or reasoning or stream.in_reasoning:
            # The tokens that open and close the thinking count as thinking, as OpenAI counts them.
            self._reasoning_tokens[index] += len(delta.get("token_ids") or ())
        self._reasoning_texts[index].append(reasoning)
        self._pending_reasoning[index] = reasoning
        return super().on_delta({**delta, "text": text})

    def usage(self) -> CompletionUsage:
        usage = super().usage()
        if self._reasoning is not None:
            usage.completion_tokens_details = {"reasoning_tokens": sum(self._reasoning_tokens)}
        return usage

    def _chunks(self, index: int, delta: Delta, finish: Optional[str]) -> List[Any]:
        reasoning, self._pending_reasoning[index] = self._pending_reasoning[index], ""
        if not reasoning:
            return self._answer_chunks(index, delta, finish)
        thinking = ChoiceDelta(content="", reasoning_content=reasoning, reasoning=reasoning)
        return [self._make_chunk(index, thinking, None, None), *self._answer_chunks(index, delta, finish)]

    def _answer_chunks(self, index: int, delta: Delta, finish: Optional[str]) -> List[Any]:
        if self._tool_streams is None:
            return super()._chunks(index, delta, finish)
        stream = self._tool_streams[index]
        text = stream.push(delta["text"])
        if finish is None:
            chunk = self._chunk(index, {**delta, "text": text}, None)
            return [] if chunk is None else [chunk]
        rest, calls = stream.finish()
        text += rest
        if not calls:
            chunk = self._chunk(index, {**delta, "text": text}, finish)
            return [] if chunk is None else [chunk]
        chunks = []
        if text or (self._logprobs and delta.get("logprobs")):
            chunks.append(self._chunk(index, {**delta, "text": text}, None))
        for call in calls:
            if not self._legacy_functions:
                chunks.append(self._make_chunk(index, ChoiceDelta(content="", tool_calls=[call]), None, None))
            elif call["index"] == 0:
                legacy = {k: v for k, v in call["function"].items() if k in ("name", "arguments")}
                chunks.append(self._make_chunk(index, ChoiceDelta(content="", function_call=legacy), None, None))
        reason = ("function_call" if self._legacy_functions else "tool_calls") if finish == "stop" else finish
        chunks.append(self._make_chunk(index, ChoiceDelta(content=""), reason, None))
        return chunks

    def _make_chunk(
        self, index: int, delta: ChoiceDelta, finish: Optional[str], entries: Optional[List[LogprobEntry]]
    ) -> ChatCompletionChunk:
        if self.role_in_every_delta or not self._started[index]:
            self._started[index] = True
            delta.role = "assistant"
        choice = ChatCompletionChunkChoice(
            index=index,
            delta=delta,
            finish_reason=cast(Optional[FinishReason], finish),
            logprobs=_chat_logprobs(entries) if entries is not None else None,
        )
        return ChatCompletionChunk(id=self.response_id, created=self.created, model=self.model, choices=[choice])

    def _chunk(self, index: int, delta: Delta, finish: Optional[str]) -> Optional[ChatCompletionChunk]:
        text: str = delta["text"]
        entries = delta.get("logprobs") if self._logprobs else None
        if not text and finish is None and not entries:
            return None  # e.g. a token still waiting for the rest of a UTF-8 character
        # Content is always a string so that `print(choice.delta.content, end="")` never prints None.
        return self._make_chunk(index, ChoiceDelta(content=text), finish, entries)

    def _message(self, i: int) -> Tuple[ChatCompletionMessage, FinishReason]:
        text = "".join(self._texts[i])
        finish = cast(FinishReason, self._finish[i] or "stop")
        thinking = None
        if self._reasoning is not None and self._reasoning[i].saw_reasoning:
            thinking = "".join(self._reasoning_texts[i])
        if self._parse_tools:
            content, calls = parse_tool_calls(text)
            if calls and self._legacy_functions:
                reason = cast(FinishReason, "function_call" if finish == "stop" else finish)
                call = FunctionCall(name=calls[0].name, arguments=calls[0].arguments)
                message = ChatCompletionMessage(content=content, function_call=call)
                return message.model_copy(update={"reasoning_content": thinking, "reasoning": thinking}), reason
            if calls:
                tool_calls = [ChatToolCall.model_validate(c.to_openai()) for c in calls]
                reason = cast(FinishReason, "tool_calls" if finish == "stop" else finish)
                message = ChatCompletionMessage(content=content, tool_calls=tool_calls)
                return message.model_copy(update={"reasoning_content": thinking, "reasoning": thinking}), reason
        return ChatCompletionMessage(content=text, reasoning_content=thinking, reasoning=thinking), finish

    def _usage_chunk(self) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.response_id, created=self.created, model=self.model, choices=[], usage=self.usage()
        )

    def response(self) -> ChatCompletion:
        choices = []
        for i in range(self.n):
            message, finish = self._message(i)
            choices.append(
                ChatCompletionChoice(
                    index=i,
                    message=message,
                    finish_reason=finish,
                    logprobs=_chat_logprobs(self._token_logprobs[i]) if self._logprobs else None,
                )
            )
        return ChatCompletion(
            id=self.response_id, created=self.created, model=self.model, choices=choices, usage=self.usage()
        )


class _LegacyLogprobs:
    """Accumulates the parallel lists of the legacy completions logprobs for one choice."""

    def __init__(self, start_offset: int) -> None:
        self.offset = start_offset
        self.value = Logprobs()

    def extend(self, entries: List[LogprobEntry]) -> Logprobs:
        """Adds `entries` and returns a Logprobs holding only them (for a stream chunk)."""
        part = Logprobs()
        for entry in entries:
            token: str = entry["token"]
            part.tokens.append(token)
            part.token_logprobs.append(entry["logprob"])
            part.top_logprobs.append({t["token"]: t["logprob"] for t in entry.get("top_logprobs") or ()})
            part.text_offset.append(self.offset)
            self.offset += len(token)
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self.value, name).extend(getattr(part, name))
        return part


class CompletionResponseBuilder(_Builder):
    """Deltas -> Completion chunks or one Completion. `echo_texts[i]` (its prompt, with echo) is
    prepended to choice i, and `suffix` appended to every choice when it ends (as MLC does)."""

    def __init__(self, *, echo_texts: Optional[List[str]] = None, suffix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._echo_texts = echo_texts or [""] * self.n
        self._suffix = suffix
        self._started = [False] * self.n
        self._legacy = [_LegacyLogprobs(len(echo)) for echo in self._echo_texts]

    def _chunk(self, index: int, delta: Delta, finish: Optional[str]) -> Optional[Completion]:
        text: str = delta["text"]
        entries = delta.get("logprobs") if self._logprobs else None
        if not text and finish is None and not entries:
            return None
        if not self._started[index]:
            self._started[index] = True
            text = self._echo_texts[index] + text
        if finish is not None:
            text += self._suffix
        choice = CompletionChoice(
            index=index,
            text=text,
            finish_reason=cast(Optional[FinishReason], finish),
            logprobs=self._legacy[index].extend(entries) if entries is not None else None,
        )
        return Completion(id=self.response_id, created=self.created, model=self.model, choices=[choice])

    def _usage_chunk(self) -> Completion:
        return Completion(id=self.response_id, created=self.created, model=self.model, choices=[], usage=self.usage())

    def response(self) -> Completion:
        choices = []
        for i in range(self.n):
            logprobs = None
            if self._logprobs:
                self._legacy[i].extend(self._token_logprobs[i])
                logprobs = self._legacy[i].value
            choices.append(
                CompletionChoice(
                    index=i,
                    text=self._echo_texts[i] + "".join(self._texts[i]) + self._suffix,
                    finish_reason=cast(FinishReason, self._finish[i] or "stop"),
                    logprobs=logprobs,
                )
            )
        return Completion(
            id=self.response_id, created=self.created, model=self.model, choices=choices, usage=self.usage()
        )
