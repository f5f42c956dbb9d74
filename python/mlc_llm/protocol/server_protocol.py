"""Server-only shapes: the model list and the error body (openai.types.Model, OpenAI's error object)."""

import time
from typing import List, Literal, Optional

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "MLC-LLM"  # what MLC LLM's server answers


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer of the REST server, as OpenAI sends it."""

    error: ErrorInfo
