"""What MLCEngine and AsyncMLCEngine share: construction of the native engine, turning validated
requests into engine requests, the registry of running requests, and lifecycle (abort, reset,
metrics, tracing, terminate).

The two public classes differ only in how a caller waits (a plain queue vs. an asyncio queue), so
everything that does not wait lives here.
"""

import atexit
import json
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from .._native import load_core
from ..protocol.errors import BadRequestError, EngineDeadError
from ..protocol.openai_api_protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, parse_request
from .config import EngineArgs, EngineConfig, merge_engine_config, model_list, validate_engine_args
from .metrics import EngineMetrics
from .harmony import HarmonyTokens
from .reasoning import knows_think_tags, starts_in_reasoning, strip_history
from .responses import ChatResponseBuilder, CompletionResponseBuilder
from .stream import Sink, StreamBack
from .tool_calls import call_format, forced_call_grammar, tools_system_prompt

logger = logging.getLogger("mlc_llm.serve")

_SEED_MODULUS = 1 << 64
_live_engines: "weakref.WeakSet[EngineBase]" = weakref.WeakSet()


@atexit.register
def _terminate_live_engines() -> None:
    """Stops engine threads before the interpreter tears down, so no thread calls into a dying
    interpreter (callers often forget terminate())."""
    for engine in list(_live_engines):
        try:
            engine.terminate()
        except Exception:
            pass


def _ensure_log_handler() -> None:
    """`verbose=True` promises visible logs; add a stderr handler only if the application set none."""
    package_logger = logging.getLogger("mlc_llm")
    if package_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)


@dataclass
class PreparedRequest:
    """A validated request ready for the engine: per choice (engine id) its prompt and params JSON
    (choices of one prompt share the same list object)."""

    request_id: str
    engine_ids: List[str]
    prompts: List[List[int]]
    params_json: List[str]
    stream: bool
    builder: Union[ChatResponseBuilder, CompletionResponseBuilder]


class EngineSubmission:
    """The engine-side handle of one running user request (see stream.Submission)."""

    def __init__(self, engine: "EngineBase", request_id: str, engine_ids: List[str]) -> None:
        self._engine = engine
        self.request_id = request_id
        self.engine_ids = engine_ids
        # Set once the routes are registered; unregistering compares it so that only our routes go.
        self.sink: Optional[Sink] = None
        self._released = False

    def cancel(self) -> None:
        if self._released:
            return
        core = self._engine._core
        for engine_id in self.engine_ids:
            try:
                core.abort(engine_id)
            except Exception:  # the engine may already be gone; nothing is left to stop then
                pass
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._forget(self)


