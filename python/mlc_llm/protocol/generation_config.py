"""MLC's low-level generation options (`mlc_llm.protocol.generation_config.GenerationConfig`), for
code written against MLC that builds or inspects one. The engine itself receives the same options as
the SamplingParams JSON that engine_base builds from a request."""

from typing import Dict, List, Optional

from pydantic import BaseModel

from .debug_protocol import DebugConfig
from .openai_api_protocol import ResponseFormat


class GenerationConfig(BaseModel):
    """MLC's fields and defaults (`max_tokens=-1` means "up to the context window")."""

    n: int = 1
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: Optional[Dict[int, float]] = None
    max_tokens: int = -1
    seed: Optional[int] = None
    stop_strs: Optional[List[str]] = None
    stop_token_ids: Optional[List[int]] = None
    response_format: Optional[ResponseFormat] = None
    debug_config: Optional[DebugConfig] = None
