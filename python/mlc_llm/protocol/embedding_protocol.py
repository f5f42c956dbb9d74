"""OpenAI's `/v1/embeddings` request and response (openai.types.CreateEmbeddingResponse's shape).

`input` is a string, a list of strings, a list of token ids or a list of such lists, as OpenAI takes it;
`encoding_format` "base64" is the little-endian float32 bytes of each vector (what the openai SDK asks
for by default and decodes itself); `dimensions` keeps the first n components and renormalizes them
(the Matryoshka truncation Qwen3-Embedding is trained for). Validation follows the chat and completion
requests: limits first, nulls as absent, unknown fields refused naming the field.
"""

import base64
import struct
from typing import Any, List, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from .errors import BadRequestError
from .limits import MAX_U32, TokenId, check_request_values
from .validation_errors import bad_request_from

# OpenAI's limit on the number of inputs of one request.
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Union[StrictStr, List[StrictStr], List[TokenId], List[List[TokenId]]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, ge=1, le=MAX_U32, strict=True)
    user: Optional[str] = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be an empty list")
            if len(value) > MAX_EMBEDDING_INPUTS and not isinstance(value[0], int):
                raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
            if any(isinstance(item, list) and not item for item in value):
                raise ValueError("a token-id input must not be empty")
        return value

    def inputs(self) -> List[Union[str, List[int]]]:
        """The inputs, one per embedding (a single string or token list is a list of one)."""
        value = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]  # type: ignore[list-item]
        return list(value)  # type: ignore[arg-type]


def parse_embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    check_request_values(body)
    data = {k: v for k, v in body.items() if v is not None}
    try:
        return EmbeddingRequest.model_validate(data)
    except ValidationError as err:
        raise bad_request_from(err) from None


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: Union[List[float], str]
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: List[EmbeddingObject]
    model: str
    usage: EmbeddingUsage


def shape_vector(vector: List[float], dimensions: Optional[int], hidden_size: int) -> List[float]:
    """`dimensions` applied: the first n components, renormalized (n at most the model's size)."""
    if dimensions is None:
        return vector
    if dimensions > hidden_size:
        raise BadRequestError(f"dimensions is {dimensions}; this model's embeddings have {hidden_size}", "dimensions")
    head = vector[:dimensions]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 1e-12 else head


def encode_vector(vector: List[float], encoding_format: str) -> Union[List[float], str]:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