class EngineBase:
    """The native engine plus its stream-back thread and request registry."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        model_lib: Optional[str] = None,
        mode: str = "local",
        engine_config: Optional[EngineConfig] = None,
        additional_models: Optional[List[Union[str, Tuple[str, str]]]] = None,
        max_batch_size: Optional[int] = None,
        max_total_sequence_length: Optional[int] = None,
        prefill_chunk_size: Optional[int] = None,
        max_history_size: Optional[int] = None,
        gpu_memory_utilization: Optional[float] = None,
        speculative_mode: str = "disable",
        spec_draft_length: int = 4,
        enable_tracing: bool = False,
        verbose: bool = True,
        enable_kv_events: bool = False,
    ) -> None:
        self._terminated = True  # until construction succeeds, terminate() has nothing to stop
        args = EngineArgs(
            model=os.fspath(model) if isinstance(model, os.PathLike) else model,
            device=device,
            model_lib=model_lib,
            mode=mode,
            additional_models=model_list(additional_models),
            max_batch_size=max_batch_size,
            max_total_sequence_length=max_total_sequence_length,
            prefill_chunk_size=prefill_chunk_size,
            max_history_size=max_history_size,
            gpu_memory_utilization=gpu_memory_utilization,
            speculative_mode=speculative_mode,
            spec_draft_length=spec_draft_length,
            enable_tracing=enable_tracing,
            verbose=verbose,
            kv_events=enable_kv_events,
        )
        if args.verbose:
            _ensure_log_handler()
        args = merge_engine_config(args, engine_config)
        validate_engine_args(args)
        self._args = args
        core_module = load_core()
        self._core = core_module.Engine(args.model, args.device, json.dumps(args.core_config()))
        self._info: Dict[str, Any] = json.loads(self._core.info())
        self._lock = threading.Lock()
        # request id -> its submission, and engine id -> the submission that owns it (see _submit).
        self._active: Dict[str, EngineSubmission] = {}
        self._owners: Dict[str, EngineSubmission] = {}
        self._thinking: Optional[Tuple[Union[None, str, HarmonyTokens]]] = None  # see _thinking_format
        self._stream_back = StreamBack(self._core)
        self._stream_back.start()
        self._terminated = False
        _live_engines.add(self)
        if args.verbose:
            self._log_sizes()

    # ------------------------------------------------------------------ introspection

    @property
    def model(self) -> str:
        return self._args.model

    def kv_events(self) -> List[Dict[str, Any]]:
        """The prefix-cache events since the last call, oldest first: {"type": "BlockStored",
        "block_hashes", "parent_block_hash", "token_ids", "block_size"}, {"type": "BlockRemoved",
        "block_hashes"} or {"type": "AllBlocksCleared"}; empty unless built with enable_kv_events."""
        return json.loads(self._core.kv_events())

    def cached_block_hashes(self) -> Set[int]:
        """A debug view: the hashes (as `kv_events` name them) of the blocks the prefix cache can
        find now, the set a router rebuilds by replaying the events. Waits for the running step."""
        return set(self._core.cached_block_hashes())

    @property
    def info(self) -> Dict[str, Any]:
        """The engine's resolved configuration and model facts (see _core.pyi `info`)."""
        return dict(self._info)

    def _log_sizes(self) -> None:
        info = self._info
        logger.info(
            "engine ready: model=%s (%s) device=%s mode=%s max_num_sequence=%s max_total_sequence_length=%s "
            "prefill_chunk_size=%s kv blocks=%s x %s tokens, context window=%s",
            info.get("model"),
            info.get("architecture"),
            info.get("device"),
            self._args.mode,
            info.get("max_num_sequence"),
            info.get("max_total_sequence_length"),
            info.get("prefill_chunk_size"),
            info.get("num_kv_blocks"),
            info.get("kv_block_size"),
            info.get("context_window_size"),
        )

    # ------------------------------------------------------------------ request preparation

    def _prepare_chat(self, kwargs: Dict[str, Any]) -> PreparedRequest:
        request = parse_request(ChatCompletionRequest, kwargs)
        messages = [_message_for_template(m) for m in request.messages]
        thinking = self._thinking_format()
        if thinking == "think":
            messages = strip_history(messages)
        tools = [t.model_dump(exclude_none=True) for t in request.tools or ()] if request.uses_tools() else []
        prompt = self._render_chat(messages, tools, request.chat_template_kwargs)
        grammar = request.grammar()
        forced = request.forced_tools()
        if forced:
            grammar = forced_call_grammar(forced, call_format(prompt))
        # The rendered template already holds BOS and every special token.
        prompt_ids = self._core.tokenize(prompt, False)
        request_id = request.request_id or f"chatcmpl-{uuid.uuid4().hex}"
        engine_ids = _engine_ids(request_id, request.n)
        top = request.top_logprobs or 0
        builder = ChatResponseBuilder(
            response_id=request_id,
            model=request.model or self._model_name(),
            created=int(time.time()),
            engine_ids=engine_ids,
            prompt_tokens=len(prompt_ids),
            stream=request.stream,
            include_usage=request.include_usage(),
            logprobs=request.logprobs,
            parse_tools=bool(tools),
            # Under a grammar (JSON output, a forced call) the output is constrained from its first token:
            # there is no thinking to split off, even where the template opened a block.
            reasoning=_reasoning_start(thinking, prompt) if grammar is None else None,
            legacy_functions=request.legacy_functions(),
        )
        params = _sampling_params(request, request.max_new_tokens(), request.logprobs, top)
        if grammar is not None:
            params["grammar"] = grammar
        return PreparedRequest(
            request_id,
            engine_ids,
            [prompt_ids] * len(engine_ids),
            _per_choice(params, request.seed, request.n),
            request.stream,
            builder,
        )

    def _prepare_completion(self, kwargs: Dict[str, Any]) -> PreparedRequest:
        request = parse_request(CompletionRequest, kwargs)
        prompts: List[List[int]] = []
        echo_texts: List[str] = []
        for prompt in request.prompts():
            if isinstance(prompt, str):
                prompt_ids = self._core.tokenize(prompt, True)
                echo_text = prompt if request.echo else ""
            else:
                prompt_ids = list(prompt)
                echo_text = self._core.detokenize(prompt_ids) if request.echo else ""
            if not prompt_ids:
                raise BadRequestError("the prompt is empty", "prompt")
            # OpenAI's order for a list of prompts: the n choices of the first prompt, then the next.
            prompts += [prompt_ids] * request.n
            echo_texts += [echo_text] * request.n
        request_id = request.request_id or f"cmpl-{uuid.uuid4().hex}"
        engine_ids = _engine_ids(request_id, len(prompts))
        logprobs = request.wants_logprobs()
        builder = CompletionResponseBuilder(
            echo_texts=echo_texts,
            suffix=request.suffix or "",
            response_id=request_id,
            model=request.model or self._model_name(),
            created=int(time.time()),
            engine_ids=engine_ids,
            prompt_tokens=sum(len(p) for p in prompts[:: request.n]),
            stream=request.stream,
            include_usage=request.include_usage(),
            logprobs=logprobs,
        )
        params = _sampling_params(request, request.max_tokens, logprobs, request.num_top_logprobs())
        grammar = request.grammar()
        if grammar is not None:
            params["grammar"] = grammar
        params_json = _per_choice(params, request.seed, request.n) * (len(prompts) // request.n)
        return PreparedRequest(request_id, engine_ids, prompts, params_json, request.stream, builder)

    def _render_chat(
        self, messages: List[Dict[str, Any]], tools: List[Dict[str, Any]], kwargs: Optional[Dict[str, Any]] = None
    ) -> str:
        """The prompt text. Tools go into the template context as HF passes them; a template that
        ignores them (its output is the same without them) gets them as a Hermes-style system
        message instead, so the model still learns what it may call and how. `kwargs` (a request's
        chat_template_kwargs) are extra template variables."""
        extra = (json.dumps(kwargs),) if kwargs else ()

        def render(turns: List[Dict[str, Any]], tools_json: Optional[str]) -> str:
            return str(self._core.apply_chat_template(json.dumps(turns), True, tools_json, *extra))

        tools_json = json.dumps(tools) if tools else None
        prompt = render(messages, tools_json)
        if not tools or prompt != render(messages, None):
            return prompt
        described = tools_system_prompt(tools)
        if messages and messages[0]["role"] == "system":
            first = {**messages[0], "content": f"{messages[0]['content']}\n\n{described}"}
            messages = [first, *messages[1:]]
        else:
            messages = [{"role": "system", "content": described}, *messages]
        return render(messages, tools_json)

    def _thinking_format(self) -> Union[None, str, HarmonyTokens]:
        """How the model marks its thinking, asked of the tokenizer once: "think" (<think> tags,
        reasoning.py), gpt-oss's Harmony channels (harmony.py), or None."""
        if self._thinking is None:
            core = self._core

            def tokenize(text: str) -> List[int]:
                return list(core.tokenize(text, False))

            harmony = HarmonyTokens.of(tokenize)
            think = "think" if knows_think_tags(tokenize, core.detokenize) else None
            self._thinking = (harmony or think,)
        return self._thinking[0]

    def _model_name(self) -> str:
        return str(self._info.get("model") or self._args.model)

    # ------------------------------------------------------------------ submission and registry

    def _submit(self, prepared: PreparedRequest, sink: Sink) -> EngineSubmission:
        """Claims the request id and its engine ids, routes them, then queues the n engine requests;
        undoes exactly what it did on failure.

        Ids are owned per request: a request whose id or any engine id ("x" with n=2 claims "x-0"
        and "x-1") is held by a running request is refused before anything of the running one is
        touched, and a refused or finished request releases only the entries it owns."""
        if self._terminated:
            raise EngineDeadError("the engine has been terminated")
        request_id = prepared.request_id
        submission = EngineSubmission(self, request_id, prepared.engine_ids)
        with self._lock:
            if request_id in self._active:
                raise BadRequestError(f"request_id {request_id!r} is already running", "request_id")
            taken = next((e for e in prepared.engine_ids if e in self._owners), None)
            if taken is not None:
                raise BadRequestError(
                    f"request_id {request_id!r} would use the engine id {taken!r} of a running request",
                    "request_id",
                )
            self._active[request_id] = submission
            for engine_id in prepared.engine_ids:
                self._owners[engine_id] = submission
        added: List[str] = []
        try:
            self._stream_back.register(prepared.engine_ids, sink)
            submission.sink = sink
            for engine_id, prompt, params in zip(prepared.engine_ids, prepared.prompts, prepared.params_json):
                self._core.add_request(engine_id, prompt, params)
                added.append(engine_id)
        except BaseException:
            # Abort only what was queued: a rejected id may belong to another running request.
            for engine_id in added:
                self._core.abort(engine_id)
            submission.release()
            raise
        return submission

    def _forget(self, submission: "EngineSubmission") -> None:
        """Drops the routes and registry entries that `submission` owns, and nothing else."""
        self._stream_back.unregister(submission.engine_ids, submission.sink)
        with self._lock:
            if self._active.get(submission.request_id) is submission:
                del self._active[submission.request_id]
            for engine_id in submission.engine_ids:
                if self._owners.get(engine_id) is submission:
                    del self._owners[engine_id]

    def _abort(self, request_id: str) -> None:
        """Aborts every engine request of `request_id`; their streams end with finish_reason "abort".
        An id that no running request owns is ignored."""
        with self._lock:
            submission = self._active.get(request_id)
            engine_ids = list(submission.engine_ids) if submission is not None else []
        for engine_id in engine_ids:
            self._core.abort(engine_id)

    # ------------------------------------------------------------------ lifecycle

    def _metrics(self) -> EngineMetrics:
        return EngineMetrics(json.loads(self._core.metrics()))

    def reset(self) -> None:
        """Aborts every running request (the engine keeps its model and caches)."""
        with self._lock:
            request_ids = list(self._active)
        for request_id in request_ids:
            self._abort(request_id)

    def trace(self) -> str:
        """The recorded per-request events as Chrome-trace JSON ("[]" without enable_tracing)."""
        return str(self._core.trace())

    def dump_trace(self, path: Optional[str] = None) -> str:
        """Returns the Chrome-trace JSON and, given a path, also writes it there (chrome://tracing)."""
        text = self.trace()
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    def terminate(self) -> None:
        """Stops the engine and its stream-back thread; open streams end. Safe to call twice."""
        if getattr(self, "_terminated", True):
            return
        self._terminated = True
        self._stream_back.request_stop()
        try:
            self._core.terminate()
        finally:
            self._stream_back.join(timeout=10.0)
        _live_engines.discard(self)

    def __del__(self) -> None:
        if sys is None or sys.is_finalizing():  # module globals may already be gone
            return
        try:
            self.terminate()
        except Exception:
            pass


def _reasoning_start(thinking: Union[None, str, HarmonyTokens], prompt: str) -> Union[None, bool, HarmonyTokens]:
    """The builder's `reasoning` argument (responses.ChatResponseBuilder) for this model and prompt."""
    if thinking == "think":
        return starts_in_reasoning(prompt)
    return thinking if isinstance(thinking, HarmonyTokens) else None


def _engine_ids(request_id: str, n: int) -> List[str]:
    return [request_id] if n == 1 else [f"{request_id}-{i}" for i in range(n)]


def _message_for_template(message: ChatMessage) -> Dict[str, Any]:
    """The plain dict a chat template expects: string content, and OpenAI's newer "developer" role
    shown to the model as "system" (templates predate it)."""
    out: Dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
    text = message.text()
    out["content"] = text if text is not None else ""
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _sampling_params(
    request: Union[ChatCompletionRequest, CompletionRequest],
    max_tokens: Optional[int],
    logprobs: bool,
    top_logprobs: int,
) -> Dict[str, Any]:
    """The SamplingParams JSON object (see _core.pyi `add_request`); unset options are left out so
    that the engine applies its defaults."""
    params: Dict[str, Any] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "repetition_penalty": request.repetition_penalty,
        "max_tokens": max_tokens,
    }
    params = {k: v for k, v in params.items() if v is not None}
    if request.logit_bias:
        params["logit_bias"] = {str(k): v for k, v in request.logit_bias.items()}
    stops = request.stop_list()
    if stops:
        params["stop"] = stops
    if request.effective_ignore_eos():
        params["ignore_eos"] = True
    if logprobs:
        params["logprobs"] = True
        params["top_logprobs"] = top_logprobs
    return params


def _per_choice(params: Dict[str, Any], seed: Optional[int], n: int) -> List[str]:
    """One params JSON per choice; choice i samples with seed + i so that choices differ but stay
    reproducible."""
    if seed is None:
        encoded = json.dumps(params)
        return [encoded] * n
    return [json.dumps({**params, "seed": (seed + i) % _SEED_MODULUS}) for i in range(n)]
