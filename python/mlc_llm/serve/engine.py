"""MLCEngine and AsyncMLCEngine: MLC LLM's Python API on the native engine.

    engine = MLCEngine(model)
    for chunk in engine.chat.completions.create(messages=[...], stream=True): ...
    engine.terminate()

`create` takes the keyword arguments of OpenAI's / MLC's `create` (plus `extra_body`, merged in, for
the extras such as top_k or debug_config). Requests are validated and queued when `create` is called;
the returned stream then only reads its queue. The two classes share everything in engine_base.py and
differ only in how the caller waits.
"""

import asyncio
import queue
from typing import Any, Dict, List, Literal, Optional, Tuple, Union, cast, overload

from ..protocol.openai_api_protocol import ChatCompletion, ChatCompletionChunk, Completion
from .config import EngineConfig
from .engine_base import EngineBase, PreparedRequest
from .metrics import EngineMetrics
from .stream import (
    AsyncResponseStream,
    Item,
    SyncResponseStream,
    async_queue_sink,
    collect_async,
    collect_sync,
    queue_sink,
)

Messages = List[Dict[str, Any]]
Prompt = Union[str, List[int]]
Stop = Optional[Union[str, List[str]]]
ToolChoice = Optional[Union[Literal["none", "auto", "required"], Dict[str, Any]]]
SyncChatResult = Union[ChatCompletion, SyncResponseStream[ChatCompletionChunk]]
SyncCompletionResult = Union[Completion, SyncResponseStream[Completion]]
AsyncChatResult = Union[ChatCompletion, AsyncResponseStream[ChatCompletionChunk]]
AsyncCompletionResult = Union[Completion, AsyncResponseStream[Completion]]


def _arguments(local_vars: Dict[str, Any]) -> Dict[str, Any]:
    """The arguments of a `create` call that were actually given (None means "not given"), with
    extra keyword arguments merged so that validation reports unknown ones by name."""
    args = {k: v for k, v in local_vars.items() if k not in ("self", "kwargs") and v is not None}
    args.update(local_vars.get("kwargs") or {})
    return args


