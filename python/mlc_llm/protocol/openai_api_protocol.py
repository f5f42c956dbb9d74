"""OpenAI-compatible request and response models.

Field names and nesting follow the openai SDK's types, so that a response built here validates as the
SDK's own class (`openai.types.chat.ChatCompletion.model_validate(obj.model_dump())`) and a request
written for OpenAI or MLC LLM is accepted unchanged. `parse_request` first applies the limits every
value must respect (limits.py: nesting depth, valid Unicode), pydantic then checks types and ranges
field by field (integers within the engine's u32 / i32), its `ValidationError` becomes `BadRequestError`
naming the field (validation_errors.py), and each request's
`check()` adds the rules that span fields or that this engine does not implement (`UnsupportedError`,
never a silent ignore).
"""

import time
from typing import Any, Dict, List, Literal, Mapping, Optional, Type, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import field_validator

from .debug_protocol import DebugConfig
from .errors import BadRequestError, UnsupportedError
from .json_schema import check_json_schema
from .limits import MAX_F32, MAX_I32, MAX_U32, TokenCount, TokenId, check_request_values
from .request_compat import normalize_request
from .response_format import JSONSchemaFormat, ResponseFormat, check_name  # noqa: F401  (re-exported)
from .server_protocol import ErrorInfo, ErrorResponse, ModelCard, ModelList  # noqa: F401  (re-exported)
from .validation_errors import bad_request_from

# OpenAI's limits on the number of alternatives returned per token (MLC exports the same names).
CHAT_COMPLETION_MAX_TOP_LOGPROBS = 20
COMPLETION_MAX_TOP_LOGPROBS = 5

# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    """Rejects unknown fields: a misspelt option must fail loudly rather than be ignored."""

    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    """One part of a list-valued message content. Only text parts can be served (checked later,
    so that an image part is reported as unsupported rather than as malformed)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: Optional[str] = None


class FunctionCall(BaseModel):
    name: str
    # Some clients send parsed arguments; templates receive whatever the caller gave.
    arguments: Union[str, Dict[str, Any]] = "{}"


class ChatToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """A message of the conversation sent by the caller (any role)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, List[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[ChatToolCall]] = None
    tool_call_id: Optional[str] = None
    # Present when a caller appends an SDK response message to the history as it came back.
    refusal: Optional[str] = None
    annotations: Optional[List[Any]] = None
    audio: Optional[Any] = None
    function_call: Optional[Any] = None
    # A reasoning model's thinking, as our responses carry it; never shown to the template (reasoning.py).
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None

    def text(self) -> Optional[str]:
        """The content as one string: text parts joined the way OpenAI-compatible servers do."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content)


class FunctionDefinition(_Strict):
    name: str
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[StrictBool] = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("parameters")
    @classmethod
    def _valid_parameters(cls, value: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if value is not None:
            check_json_schema(value, "parameters")
        return value


class ChatTool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Strict):
    # Strict: pydantic's lax bools would take "yes", "off" or 0 for a flag.
    include_usage: StrictBool = False
    include_obfuscation: Optional[StrictBool] = None


Penalty = Optional[float]
# OpenAI's limit on n; also bounds prompts x n of a completion with a list of prompts.
MAX_CHOICES = 128


class _SamplingFields(_Strict):
    """The sampling options shared by chat and text completions (OpenAI's plus MLC/vLLM extras)."""

    model: Optional[str] = None
    frequency_penalty: Penalty = Field(default=None, ge=-2.0, le=2.0, strict=True)
    presence_penalty: Penalty = Field(default=None, ge=-2.0, le=2.0, strict=True)
    logit_bias: Optional[Dict[Union[int, str], float]] = None
    max_tokens: Optional[TokenCount] = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, strict=True)
    seed: Optional[int] = Field(default=None, strict=True)
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = Field(default=False, strict=True)
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0, strict=True)
    user: Optional[str] = None
    request_id: Optional[StrictStr] = None
    best_of: Optional[int] = Field(default=None, strict=True)
    top_k: Optional[int] = Field(default=None, ge=-1, le=MAX_I32, strict=True)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0, strict=True)
    repetition_penalty: Optional[float] = Field(default=None, strict=True)
    ignore_eos: Optional[bool] = Field(default=None, strict=True)
    debug_config: Optional[DebugConfig] = None
    response_format: Optional[ResponseFormat] = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: Optional[Dict[Union[int, str], float]]) -> Optional[Dict[int, float]]:
        """OpenAI sends token ids as JSON object keys (strings); the engine wants integers."""
        if value is None:
            return None
        out: Dict[int, float] = {}
        for key, bias in value.items():
            try:
                token_id = int(key)
            except ValueError:
                raise ValueError(f"key {key!r} is not a token id") from None
            if not 0 <= token_id <= MAX_U32:
                raise ValueError(f"token id {token_id} is not between 0 and {MAX_U32}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias {bias} for token {token_id} is not between -100 and 100")
            out[token_id] = bias
        return out

    @field_validator("repetition_penalty")
    @classmethod
    def _f32_penalty(cls, value: Optional[float]) -> Optional[float]:
        # The engine keeps it as an f32: 1e300 would become infinity there.
        if value is not None and not 0.0 < value <= MAX_F32:
            raise ValueError(f"must be greater than 0 and at most {MAX_F32:.4g} (a finite 32-bit float), not {value}")
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: Optional[Union[str, List[str]]]) -> Optional[Union[str, List[str]]]:
        stops = [value] if isinstance(value, str) else value or []
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    def stop_list(self) -> List[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def grammar(self) -> Optional[Dict[str, Any]]:
        """The output constraint asked for by `response_format` (None for free text)."""
        return None if self.response_format is None else self.response_format.grammar()

    def effective_ignore_eos(self) -> bool:
        return bool(self.ignore_eos or (self.debug_config and self.debug_config.ignore_eos))

    def check(self) -> None:
        """Rules spanning fields, and options this engine does not implement."""
        if self.stream_options is not None and not self.stream:
            raise BadRequestError("stream_options is only allowed when stream is true", "stream_options")
        if self.best_of is not None and self.best_of != 1:
            raise UnsupportedError("best_of other than 1 is not supported; use n", "best_of")
        dbg = self.debug_config
        if dbg is not None and (dbg.special_request is not None or dbg.disagg_config is not None):
            raise UnsupportedError("debug_config special_request and disagg_config are not supported", "debug_config")
        if self.response_format is not None:
            self.response_format.check()


class ChatCompletionRequest(_SamplingFields):
    """The body of POST /v1/chat/completions (and the keyword arguments of chat.completions.create)."""

    messages: List[ChatMessage] = Field(min_length=1)
    logprobs: bool = Field(default=False, strict=True)
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=CHAT_COMPLETION_MAX_TOP_LOGPROBS, strict=True)
    max_completion_tokens: Optional[TokenCount] = None
    tools: Optional[List[ChatTool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = Field(default=None, strict=True)
    # vLLM's extra variables for the chat template, e.g. {"enable_thinking": false} for Qwen3.
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    # Set by parse_request for a request in the legacy `functions` form, answered in that form.
    _legacy_functions: bool = PrivateAttr(default=False)

    def legacy_functions(self) -> bool:
        return self._legacy_functions

    def check(self) -> None:
        super().check()
        self._check_tools()
        if self.top_logprobs and not self.logprobs:
            raise BadRequestError("top_logprobs requires logprobs to be true", "top_logprobs")
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise BadRequestError("max_tokens and max_completion_tokens disagree", "max_completion_tokens")
        for i, message in enumerate(self.messages):
            self._check_message(i, message)

    def _check_tools(self) -> None:
        """Tool definitions must be unambiguous, and a named tool_choice must name one of them."""
        names = [tool.function.name for tool in self.tools or ()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise BadRequestError(f"tools define {duplicates[0]!r} more than once", "tools")
        if self.tools and isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise BadRequestError(
                f"tool_choice names function {self.tool_choice.function.name!r}, which is not in tools", "tool_choice"
            )
        forced = self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        if forced and not self.tools:
            raise BadRequestError("tool_choice 'required' or a named function needs tools", "tool_choice")
        if forced and self.response_format is not None and self.response_format.type != "text":
            raise BadRequestError("response_format cannot be combined with a forced tool call", "response_format")

    def forced_tools(self) -> Optional[List[Dict[str, Any]]]:
        """The tools one of which the output must call (tool_choice "required" or a named function),
        as plain dicts; None when the model is free to answer with text."""
        choice = self.tool_choice
        tools = [t.model_dump(exclude_none=True) for t in self.tools or ()]
        if choice == "required":
            return tools
        if isinstance(choice, NamedToolChoice):
            return [t for t in tools if t["function"]["name"] == choice.function.name]
        return None

    @staticmethod
    def _check_message(i: int, message: ChatMessage) -> None:
        where = f"messages[{i}]"
        if i > 0 and message.role in ("system", "developer"):
            # MLC's rule: chat templates put the system prompt first, and many drop a later one.
            raise BadRequestError(f"{where}: a {message.role} message is only allowed first", "messages")
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise BadRequestError(f"{where}.content is required for role {message.role!r}", "messages")
        if message.tool_calls and message.role != "assistant":
            raise BadRequestError(f"{where}.tool_calls is only allowed on assistant messages", "messages")
        if message.function_call is not None or message.audio is not None:
            raise UnsupportedError(f"{where}: function_call and audio are not supported", "messages")
        if isinstance(message.content, list):
            for part in message.content:
                if part.type != "text":
                    message_text = f"{where}: content parts of type {part.type!r} are not supported"
                    raise UnsupportedError(message_text, "messages")
                if part.text is None:
                    raise BadRequestError(f"{where}: a text content part needs 'text'", "messages")

    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def uses_tools(self) -> bool:
        """Tools are rendered into the prompt unless the caller turned them off."""
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(_SamplingFields):
    """The body of POST /v1/completions. `logprobs` is OpenAI's legacy integer (top-k count) or
    MLC's boolean with `top_logprobs`."""

    # One prompt (text or token ids) or, as OpenAI allows, a list of them: one choice per prompt (n each).
    # Strict members: lax validation would read b"..." as text and [True] or [1.0] as token ids.
    prompt: Union[StrictStr, List[TokenId], List[StrictStr], List[List[TokenId]]]
    echo: bool = Field(default=False, strict=True)
    # Appended to every choice's text once it ends (MLC's behaviour; no insertion is attempted).
    suffix: Optional[StrictStr] = None
    logprobs: Optional[Union[StrictBool, StrictInt]] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=COMPLETION_MAX_TOP_LOGPROBS, strict=True)

    @field_validator("prompt")
    @classmethod
    def _non_empty_prompt(cls, value: Union[str, List[Any]]) -> Union[str, List[Any]]:
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("a token-id prompt must be a non-empty list of token ids")
        return value

    @field_validator("logprobs")
    @classmethod
    def _logprobs_range(cls, value: Optional[Union[bool, int]]) -> Optional[Union[bool, int]]:
        if value is not None and not isinstance(value, bool) and not 0 <= value <= COMPLETION_MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {COMPLETION_MAX_TOP_LOGPROBS}")
        return value

    def prompts(self) -> List[Union[str, List[int]]]:
        """The prompts, one per group of n choices (a single prompt is a list of one)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]  # type: ignore[list-item]
        return list(prompt)  # type: ignore[arg-type]

    def check(self) -> None:
        super().check()
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise BadRequestError(f"prompts x n must be at most {MAX_CHOICES} choices", "prompt")
        if self.top_logprobs and not self.wants_logprobs():
            raise BadRequestError("top_logprobs requires logprobs", "top_logprobs")
        if self.echo and self.wants_logprobs():
            raise UnsupportedError("echo together with logprobs (prompt logprobs) is not supported", "echo")

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None and self.logprobs is not False

    def num_top_logprobs(self) -> int:
        if isinstance(self.logprobs, bool) or self.logprobs is None:
            return self.top_logprobs or 0
        return self.logprobs


RequestT = TypeVar("RequestT", bound=_SamplingFields)


def parse_request(cls: Type[RequestT], kwargs: Mapping[str, Any]) -> RequestT:
    """Validates keyword arguments (with `extra_body` merged in) into `cls`.

    Raises BadRequestError naming the first offending field, so callers never see pydantic's error type.
    """
    data = {k: v for k, v in kwargs.items() if k != "extra_body"}
    extra_body = kwargs.get("extra_body")
    if extra_body is not None:
        if not isinstance(extra_body, Mapping):
            raise BadRequestError("extra_body must be a dict", "extra_body")
        data.update(extra_body)
    check_request_values(data)
    chat = "messages" in cls.model_fields
    legacy_functions = chat and data.get("functions") is not None
    data = normalize_request(data, chat=chat)
    try:
        request = cls.model_validate(data)
    except ValidationError as err:
        raise bad_request_from(err) from None
    if isinstance(request, ChatCompletionRequest):
        request._legacy_functions = legacy_functions
    request.check()
    return request


# ---------------------------------------------------------------------------------------------
# Responses (shaped like openai.types.*)
# ---------------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls", "function_call", "abort"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[List[int]] = None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[List[int]] = None
    top_logprobs: List[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: Optional[List[ChatCompletionTokenLogprob]] = None
    refusal: Optional[List[ChatCompletionTokenLogprob]] = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # MLC's engine statistics (ttft, latency, throughput); extra fields are accepted by the SDK.
    extra: Optional[Dict[str, Any]] = None
    # OpenAI's {"reasoning_tokens": n}, for reasoning models only.
    completion_tokens_details: Optional[Dict[str, int]] = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    refusal: Optional[str] = None
    tool_calls: Optional[List[ChatToolCall]] = None
    function_call: Optional[FunctionCall] = None  # the answer to a request in the legacy `functions` form
    # A reasoning model's thinking under both of vLLM's names (older and newer clients read one each).
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatCompletionChoice]
    usage: Optional[CompletionUsage] = None
    system_fingerprint: Optional[str] = None


class ChoiceDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    refusal: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Dict[str, str]] = None
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    finish_reason: Optional[FinishReason] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatCompletionChunkChoice]
    usage: Optional[CompletionUsage] = None
    system_fingerprint: Optional[str] = None


class Logprobs(BaseModel):
    """The legacy completions logprobs shape (parallel lists)."""

    tokens: List[str] = Field(default_factory=list)
    token_logprobs: List[float] = Field(default_factory=list)
    top_logprobs: List[Dict[str, float]] = Field(default_factory=list)
    text_offset: List[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    # None only on stream chunks that do not end the choice.
    finish_reason: Optional[FinishReason] = None
    logprobs: Optional[Logprobs] = None


class Completion(BaseModel):
    """A text completion, streamed or not (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[CompletionChoice]
    usage: Optional[CompletionUsage] = None
    system_fingerprint: Optional[str] = None


# MLC's names for the same classes, so code written against mlc_llm keeps importing them.
ChatCompletionResponse = ChatCompletion
ChatCompletionStreamResponse = ChatCompletionChunk
CompletionResponse = Completion
CompletionLogProbs = Logprobs
