"""How much work one REST request may ask for, checked after the prompt is tokenized and before
anything reaches the engine.

`max_tokens` beyond the context window is refused, as OpenAI and vLLM do ("This model's maximum
context length is ..."), rather than clamped: a client that asks for 100,000 tokens from an 8,192-token
model has a bug it should hear about. (The Python API keeps MLC's behaviour and clamps.) An unset
`max_tokens` means "up to the end of the context window", as in both of them.

The server's own limits (`--max-n`, `--max-request-tokens`) bound what one client can make the engine
do: the prompt plus n x the tokens each choice may generate.
"""

import json
from typing import Optional

from ..engine_base import PreparedRequest
from .errors import APIError
from .settings import DEFAULT_REQUEST_TOKENS_PER_WINDOW, ServerSettings


def check_request_work(prepared: PreparedRequest, context_window: int, settings: ServerSettings) -> None:
    """Raises APIError (400) if `prepared` asks for more than the context window or the limits."""
    n = len(prepared.engine_ids)
    if n > settings.max_n:
        raise APIError(400, f"n is {n}; this server allows at most {settings.max_n} (--max-n)", param="n")
    # A list of prompts (completions) is checked by its longest; the work counts each prompt once.
    prompt = max(len(p) for p in prepared.prompts)
    prompt_work = sum(len(p) for p in {id(p): p for p in prepared.prompts}.values())
    if prompt >= context_window:
        return  # the engine refuses the prompt itself, naming the prompt (or messages) as the field
    max_tokens = _max_tokens(prepared)
    if max_tokens is not None and prompt + max_tokens > context_window:
        raise APIError(
            400,
            f"This model's maximum context length is {context_window} tokens. However, you requested "
            f"{prompt + max_tokens} tokens ({prompt} in the prompt, {max_tokens} in the completion). "
            "Please reduce the length of the prompt or of the completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    per_choice = max_tokens if max_tokens is not None else max(context_window - prompt, 0)
    total = prompt_work + n * per_choice
    limit = settings.max_request_tokens or DEFAULT_REQUEST_TOKENS_PER_WINDOW * context_window
    if total > limit:
        unset = "" if max_tokens is not None else " (max_tokens is unset, so each may fill the context window)"
        raise APIError(
            400,
            f"the request may use {total} tokens: {prompt_work} in the prompt plus {n} choices of up to {per_choice}"
            f"{unset}; this server allows {limit} per request (--max-request-tokens). Lower n or max_tokens.",
            param="max_tokens" if max_tokens is not None else "n",
            code="request_too_large",
        )


def _max_tokens(prepared: PreparedRequest) -> Optional[int]:
    """max_tokens (or max_completion_tokens) as the engine will see it: every choice has the same."""
    value = json.loads(prepared.params_json[0]).get("max_tokens") if prepared.params_json else None
    return int(value) if isinstance(value, int) else None