class _EngineAPI(EngineBase):
    """Adds the OpenAI-style namespaces `engine.chat.completions` and `engine.completions`."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        model_lib: Optional[str] = None,
        mode: Literal["local", "interactive", "server"] = "local",
        engine_config: Optional[EngineConfig] = None,
        additional_models: Optional[List[Union[str, Tuple[str, str]]]] = None,
        max_batch_size: Optional[int] = None,
        max_total_sequence_length: Optional[int] = None,
        prefill_chunk_size: Optional[int] = None,
        max_history_size: Optional[int] = None,
        gpu_memory_utilization: Optional[float] = None,
        speculative_mode: Literal["disable", "small_draft", "eagle", "medusa", "ngram"] = "disable",
        spec_draft_length: int = 4,
        enable_tracing: bool = False,
        verbose: bool = True,
        enable_kv_events: bool = False,
    ) -> None:
        """Loads `model` (a GGUF file, an HF or MLC directory, or HF://org/repo) on `device`
        ("auto", "cpu", "cuda", "cuda:N"). `mode` picks batch and cache sizes as MLC does
        (local: 4 sequences, interactive: 1, server: as many as fit); explicit sizes win.
        `model_lib` is accepted for compatibility: the kernels are built in. `enable_kv_events`
        records prefix-cache events for a router (`kv_events()`; `mlc_llm serve --kv-events-endpoint`)."""
        super().__init__(
            model,
            device,
            model_lib=model_lib,
            mode=mode,
            engine_config=engine_config,
            additional_models=additional_models,
            max_batch_size=max_batch_size,
            max_total_sequence_length=max_total_sequence_length,
            prefill_chunk_size=prefill_chunk_size,
            max_history_size=max_history_size,
            gpu_memory_utilization=gpu_memory_utilization,
            speculative_mode=speculative_mode,
            spec_draft_length=spec_draft_length,
            enable_tracing=enable_tracing,
            verbose=verbose,
            enable_kv_events=enable_kv_events,
        )
        self._init_api()

    def _init_api(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- sync


class ChatCompletions:
    """`engine.chat.completions` of MLCEngine."""

    def __init__(self, engine: "MLCEngine") -> None:
        self._engine = engine

    @overload
    def create(
        self, *, messages: Messages, stream: Literal[True], **kwargs: Any
    ) -> SyncResponseStream[ChatCompletionChunk]: ...

    @overload
    def create(
        self, *, messages: Messages, stream: Optional[Literal[False]] = None, **kwargs: Any
    ) -> ChatCompletion: ...

    def create(
        self,
        *,
        messages: Messages,
        model: Optional[str] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        logit_bias: Optional[Dict[Union[int, str], float]] = None,
        max_tokens: Optional[int] = None,
        max_completion_tokens: Optional[int] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Stop = None,
        stream: Optional[bool] = None,
        stream_options: Optional[Dict[str, Any]] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: ToolChoice = None,
        user: Optional[str] = None,
        response_format: Optional[Dict[str, Any]] = None,
        request_id: Optional[str] = None,
        extra_body: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> SyncChatResult:
        """A ChatCompletion, or with stream=True an iterator of ChatCompletionChunk."""
        prepared = self._engine._prepare_chat(_arguments(locals()))
        return cast(SyncChatResult, self._engine._run_sync(prepared))


class Chat:
    def __init__(self, engine: "MLCEngine") -> None:
        self.completions = ChatCompletions(engine)


class Completions:
    """`engine.completions` of MLCEngine (raw prompts, no chat template)."""

    def __init__(self, engine: "MLCEngine") -> None:
        self._engine = engine

    @overload
    def create(
        self, *, prompt: Prompt, stream: Literal[True], **kwargs: Any
    ) -> SyncResponseStream[Completion]: ...

    @overload
    def create(
        self, *, prompt: Prompt, stream: Optional[Literal[False]] = None, **kwargs: Any
    ) -> Completion: ...

    def create(
        self,
        *,
        prompt: Prompt,
        model: Optional[str] = None,
        best_of: Optional[int] = None,
        echo: Optional[bool] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        logprobs: Optional[Union[bool, int]] = None,
        top_logprobs: Optional[int] = None,
        logit_bias: Optional[Dict[Union[int, str], float]] = None,
        max_tokens: Optional[int] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Stop = None,
        stream: Optional[bool] = None,
        stream_options: Optional[Dict[str, Any]] = None,
        suffix: Optional[str] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        user: Optional[str] = None,
        response_format: Optional[Dict[str, Any]] = None,
        request_id: Optional[str] = None,
        extra_body: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> SyncCompletionResult:
        """A Completion, or with stream=True an iterator of Completion chunks."""
        prepared = self._engine._prepare_completion(_arguments(locals()))
        return cast(SyncCompletionResult, self._engine._run_sync(prepared))


class MLCEngine(_EngineAPI):
    """The synchronous engine: `create` returns a response, or an iterator when streaming."""

    def _init_api(self) -> None:
        self.chat = Chat(self)
        self.completions = Completions(self)

    def _run_sync(self, prepared: PreparedRequest) -> Any:
        q: "queue.SimpleQueue[Item]" = queue.SimpleQueue()
        submission = self._submit(prepared, queue_sink(q))
        if prepared.stream:
            return SyncResponseStream(submission, prepared.builder, q)
        collect_sync(submission, prepared.builder, q)
        return prepared.builder.response()

    def abort(self, request_id: str) -> None:
        """Stops `request_id`; its stream ends with finish_reason "abort"."""
        self._abort(request_id)

    def metrics(self) -> EngineMetrics:
        return self._metrics()


# --------------------------------------------------------------------------------------------- async


class AsyncChatCompletions:
    """`engine.chat.completions` of AsyncMLCEngine."""

    def __init__(self, engine: "AsyncMLCEngine") -> None:
        self._engine = engine

    @overload
    async def create(
        self, *, messages: Messages, stream: Literal[True], **kwargs: Any
    ) -> AsyncResponseStream[ChatCompletionChunk]: ...

    @overload
    async def create(
        self, *, messages: Messages, stream: Optional[Literal[False]] = None, **kwargs: Any
    ) -> ChatCompletion: ...

    async def create(
        self,
        *,
        messages: Messages,
        model: Optional[str] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        logit_bias: Optional[Dict[Union[int, str], float]] = None,
        max_tokens: Optional[int] = None,
        max_completion_tokens: Optional[int] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Stop = None,
        stream: Optional[bool] = None,
        stream_options: Optional[Dict[str, Any]] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: ToolChoice = None,
        user: Optional[str] = None,
        response_format: Optional[Dict[str, Any]] = None,
        request_id: Optional[str] = None,
        extra_body: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> AsyncChatResult:
        """A ChatCompletion, or with stream=True an async iterator of ChatCompletionChunk."""
        prepared = self._engine._prepare_chat(_arguments(locals()))
        return cast(AsyncChatResult, await self._engine._run_async(prepared))


class AsyncChat:
    def __init__(self, engine: "AsyncMLCEngine") -> None:
        self.completions = AsyncChatCompletions(engine)


class AsyncCompletions:
    """`engine.completions` of AsyncMLCEngine."""

    def __init__(self, engine: "AsyncMLCEngine") -> None:
        self._engine = engine

    @overload
    async def create(
        self, *, prompt: Prompt, stream: Literal[True], **kwargs: Any
    ) -> AsyncResponseStream[Completion]: ...

    @overload
    async def create(
        self, *, prompt: Prompt, stream: Optional[Literal[False]] = None, **kwargs: Any
    ) -> Completion: ...

    async def create(
        self,
        *,
        prompt: Prompt,
        model: Optional[str] = None,
        best_of: Optional[int] = None,
        echo: Optional[bool] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        logprobs: Optional[Union[bool, int]] = None,
        top_logprobs: Optional[int] = None,
        logit_bias: Optional[Dict[Union[int, str], float]] = None,
        max_tokens: Optional[int] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Stop = None,
        stream: Optional[bool] = None,
        stream_options: Optional[Dict[str, Any]] = None,
        suffix: Optional[str] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        user: Optional[str] = None,
        response_format: Optional[Dict[str, Any]] = None,
        request_id: Optional[str] = None,
        extra_body: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> AsyncCompletionResult:
        """A Completion, or with stream=True an async iterator of Completion chunks."""
        prepared = self._engine._prepare_completion(_arguments(locals()))
        return cast(AsyncCompletionResult, await self._engine._run_async(prepared))


class AsyncMLCEngine(_EngineAPI):
    """The asyncio engine: `await create(...)` returns a response, or an async iterator when
    streaming. Cancelling the awaiting task aborts the request."""

    def _init_api(self) -> None:
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)

    async def _run_async(self, prepared: PreparedRequest) -> Any:
        loop = asyncio.get_running_loop()
        q: "asyncio.Queue[Item]" = asyncio.Queue()
        submission = self._submit(prepared, async_queue_sink(loop, q))
        if prepared.stream:
            return AsyncResponseStream(submission, prepared.builder, q)
        await collect_async(submission, prepared.builder, q)
        return prepared.builder.response()

    async def abort(self, request_id: str) -> None:
        """Stops `request_id`; its stream ends with finish_reason "abort"."""
        self._abort(request_id)

    async def metrics(self) -> EngineMetrics:
        return self._metrics()
