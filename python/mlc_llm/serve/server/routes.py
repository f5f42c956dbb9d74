"""The OpenAI endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}].

A completion request goes through the same validation as `engine.chat.completions.create` (the body
is the keyword arguments), so the REST API and the Python API accept and reject exactly the same
requests. Errors raised before the first byte become OpenAI error objects with their status
(errors.py); a streaming request then answers with server-sent events (streaming.py).
"""

import asyncio
import json
import logging
from typing import Any, Dict

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ...protocol.errors import BadRequestError
from ...protocol.limits import check_request_values, json_depth_exceeded
from ...protocol.openai_api_protocol import ModelCard, ModelList
from ..engine_base import PreparedRequest
from ..responses import ChatResponseBuilder
from .errors import CLIENT_CLOSED, NOT_FOUND, APIError, classify
from .guards import BodyTimeout, BodyTooLarge
from .request_limits import check_request_work
from .state import ServerState
from .streaming import ClientDisconnected, EventStreamResponse, unless_disconnected

logger = logging.getLogger("mlc_llm.serve.server")

router = APIRouter()

JSON = "application/json"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


async def read_json_object(request: Request) -> Dict[str, Any]:
    """The body as a JSON object; anything else (empty, malformed, NaN, an array) is a 400, and a
    body not declared as JSON is a 415."""
    _check_content_type(request)
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty; expected a JSON object", code="invalid_json")
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess UTF-16 and UTF-32.
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
    except RecursionError:  # nested past the decoder's recursion limit (about 1,000 levels)
        raise APIError(400, str(json_depth_exceeded("the request body")), code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    # Before anything reads a field (the model name is checked first): depth and valid text.
    check_request_values(data)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_content_type(request: Request) -> None:
    """Only `application/json` bodies are read. A web page can POST text/plain or form bodies to
    any origin without a CORS preflight; requiring JSON makes the browser ask first, and a server
    without --allow-origins then says no, so a page cannot drive a local server behind the user's back."""
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type != JSON:
        shown = media_type or "none"
        raise APIError(
            415, f"the request body must be sent as Content-Type: {JSON} (got {shown})", code="unsupported_media_type"
        )


@router.post(CHAT)
async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)


@router.post(COMPLETIONS)
async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


async def _complete(request: Request, chat: bool) -> Response:
    state = _state(request)
    tracker = state.track(CHAT if chat else COMPLETIONS)
    body: Dict[str, Any] = {}
    try:
        body = await read_json_object(request)
        state.check_model(body)
        engine = state.engine
        # Parsing, the chat template, tokenization and grammar compilation take a millisecond or more per
        # request: off the event loop, so that a burst of arrivals never holds up /health or other streams.
        prepared: PreparedRequest = await asyncio.to_thread(engine._prepare_chat if chat else engine._prepare_completion, body)
        if isinstance(prepared.builder, ChatResponseBuilder):
            prepared.builder.role_in_every_delta = False  # OpenAI's convention (see ChatResponseBuilder)
        # The response names the model as /v1/models lists it, whichever alias (or none) the request used.
        prepared.builder.model = state.settings.served_model_name or prepared.builder.model
        check_request_work(prepared, int(engine.info["context_window_size"]), state.settings)
        if prepared.stream:
            stream = await engine._run_async(prepared)
            return EventStreamResponse(stream, stream.close, prepared.builder.usage, tracker.end)
        try:
            response = await unless_disconnected(request.receive, engine._run_async(prepared))
        except ClientDisconnected:
            tracker.end(CLIENT_CLOSED, prepared.builder.usage())
            return Response(status_code=CLIENT_CLOSED)
        tracker.end(200, response.usage)
        return Response(response.model_dump_json(), media_type=JSON)
    except BodyTooLarge:
        tracker.end(413)  # the guard answers it, once the rest of the body is drained
        raise
    except BodyTimeout:
        tracker.end(408)  # the guard answers it
        raise
    except ClientDisconnect:
        # The client went away while sending the body: nothing failed here and nobody is left to
        # answer, so one quiet line rather than an error with a traceback.
        logger.debug("client disconnected before sending the whole request body (%s)", request.url.path)
        tracker.end(CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)
    except BadRequestError as exc:
        if chat and exc.field == "prompt" and "prompt" not in body:
            exc.field = "messages"  # the engine saw the rendered prompt; the caller sent messages
        tracker.end(classify(exc)[0])
        raise
    except BaseException as exc:
        tracker.end(classify(exc)[0] if isinstance(exc, Exception) else CLIENT_CLOSED)
        raise


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = _state(request)
    cards = ModelList(data=[ModelCard(id=state.settings.served_model_name, created=state.created)])
    return Response(cards.model_dump_json(), media_type=JSON)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    state = _state(request)
    if not state.settings.serves(model_id):
        raise APIError(
            404, f"the model {model_id!r} does not exist", type=NOT_FOUND, param="model", code="model_not_found"
        )
    card = ModelCard(id=state.settings.served_model_name, created=state.created)
    return Response(card.model_dump_json(), media_type=JSON)
