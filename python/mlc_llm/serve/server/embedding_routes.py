"""POST /v1/embeddings, served when `mlc_llm serve` is started with `--embedding-model` (the engine is
`app.state.embeddings`, an AsyncEmbeddingEngine beside the chat model's engine). The request names the
embedding model by its path, file name or stem, or leaves `model` out."""

import os
from typing import List, Optional

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ...protocol.embedding_protocol import (
    EmbeddingObject,
    EmbeddingResponse,
    EmbeddingUsage,
    encode_vector,
    parse_embedding_request,
    shape_vector,
)
from ..embedding_engine import AsyncEmbeddingEngine
from .errors import CLIENT_CLOSED, NOT_FOUND, APIError, classify
from .guards import BodyTimeout, BodyTooLarge
from .routes import JSON, read_json_object
from .state import ServerState

router = APIRouter()
EMBEDDINGS = "/v1/embeddings"


def embedding_names(model: str) -> List[str]:
    """The names a request may give the embedding model: its path, its file name, that name's stem."""
    base = os.path.basename(model.rstrip("/"))
    return [model, base, os.path.splitext(base)[0]]


@router.post(EMBEDDINGS)
async def embeddings(request: Request) -> Response:
    state: ServerState = request.app.state.server
    tracker = state.track(EMBEDDINGS)
    try:
        response = await _embed(request)
    except BodyTooLarge:
        tracker.end(413)  # the guard answers it
        raise
    except BodyTimeout:
        tracker.end(408)
        raise
    except ClientDisconnect:
        tracker.end(CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)
    except BaseException as exc:
        tracker.end(classify(exc)[0] if isinstance(exc, Exception) else CLIENT_CLOSED)
        raise
    tracker.end(200)
    return Response(response.model_dump_json(), media_type=JSON)


async def _embed(request: Request) -> EmbeddingResponse:
    engine: Optional[AsyncEmbeddingEngine] = getattr(request.app.state, "embeddings", None)
    body = await read_json_object(request)
    if engine is None:
        raise APIError(404, "this server serves no embedding model (start it with --embedding-model)",
                       type=NOT_FOUND, param="model", code="model_not_found")
    names = embedding_names(request.app.state.embedding_model)
    model = body.get("model")
    if isinstance(model, str) and model and model not in names:
        raise APIError(404, f"the embedding model {model!r} does not exist; this server embeds with {names[0]!r}",
                       type=NOT_FOUND, param="model", code="model_not_found")
    parsed = parse_embedding_request(body)
    vectors, tokens = await engine.async_embed(parsed.inputs())
    data = [
        EmbeddingObject(
            index=i, embedding=encode_vector(shape_vector(v, parsed.dimensions, engine.hidden_size), parsed.encoding_format)
        )
        for i, v in enumerate(vectors)
    ]
    return EmbeddingResponse(data=data, model=names[0], usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
